"""Centralised algorithms: everything goes through the root (or rank 0).

They take ``O(size)`` sequential steps at the root but only two message
hops, which suits channels where one upload can be read by many (storage)
and tiny communicators. They are also the reference the others are tested
against, and they apply every op in exact rank order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.combine import combine
from afmi.ops import Op
from afmi.wire.message import Message

__all__ = [
    "LinearAllgather",
    "LinearAllreduce",
    "LinearAlltoall",
    "LinearBarrier",
    "LinearBcast",
    "LinearExscan",
    "LinearGather",
    "LinearReduce",
    "LinearReduceScatter",
    "LinearScan",
    "LinearScatter",
]


T = TypeVar("T")


async def together(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``coros`` run concurrently (``asyncio.gather``); a lone one is
    awaited in the calling task, without a task of its own to create and schedule (a
    2-rank bcast's root: in one process 60 µs a call on ``local`` instead of 104)."""
    if len(coros) == 1:
        return [await coros[0]]
    return list(await asyncio.gather(*coros))


#: A parent sends messages of up to this many bytes to its children one after another,
#: in its own task, rather than side by side in a task each: the channels take a
#: message this small without waiting long for the receiver (the direct channel's
#: socket buffers hold it), so the tasks mostly added their own cost. Larger messages
#: go side by side, so that one child's transfer need not wait for another's to drain.
#: Measured in one process on ``direct`` (2026-12-06), sends in turn against a task
#: each: a bcast of 64 KiB took 205 against 300-313 us on 4 ranks and 436 against
#: 678-733 us on 8, 256 KiB 313-324 against 357-358 us on 4 ranks, and 1 MiB
#: 966-1073 against 848-872 us on 4 ranks and 2.0-2.3 against 1.6-1.9 ms on 8. At
#: 512 KiB, in one process the two took turns, but across processes (4 on 2 cores)
#: side by side was faster in three jobs of three (640-901 against 772-1037 us), and
#: the model put in-turn 512 KiB bcasts 25-48 % low in four runs: so the limit lies
#: between the sizes measured, above a 256 KiB array's message (with its header).
IN_TURN_MAX_BYTES = 384 * 1024
#: The channels on which small messages go in turn (:data:`IN_TURN_MAX_BYTES`): a send
#: there returns once the message is with the receiver or the kernel. On ``redis`` and
#: ``s3`` a send waits for the server's reply (an RPUSH, a PUT), so one after another
#: they add up: measured in one process (2026-12-06), in turn against side by side, a
#: 4- and 8-rank ``redis`` linear bcast took 1.07-1.17x as long, a 4-rank ``s3``
#: linear allgather 1.09-1.19x and a 4-rank ``s3`` alltoall 1.32x.
IN_TURN_CHANNELS = frozenset({"local", "direct"})


async def send_all(ctx: CollectiveContext, parts: list[tuple[Message, int]], sub: int = 0) -> None:
    """Send every packed message (:meth:`CollectiveContext.pack`) of ``parts`` to its
    rank: one after another on :data:`IN_TURN_CHANNELS` when none is over
    :data:`IN_TURN_MAX_BYTES`, else side by side."""
    in_turn = ctx.channel in IN_TURN_CHANNELS
    if in_turn and max((msg.nbytes for msg, _ in parts), default=0) <= IN_TURN_MAX_BYTES:
        for msg, dest in parts:
            await ctx.send_raw(msg, dest, sub)
    else:
        await together([ctx.send_raw(msg, dest, sub) for msg, dest in parts])


async def send_items(ctx: CollectiveContext, items: list[tuple[Any, int]], sub: int = 0) -> None:
    """Pack every object of ``items`` and send it to its rank (:func:`send_all`)."""
    await send_all(ctx, [(ctx.pack(obj), dest) for obj, dest in items], sub)


async def send_each(ctx: CollectiveContext, msg: Message, dests: list[int], sub: int = 0) -> None:
    """Send one packed ``msg`` to every rank of ``dests`` (:func:`send_all`)."""
    await send_all(ctx, [(msg, dest) for dest in dests], sub)


def fold(op: Op, values: list[Any], mine: int | None = None) -> Any:
    """``values[0] op values[1] op ...`` left to right.

    With ``mine``, every value but ``values[mine]``, the caller's own input
    (never written), is the algorithm's own (a received array): each step
    writes its result into one of them where
    :func:`~afmi.collectives.combine.combine` allows, so a fold of built-in
    elementwise ops allocates nothing. A fresh result array per step cost a
    2-rank ``redis`` allreduce's root 158 us for 512 KiB of float64, mostly the
    page faults of new memory. Without ``mine`` no value is written.
    """
    acc = values[0]
    if mine is None:
        for v in values[1:]:
            acc = op(acc, v)
        return acc
    theirs = values[mine]
    for v in values[1:]:
        into = acc if acc is not theirs else v if v is not theirs else None
        acc = combine(op, acc, v, into)
    return acc


