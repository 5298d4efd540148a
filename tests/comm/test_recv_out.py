"""``recv(out=)`` / ``irecv(out=)``: point-to-point receives into the caller's array."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import afmi

launch = functools.partial(afmi.launch_local, timeout=60)
BIG = 1 << 19  # float64 elements: 4 MiB, far above the direct link's staging area


@pytest.mark.parametrize("channel", ["local", "direct"])
async def test_posted_irecv_out_receives_in_place(channel):
    async def main(comm):
        if comm.rank == 1:
            out = np.zeros(BIG)
            req = comm.irecv(0, tag=3, out=out)
            await comm.barrier()  # posted before rank 0 sends
            got = await req
            assert got is out and np.array_equal(out, np.arange(BIG, dtype=np.float64))
            assert req.status.source == 0 and req.status.tag == 3
            # Arriving first (unexpected), the message is copied into out instead.
            await comm.barrier()
            await comm.barrier()
            status = afmi.Status()
            again = await comm.recv(0, status=status, out=out)
            assert again is out and np.array_equal(out, -np.arange(BIG, dtype=np.float64))
            return comm.endpoint.channels[channel].stats()["received_in_place"]
        await comm.barrier()
        await comm.send(np.arange(BIG, dtype=np.float64), 1, tag=3)
        await comm.barrier()
        await comm.send(-np.arange(BIG, dtype=np.float64), 1)
        await comm.barrier()
        return None

    results = await launch(main, 2, channel=channel)
    assert results[1] == 1  # the posted one landed in place; the unexpected one was copied


async def test_recv_out_refuses_what_does_not_fit():
    async def main(comm):
        if comm.rank == 0:
            await comm.send(np.zeros(3, np.int32), 1)
            await comm.send("text", 1)
            return None
        with pytest.raises(afmi.ArgumentError, match="C-contiguous"):
            await comm.recv(0, out=np.zeros(6)[::2])
        with pytest.raises(afmi.ArgumentError, match="numpy array"):
            await comm.recv(0, out=bytearray(3))
        with pytest.raises(afmi.ArgumentError, match=r"does not fit out=.*consumed"):
            await comm.recv(0, out=np.zeros(3, np.float64))
        with pytest.raises(afmi.ArgumentError, match="does not fit"):
            await comm.recv(0, out=np.zeros(3))
        return comm.endpoint.engine.unexpected_count()

    assert (await launch(main, 2))[1] == 0
