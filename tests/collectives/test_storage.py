"""Storage collectives (bcast by publish, ScatterReduce allreduce) over real Redis and S3."""

from __future__ import annotations

import asyncio
import collections
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

import afmi
from afmi.collectives import CollectiveContext, registry
from afmi.collectives.storage import (
    LINEAR_ON_S3,
    S3_MIN_SCATTER_BYTES,
    RedisCounterBarrier,
    ScatterReduceAllreduce,
    StorageAllreduce,
    StorageBcast,
)
from afmi.config import Config

PREFIX = "afmi-test"


def redis_config(url: str) -> Config:
    table = {"url": url, "prefix": PREFIX, "chunk_bytes": 64 * 1024, "inline_bytes": 4096}
    return Config.from_dict({"channels": {"redis": table}})


def s3_config(s3, **extra: object) -> Config:
    # publish_min_bytes 0: every fetched payload sent to several ranks is uploaded once
    table = {**s3.config(PREFIX), "poll_min": 0.002, "poll_max": 0.05, "publish_min_bytes": 0}
    table.update(extra)
    return Config.from_dict({"channels": {"s3": table}})


async def _chosen(comm, x):
    ctx = CollectiveContext(comm, 0, "probe")
    return (
        type(registry.select("bcast", ctx, {"obj": x, "root": 0})).__name__,
        type(registry.select("allreduce", ctx, {"x": x, "op": afmi.SUM})).__name__,
        type(registry.select("allreduce", ctx, {"x": x[:1000], "op": afmi.SUM})).__name__,
        type(registry.select("allreduce", ctx, {"x": 3, "op": afmi.SUM})).__name__,
    )


async def test_registry_prefers_storage_algorithms_on_storage_channels(redis_url):
    big = np.ones(200_000)  # 1.6 MB: ScatterReduce; its first 1000 elements: reduce-publish
    out = await afmi.launch_local(_chosen, 2, big, channel="redis", config=redis_config(redis_url))
    expect = ("StorageBcast", "ScatterReduceAllreduce", "StorageAllreduce", "StorageAllreduce")
    assert out[0] == expect
    local = await afmi.launch_local(_chosen, 2, big, channel="local")
    assert "Storage" not in local[0][0] and "Scatter" not in local[0][1]


async def test_s3_takes_scatter_reduce_only_for_far_larger_arrays(s3):
    # on S3 every slice message is a PUT, a GET and a share of the polls
    cfg = s3_config(s3)
    big = np.ones(200_000)  # 1.6 MB: ScatterReduce on redis, reduce-publish on S3
    out = await afmi.launch_local(_chosen, 2, big, channel="s3", config=cfg)
    assert out[0][1] == "StorageAllreduce"
    huge = np.ones(S3_MIN_SCATTER_BYTES // 8)
    out = await afmi.launch_local(_chosen, 2, huge, channel="s3", config=cfg)
    assert out[0][1] == "ScatterReduceAllreduce"


async def _collectives(comm, n, allreduce):
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal(n)
    with registry.forced(allreduce=allreduce):
        total = await comm.allreduce(x)
        biggest = await comm.allreduce(-x, op=afmi.MAX)
    small = await comm.allreduce(comm.rank + 1)
    data = await comm.bcast(np.arange(n) if comm.rank == 1 else None, root=1)
    cfg = await comm.bcast({"lr": 0.1} if comm.rank == 0 else None)
    await comm.barrier()
    expect = sum(np.random.default_rng(r).standard_normal(n) for r in range(comm.size))
    expect_max = np.max([-np.random.default_rng(r).standard_normal(n) for r in range(comm.size)], 0)
    return (
        bool(np.allclose(total, expect)),
        bool(np.array_equal(biggest, expect_max)),
        small,
        bool(np.array_equal(data, np.arange(n))),
        cfg,
    )


async def job_objects(s3, job):
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=s3.endpoint_url) as client:
        out = await client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{PREFIX}/{job}/")
        return [o["Key"] for o in out.get("Contents", ())]


async def _job_keys(url, job):
    client = aioredis.Redis.from_url(url)
    try:
        return [k async for k in client.scan_iter(match=f"{PREFIX}:{job}:*")]
    finally:
        await client.aclose()


@pytest.mark.parametrize("allreduce", ["scatter_reduce", "reduce_publish"])
@pytest.mark.parametrize("size", [3, 5])
async def test_storage_collectives_over_redis(redis_url, size, allreduce):
    job = f"t{uuid.uuid4().hex[:12]}"
    cfg = redis_config(redis_url)
    out = await afmi.launch_local(
        _collectives, size, 140_009, allreduce, channel="redis", config=cfg, job=job
    )
    expect_small = size * (size + 1) // 2
    assert out == [(True, True, expect_small, True, {"lr": 0.1})] * size
    assert await _job_keys(redis_url, job) == []