async def gather_to(ctx: CollectiveContext, obj: Any, root: int, sub: int = 0) -> list[Any] | None:
    """Every rank sends ``obj`` to ``root``, which returns them in rank order."""
    if ctx.rank != root:
        await ctx.send(obj, root, sub)
        return None
    others = [r for r in range(ctx.size) if r != root]
    received = await ctx.recv_each(others, sub)
    out: list[Any] = [None] * ctx.size
    out[root] = obj
    for r, v in zip(others, received):
        out[r] = v
    return out


async def bcast_from(ctx: CollectiveContext, obj: Any, root: int, sub: int = 0) -> Any:
    """``root`` sends ``obj`` to every rank."""
    if ctx.rank == root:
        await send_each(ctx, ctx.pack(obj), [r for r in range(ctx.size) if r != root], sub)
        return obj
    return await ctx.recv(root, sub)


class _Linear(Algorithm):
    name = "linear"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(1, nbytes, max(size - 1, 0))]


class LinearBarrier(_Linear):
    collective = "barrier"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(2, 1, max(size - 1, 0))]

    async def run(self, ctx: CollectiveContext, **args: Any) -> None:
        await gather_to(ctx, None, 0, 0)
        await bcast_from(ctx, None, 0, 1)


class LinearBcast(_Linear):
    collective = "bcast"

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        return await bcast_from(ctx, obj, root)


class LinearGather(_Linear):
    collective = "gather"

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        return await gather_to(ctx, obj, root)


class LinearScatter(_Linear):
    collective = "scatter"

    async def run(self, ctx: CollectiveContext, *, seq: list[Any] | None, root: int) -> Any:
        if ctx.rank == root:
            assert seq is not None
            await send_items(ctx, [(seq[r], r) for r in range(ctx.size) if r != root])
            return seq[root]
        return await ctx.recv(root)


class LinearAllgather(_Linear):
    collective = "allgather"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(1, nbytes, size - 1), Step(1, nbytes * size, size - 1)]

    async def run(self, ctx: CollectiveContext, *, obj: Any) -> Any:
        items = await gather_to(ctx, obj, 0, 0)
        return await bcast_from(ctx, items, 0, 1)


class LinearAlltoall(_Linear):
    collective = "alltoall"

    async def run(self, ctx: CollectiveContext, *, seq: list[Any]) -> Any:
        others = [r for r in range(ctx.size) if r != ctx.rank]
        # every receive posted before any send: no task per receive
        received = await ctx.exchange(others, send_items(ctx, [(seq[r], r) for r in others]))
        out: list[Any] = [None] * ctx.size
        out[ctx.rank] = seq[ctx.rank]
        for r, v in zip(others, received):
            out[r] = v
        return out


class LinearReduce(_Linear):
    collective = "reduce"

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op, root: int) -> Any:
        values = await gather_to(ctx, x, root)
        return None if values is None else fold(op, values, root)


class LinearAllreduce(_Linear):
    collective = "allreduce"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(2, nbytes, max(size - 1, 0))]

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        values = await gather_to(ctx, x, 0, 0)
        result = fold(op, values, 0) if values is not None else None
        return await bcast_from(ctx, result, 0, 1)


class LinearReduceScatter(_Linear):
    collective = "reduce_scatter"

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        import numpy as np

        values = await gather_to(ctx, x, 0, 0)
        blocks = None
        if values is not None:
            blocks = np.array_split(fold(op, values, 0), ctx.size)
        if ctx.rank == 0:
            assert blocks is not None
            await send_items(ctx, [(blocks[r], r) for r in range(1, ctx.size)], 1)
            return blocks[0]
        return await ctx.recv(0, 1)


class LinearScan(_Linear):
    collective = "scan"

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        values = await gather_to(ctx, x, 0, 0)
        if ctx.rank == 0:
            assert values is not None
            prefix, acc = [], None
            for i, v in enumerate(values):
                acc = v if i == 0 else op(acc, v)
                prefix.append(acc)
            await send_items(ctx, [(prefix[r], r) for r in range(1, ctx.size)], 1)
            return prefix[0]
        return await ctx.recv(0, 1)


class LinearExscan(_Linear):
    collective = "exscan"

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        values = await gather_to(ctx, x, 0, 0)
        if ctx.rank == 0:
            assert values is not None
            acc = values[0]
            items = []
            for r in range(1, ctx.size):
                items.append((acc, r))
                acc = op(acc, values[r])
            await send_items(ctx, items, 1)
            return None
        return await ctx.recv(0, 1)
