"""Bad arguments to collectives, and extending the registry."""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

import numpy as np
import pytest

import afmi
from afmi.collectives import registry
from afmi.collectives.base import Algorithm, CollectiveContext, Step

launch = functools.partial(afmi.launch_local, timeout=60)


async def test_bad_arguments_raise_clear_errors_on_the_calling_rank():
    async def main(comm):
        if comm.rank == 0:
            with pytest.raises(afmi.ArgumentError, match="sequence of 3 items"):
                await comm.scatter([1, 2], root=0)
            with pytest.raises(afmi.ArgumentError, match="sequence of 3 items"):
                comm.iscatter(None, root=0)
            with pytest.raises(afmi.ArgumentError, match="item i goes to rank i"):
                await comm.alltoall([1, 2, 3, 4])
            with pytest.raises(afmi.ArgumentError, match="root=3 is out of range"):
                await comm.bcast(1, root=3)
            with pytest.raises(afmi.ArgumentError, match="root=-1 is out of range"):
                await comm.reduce(1, root=-1)
            with pytest.raises(afmi.ArgumentError, match="root="):
                await comm.gather(1, root="0")
            with pytest.raises(afmi.ArgumentError, match="numpy array with at least one"):
                await comm.reduce_scatter(np.array(3))
            with pytest.raises(afmi.ArgumentError, match="numpy array"):
                await comm.reduce_scatter([1, 2, 3])
            with pytest.raises(afmi.ArgumentError, match="op must be"):
                await comm.allreduce(1, op="sum")
        # nothing above consumed a collective slot that the others missed
        return await comm.allreduce(comm.rank + 1)

    assert await launch(main, 3) == [6, 6, 6]


@pytest.mark.parametrize("channel", ["local", "direct"])
@pytest.mark.parametrize(
    ("algorithm", "elements", "message"),
    [
        # small arrays: combined whole, where numpy said only that shapes do not broadcast
        ("recursive_doubling", 3, r"ranks passed arrays float64\[3\] and float64\[4\]"),
        ("linear", 3, r"ranks passed arrays float64"),
        # the ring: a neighbour's segment does not fit this rank's
        ("ring", 1 << 18, r"allreduce: rank \d sent float64\[\d+\] where this rank expected"),
    ],
)
async def test_arrays_of_different_shapes_say_so(channel, algorithm, elements, message):
    async def main(comm):
        with registry.forced(allreduce=algorithm):
            return await comm.allreduce(np.ones(elements + comm.rank % 2))

    with pytest.raises(afmi.RankFailedError) as info:
        await afmi.launch_local(main, 4, channel=channel, timeout=30)
    error = info.value.error
    assert isinstance(error, afmi.ArgumentError), repr(error)
    assert "same shape" in str(error)
    assert re.search(message, str(error)), str(error)


@pytest.mark.parametrize("elements", [1000, 1 << 18])  # combined whole; the ring's segments
async def test_arrays_of_different_dtypes_say_so(elements):
    # small arrays used to be promoted silently while the ring refused them. Same
    # itemsize: ranks whose arrays differ in bytes may choose different algorithms,
    # and then time out as any mismatched collective does
    async def main(comm):
        return await comm.allreduce(np.ones(elements, np.int64 if comm.rank else np.float64))

    with pytest.raises(afmi.RankFailedError) as info:
        await afmi.launch_local(main, 4, channel="local", timeout=30)
    error = info.value.error
    assert isinstance(error, afmi.ArgumentError), repr(error)
    assert "int64" in str(error) and "float64" in str(error), str(error)
    assert "same shape and dtype" in str(error)


async def test_mismatched_collectives_time_out_with_a_hint_and_the_comm_stays_usable():
    async def main(comm):
        if comm.rank == 0:
            # rank 1's gather message (same call number, other collective) must not match
            with pytest.raises(afmi.OperationTimeoutError, match="matching arguments"):
                await comm.bcast(None, root=1, timeout=0.3)
            assert comm.endpoint.engine.posted_count() == 0  # the timed-out receive is withdrawn
        else:
            assert await comm.gather(1, root=0, timeout=0.3) is None  # a leaf only sends
        await comm.send("p2p", 1 - comm.rank, tag=3)
        assert await comm.recv(1 - comm.rank, tag=3) == "p2p"
        # a later collective matches only its own messages, not the stale ones
        return await comm.allgather(comm.rank)

    assert await launch(main, 2) == [[0, 1], [0, 1]]


async def test_unsupported_payload_fails_on_the_root_and_the_comm_stays_usable():
    async def main(comm):
        if comm.rank == 0:
            with pytest.raises(afmi.PayloadTypeError, match="object"):
                await comm.ibcast(object(), root=0)
        else:
            with pytest.raises(afmi.OperationTimeoutError):
                await comm.bcast(None, root=0, timeout=0.3)
        return await comm.allreduce(comm.rank + 1)

    assert await launch(main, 3) == [6, 6, 6]