async def test_storage_collectives_over_s3(s3):
    job = f"t{uuid.uuid4().hex[:12]}"
    cfg = s3_config(s3)
    out = await afmi.launch_local(
        _collectives, 4, 140_009, "scatter_reduce", channel="s3", config=cfg, job=job
    )
    assert out == [(True, True, 10, True, {"lr": 0.1})] * 4
    assert await job_objects(s3, job) == []


async def _bcast_stats(comm, n):
    await comm.bcast(np.ones(n) if comm.rank == 0 else None)
    return comm.endpoint.channels["s3"].stats()["requests"]


async def test_s3_bcast_uploads_the_payload_once(s3):
    out = await afmi.launch_local(_bcast_stats, 4, 50_000, channel="s3", config=s3_config(s3))
    # One body upload, plus a marker and a pointer per reader (both empty objects).
    assert out[0]["put"] == 1 + 2 * 3
    assert sum(r["get"] for r in out) == 3


def test_scatter_reduce_applies_to_arrays_with_builtin_elementwise_ops():
    algo = ScatterReduceAllreduce()
    big = np.ones(200_000)
    assert algo.applicable(4, big.nbytes, {"x": big, "op": afmi.SUM})
    assert algo.applicable(4, 8, {"x": np.ones(1), "op": afmi.SUM})
    assert not algo.applicable(4, 16, {"x": 3.0, "op": afmi.SUM})
    assert not algo.applicable(4, big.nbytes, {"x": big, "op": afmi.Op(np.add)})
    pair = (np.ones(3), np.zeros(3))
    assert not algo.applicable(4, 48, {"x": pair, "op": afmi.MAXLOC})


async def _tiny_scatter(comm):
    with registry.forced(allreduce="scatter_reduce"):
        a = await comm.allreduce(np.arange(3, dtype=np.int32) + comm.rank)  # fewer than ranks
        b = await comm.allreduce(np.asfortranarray(np.ones((2, 3))), op=afmi.MAX)
        c = await comm.allreduce(np.zeros(0))
    return a.tolist(), b.shape, b.flags.c_contiguous or b.flags.f_contiguous, c.shape


async def test_scatter_reduce_handles_tiny_and_fortran_arrays(redis_url):
    out = await afmi.launch_local(_tiny_scatter, 5, channel="redis", config=redis_config(redis_url))
    assert out[0] == ([10, 15, 20], (2, 3), True, (0,))


def test_storage_algorithms_are_registered_for_storage_channels():
    names = {(a.collective, type(a)) for a in registry.algorithms()}
    for cls in (StorageBcast, ScatterReduceAllreduce, StorageAllreduce):
        assert (cls.collective, cls) in names
        assert cls.channels == frozenset({"redis", "s3"})
    # ScatterReduce moves 2/size of the array per rank and round; reduce-publish the whole.
    assert ScatterReduceAllreduce().steps(4, 4000)[0].nbytes == 1000


async def _barrier_rounds(comm, arrived, rounds):
    """Each rank records its arrival, then checks after the barrier that everyone had."""
    ok = True
    for i in range(rounds):
        await asyncio.sleep(0.001 * ((comm.rank * 7 + i) % 5))  # ranks arrive out of order
        arrived[comm.name][i].append(comm.rank)
        await comm.barrier()
        ok = ok and len(arrived[comm.name][i]) == comm.size
    return ok


async def _counter_barriers(comm, arrived):
    stats = comm.endpoint.channels["redis"].stats
    half = await comm.split(comm.rank % 2)  # two communicators sharing one context
    dup = await comm.dup()
    ok = await _barrier_rounds(comm, arrived, 6)
    # Both halves (and the dup) run barriers at the same time.
    ok_half, ok_dup = await asyncio.gather(
        _barrier_rounds(half, arrived, 6), _barrier_rounds(dup, arrived, 3)
    )
    await comm.barrier()
    ctx = CollectiveContext(comm, 0, "probe")
    chosen = type(registry.select("barrier", ctx, {})).__name__
    return ok, ok_half, ok_dup, chosen, stats()["counter_increments"]


async def test_redis_counter_barrier_repeated_split_and_dup(redis_url):
    job = f"t{uuid.uuid4().hex[:12]}"
    size = 6
    arrived = collections.defaultdict(lambda: collections.defaultdict(list))
    out = await afmi.launch_local(
        _counter_barriers, size, arrived, channel="redis", config=redis_config(redis_url), job=job
    )
    assert [o[:4] for o in out] == [(True, True, True, "RedisCounterBarrier")] * size
    # 6 + 3 + 1 barriers on the world and its dup, 6 on each half, one INCR each per rank;
    # split and dup themselves run allgathers, which send messages of their own.
    assert [o[4] for o in out] == [6 + 6 + 3 + 1] * size
    assert await _job_keys(redis_url, job) == []


