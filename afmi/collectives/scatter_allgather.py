"""Broadcast of large payloads as a binomial scatter of pieces and a ring allgather.

Only the root knows the payload size, so the root decides and says so in the
first message every rank receives from its tree parent:

- below :data:`BCAST_SCATTER_MIN_BYTES` (or on fewer than 3 ranks) the root's
  encoded message itself goes down the binomial tree (sub-tag 0), exactly as
  :class:`~afmi.collectives.tree.BinomialBcast` does;
- from there on, a small descriptor (the payload's msgpack skeleton and buffer
  lengths) goes down the tree (sub-tag 1), then the payload's bytes, cut into
  ``size`` pieces, are scattered down the same tree (each vertex receives its
  subtree's pieces as one contiguous message) and gathered by all with a ring in
  which every piece is forwarded unchanged. Every rank sends about ``2 n`` bytes
  instead of ``ceil(log2 size) n``.

Every non-root rank posts receives on both sub-tags and takes whichever
message comes; the other receive is withdrawn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.ring import block_bounds
from afmi.collectives.tree import ceil_log2, subtree_span
from afmi.wire.message import Message, packed_layout

__all__ = ["BCAST_SCATTER_MIN_BYTES", "ScatterAllgatherBcast"]

#: Smallest payload (bytes of array data) the root splits into pieces.
BCAST_SCATTER_MIN_BYTES = 1 << 20

_FULL, _DESCRIPTOR, _PIECES, _RING = 0, 1, 2, 3
#: Buffers start at multiples of this in the reassembled bytes (aligned arrays).
_ALIGN = 64


async def _first_of(ctx: CollectiveContext, source: int) -> tuple[int, Message]:
    """The first message from ``source`` on sub-tag FULL or DESCRIPTOR, and which it was."""
    futs = {
        asyncio.ensure_future(ctx.recv_raw(source, _FULL)): _FULL,
        asyncio.ensure_future(ctx.recv_raw(source, _DESCRIPTOR)): _DESCRIPTOR,
    }
    try:
        done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futs:
            if not f.done():
                f.cancel()
    fut = done.pop()
    return futs[fut], fut.result()


class ScatterAllgatherBcast(Algorithm):
    """bcast: binomial for small payloads, scatter + ring allgather for large ones."""

    collective = "bcast"
    name = "scatter_allgather"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        if size <= 1:
            return []
        rounds = ceil_log2(size)
        if nbytes < BCAST_SCATTER_MIN_BYTES or size < 3:
            return [Step(rounds, nbytes)]
        piece = -(-nbytes // size)
        scatter = [Step(1, piece << k) for k in reversed(range(rounds))]
        return [Step(rounds, 256), *scatter, Step(size - 1, piece)]

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        size, vrank = ctx.size, (ctx.rank - root) % ctx.size
        span = subtree_span(vrank, size)
        parent = (vrank - span + root) % size
        children = []
        mask = span >> 1
        while mask:
            if vrank + mask < size:
                children.append(vrank + mask)
            mask >>= 1
        if vrank == 0:
            msg = ctx.pack(obj)
            total = sum(memoryview(b).nbytes for b in msg.buffers)
            kind = _DESCRIPTOR if total >= BCAST_SCATTER_MIN_BYTES and size >= 3 else _FULL
        else:
            kind, msg = await _first_of(ctx, parent)
        if kind == _FULL:
            for child in children:
                await ctx.send_raw(msg, (child + root) % size, _FULL)
            return obj if vrank == 0 else ctx.decode(msg)
        if vrank == 0:
            lengths = [memoryview(b).nbytes for b in msg.buffers]
            header = msg.header
            descriptor = ctx.pack((header, lengths))
        else:
            descriptor = msg
            header, lengths = ctx.decode(msg)
        for child in children:
            await ctx.send_raw(descriptor, (child + root) % size, _DESCRIPTOR)
        offsets, total = packed_layout(lengths, _ALIGN)
        bounds = block_bounds(total, size)
        # This vertex's subtree covers pieces [vrank, end): one contiguous byte range.
        end = min(vrank + span, size)
        if vrank == 0:
            blob = _concat(msg.buffers, offsets, total)
            mine = blob
        else:
            mine = ctx.decode(await ctx.recv_raw(parent, _PIECES))
            blob = np.empty(total, dtype=np.uint8)
            blob[bounds[vrank] : bounds[end]] = mine
        base = bounds[vrank]
        for child in children:
            hi = bounds[min(child + subtree_span(child, size), size)]
            part = mine[bounds[child] - base : hi - base]
            await ctx.send(part, (child + root) % size, _PIECES)
        await _ring_pieces(ctx, blob, bounds, vrank)
        if vrank == 0:
            return obj
        buffers = [blob[o : o + n] for o, n in zip(offsets, lengths)]
        return ctx.decode(Message(0, 0, 0, 0, header, buffers))


def _concat(buffers: list[Any], offsets: list[int], total: int) -> np.ndarray[Any, Any]:
    """The payload's bytes laid out at ``offsets`` (a view when there is one buffer)."""
    if len(buffers) == 1:
        return np.frombuffer(buffers[0], dtype=np.uint8)
    blob = np.zeros(total, dtype=np.uint8)
    for b, start in zip(buffers, offsets):
        flat = np.frombuffer(b, dtype=np.uint8)
        blob[start : start + flat.size] = flat
    return blob


async def _ring_pieces(
    ctx: CollectiveContext, blob: np.ndarray[Any, Any], bounds: list[int], vrank: int
) -> None:
    """Ring allgather of the pieces of ``blob`` over vertex numbers; fills ``blob`` in place."""
    size = ctx.size
    left, right = (ctx.rank - 1) % size, (ctx.rank + 1) % size
    await ctx.send(blob[bounds[vrank] : bounds[vrank + 1]], right, _RING)
    for t in range(size - 1):
        piece = (vrank - t - 1) % size
        msg = await ctx.recv_raw(left, _RING)
        if t < size - 2:
            await ctx.send_raw(msg, right, _RING)
        if vrank != 0:  # the root has every piece already
            blob[bounds[piece] : bounds[piece + 1]] = ctx.decode(msg)
