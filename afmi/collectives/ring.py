"""Ring algorithms: allgather, reduce_scatter and allreduce (reduce_scatter + allgather).

Each rank only talks to its neighbours: it receives from ``rank - 1`` and
sends to ``rank + 1``. An array is cut into ``size`` chunks (the blocks of
``numpy.array_split`` along axis 0); in ``size - 1`` reduce-scatter steps
each chunk travels once around the ring, being reduced at every rank, and
ends fully reduced on one rank; in ``size - 1`` allgather steps the reduced
chunks travel around once more. Every rank sends ``2 (size-1)/size`` of the
array in total, whatever the size: the bandwidth-optimal allreduce for large
arrays.

Chunks are cut further into segments of at most :data:`SEGMENT_BYTES`, each
its own message, and a rank forwards a segment as soon as it has reduced it:
the reduction of one segment overlaps the transfer of the next, and the
pipeline fills after one segment instead of one chunk.

The ring reduces chunks separately and in ring order, so it requires a
commutative built-in elementwise op on numpy arrays (:func:`ring_applicable`).
Messages between a pair of ranks are matched in the order they were sent, so
all steps use one sub-tag.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.combine import elementwise_ufunc
from afmi.ops import Op
from afmi.wire.message import Message

__all__ = [
    "SEGMENT_BYTES",
    "block_bounds",
    "RingAllgather",
    "RingAllreduce",
    "RingReduceScatter",
    "ring_applicable",
]

#: Largest message the ring sends; bigger chunks are cut into segments this size.
#: 2 MiB: between processes over ``direct`` the per-message cost outweighed the
#: longer pipeline fill of bigger segments (16 MiB on 4 processes: 39-41 ms with
#: 2 MiB segments, 49-52 ms with 512 KiB; 8 MiB on 2: 4.9-5.7 vs 7.1-7.8 ms).
SEGMENT_BYTES = 1 << 21


def ring_applicable(x: Any, op: Any, min_ndim: int = 0) -> bool:
    """True if the ring can reduce ``x`` with ``op`` chunk by chunk."""
    return (
        isinstance(x, np.ndarray)
        and isinstance(op, Op)
        and x.ndim >= min_ndim
        and x.size > 0
        and elementwise_ufunc(op, x.dtype) is not None
    )


def block_bounds(n: int, parts: int) -> list[int]:
    """Start offsets of ``numpy.array_split(range(n), parts)``'s blocks, and ``n`` at the end."""
    q, r = divmod(n, parts)
    out = [0]
    for i in range(parts):
        out.append(out[-1] + q + (1 if i < r else 0))
    return out


def _segments(bounds: list[int], chunk: int, itemsize: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the segments chunk ``chunk`` of ``bounds`` is cut into."""
    lo, hi = bounds[chunk], bounds[chunk + 1]
    per = max(1, SEGMENT_BYTES // max(itemsize, 1))
    return [(a, min(a + per, hi)) for a in range(lo, hi, per)] or [(lo, hi)]


def _receives(
    rank: int, size: int, bounds: list[int], itemsize: int, lag: int
) -> list[tuple[bool, int, int]]:
    """``(last step?, start, stop)`` of every segment a ring phase receives, in order.

    Step ``s`` of the phase receives chunk ``rank - s - lag`` from the left neighbour.
    """
    return [
        (s == size - 2, a, b)
        for s in range(size - 1)
        for a, b in _segments(bounds, (rank - s - lag) % size, itemsize)
    ]


async def _reduce_scatter(
    ctx: CollectiveContext,
    src: np.ndarray[Any, Any],
    bounds: list[int],
    ufunc: Any,
    out: np.ndarray[Any, Any],
) -> None:
    """Ring reduce-scatter over the flat C-ordered ``src``, into the flat ``out``.

    Afterwards chunk ``rank`` of ``out`` holds the full reduction; the other
    chunks of ``out`` served as receive buffers. ``src`` is only read.
    """
    size, rank = ctx.size, ctx.rank
    left, right = (rank - 1) % size, (rank + 1) % size
    itemsize = src.dtype.itemsize
    # Step s sends chunk (rank - s - 1) and receives chunk (rank - s - 2): after
    # size - 1 steps, rank holds chunk rank. Each chunk arrives here once, and its
    # place in ``out`` is free until the allgather refills it: post every receive
    # now, into that place, so channels that can receive each segment in place
    # (no fresh buffer, no copy). Step 0 sends straight from src.
    plan = _receives(rank, size, bounds, itemsize, lag=2)
    tickets = ctx.post_into(left, [out[a:b] for _, a, b in plan])
    try:
        for a, b in _segments(bounds, (rank - 1) % size, itemsize):
            await ctx.send(src[a:b], right)
        for (last, a, b), ticket in zip(plan, tickets):
            seg = out[a:b]
            await ctx.wait_into(ticket, seg)
            ufunc(seg, src[a:b], out=seg)
            if not last:
                await ctx.send(seg, right)  # returns once the channel has the bytes
    finally:
        ctx.withdraw(tickets)


async def _allgather_into(
    ctx: CollectiveContext, out: np.ndarray[Any, Any], bounds: list[int]
) -> None:
    """Ring allgather of the chunks of flat ``out``: chunk ``rank`` is this rank's own."""
    size, rank = ctx.size, ctx.rank
    left, right = (rank - 1) % size, (rank + 1) % size
    itemsize = out.dtype.itemsize
    # Step t receives chunk rank - t - 1, each segment straight into its place (see
    # _reduce_scatter).
    plan = _receives(rank, size, bounds, itemsize, lag=1)
    tickets = ctx.post_into(left, [out[a:b] for _, a, b in plan], 1)
    try:
        for a, b in _segments(bounds, rank, itemsize):
            await ctx.send(out[a:b], right, 1)
        for (last, a, b), ticket in zip(plan, tickets):
            await ctx.wait_into(ticket, out[a:b])
            if not last:
                await ctx.send(out[a:b], right, 1)
    finally:
        ctx.withdraw(tickets)


def _flat(x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], bool]:
    """A flat view (or C-ordered copy) of ``x``, and whether it is ``x.T`` flattened."""
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        return x.T.reshape(-1), True
    return np.ascontiguousarray(x).reshape(-1), False


