"""The loader: plan-order delivery, peers, tiers, eviction, backpressure, cancellation, errors."""

import asyncio
import collections
import os

import numpy as np
import pytest

import afmi
from afmi.data import (
    AccessPlan,
    ArraySource,
    DirectorySource,
    Loader,
    S3Source,
    SampleReadError,
    SourceCost,
    SourceModel,
    default_collate,
)

SLOW_ORIGIN = SourceModel({"origin": SourceCost(latency=0.01, bandwidth=1e8)})


class CountingSource(ArraySource):
    """An in-memory origin that counts reads per sample and can be slow."""

    def __init__(self, array, delay=0.0):
        super().__init__(array)
        self.delay = delay
        self.reads = collections.Counter()

    async def read(self, sample):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.reads[sample] += 1
        return await super().read(sample)


def dataset(n, width=4):
    """Sample i is the row [i, i, ...] so a delivered sample names itself."""
    return np.repeat(np.arange(n, dtype=np.int64)[:, None], width, axis=1)


def ids(batch):
    return [int(s[0]) for s in batch]


def other_tasks():
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_single_rank_delivers_in_plan_order():
    src = CountingSource(dataset(50))
    plan = AccessPlan(50, 1, 8, 2, seed=3, drop_last=False)
    async with Loader(src, plan, memory_bytes=50 * 32) as loader:
        for e in range(2):
            got = [ids(b) async for b in loader.epoch(e)]
            assert got == [b.tolist() for b in plan.batches(0, e)]
    st = loader.stats()
    assert st["epochs"][0]["samples"]["origin"] == 50
    assert st["epochs"][1]["samples"]["memory"] == 50  # everything fit at home
    assert st["epochs"][1]["bytes"]["memory"] == 50 * 32 and st["total"]["bytes"]["origin"] == 1600
    assert st["epochs"][0]["batches"] == plan.batches_per_epoch
    assert st["placement"]["home_samples"] == [50] and st["placement"]["coverage"] == 1.0
    assert sum(src.reads.values()) == 50 and set(src.reads.values()) == {1}


async def test_collated_arrays_for_one_rank_of_many():
    src = ArraySource(dataset(40, width=3).astype(np.float32))
    plan = AccessPlan(40, 3, 9, 1, seed=1)
    async with Loader(src, plan, rank=2, collate=True) as loader:
        batches = [b async for b in loader.epoch(0)]
    assert len(batches) == plan.batches_per_epoch
    for b, share in zip(batches, plan.batches(2, 0)):
        assert isinstance(b, np.ndarray) and b.shape == (len(share), 3) and b.dtype == np.float32
        assert b[:, 0].astype(int).tolist() == share.tolist()


def test_default_collate():
    a = np.ones((2, 3))
    assert default_collate([a, a]).shape == (2, 2, 3)
    assert default_collate([1, 2, 3]).tolist() == [1, 2, 3]
    xs, ys = default_collate([(a, 1), (a, 2)])
    assert xs.shape == (2, 2, 3) and ys.tolist() == [1, 2]
    assert default_collate([b"a", b"b"]) == [b"a", b"b"]
    assert default_collate([]) == []


async def test_empty_shares_come_out_as_empty_batches():
    plan = AccessPlan(50, 4, 5, 1, seed=3)  # nlb = 2: rank 3 gets nothing
    async with Loader(ArraySource(dataset(50)), plan, rank=3, collate=True) as loader:
        batches = [b async for b in loader.epoch(0)]
    assert len(batches) == plan.batches_per_epoch and all(b == [] for b in batches)


def _run_peers(
    size,
    epochs,
    memory_per_rank,
    channel="local",
    config=None,
    barrier=True,
    model=SLOW_ORIGIN,
    delays=None,
    peer_wait=1.0,
):
    F = 120
    data = dataset(F)
    sources = [CountingSource(data, delay=(delays or [0.0] * size)[r]) for r in range(size)]

    async def main(comm):
        src = sources[comm.rank]
        plan = AccessPlan(F, comm.size, 12, epochs, seed=9, drop_last=False)
        delivered = []
        # a user message with the loader's request tag: the loader must not take it
        if comm.rank == 0:
            await comm.send("user data", dest=comm.size - 1, tag=1)
        async with Loader(
            src,
            plan,
            comm=comm,
            memory_bytes=memory_per_rank,
            model=model,
            prefetch=16,
            peer_wait=peer_wait,
        ) as loader:
            for e in range(epochs):
                async for batch in loader.epoch(e):
                    delivered.append(ids(batch))
                if barrier:
                    await comm.barrier()
        if comm.rank == comm.size - 1:
            assert await comm.recv(source=0, tag=1, timeout=5) == "user data"
        peers = loader._peers
        assert peers._server is None and not peers._tasks  # the peer service is gone
        expected = [b.tolist() for e in range(epochs) for b in plan.batches(comm.rank, e)]
        return delivered == expected, loader.stats(), None

    results = afmi.run_local(main, size, channel=channel, config=config, timeout=60)
    return results, sources, F


