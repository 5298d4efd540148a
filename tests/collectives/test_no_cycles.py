"""No operation leaves reference cycles behind.

Received memory returns to the receive pool (:mod:`afmi.wire.pool`) when its
reference count says nobody holds it. An object cycle that reaches a received
buffer (say a posted receive and the message that landed in its buffers,
pointing at each other) keeps that memory until the garbage collector runs,
and meanwhile every call takes fresh memory: a 16 MiB ring allreduce without
``out=`` across 4 processes took 53 ms a call with such a cycle and 23 ms
without it. These tests run every algorithm of every collective, the
nonblocking calls and receives into ``out=`` with the collector off, and require
that collecting the objects made meanwhile (the youngest generation) finds
nothing.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import afmi
from afmi.collectives import registry
from afmi.config import Config
from afmi.wire.pool import POOL_MIN_BYTES

launch = functools.partial(afmi.launch_local, timeout=120)
SIZE = 4
#: float64 elements per rank: 1 MiB, so payloads take pooled memory and the ring
#: and recursive doubling receive in place.
N = 1 << 17
#: Algorithms that run only on their own channel: run here on that channel only.
CHANNEL_BOUND = {"redis_counter"}


def calls(comm: afmi.Communicator) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each collective on arrays (sequences of arrays where it takes one)."""
    x = np.full(N, float(comm.rank + 1))
    parts = [np.full(N // SIZE, float(i)) for i in range(SIZE)]
    return {
        "barrier": lambda: comm.barrier(),
        "bcast": lambda: comm.bcast(x),
        "gather": lambda: comm.gather(x),
        "scatter": lambda: comm.scatter(parts if comm.rank == 0 else None),
        "allgather": lambda: comm.allgather(x),
        "alltoall": lambda: comm.alltoall(parts),
        "reduce": lambda: comm.reduce(x),
        "allreduce": lambda: comm.allreduce(x),
        "reduce_scatter": lambda: comm.reduce_scatter(x),
        "scan": lambda: comm.scan(x),
        "exscan": lambda: comm.exscan(x),
    }


@contextmanager
def collector_off() -> Iterator[None]:
    # Only the youngest generation is collected, here and after the calls: with the
    # collector off, every object the calls make stays in it, so a cycle among them
    # is found there, and a full collection of the whole suite's heap took about a
    # third of a second each time.
    gc.collect(0)
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def collect() -> tuple[int, int]:
    """Run the collector: how many objects it found in cycles, and how many of them
    were buffers of :data:`~afmi.wire.pool.POOL_MIN_BYTES` or more (received memory
    a cycle held)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect(0)
        big = 0
        for obj in gc.garbage:
            if isinstance(obj, (np.ndarray, memoryview)):
                big += obj.nbytes >= POOL_MIN_BYTES
            elif isinstance(obj, (bytes, bytearray)):
                big += len(obj) >= POOL_MIN_BYTES
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return found, big


def cases(channel: str) -> list[tuple[str, str]]:
    return [
        (a.collective, a.name)
        for a in registry.algorithms()
        if a.name not in CHANNEL_BOUND or channel in (a.channels or ())
    ]


def config(channel: str, request: pytest.FixtureRequest) -> Config | None:
    """Where Redis and S3 are (private servers when none is reachable); None elsewhere."""
    if channel == "redis":
        url = request.getfixturevalue("redis_url")
        table = {"url": url, "prefix": "afmi-test-cycles"}
    elif channel == "s3":
        table = {**request.getfixturevalue("s3").config("afmi-test-cycles"), "poll_min": 0.002}
    else:
        return None
    return Config.from_dict({"channels": {channel: table}})


@pytest.mark.parametrize("channel", ["local", "direct", "redis"])
async def test_no_collective_algorithm_leaves_cycles(channel, request):
    async def main(comm: afmi.Communicator) -> dict[str, int]:
        found: dict[str, int] = {}
        for collective, name in cases(channel):
            call = calls(comm)[collective]
            with registry.forced(**{collective: name}):
                await call()  # warm: links, pool slabs, caches
                await comm.barrier()
                with collector_off():
                    await comm.barrier()
                    for _ in range(3):
                        result = await call()
                        del result
                    await comm.barrier()
                    found[f"{collective}/{name}"] = gc.collect(0)
        return found

    results = await launch(main, SIZE, channel=channel, config=config(channel, request))
    for rank, found in enumerate(results):
        assert len(found) == len(cases(channel))
        # the ranks share one process and one collector, so a cycle made by any
        # rank shows up on whichever rank collects first: report all of them
        cyclic = {case: n for case, n in found.items() if n}
        assert not cyclic, f"rank {rank}: objects left in cycles after these calls: {cyclic}"


@pytest.mark.parametrize("channel", ["local", "direct", "redis", "s3"])
async def test_receives_into_out_leave_no_cycles(channel, request):
    # On S3, aiobotocore leaves cycles of its own behind every request (response
    # parsers, and the connection moto closes after each): there, no received buffer
    # may be among them.
    async def main(comm: afmi.Communicator) -> dict[str, tuple[int, int]]:
        x = np.arange(N, dtype=np.float64) + comm.rank
        out = np.empty_like(x)
        found: dict[str, tuple[int, int]] = {}
        for way in ("recv", "irecv", "iallreduce"):
            for warm in (True, False):  # a first call makes what later calls reuse
                await comm.barrier()
                with collector_off():
                    for _ in range(1 if warm else 3):
                        if way == "iallreduce":
                            await comm.iallreduce(x, out=out)
                        elif comm.rank == 0:
                            await comm.send(x, 1)
                        elif comm.rank == 1:
                            if way == "recv":
                                await comm.recv(0, out=out)
                            else:
                                await comm.irecv(0, out=out)
                            assert out[1] == 1.0
                    await comm.barrier()
                    found[way] = collect()
        return found

    for rank, found in enumerate(
        await launch(main, SIZE, channel=channel, config=config(channel, request))
    ):
        assert set(found) == {"recv", "irecv", "iallreduce"}
        for way, (objects, buffers) in found.items():
            assert buffers == 0, f"rank {rank}, {way}: {buffers} large buffers held in cycles"
            if channel != "s3":
                assert objects == 0, f"rank {rank}, {way}: {objects} objects left in cycles"


@pytest.mark.parametrize("channel", ["local", "direct"])
async def test_nonblocking_calls_leave_no_cycles(channel):
    async def main(comm: afmi.Communicator) -> dict[str, int]:
        x = np.full(N, float(comm.rank + 1))
        parts = [np.full(N // SIZE, float(i)) for i in range(SIZE)]
        right, left = (comm.rank + 1) % SIZE, (comm.rank - 1) % SIZE

        def start() -> list[afmi.Request[Any]]:
            return [
                comm.ibarrier(),
                comm.ibcast(x),
                comm.igather(x),
                comm.iscatter(parts if comm.rank == 0 else None),
                comm.iallgather(x),
                comm.ialltoall(parts),
                comm.ireduce(x),
                comm.iallreduce(x),
                comm.ireduce_scatter(x),
                comm.iscan(x),
                comm.iexscan(x),
                comm.irecv(left, tag=5),
                comm.isend(x, right, tag=5),
            ]

        found: dict[str, int] = {}
        for warm in (True, False):
            await comm.barrier()
            with collector_off():
                results = await afmi.waitall(start())
                assert results[7][0] == SIZE * (SIZE + 1) / 2
                del results
                done = False
                reqs = start()
                while not done:
                    done, results = afmi.testall(reqs)
                    await asyncio.sleep(0)
                del reqs, results
                await comm.barrier()
                found["warm" if warm else "calls"] = gc.collect(0)
        return found

    for rank, found in enumerate(await launch(main, SIZE, channel=channel)):
        assert found["calls"] == 0, f"rank {rank}: {found['calls']} objects left in cycles"


async def test_a_ring_allreduce_without_out_reuses_its_result_memory():
    # what the cycle cost: every call but the first finds the previous result's
    # memory free, with the collector off (so refcounts alone free it)
    from afmi.wire.pool import current_pool

    async def main(comm: afmi.Communicator) -> tuple[int, int]:
        x = np.full(4 * N, 1.0)
        with registry.forced(allreduce="ring"):
            await comm.allreduce(x)
            await comm.barrier()
            pool = current_pool()
            assert pool is not None
            with collector_off():
                before = pool.stats()["allocated"]
                for _ in range(6):
                    result = await comm.allreduce(x)
                    assert result[0] == SIZE
                    del result
                await comm.barrier()
                return before, pool.stats()["allocated"]

    for before, after in await launch(main, SIZE, channel="local"):
        assert after - before <= SIZE, (before, after)  # a slab per rank at most