def _commutative_ring(args: dict[str, Any]) -> bool:
    """The ring reorders combinations: only for commutative ops on arrays it can cut."""
    return ring_applicable(args.get("x"), args.get("op"), 1) and args["op"].commutative


def _ring_steps(size: int, nbytes: int, passes: int) -> list[Step]:
    """``passes`` trips around the ring, each ``size - 1`` rounds of one chunk.

    A chunk's segments all go to the same neighbour, one after another on one
    stream, so a round moves the whole chunk as one message would (the model's
    per-message costs count the segments, see :mod:`afmi.model.work`).
    """
    if size <= 1:
        return []
    return [Step(passes * (size - 1), -(-nbytes // size))]


class RingAllreduce(Algorithm):
    """Ring allreduce (segmented reduce-scatter + allgather) for large arrays."""

    collective = "allreduce"
    name = "ring"

    def applicable(self, size: int, nbytes: int, args: dict[str, Any]) -> bool:
        return _commutative_ring(args)

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return _ring_steps(size, nbytes, passes=2)

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        size = ctx.size
        if size == 1:
            return x.copy()
        flat, transposed = _flat(x)
        ufunc = elementwise_ufunc(op, flat.dtype)
        bounds = block_bounds(flat.size, size)
        if ctx.out is not None and not transposed:
            out = ctx.out.reshape(-1)  # the caller's array: receive straight into it
        else:
            out = ctx.empty_like(flat)
        await _reduce_scatter(ctx, flat, bounds, ufunc, out)
        await _allgather_into(ctx, out, bounds)
        if transposed:
            return out.reshape(x.T.shape).T
        if ctx.out is not None:
            return ctx.out  # received and reduced in place: ``out`` is a flat view of it
        return out.reshape(x.shape)


class RingReduceScatter(Algorithm):
    """Ring reduce_scatter: the reduce-scatter half of the ring allreduce."""

    collective = "reduce_scatter"
    name = "ring"

    def applicable(self, size: int, nbytes: int, args: dict[str, Any]) -> bool:
        return _commutative_ring(args)

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return _ring_steps(size, nbytes, passes=1)

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        size, rank = ctx.size, ctx.rank
        rows = block_bounds(x.shape[0], size)
        if size == 1:
            return x.copy()
        flat = np.ascontiguousarray(x).reshape(-1)
        row = int(np.prod(x.shape[1:], dtype=np.int64))
        bounds = [r * row for r in rows]
        ufunc = elementwise_ufunc(op, flat.dtype)
        out = ctx.empty_like(flat)
        await _reduce_scatter(ctx, flat, bounds, ufunc, out)
        block = out[bounds[rank] : bounds[rank + 1]]
        return block.reshape((rows[rank + 1] - rows[rank], *x.shape[1:]))


class RingAllgather(Algorithm):
    """Ring allgather: each item goes once around the ring, forwarded without re-encoding."""

    collective = "allgather"
    name = "ring"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(size - 1, nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, obj: Any) -> Any:
        size, rank = ctx.size, ctx.rank
        left, right = (rank - 1) % size, (rank + 1) % size
        out: list[Any] = [None] * size
        out[rank] = obj
        msg: Message = ctx.pack(obj)
        for t in range(size - 1):
            await ctx.send_raw(msg, right)  # buffered: never waits for the receiver
            msg = await ctx.recv_raw(left)
            out[(rank - t - 1) % size] = ctx.decode(msg)
        return out