def test_peers_over_local_channel_read_the_origin_once_per_sample():
    results, sources, F = _run_peers(4, 3, memory_per_rank=32 * 40)
    assert all(ok for ok, _, _ in results)
    stats = [st for _, st, _ in results]
    reads = collections.Counter()
    for src in sources:
        reads.update(src.reads)
    assert set(reads) == set(range(F)) and set(reads.values()) == {1}  # origin: once each
    peer = sum(st["total"]["samples"]["peer"] for st in stats)
    served = sum(st["served"]["samples"] for st in stats)
    assert peer > 0 and peer == served
    assert all(st["total"]["peer_misses"] == 0 for st in stats)
    assert all(st["placement"]["coverage"] == 1.0 for st in stats)
    assert sum(st["total"]["origin_requests"] for st in stats) == F
    # requests are batched: fewer messages than samples
    assert sum(st["total"]["peer_requests"] for st in stats) < peer


def test_peers_without_barriers_still_deliver_everything():
    results, sources, F = _run_peers(3, 2, memory_per_rank=32 * 50, barrier=False)
    assert all(ok for ok, _, _ in results)
    origin = sum(sum(s.reads.values()) for s in sources)
    misses = sum(st["total"]["peer_misses"] for _, st, _ in results)
    assert origin == F + misses  # a miss ("not there yet") costs exactly one origin read


def test_not_there_yet_falls_back_to_the_origin():
    # rank 0 reads its origin slowly; rank 1 runs ahead into epoch 2 and asks rank 0
    # for samples it has not fetched yet: after peer_wait the answer is "not there"
    results, sources, F = _run_peers(
        2, 2, memory_per_rank=32 * 70, barrier=False, delays=[0.05, 0.0], peer_wait=0.01
    )
    assert all(ok for ok, _, _ in results)
    misses = results[1][1]["total"]["peer_misses"]
    assert misses > 0
    assert results[0][1]["served"]["misses"] >= misses
    origin = sum(sum(s.reads.values()) for s in sources)
    assert origin == F + sum(st["total"]["peer_misses"] for _, st, _ in results)


def test_one_rank_leaving_an_epoch_early_keeps_serving_the_others():
    F = 96
    data = dataset(F)

    async def main(comm):
        plan = AccessPlan(F, comm.size, 12, 2, seed=3)
        async with Loader(
            ArraySource(data), plan, comm=comm, memory_bytes=32 * 40, model=SLOW_ORIGIN
        ) as loader:
            async for _ in loader.epoch(0):
                pass
            await comm.barrier()
            got = []
            async for batch in loader.epoch(1):
                got.append(ids(batch))
                if comm.rank == 0:
                    break  # rank 0 stops early; the others still read its samples
            st = loader.stats()
        full = [b.tolist() for b in plan.batches(comm.rank, 1)]
        return got == (full[:1] if comm.rank == 0 else full), st

    results = afmi.run_local(main, 3, timeout=60)
    assert all(ok for ok, _ in results)
    assert results[0][1]["served"]["samples"] > 0


def test_a_failing_rank_fails_the_job_with_the_read_error(tmp_path):
    for i in range(24):
        (tmp_path / f"{i:02d}").write_bytes(b"q" * 8)
    source = DirectorySource(tmp_path)
    os.unlink(tmp_path / "07")

    async def main(comm):
        plan = AccessPlan(24, comm.size, 4, 1, seed=0)
        async with Loader(source, plan, comm=comm, memory_bytes=64) as loader:
            async for _ in loader.epoch(0):
                pass

    with pytest.raises(afmi.RankFailedError) as info:
        afmi.run_local(main, 2, timeout=30)
    assert isinstance(info.value.error, SampleReadError) and info.value.error.sample == 7