async def _sent_by_barriers(comm, n):
    stats = comm.endpoint.channels["redis"].stats
    before = stats()["messages_sent"]
    for _ in range(n):
        await comm.barrier()
    return stats()["messages_sent"] - before


async def test_redis_counter_barrier_sends_only_the_releases(redis_url):
    # Dissemination would send size * ceil(log2 size) = 12 messages per barrier.
    out = await afmi.launch_local(
        _sent_by_barriers, 4, 5, channel="redis", config=redis_config(redis_url)
    )
    assert sum(out) == 5 * 3


async def _barrier_left_waiting(comm, url, job, how):
    if comm.rank == comm.size - 1:
        return None  # never enters the barrier
    if how == "timeout":
        with pytest.raises(afmi.OperationTimeoutError):
            await comm.barrier(timeout=0.3)
    else:
        task = asyncio.ensure_future(comm.barrier())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{PREFIX}:{job}:bar:*")]
        ttls = [await client.pttl(k) for k in keys]
        count = int(await client.get(keys[0])) if keys else None
    finally:
        await client.aclose()
    return len(keys), all(t > 0 for t in ttls), count


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_redis_counter_barrier_left_waiting_leaves_no_keys(redis_url, how):
    job = f"t{uuid.uuid4().hex[:12]}"
    out = await afmi.launch_local(
        _barrier_left_waiting,
        3,
        redis_url,
        job,
        how,
        channel="redis",
        config=redis_config(redis_url),
        job=job,
    )
    # While waiting, the counter held both arrivals and had a TTL; closing deleted it.
    assert out[:2] == [(1, True, 2)] * 2
    assert await _job_keys(redis_url, job) == []


async def _barrier_choice(comm):
    ctx = CollectiveContext(comm, 0, "probe")
    return type(registry.select("barrier", ctx, {})).__name__


async def test_barrier_choice_on_storage_channels(redis_url, s3):
    cfg = redis_config(redis_url)
    three = await afmi.launch_local(_barrier_choice, 3, channel="redis", config=cfg)
    two = await afmi.launch_local(_barrier_choice, 2, channel="redis", config=cfg)
    on_s3 = await afmi.launch_local(_barrier_choice, 3, channel="s3", config=s3_config(s3))
    assert three == ["RedisCounterBarrier"] * 3
    assert two == ["DisseminationBarrier"] * 2
    assert on_s3 == ["LinearBarrier"] * 3  # no atomic counter on S3: the fewest rounds
    assert RedisCounterBarrier.channels == frozenset({"redis"})
    assert RedisCounterBarrier().steps(8, 0) == RedisCounterBarrier().steps(3, 0)  # two rounds


def _choice_args(collective):
    x = np.ones(4096)
    return {
        "gather": {"obj": x, "root": 0},
        "scatter": {"seq": [x] * 8, "root": 0},
        "reduce": {"x": x, "op": afmi.SUM, "root": 0},
        "allgather": {"obj": x},
        "alltoall": {"seq": [x] * 8},
        "reduce_scatter": {"x": np.ones(8 * 4096), "op": afmi.SUM},
        "scan": {"x": x, "op": afmi.SUM},
        "exscan": {"x": x, "op": afmi.SUM},
        "barrier": {},
    }[collective]


async def _choices(comm):
    ctx = CollectiveContext(comm, 0, "probe")
    return {c: registry.select(c, ctx, _choice_args(c)).name for c in LINEAR_ON_S3}


async def test_s3_runs_the_linear_algorithms_with_the_fewest_rounds(redis_url, s3):
    on_s3 = await afmi.launch_local(_choices, 8, channel="s3", config=s3_config(s3))
    assert on_s3 == [dict.fromkeys(LINEAR_ON_S3, "linear")] * 8
    # other channels keep their trees, rings and recursive doubling
    on_redis = await afmi.launch_local(_choices, 8, channel="redis", config=redis_config(redis_url))
    assert on_redis[0]["gather"] == "binomial"
    assert on_redis[0]["allgather"] == "bruck"
    assert on_redis[0]["scan"] == "recursive_doubling"


async def _forced_counter_barrier(comm):
    with registry.forced(barrier="redis_counter"):
        await comm.barrier()


async def test_counter_barrier_forced_on_another_channel_says_so():
    with pytest.raises(afmi.RankFailedError) as info:
        await afmi.launch_local(_forced_counter_barrier, 3, channel="local")
    assert "needs the redis channel" in str(info.value.__cause__)
