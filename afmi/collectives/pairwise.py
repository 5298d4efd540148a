"""Pairwise exchange: alltoall in ``size - 1`` rounds of one send and one receive each.

In round ``k`` rank ``r`` sends item ``r + k`` to rank ``r + k`` and receives
from rank ``r - k`` (mod size). Unlike the all-at-once linear alltoall, a
rank has at most one message in flight each way, which bounds the memory a
channel buffers and spreads the load evenly over the links.
"""

from __future__ import annotations

from typing import Any

from afmi.collectives.base import Algorithm, CollectiveContext, Step

__all__ = ["PairwiseAlltoall"]


class PairwiseAlltoall(Algorithm):
    """Pairwise-exchange alltoall (``size - 1`` rounds)."""

    collective = "alltoall"
    name = "pairwise"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(size - 1, nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, seq: list[Any]) -> Any:
        size, rank = ctx.size, ctx.rank
        out: list[Any] = [None] * size
        out[rank] = seq[rank]
        for k in range(1, size):
            dest, source = (rank + k) % size, (rank - k) % size
            out[source] = await ctx.sendrecv(seq[dest], dest, source)
        return out
