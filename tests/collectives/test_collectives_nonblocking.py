"""Nonblocking collectives: many in flight on one communicator, on split/dup, with compute."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

import afmi
from afmi.collectives import registry

launch = functools.partial(afmi.launch_local, timeout=60)


def _compute(n: int = 20000) -> float:
    a = np.arange(n, dtype=np.float64)
    return float(np.sqrt(a).sum())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
async def test_many_nonblocking_in_flight_overlapped_with_compute(size):
    big = 300_000  # float64: above the ring threshold, so iallreduce takes the ring

    async def main(comm):
        r = comm.rank
        x = np.full(big, r + 1.0)
        reqs = [
            comm.iallreduce(x),
            comm.ibcast({"from": size - 1} if r == size - 1 else None, root=size - 1),
            comm.iallgather(r * 10),
            comm.ireduce(r, op=afmi.MAX, root=0),
            comm.iscan(f"{r}", op=afmi.Op(lambda a, b: a + b, commutative=False)),
            comm.iexscan(r),
            comm.igather(-r, root=size // 2),
            comm.iscatter(list(range(size)) if r == 0 else None),
            comm.ialltoall([(r, i) for i in range(size)]),
            comm.ireduce_scatter(np.arange(2 * size) * (r + 1)),
            comm.ibarrier(),
            comm.iallreduce(r, op=afmi.SUM),
        ]
        # compute while they progress (each compute slice yields to the loop)
        acc = 0.0
        for _ in range(5):
            acc += _compute()
            await asyncio.sleep(0)
        # complete them in an order unlike the start order
        last = await reqs[-1]
        results = await afmi.waitall(reqs[:-1])
        total = size * (size + 1) / 2
        assert np.array_equal(results[0], np.full(big, total))
        assert np.array_equal(x, np.full(big, r + 1.0))  # input untouched
        assert results[1] == {"from": size - 1}
        assert results[2] == [10 * i for i in range(size)]
        assert results[3] == (size - 1 if r == 0 else None)
        assert results[4] == "".join(str(i) for i in range(r + 1))
        assert results[5] == (None if r == 0 else sum(range(r)))
        assert results[6] == ([-i for i in range(size)] if r == size // 2 else None)
        assert results[7] == r
        assert results[8] == [(i, r) for i in range(size)]
        want = np.array_split(np.arange(2 * size) * (size * (size + 1) // 2), size)[r]
        assert np.array_equal(results[9], want)
        assert results[10] is None
        assert last == size * (size - 1) // 2
        assert acc > 0
        await comm.barrier()
        assert comm.endpoint.engine.unexpected_count() == 0
        assert comm.endpoint.engine.posted_count() == 0

    await launch(main, size)


@pytest.mark.parametrize("algorithm", ["ring", "recursive_doubling", "linear"])
async def test_concurrent_allreduces_on_world_split_and_dup_never_cross(algorithm):
    size = 6

    async def main(comm):
        r = comm.rank
        half = await comm.split(r % 2, key=-r)  # reversed order inside each half
        twin = await comm.dup()
        assert half.size == 3 and half.rank == 2 - r // 2
        with registry.forced(allreduce=algorithm):
            reqs = []
            for k in range(3):
                reqs.append(comm.iallreduce(np.full(1000, 1 + k)))
                reqs.append(half.iallreduce(np.full(1000, 100 * (r + 1) + k)))
                reqs.append(twin.iallreduce(np.full(1000, 10_000 + k)))
            # a user message with tag 0 on each communicator must not match any collective
            await comm.send("world", (r + 1) % size, tag=0)
            await half.send("half", (half.rank + 1) % half.size, tag=0)
            out = await afmi.waitall(reqs)
        assert await comm.recv(tag=0) == "world"
        assert await half.recv(tag=0) == "half"
        members = [q for q in range(size) if q % 2 == r % 2]
        for k in range(3):
            assert np.array_equal(out[3 * k], np.full(1000, size * (1 + k)))
            want_half = sum(100 * (q + 1) + k for q in members)
            assert np.array_equal(out[3 * k + 1], np.full(1000, want_half))
            assert np.array_equal(out[3 * k + 2], np.full(1000, size * (10_000 + k)))
        for c in (comm, half, twin):
            await c.barrier()
        assert comm.endpoint.engine.unexpected_count() == 0

    await launch(main, size)


async def test_cancelled_icollective_leaves_the_communicator_usable_for_p2p():
    async def main(comm):
        if comm.rank == 0:
            req = comm.iallreduce(1)  # rank 1 never joins: it can only be cancelled
            await asyncio.sleep(0.01)
            assert req.cancel()
            with pytest.raises(asyncio.CancelledError):
                await req
            await asyncio.sleep(0)
            assert comm.endpoint.engine.posted_count() == 0  # its receive was withdrawn
            assert not comm.endpoint._tasks  # and its task is gone
        await comm.send(comm.rank, 1 - comm.rank, tag=5)
        return await comm.recv(1 - comm.rank, tag=5)

    assert await launch(main, 2) == [1, 0]
