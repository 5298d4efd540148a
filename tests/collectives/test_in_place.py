"""Receiving straight into posted buffers: ``allreduce(out=)`` and the ring's landing path.

The ring posts its receives into the result array before the data arrives;
channels that can (local, direct) then copy each segment straight into place.
These tests check the results, that messages really landed in place, and that
a receive withdrawn while its data was landing never leaks the caller's buffer.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import afmi
from afmi.collectives import registry, ring
from afmi.wire.message import Message

launch = functools.partial(afmi.launch_local, timeout=60)
SEG = ring.SEGMENT_BYTES // 8  # float64 elements per segment


@pytest.mark.parametrize("channel", ["local", "direct"])
@pytest.mark.parametrize("size", [2, 3])
async def test_ring_allreduce_receives_in_place_and_writes_out(channel, size):
    N = size * 2 * SEG  # two whole segments per chunk (small frames are always copied)

    async def main(comm):
        x = np.arange(N, dtype=np.float64) + comm.rank
        out = np.full(N, np.nan)
        want = sum(np.arange(N, dtype=np.float64) + r for r in range(size))
        with registry.forced(allreduce="ring"):
            for _ in range(2):  # the same out twice, as a training loop would
                got = await comm.allreduce(x, out=out)
                assert got is out
                assert np.array_equal(out, want)
        stats = comm.endpoint.channels[channel].stats()
        await comm.barrier()
        return stats["received_in_place"]

    landed = await launch(main, size, channel=channel)
    # Per call a rank receives 2 (size - 1) chunks, each cut into segments; a segment
    # that arrives before its receive is posted (a rank that starts the call late) is
    # copied instead. Most must land in place.
    per_call = 2 * (size - 1) * 2
    assert all(n > 0 for n in landed), landed
    assert sum(landed) >= size * 2 * per_call // 2, (landed, per_call)


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("algorithm", ["recursive_doubling", "linear", "ring"])
async def test_out_works_with_every_algorithm_and_shape(algorithm, size):
    async def main(comm):
        x = np.arange(12, dtype=np.int64).reshape(3, 4) * (comm.rank + 1)
        out = np.zeros((3, 4), np.int64)
        with registry.forced(allreduce=algorithm):
            got = await comm.allreduce(x, op=afmi.MAX, out=out)
            req = comm.iallreduce(x, out=np.zeros_like(out))
            summed = await req
        assert got is out and np.array_equal(out, np.arange(12).reshape(3, 4) * size)
        assert np.array_equal(summed, np.arange(12).reshape(3, 4) * sum(range(1, size + 1)))

    await launch(main, size)


async def test_bad_out_is_refused_with_a_clear_error():
    async def main(comm):
        x = np.zeros(4)
        for bad, words in [
            (np.zeros(5), "must match x"),
            (np.zeros(4, np.float32), "must match x"),
            (np.zeros(8)[::2], "C-contiguous"),
            (x, "share memory"),
            ([0.0] * 4, "numpy arrays"),
        ]:
            with pytest.raises(afmi.ArgumentError, match=words):
                await comm.allreduce(x, out=bad)
        await comm.barrier()  # nothing was started: the ranks are still in step

    await launch(main, 2)


@pytest.mark.parametrize("withdrawn", ["before", "after"])
async def test_a_message_landing_in_a_withdrawn_receive_gets_its_own_buffers(withdrawn):
    """The receive is withdrawn while its data lands, before or after the engine knows."""

    async def main(comm):
        ep = comm.endpoint
        if comm.rank == 0:
            target = bytearray(8)
            ticket = ep.post(99, 1, 5, [memoryview(target)])
            assert ep._destination(99, 1, 5, 0, [8]) is ticket
            assert ep._destination(99, 1, 5, 0, [7]) is None  # sizes must match
            # The channel starts receiving into the ticket's buffer ...
            msg = Message(99, 1, 5, 0, b"\xc0", list(ticket.into))
            msg.landed = ticket
            target[:] = b"payload!"
            # ... and the receiver gives up before the message is complete: either the
            # engine already withdrew the receive, or only its future is cancelled yet.
            if withdrawn == "before":
                ep.engine.cancel(ticket)
            ticket.waiter.cancel()
            ep._on_message(msg)
            assert msg.landed is None and msg.buffers[0] is not ticket.into[0]
            target[:] = bytes(8)  # the caller reuses its buffer
            again = ep.post(99, 1, 5)
            got = await ep.arrival(again)
            assert bytes(got.buffers[0]) == b"payload!"
        await comm.barrier()

    await launch(main, 2)


@pytest.mark.parametrize("algorithm", ["recursive_doubling", "ring"])
async def test_out_with_a_fortran_ordered_input(algorithm):
    # the ring flattens x.T for such an input and cannot reduce into out: the result
    # is copied in, and out is what the call returns either way
    async def main(comm):
        x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) + comm.rank)
        out = np.zeros((3, 4))
        with registry.forced(allreduce=algorithm):
            got = await comm.allreduce(x, out=out)
        assert got is out
        assert np.array_equal(out, sum(np.arange(12.0).reshape(3, 4) + r for r in range(3)))

    await launch(main, 3)


def test_a_fold_writes_into_received_arrays_and_never_the_callers():
    from afmi.collectives.linear import fold

    def fresh():
        mine = np.arange(5, dtype=np.float64)
        return mine, [mine, np.full(5, 10.0), np.full(5, 100.0)]

    # the caller's input first (a linear root 0): the sum lands in the first received array
    mine, values = fresh()
    got = fold(afmi.SUM, values, 0)
    assert got is values[1] and np.array_equal(got, np.arange(5) + 110.0)
    assert np.array_equal(mine, np.arange(5))  # never written
    # the caller's input in the middle (root 1): into values[0], then on
    mine, values = fresh()
    values[0], values[1] = values[1], values[0]
    got = fold(afmi.MAX, values, 1)
    assert got is values[0] and np.array_equal(got, np.full(5, 100.0))
    assert np.array_equal(mine, np.arange(5))
    # a read-only received array is not written: the op's own result instead
    mine, values = fresh()
    values[1].flags.writeable = False
    got = fold(afmi.SUM, values, 0)
    assert np.array_equal(got, np.arange(5) + 110.0) and np.array_equal(values[1], np.full(5, 10.0))
    # a user op (here not commutative) runs as itself, in rank order, writing nothing
    minus = afmi.Op(lambda a, b: a - b, commutative=False)
    mine, values = fresh()
    got = fold(minus, values, 0)
    assert np.array_equal(got, np.arange(5) - 110.0)
    assert np.array_equal(values[1], np.full(5, 10.0)) and np.array_equal(mine, np.arange(5))
    # without ``mine`` nothing is written at all (a plain left fold)
    mine, values = fresh()
    got = fold(afmi.SUM, values)
    assert got is not values[1] and np.array_equal(values[1], np.full(5, 10.0))


@pytest.mark.parametrize("channel", ["local", "direct"])
@pytest.mark.parametrize("name", ["ring", "recursive_doubling"])
async def test_results_a_rank_keeps_are_never_reused(channel, name):
    # Without out=, results come from the receive pool (afmi.wire.pool): a result held
    # across later calls keeps its values, a dropped one lends its memory.
    n = 3 * 40_000  # 960 kB of float64: pooled, a chunk per rank on 3 ranks

    async def main(comm):
        kept = []
        with registry.forced(allreduce=name):
            for i in range(8):
                got = await comm.allreduce(np.full(n, float(i + comm.rank)))
                assert got[0] == 3 * i + 3 and got[-1] == 3 * i + 3
                if i % 2 == 0:
                    kept.append((3 * i + 3, got[n // 2 :]))
                got[:10] = -1  # a result is the caller's to write
        return all((view == value).all() for value, view in kept)

    assert await launch(main, 3, channel=channel) == [True] * 3
