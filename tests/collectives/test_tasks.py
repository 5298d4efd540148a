"""Collectives on small messages run in the calling task: no task per send or receive.

In one event loop (the in-process simulation, the `local` channel) a task costs
about as much as the message it carries: creating one per receive made a 2-rank
gather 1.6x slower than a bcast. These tests count the tasks a call creates.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
import pytest

import afmi
from afmi.collectives import registry
from afmi.collectives.linear import IN_TURN_MAX_BYTES

launch = functools.partial(afmi.launch_local, timeout=60)


async def _tasks_created(comm, call):
    """Run ``call()`` on every rank between two barriers; the tasks the loop created meanwhile."""
    loop = asyncio.get_running_loop()
    created = []
    previous = loop.get_task_factory()

    def factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    await comm.barrier()
    if comm.rank == 0:
        loop.set_task_factory(factory)
    await comm.barrier()
    try:
        result = await call()
        await comm.barrier()
    finally:
        if comm.rank == 0:
            loop.set_task_factory(previous)
    return result, len(created)


@pytest.mark.parametrize(
    "collective,algorithm,ranks",
    [
        ("gather", "linear", 4),
        ("gather", "linear", 2),
        ("bcast", "binomial", 8),
        ("bcast", "linear", 4),
        ("alltoall", "linear", 4),
        ("allgather", "bruck", 5),
        ("scatter", "binomial", 8),
        ("scatter", "linear", 4),
        ("reduce_scatter", "linear", 4),
        ("scan", "linear", 4),
        ("exscan", "linear", 4),
    ],
)
async def test_small_collectives_create_no_task(collective, algorithm, ranks):
    async def main(comm):
        payload = np.full(16, comm.rank)

        async def call():
            with registry.forced(**{collective: algorithm}):
                if collective == "gather":
                    return await comm.gather(payload, root=1)
                if collective == "bcast":
                    return await comm.bcast(payload if comm.rank == 1 else None, root=1)
                if collective == "allgather":
                    return await comm.allgather(payload)
                if collective == "scatter":
                    seq = [payload + r for r in range(comm.size)] if comm.rank == 1 else None
                    return await comm.scatter(seq, root=1)
                if collective == "reduce_scatter":
                    return await comm.reduce_scatter(np.full(comm.size, comm.rank))
                if collective in ("scan", "exscan"):
                    return await getattr(comm, collective)(payload)
                return await comm.alltoall([payload + r for r in range(comm.size)])

        return await _tasks_created(comm, call)

    out = await launch(main, ranks)
    # the barriers around the call create none either, so every task would be the call's
    assert [n for _, n in out] == [0] * ranks
    if collective == "gather":
        assert [int(a[0]) for a in out[1][0]] == list(range(ranks))
    elif collective == "bcast":
        assert all(int(r[0][0]) == 1 for r in out)
    elif collective == "scatter":
        assert [int(r[0]) for r, _ in out] == [1 + r for r in range(ranks)]
    elif collective == "allgather":
        assert all([int(a[0]) for a in r] == list(range(ranks)) for r, _ in out)
    elif collective == "reduce_scatter":  # every rank's block of the sum 0 + 1 + ... + p-1
        assert [int(r[0]) for r, _ in out] == [sum(range(ranks))] * ranks
    elif collective == "scan":
        assert [int(r[0]) for r, _ in out] == [sum(range(r + 1)) for r in range(ranks)]
    elif collective == "exscan":
        assert out[0][0] is None
        assert [int(r[0]) for r, _ in out[1:]] == [sum(range(r)) for r in range(1, ranks)]
    else:
        assert [int(a[0]) for a in out[2][0]] == [r + 2 for r in range(ranks)]


async def test_a_large_binomial_bcast_sends_to_its_children_side_by_side():
    async def main(comm):
        payload = np.ones(IN_TURN_MAX_BYTES + 1, np.uint8) if comm.rank == 0 else None

        async def call():
            with registry.forced(bcast="binomial"):
                return await comm.bcast(payload, root=0)

        return await _tasks_created(comm, call)

    out = await launch(main, 8)
    assert all(r.nbytes == IN_TURN_MAX_BYTES + 1 for r, _ in out)
    # the root's three children and rank 4's two: a task per send
    assert out[0][1] >= 5


class _Recorder:
    """A collective context whose sends only record how many are in flight at once."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.in_flight = 0
        self.most = 0
        self.sent: list[int] = []

    def pack(self, obj):
        from afmi.wire.message import Message

        return Message(0, 0, 0, 0, b"", [memoryview(np.asarray(obj).tobytes())])

    async def send_raw(self, msg, dest, sub=0):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0)
        self.sent.append(dest)
        self.in_flight -= 1


@pytest.mark.parametrize(
    ("channel", "in_turn"), [("local", True), ("direct", True), ("redis", False), ("s3", False)]
)
async def test_small_sends_go_in_turn_only_where_a_send_awaits_no_server_reply(channel, in_turn):
    from afmi.collectives.linear import IN_TURN_CHANNELS, send_items

    assert (channel in IN_TURN_CHANNELS) is in_turn
    ctx: Any = _Recorder(channel)
    await send_items(ctx, [(np.zeros(4), r) for r in (1, 2, 3)])
    assert sorted(ctx.sent) == [1, 2, 3]
    # on redis and s3 a send waits for the server (an RPUSH, a PUT): side by side
    assert ctx.most == (1 if in_turn else 3)


@pytest.mark.parametrize("how", ["exchange", "sendrecv"])
async def test_a_failed_send_withdraws_the_receives_posted_before_it(how):
    from afmi.collectives.base import CollectiveContext

    async def main(comm):
        ctx = CollectiveContext(comm, 0, "test")
        if comm.rank == 0:

            async def failing():
                raise RuntimeError("send failed")

            with pytest.raises(RuntimeError, match="send failed"):
                if how == "exchange":
                    await ctx.exchange([1, 1], failing())
                else:
                    ctx.send = lambda obj, dest, sub=0: failing()
                    await ctx.sendrecv(1, 1, 1)
        await comm.barrier()
        return comm.endpoint.engine.posted_count()

    assert await launch(main, 2) == [0, 0]