async def test_forcing_checks_names_and_applicability():
    with pytest.raises(LookupError, match=r"registered: .*'recursive_doubling'"):
        with registry.forced(allreduce="nope"):
            pass

    async def main(comm):
        with registry.forced(allreduce="ring"):
            with pytest.raises(LookupError, match="cannot run these arguments"):
                await comm.allreduce("text", op=afmi.Op(lambda a, b: a + b))
        return await comm.allreduce(1)

    assert await launch(main, 2) == [2, 2]


class ChainBcast(Algorithm):
    """A custom algorithm: the payload walks 0 -> 1 -> ... (root first)."""

    collective = "bcast"
    name = "test_chain"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(size - 1, nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        v = (ctx.rank - root) % ctx.size
        msg = ctx.pack(obj) if v == 0 else await ctx.recv_raw((ctx.rank - 1) % ctx.size)
        if v + 1 < ctx.size:
            await ctx.send_raw(msg, (ctx.rank + 1) % ctx.size)
        return obj if v == 0 else ctx.decode(msg)


async def test_register_a_custom_algorithm_and_chooser():
    algorithm = registry.register(ChainBcast())
    with pytest.raises(ValueError, match="already has an algorithm named 'test_chain'"):
        registry.register(ChainBcast())
    picked: list[str] = []

    def chooser(candidates, size, nbytes, args, ctx):
        choice = next(a for a in candidates if a.name == "test_chain")
        picked.append(choice.name)
        return choice

    previous = registry.set_chooser("bcast", chooser)
    try:

        async def main(comm):
            return await comm.bcast(np.arange(3) if comm.rank == 2 else None, root=2)

        out = await launch(main, 5)
        assert all(np.array_equal(o, np.arange(3)) for o in out)
        assert picked == ["test_chain"] * 5
    finally:
        registry.set_chooser("bcast", previous)
        registry.unregister(algorithm)
    assert "test_chain" not in [a.name for a in registry.algorithms("bcast")]


@pytest.mark.parametrize(
    "collective,name",
    [("allreduce", "ring"), ("allgather", "bruck"), ("bcast", "scatter_allgather")],
)
async def test_a_timed_out_collective_withdraws_every_receive(collective, name):
    async def main(comm):
        if comm.rank != 0:  # rank 0 never joins
            with registry.forced(**{collective: name}):
                with pytest.raises(afmi.OperationTimeoutError):
                    if collective == "allreduce":
                        await comm.allreduce(np.ones(1 << 16), timeout=0.2)
                    elif collective == "allgather":
                        await comm.allgather(comm.rank, timeout=0.2)
                    else:
                        await comm.bcast(None, root=0, timeout=0.2)
            await asyncio.sleep(0)
            assert comm.endpoint.engine.posted_count() == 0
        await comm.send(comm.rank, (comm.rank + 1) % comm.size, tag=1)
        return await comm.recv((comm.rank - 1) % comm.size, tag=1)

    assert await launch(main, 4) == [3, 0, 1, 2]


@pytest.mark.parametrize("collective", ["gather", "alltoall"])
async def test_a_linear_root_that_times_out_withdraws_the_receives_it_posted(collective):
    """The linear gather's root and every linear alltoall rank post all their receives
    before the first wait (no task per receive): a timeout must withdraw every one."""

    async def main(comm):
        if comm.rank in (0, 1):  # ranks 2 and 3 never join
            with registry.forced(**{collective: "linear"}):
                if collective == "gather" and comm.rank == 1:
                    assert await comm.gather(comm.rank, root=0, timeout=0.2) is None
                else:
                    with pytest.raises(afmi.OperationTimeoutError):
                        if collective == "gather":
                            await comm.gather(comm.rank, root=0, timeout=0.2)
                        else:
                            await comm.alltoall(list(range(comm.size)), timeout=0.2)
            await asyncio.sleep(0)
            assert comm.endpoint.engine.posted_count() == 0
        await comm.send(comm.rank, (comm.rank + 1) % comm.size, tag=1)
        return await comm.recv((comm.rank - 1) % comm.size, tag=1)

    assert await launch(main, 4) == [3, 0, 1, 2]


async def test_a_linear_gather_collects_in_rank_order_whatever_order_messages_come():
    async def main(comm):
        # the highest rank sends first: the root's receives match out of their order
        await asyncio.sleep(0.002 * (comm.size - comm.rank))
        with registry.forced(gather="linear"):
            return await comm.gather(comm.rank * 10, root=2)

    out = await launch(main, 4)
    assert out[2] == [0, 10, 20, 30]
    assert out[0] is None and out[1] is None and out[3] is None
