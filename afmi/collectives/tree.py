"""Binomial trees: bcast, reduce, gather, scatter, and reduce_scatter as reduce + scatter.

Ranks are renumbered relative to the root (``vrank = (rank - root) % size``)
so the root is the tree's vertex 0. Vertex ``v`` has the children
``v + 2**k`` for every ``2**k`` below ``v``'s lowest set bit (all ``2**k <
size`` for the root), and the parent ``v - lowbit(v)``. Every operation takes
``ceil(log2 size)`` rounds on its critical path.

A non-commutative reduction combines in exact rank order: it runs the tree
on *real* ranks rooted at rank 0, where every vertex holds the reduction of
the contiguous rank range ``[v, v + 2**k)`` and appends the higher range
on the right; rank 0 then forwards the result to the root (one extra hop).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.combine import combine
from afmi.collectives.linear import send_all, send_each
from afmi.ops import Op

__all__ = [
    "BinomialBcast",
    "BinomialGather",
    "BinomialReduce",
    "BinomialScatter",
    "TreeReduceScatter",
    "binomial_bcast",
    "binomial_reduce",
    "binomial_scatter",
    "ceil_log2",
    "subtree_span",
]


def ceil_log2(n: int) -> int:
    """Rounds of a binomial tree or recursive doubling over ``n`` ranks."""
    return max(n - 1, 0).bit_length()


def subtree_span(vrank: int, size: int) -> int:
    """Size of the subtree rooted at ``vrank`` (a power of two, before clipping at ``size``)."""
    if vrank == 0:
        return 1 << ceil_log2(size)
    return vrank & -vrank


async def binomial_bcast(ctx: CollectiveContext, obj: Any, root: int, sub: int = 0) -> Any:
    """Broadcast ``obj`` from ``root``; inner vertices forward the encoded message as is."""
    size, vrank = ctx.size, (ctx.rank - root) % ctx.size
    span = subtree_span(vrank, size)
    if vrank == 0:
        msg = ctx.pack(obj)
        result = obj
    else:
        parent = (vrank - span + root) % size
        msg = await ctx.recv_raw(parent, sub)
        result = None
    mask = span >> 1
    children = []
    while mask:
        if vrank + mask < size:
            children.append((vrank + mask + root) % size)
        mask >>= 1
    await send_each(ctx, msg, children, sub)
    return result if vrank == 0 else ctx.decode(msg)


async def binomial_reduce(ctx: CollectiveContext, x: Any, op: Op, root: int, sub: int = 0) -> Any:
    """Reduce to ``root`` (None elsewhere); in exact rank order unless ``op`` is commutative."""
    size, rank = ctx.size, ctx.rank
    tree_root = root if op.commutative else 0
    vrank = (rank - tree_root) % size
    acc, owned = x, False
    mask = 1
    while mask < size:
        if vrank & mask:
            await ctx.send(acc, (vrank - mask + tree_root) % size, sub)
            acc = None
            break
        if vrank + mask < size:
            other = await ctx.recv((vrank + mask + tree_root) % size, sub)
            # acc covers vertices [vrank, vrank + mask), other the next range.
            acc = combine(op, acc, other, into=acc if owned else other)
            owned = True
        mask <<= 1
    if tree_root != root:
        if rank == tree_root:
            await ctx.send(acc, root, sub + 1)
            return None
        if rank == root:
            return await ctx.recv(tree_root, sub + 1)
    return acc if rank == root else None


async def binomial_scatter(
    ctx: CollectiveContext, seq: list[Any] | None, root: int, sub: int = 0
) -> Any:
    """Give item ``i`` of root's ``seq`` to rank ``i``; subtrees get their items as one list."""
    size, vrank = ctx.size, (ctx.rank - root) % ctx.size
    span = subtree_span(vrank, size)
    if vrank == 0:
        assert seq is not None
        items = [seq[(v + root) % size] for v in range(size)]
    else:
        items = await ctx.recv((vrank - span + root) % size, sub)
    mask = span >> 1
    parts = []
    while mask:
        child = vrank + mask
        if child < size:
            part = items[mask : mask + min(mask, size - child)]
            parts.append((ctx.pack(part), (child + root) % size))
        mask >>= 1
    await send_all(ctx, parts, sub)
    return items[0]


class BinomialBcast(Algorithm):
    """Binomial-tree broadcast; forwards the root's encoded message without re-encoding."""

    collective = "bcast"
    name = "binomial"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(ceil_log2(size), nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        return await binomial_bcast(ctx, obj, root)


class BinomialReduce(Algorithm):
    """Binomial-tree reduce (rank-ordered tree rooted at 0 for non-commutative ops)."""

    collective = "reduce"
    name = "binomial"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        # One more hop when a non-commutative op meets a root other than 0.
        return [Step(ceil_log2(size), nbytes)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op, root: int) -> Any:
        return await binomial_reduce(ctx, x, op, root)


class BinomialGather(Algorithm):
    """Binomial-tree gather: every vertex sends its subtree's items as one list."""

    collective = "gather"
    name = "binomial"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        rounds = ceil_log2(size)
        return [Step(1, nbytes << k) for k in range(rounds)]

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        size, vrank = ctx.size, (ctx.rank - root) % ctx.size
        items = [obj]
        mask = 1
        while mask < size:
            if vrank & mask:
                await ctx.send(items, (vrank - mask + root) % size)
                return None
            if vrank + mask < size:
                items.extend(await ctx.recv((vrank + mask + root) % size))
            mask <<= 1
        # items are in vertex order: item v belongs to rank (v + root) % size.
        return items[size - root :] + items[: size - root]


class BinomialScatter(Algorithm):
    """Binomial-tree scatter: every vertex receives its subtree's items as one list."""

    collective = "scatter"
    name = "binomial"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        rounds = ceil_log2(size)
        return [Step(1, nbytes << k) for k in reversed(range(rounds))]

    async def run(self, ctx: CollectiveContext, *, seq: list[Any] | None, root: int) -> Any:
        return await binomial_scatter(ctx, seq, root)


class TreeReduceScatter(Algorithm):
    """reduce_scatter as a binomial reduce to rank 0, then a binomial scatter of the blocks.

    Valid for every op (rank order is kept); the fallback for non-commutative
    or user ops, which the ring cannot cut into chunks.
    """

    collective = "reduce_scatter"
    name = "reduce_scatter_tree"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        rounds = ceil_log2(size)
        block = math.ceil(nbytes / max(size, 1))
        if size <= 1:
            return []
        return [Step(rounds, nbytes)] + [Step(1, block << k) for k in reversed(range(rounds))]

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        total = await binomial_reduce(ctx, x, op, 0, sub=0)
        blocks = None
        if ctx.rank == 0:
            blocks = np.array_split(total, ctx.size)
        return await binomial_scatter(ctx, blocks, 0, sub=2)