def test_model_keeps_reads_off_a_slower_dearer_peer():
    # peers over the s3 channel cost two object-store round trips: the origin wins
    model = SLOW_ORIGIN.with_cost("peer", latency=0.08, request_price=6e-6)
    results, sources, F = _run_peers(3, 3, memory_per_rank=32 * 60, model=model)
    assert all(ok for ok, _, _ in results)
    assert all(st["total"]["samples"]["peer"] == 0 for _, st, _ in results)
    assert all(st["total"]["peer_requests"] == 0 for _, st, _ in results)
    home_hits = sum(st["total"]["samples"]["memory"] for _, st, _ in results)
    assert sum(sum(s.reads.values()) for s in sources) == 3 * F - home_hits


def test_tiny_capacities_read_the_origin_every_time():
    results, sources, F = _run_peers(2, 2, memory_per_rank=1)
    assert all(ok for ok, _, _ in results)
    assert sum(sum(s.reads.values()) for s in sources) == 2 * F
    assert all(st["total"]["samples"]["peer"] == 0 for _, st, _ in results)


@pytest.mark.parametrize("channel", ["redis", "direct"])
def test_peers_over_a_real_channel(channel, request):
    pytest.importorskip(f"afmi.channels.{channel}")
    config = None
    if channel == "redis":
        url = request.getfixturevalue("redis_url")
        config = {"channels": {"redis": {"url": url}}}
    results, sources, F = _run_peers(2, 2, memory_per_rank=32 * 70, channel=channel, config=config)
    assert all(ok for ok, _, _ in results)
    assert sum(st["total"]["samples"]["peer"] for _, st, _ in results) > 0
    assert sum(sum(s.reads.values()) for s in sources) == F


async def test_spare_capacity_evicts_by_next_use():
    # rank 0 of 4: its home samples leave spare room for samples it reads again soon
    F = 200
    src = CountingSource(dataset(F))
    plan = AccessPlan(F, 4, 20, 4, seed=2, drop_last=False)
    cap = 32 * 60
    async with Loader(src, plan, rank=0, memory_bytes=cap) as loader:
        homes = loader.placement.homes(0, 0).size
        assert 0 < homes * 32 < cap
        for e in range(4):
            got = []
            async for batch in loader.epoch(e):
                got.append(ids(batch))
                assert loader.tiers[0].used <= cap
            assert got == [b.tolist() for b in plan.batches(0, e)]
    st = loader.stats()["total"]
    assert st["evictions"] > 0
    accesses = int(plan.access_counts(0).sum())
    home_hits = sum(int(plan.access_counts(0)[s]) - 1 for s in loader.placement.homes(0, 0))
    assert st["samples"]["memory"] > home_hits  # the next-use cache adds hits
    assert st["samples"]["origin"] == accesses - st["samples"]["memory"]


async def test_disk_tier_holds_what_memory_cannot(tmp_path):
    src = CountingSource(dataset(60))
    plan = AccessPlan(60, 1, 10, 3, seed=4)
    async with Loader(
        src, plan, memory_bytes=32 * 20, disk_bytes=32 * 40, disk_dir=str(tmp_path)
    ) as loader:
        for e in range(3):
            got = [ids(b) async for b in loader.epoch(e)]
            assert got == [b.tolist() for b in plan.batches(0, e)]
        assert any(tmp_path.iterdir())
    st = loader.stats()
    assert st["epochs"][1]["samples"]["memory"] == 20 and st["epochs"][1]["samples"]["disk"] == 40
    assert st["epochs"][2]["samples"]["origin"] == 0
    assert list(tmp_path.iterdir()) == []  # the disk tier's directory is gone


async def test_backpressure_bounds_the_window():
    src = CountingSource(dataset(100))
    plan = AccessPlan(100, 1, 5, 1, seed=0)
    async with Loader(src, plan, prefetch=7) as loader:
        it = loader.epoch(0)
        await it.__anext__()
        await asyncio.sleep(0.1)  # a slow consumer
        assert sum(src.reads.values()) <= 5 + 7
        await it.__anext__()
        await asyncio.sleep(0.1)
        assert 10 < sum(src.reads.values()) <= 10 + 7
        await it.aclose()


async def test_break_stops_background_fetches():
    src = CountingSource(dataset(100), delay=0.005)
    plan = AccessPlan(100, 1, 5, 2, seed=0)
    before = other_tasks()
    async with Loader(src, plan, prefetch=20) as loader:
        async for _ in loader.epoch(0):
            break
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert other_tasks() == before  # the iterator's tasks are gone
        reads = sum(src.reads.values())
        await asyncio.sleep(0.05)
        assert sum(src.reads.values()) == reads  # nothing fetches any more
        got = [ids(b) async for b in loader.epoch(1)]  # the loader stays usable
        assert got == [b.tolist() for b in plan.batches(0, 1)]
    assert other_tasks() == before


