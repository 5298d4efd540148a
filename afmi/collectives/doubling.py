"""Recursive doubling and its relatives: barrier, allreduce, allgather, scan, exscan.

All take ``ceil(log2 size)`` rounds (allreduce two more when ``size`` is not
a power of two) and are correct for every size. The reductions keep exact
rank order, so they are valid for non-commutative ops: at every round each
rank holds the reduction of a contiguous range of ranks, and the range of
the lower partner always goes on the left.
"""

from __future__ import annotations

from typing import Any

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.combine import combine
from afmi.collectives.tree import ceil_log2
from afmi.ops import Op
from afmi.wire.message import Message

__all__ = [
    "IN_PLACE_MIN_BYTES",
    "BruckAllgather",
    "DisseminationBarrier",
    "RecursiveDoublingAllreduce",
    "RecursiveDoublingExscan",
    "RecursiveDoublingScan",
    "recursive_doubling_allreduce",
]

#: Smallest array that recursive doubling receives straight into ``allreduce(out=)``'s
#: array. Channels copy smaller messages anyway (the direct channel parses whole frames
#: of up to 64 KiB from its read buffer, the local channel copies below 64 KiB), so below
#: this the array is received as usual and reduced into ``out``: posting ``out`` as a
#: landing place and copying into it made a 2-rank local allreduce of 8 B take 73 us a
#: call where it now takes 61-63 us (57-61 us without ``out=``).
IN_PLACE_MIN_BYTES = 64 * 1024


class DisseminationBarrier(Algorithm):
    """Round ``k``: notify rank ``+2**k``, wait for rank ``-2**k`` (any size, no root)."""

    collective = "barrier"
    name = "dissemination"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(ceil_log2(size), 1)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, **args: Any) -> None:
        size, rank = ctx.size, ctx.rank
        for k in range(ceil_log2(size)):
            dist = 1 << k
            await ctx.sendrecv(None, (rank + dist) % size, (rank - dist) % size, sub=k)


async def recursive_doubling_allreduce(ctx: CollectiveContext, x: Any, op: Op, sub: int = 0) -> Any:
    """Allreduce in rank order; a non-power-of-two size folds its first ranks in pairs first.

    With ``p`` the largest power of two <= size and ``rem = size - p``, each
    even rank ``r < 2 * rem`` hands its value to ``r + 1`` (which combines
    them as ``x[r] op x[r+1]``) and waits; the remaining ``p`` ranks run
    recursive doubling; the odd ranks hand the result back.
    """
    size, rank = ctx.size, ctx.rank
    if size == 1:
        return x
    p = 1 << (size.bit_length() - 1)
    rem = size - p
    acc, owned = x, False
    if rank < 2 * rem:
        if rank % 2 == 0:
            await ctx.send(acc, rank + 1, sub)
            return await ctx.recv(rank + 1, sub + 2)
        lower = await ctx.recv(rank - 1, sub)
        acc = combine(op, lower, acc, into=lower)
        owned = True
        vrank = rank // 2
    else:
        vrank = rank - rem
    mask = 1
    while mask < p:
        vpartner = vrank ^ mask
        partner = vpartner * 2 + 1 if vpartner < rem else vpartner + rem
        into = acc if owned else None
        if not owned and ctx.out is not None and acc.nbytes >= IN_PLACE_MIN_BYTES:
            # The caller's result array (allreduce(out=), checked against x by the
            # communicator) is free: receive the partner's array straight into it
            # and combine there (on 2 ranks the whole allreduce allocates nothing).
            other = into = ctx.out
            (ticket,) = ctx.post_into(partner, [other], sub + 1)
            try:
                await ctx.send(acc, partner, sub + 1)
                await ctx.wait_into(ticket, other)
            finally:
                ctx.withdraw([ticket])
        else:
            other = await ctx.sendrecv(acc, partner, partner, sub + 1)
            if into is None:
                # a small array: received as usual, reduced straight into out= if given
                into = other if ctx.out is None else ctx.out
        acc = combine(op, other, acc, into) if partner < rank else combine(op, acc, other, into)
        owned = True
        mask <<= 1
    if rank < 2 * rem:
        await ctx.send(acc, rank - 1, sub + 2)
    return acc


class RecursiveDoublingAllreduce(Algorithm):
    """Recursive-doubling allreduce: log rounds of full-size exchanges; any op, any size."""

    collective = "allreduce"
    name = "recursive_doubling"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        if size <= 1:
            return []
        p = 1 << (size.bit_length() - 1)
        extra = 2 if p != size else 0
        return [Step(ceil_log2(p) + extra, nbytes)]

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        return await recursive_doubling_allreduce(ctx, x, op)


class BruckAllgather(Algorithm):
    """Bruck's allgather: round ``k`` sends the ``2**k`` items gathered so far to rank ``-2**k``.

    Items travel as the messages their owners encoded, forwarded unchanged, so
    no payload is re-encoded; ``ceil(log2 size)`` rounds for any size.
    """

    collective = "allgather"
    name = "bruck"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        out, have, k = [], 1, 0
        while have < size:
            n = min(have, size - have)
            out.append(Step(1, nbytes, n))
            have += n
            k += 1
        return out

    async def run(self, ctx: CollectiveContext, *, obj: Any) -> Any:
        size, rank = ctx.size, ctx.rank
        # msgs[i] is the message of rank (rank + i) % size.
        msgs: list[Message] = [ctx.pack(obj)]
        k = 0
        while len(msgs) < size:
            dist = 1 << k
            n = min(dist, size - len(msgs))
            dest, source = (rank - dist) % size, (rank + dist) % size
            # no task per receive; the round's messages go to one rank, in order
            sending = _send_in_turn(ctx, msgs[:n], dest, k)
            msgs.extend(await ctx.exchange([source] * n, sending, k, raw=True))
            k += 1
        out: list[Any] = [None] * size
        out[rank] = obj
        for i in range(1, size):
            out[(rank + i) % size] = ctx.decode(msgs[i])
        return out


async def _send_in_turn(ctx: CollectiveContext, msgs: list[Message], dest: int, sub: int) -> None:
    for msg in msgs:
        await ctx.send_raw(msg, dest, sub)


async def _prefix(ctx: CollectiveContext, x: Any, op: Op, inclusive: bool) -> Any:
    """MPICH's scan: ``partial`` covers the ranks seen so far, ``result`` those below or equal."""
    size, rank = ctx.size, ctx.rank
    partial: Any = x
    result: Any = x if inclusive else None
    have_result = inclusive
    mask, k = 1, 0
    while mask < size:
        partner = rank ^ mask
        if partner < size:
            other = await ctx.sendrecv(partial, partner, partner, k)
            if partner < rank:
                partial = op(other, partial)
                result = op(other, result) if have_result else other
                have_result = True
            else:
                partial = op(partial, other)
        mask <<= 1
        k += 1
    return result


class RecursiveDoublingScan(Algorithm):
    """Inclusive scan by recursive doubling (a partial/result pair per rank, rank-ordered)."""

    collective = "scan"
    name = "recursive_doubling"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(ceil_log2(size), nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        return await _prefix(ctx, x, op, inclusive=True)


class RecursiveDoublingExscan(Algorithm):
    """Exclusive scan by recursive doubling; None on rank 0."""

    collective = "exscan"
    name = "recursive_doubling"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(ceil_log2(size), nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        return await _prefix(ctx, x, op, inclusive=False)
