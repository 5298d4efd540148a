"""Storage collectives (bcast by publish, ScatterReduce allreduce) over real Redis and S3."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

import afmi
from afmi.collectives import CollectiveContext, registry
from afmi.collectives.storage import (
    ScatterReduceAllreduce,
    StorageAllreduce,
    StorageBcast,
)
from afmi.config import Config

PREFIX = "afmi-test"


def redis_config(url: str) -> Config:
    table = {"url": url, "prefix": PREFIX, "chunk_bytes": 64 * 1024, "inline_bytes": 4096}
    return Config.from_dict({"channels": {"redis": table}})


def s3_config(s3) -> Config:
    table = {**s3.config(PREFIX), "poll_min": 0.002, "poll_max": 0.05}
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