async def test_cancelling_the_consumer_leaves_nothing_running():
    src = CountingSource(dataset(100), delay=0.02)
    plan = AccessPlan(100, 1, 10, 1, seed=0)
    before = other_tasks()
    async with Loader(src, plan, prefetch=30) as loader:
        it = loader.epoch(0)

        async def consume():
            async for _ in it:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert it.pending() == 0
        assert other_tasks() == before


async def test_unreadable_sample_names_sample_and_source(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.bin").write_bytes(b"z" * 8)
    src = DirectorySource(tmp_path)
    plan = AccessPlan(20, 1, 4, 1, seed=0)
    victim = int(plan.batch(0, 0, 2)[1])
    os.unlink(tmp_path / f"{victim:02d}.bin")
    before = other_tasks()
    async with Loader(src, plan, prefetch=8) as loader:
        got = []
        with pytest.raises(SampleReadError) as info:
            async for batch in loader.epoch(0):
                got.append(batch)
        assert len(got) == 2  # the batches before the bad one came through in order
        assert f"sample {victim}" in str(info.value)
        assert str(tmp_path / f"{victim:02d}.bin") in str(info.value)
        assert other_tasks() == before


async def test_manifest_size_mismatch_is_an_error(tmp_path):
    (tmp_path / "a").write_bytes(b"1234")
    src = DirectorySource(tmp_path)
    (tmp_path / "a").write_bytes(b"12")  # changed after the manifest was made
    plan = AccessPlan(1, 1, 1, 1, seed=0)
    async with Loader(src, plan) as loader:
        with pytest.raises(SampleReadError, match="got 2 bytes, the manifest says 4"):
            async for _ in loader.epoch(0):
                pass


async def test_loader_argument_errors(tmp_path):
    src = ArraySource(dataset(10))
    with pytest.raises(afmi.ArgumentError, match="the source has 10 samples but the plan has 11"):
        Loader(src, AccessPlan(11, 1, 2, 1, 0))
    plan = AccessPlan(10, 1, 2, 1, 0)
    with pytest.raises(afmi.ArgumentError, match="needs disk_dir"):
        Loader(src, plan, disk_bytes=10)
    with pytest.raises(afmi.ArgumentError, match="prefetch must be"):
        Loader(src, plan, prefetch=0)
    with pytest.raises(afmi.ArgumentError, match="not started"):
        Loader(src, plan).epoch(0)
    async with Loader(src, plan) as loader:
        with pytest.raises(afmi.ArgumentError, match="epoch=3 is out of range"):
            loader.epoch(3)
    with pytest.raises(afmi.ArgumentError, match="closed"):
        loader.epoch(0)


async def test_calibrate_uses_measured_reads():
    src = CountingSource(dataset(30), delay=0.002)
    plan = AccessPlan(30, 1, 5, 1, seed=0)
    async with Loader(src, plan) as loader:
        async for _ in loader.epoch(0):
            pass
        model = loader.calibrate()
    assert model.costs["origin"].latency >= 0.001  # measured, not the S3 default of 40 ms
    assert model.costs["origin"].latency < 0.04


async def test_origin_on_a_real_s3_server(s3):
    from aiobotocore.session import get_session

    F = 48
    rows = dataset(F, width=16).astype(np.int32)
    async with get_session().create_client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region
    ) as client:
        for i in range(F):
            await client.put_object(Bucket=s3.bucket, Key=f"ld/{i:04d}", Body=rows[i].tobytes())

    async def main(comm):
        src = await S3Source.open(
            s3.bucket, "ld/", endpoint_url=s3.endpoint_url, region=s3.region, max_concurrency=8
        )
        plan = AccessPlan(F, comm.size, 8, 2, seed=5)
        out = []
        try:
            async with Loader(src, plan, comm=comm, memory_bytes=64 * 30) as loader:
                for e in range(2):
                    async for batch in loader.epoch(e):
                        out.append([int(np.frombuffer(b, np.int32)[0]) for b in batch])
                    await comm.barrier()
        finally:
            await src.aclose()
        expected = [b.tolist() for e in range(2) for b in plan.batches(comm.rank, e)]
        return out == expected, loader.stats()

    results = await afmi.launch_local(main, 2, timeout=60)
    assert all(ok for ok, _ in results)
    origin = sum(st["total"]["samples"]["origin"] for _, st in results)
    assert origin == F  # S3 is read once per sample; epoch 2 comes from memory and the peer
    assert sum(st["total"]["origin_requests"] for _, st in results) == F
    assert sum(st["total"]["samples"]["peer"] for _, st in results) > 0
