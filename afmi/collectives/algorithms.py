"""Registers every built-in algorithm and the rules that choose among them.

Imported lazily by :mod:`afmi.collectives.registry`. Each rule uses only
inputs that are identical on every rank (communicator size, the op's
commutativity, and the payload size for the collectives of
:data:`~afmi.collectives.registry.SIZE_STEERED` when the payload is a numpy
array), so every rank picks the same algorithm without talking. The
thresholds are the module constants below; ``docs/collectives.md`` explains
them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from afmi.collectives import doubling, linear, pairwise, ring, scatter_allgather, tree
from afmi.collectives.base import Algorithm, CollectiveContext
from afmi.collectives.registry import register, set_chooser

__all__ = [
    "ALLTOALL_PAIRWISE_MIN_SIZE",
    "BCAST_SCATTER_MIN_SIZE",
    "LOCAL_LINEAR_ALLGATHER_MIN_SIZE",
    "LOCAL_LINEAR_MIN_SIZE",
    "LOCAL_LINEAR_SCAN_MIN_BYTES",
    "LOCAL_REDUCE_TREE_MIN_BYTES",
    "LOCAL_RING_ALLREDUCE_MIN_BYTES",
    "LOCAL_WIDE_RING_ALLREDUCE_MIN_BYTES",
    "RING_ALLREDUCE_MIN_BYTES",
    "RING_ALLREDUCE_PAIR_MIN_BYTES",
    "TREE_MIN_SIZE",
]

#: Smallest communicator on which bcast, gather, scatter and reduce use binomial
#: trees; below it the root talks to every rank directly (as few rounds, fewer hops).
TREE_MIN_SIZE = 4
#: Smallest communicator on which bcast runs ``scatter_allgather`` (which itself
#: stays binomial below ``scatter_allgather.BCAST_SCATTER_MIN_BYTES``): its ~2 n
#: bytes per rank beat the tree's ``ceil(log2 size)`` n once the tree is deep.
BCAST_SCATTER_MIN_SIZE = 16
#: Smallest array (bytes) that allreduce sends around the ring; below it
#: recursive doubling's ``log2(size)`` rounds beat the ring's ``2 (size - 1)``.
RING_ALLREDUCE_MIN_BYTES = 1 << 19
#: On 2 ranks over a network channel, the smallest array (bytes) that runs the
#: ring: one exchange of the whole array wins at 2 MiB (0.73 vs 0.89 ms between
#: two processes over ``direct``, both receiving in place), the ring's pipelined
#: segments from 8 MiB (6.7 vs 10.8 ms with 512 KiB segments; docs/performance.md).
RING_ALLREDUCE_PAIR_MIN_BYTES = 1 << 23
#: On the ``local`` channel every rank runs in one thread, so a collective costs
#: the work of all ranks together, not its critical path. From this many ranks
#: allreduce, scan and exscan run linear: for allreduce,
#: linear (``p - 1`` reductions, ``2 (p - 1)`` messages) beats recursive doubling
#: (``p log2 p`` of each) and the ring (``2 p (p - 1)`` messages) below
#: :data:`LOCAL_WIDE_RING_ALLREDUCE_MIN_BYTES`: 1 MiB on 16 ranks took 5.7-14.8 ms
#: linear, 24-32 ms with the ring (docs/performance.md).
LOCAL_LINEAR_MIN_SIZE = 8
#: On ``local`` with fewer than :data:`LOCAL_LINEAR_MIN_SIZE` ranks (but more
#: than 2), the smallest array (bytes) that runs the ring: its chunks stay in the
#: CPU's caches. Below it recursive doubling (4 ranks, 1 MiB: ring 1.7x slower).
LOCAL_RING_ALLREDUCE_MIN_BYTES = 1 << 21
#: On ``local`` with :data:`LOCAL_LINEAR_MIN_SIZE` ranks or more, the smallest
#: array (bytes) that runs the ring instead of linear.
LOCAL_WIDE_RING_ALLREDUCE_MIN_BYTES = 1 << 22
#: On ``local`` with fewer than :data:`LOCAL_LINEAR_MIN_SIZE` ranks, the
#: smallest array (bytes) that scan and exscan run linear (4 ranks, 1 MiB: recursive
#: doubling 1.1-1.3x slower, 4 MiB 1.7-2x; below, it was 1.2-1.3x faster).
LOCAL_LINEAR_SCAN_MIN_BYTES = 1 << 20
#: On ``local``, the smallest communicator on which allgather runs linear (below it
#: the ring): on 16 ranks the two were within 15 % of each other, on 32 linear was
#: 1.1-1.4x faster than the ring and 1.3-2x faster than Bruck.
LOCAL_LINEAR_ALLGATHER_MIN_SIZE = 16
#: On ``local``, the smallest numpy array (bytes) that reduce sends up the binomial
#: tree; below it, and for other payloads, every rank sends to the root (linear):
#: in one process, on 4-32 ranks up to 32 KiB linear took 0.80-1.04x the tree's
#: time (two ways of timing, docs/collectives.md); from 64 KiB the tree was up
#: to 1.6x faster.
LOCAL_REDUCE_TREE_MIN_BYTES = 1 << 16
#: Smallest communicator on which alltoall runs pairwise rounds instead of
#: sending everything at once (bounds the messages in flight per rank).
ALLTOALL_PAIRWISE_MIN_SIZE = 16

for _algorithm in (
    linear.LinearBarrier(),
    linear.LinearBcast(),
    linear.LinearGather(),
    linear.LinearScatter(),
    linear.LinearAllgather(),
    linear.LinearAlltoall(),
    linear.LinearReduce(),
    linear.LinearAllreduce(),
    linear.LinearReduceScatter(),
    linear.LinearScan(),
    linear.LinearExscan(),
    doubling.DisseminationBarrier(),
    tree.BinomialBcast(),
    scatter_allgather.ScatterAllgatherBcast(),
    tree.BinomialGather(),
    tree.BinomialScatter(),
    tree.BinomialReduce(),
    tree.TreeReduceScatter(),
    doubling.RecursiveDoublingAllreduce(),
    ring.RingAllreduce(),
    doubling.BruckAllgather(),
    ring.RingAllgather(),
    ring.RingReduceScatter(),
    pairwise.PairwiseAlltoall(),
    doubling.RecursiveDoublingScan(),
    doubling.RecursiveDoublingExscan(),
):
    register(_algorithm)


def _prefer(candidates: list[Algorithm], *names: str) -> Algorithm:
    """The first of ``names`` among ``candidates``, else the first candidate."""
    by_name = {a.name: a for a in reversed(candidates)}
    for name in names:
        if name in by_name:
            return by_name[name]
    return candidates[0]


def _rooted(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """bcast, gather, scatter, reduce: binomial from :data:`TREE_MIN_SIZE` ranks on."""
    if size >= TREE_MIN_SIZE:
        return _prefer(candidates, "binomial", "linear")
    return _prefer(candidates, "linear")


def _barrier(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """Dissemination (``ceil(log2 size)`` rounds, no root) on two ranks or more."""
    return _prefer(candidates, "dissemination" if size > 1 else "linear")


def _allreduce(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """Ring for arrays of :data:`RING_ALLREDUCE_MIN_BYTES` or more, else recursive doubling.

    On 2 ranks the ring runs only for arrays of :data:`RING_ALLREDUCE_PAIR_MIN_BYTES`
    or more on a channel other than ``local``. On ``local`` (:func:`_local_allreduce`)
    the thresholds follow the work of all ranks, which share one thread.

    The ring is a candidate only for commutative built-in ops on non-empty arrays.
    """
    if size == 1:
        return _prefer(candidates, "linear")
    array = isinstance(args.get("x"), np.ndarray)
    if ctx.channel == "local":
        return _local_allreduce(candidates, size, nbytes if array else 0)
    big = array and nbytes >= RING_ALLREDUCE_MIN_BYTES
    if big and size > 2:
        return _prefer(candidates, "ring", "recursive_doubling")
    if big and nbytes >= RING_ALLREDUCE_PAIR_MIN_BYTES:
        return _prefer(candidates, "ring", "recursive_doubling")
    return _prefer(candidates, "recursive_doubling")


def _local_allreduce(candidates: list[Algorithm], size: int, array_nbytes: int) -> Algorithm:
    """allreduce on ``local`` (``array_nbytes`` 0 for a payload that is not an array).

    From :data:`LOCAL_LINEAR_MIN_SIZE` ranks: linear, or the ring from
    :data:`LOCAL_WIDE_RING_ALLREDUCE_MIN_BYTES`. On 3 ranks up to that count:
    recursive doubling, or the ring from :data:`LOCAL_RING_ALLREDUCE_MIN_BYTES`.
    On 2 ranks: recursive doubling (one exchange).
    """
    if size >= LOCAL_LINEAR_MIN_SIZE:
        if array_nbytes >= LOCAL_WIDE_RING_ALLREDUCE_MIN_BYTES:
            return _prefer(candidates, "ring", "linear")
        return _prefer(candidates, "linear")
    if size > 2 and array_nbytes >= LOCAL_RING_ALLREDUCE_MIN_BYTES:
        return _prefer(candidates, "ring", "recursive_doubling")
    return _prefer(candidates, "recursive_doubling")


def _allgather(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """Bruck (``ceil(log2 size)`` rounds, nothing re-encoded) on two ranks or more. On
    ``local`` the ring (each item sent once to each rank, nothing forwarded in
    bundles), and linear from :data:`LOCAL_LINEAR_ALLGATHER_MIN_SIZE` ranks."""
    if size == 1 or (ctx.channel == "local" and size >= LOCAL_LINEAR_ALLGATHER_MIN_SIZE):
        return _prefer(candidates, "linear")
    return _prefer(candidates, "ring" if ctx.channel == "local" else "bruck", "bruck")


def _alltoall(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """All at once up to :data:`ALLTOALL_PAIRWISE_MIN_SIZE` ranks, pairwise rounds above
    (on ``local`` from 2 ranks: one thread, and fewer messages waiting at once)."""
    if size >= ALLTOALL_PAIRWISE_MIN_SIZE or (size > 1 and ctx.channel == "local"):
        return _prefer(candidates, "pairwise")
    return _prefer(candidates, "linear")


def _gather(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """As :func:`_rooted`, but linear on ``local`` (no item is copied again on its way up:
    the binomial tree forwards each ``log2 size`` times, and one thread makes every copy)."""
    if ctx.channel == "local":
        return _prefer(candidates, "linear")
    return _rooted(candidates, size, nbytes, args, ctx)


def _reduce(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """As :func:`_rooted`, but on ``local`` linear for payloads other than numpy arrays
    of :data:`LOCAL_REDUCE_TREE_MIN_BYTES` or more: both apply the op ``size - 1``
    times, and the root's receives in one task cost less than the tree's rounds."""
    if ctx.channel == "local":
        array = isinstance(args.get("x"), np.ndarray)
        if not (array and nbytes >= LOCAL_REDUCE_TREE_MIN_BYTES):
            return _prefer(candidates, "linear")
    return _rooted(candidates, size, nbytes, args, ctx)


def _reduce_scatter(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """Ring when it applies (commutative built-in op), else binomial reduce + scatter;
    linear on ``local`` from 3 ranks, where it does the least work of all ranks together."""
    if size == 1 or (size > 2 and ctx.channel == "local"):
        return _prefer(candidates, "linear")
    if size >= TREE_MIN_SIZE:
        return _prefer(candidates, "ring", "reduce_scatter_tree")
    return _prefer(candidates, "ring", "linear")


def _prefix(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """scan, exscan: recursive doubling on two ranks or more.

    On ``local`` linear (``p - 1`` op applications, against recursive doubling's
    ``p log2 p``) from :data:`LOCAL_LINEAR_MIN_SIZE` ranks, and for arrays of
    :data:`LOCAL_LINEAR_SCAN_MIN_BYTES` or more on fewer.
    """
    if size == 1:
        return _prefer(candidates, "linear")
    if ctx.channel == "local":
        array = isinstance(args.get("x"), np.ndarray)
        big = array and nbytes >= LOCAL_LINEAR_SCAN_MIN_BYTES
        if size >= LOCAL_LINEAR_MIN_SIZE or big:
            return _prefer(candidates, "linear")
    return _prefer(candidates, "recursive_doubling")


def _bcast(
    candidates: list[Algorithm],
    size: int,
    nbytes: int,
    args: dict[str, Any],
    ctx: CollectiveContext,
) -> Algorithm:
    """Like :func:`_rooted`, with ``scatter_allgather`` from :data:`BCAST_SCATTER_MIN_SIZE` on
    (not on ``local``: one thread makes all the copies of its scatter and its ring, and
    the binomial tree, fewer copies in all, was 2-3.9x faster from 1 MiB on 16 and 32 ranks)."""
    if size >= BCAST_SCATTER_MIN_SIZE and ctx.channel != "local":
        return _prefer(candidates, "scatter_allgather", "binomial")
    return _rooted(candidates, size, nbytes, args, ctx)


set_chooser("bcast", _bcast)
set_chooser("gather", _gather)
set_chooser("scatter", _rooted)
set_chooser("reduce", _reduce)
set_chooser("barrier", _barrier)
set_chooser("allreduce", _allreduce)
set_chooser("allgather", _allgather)
set_chooser("alltoall", _alltoall)
set_chooser("reduce_scatter", _reduce_scatter)
set_chooser("scan", _prefix)
set_chooser("exscan", _prefix)

from afmi.collectives import storage as _storage  # noqa: E402,F401  (storage algorithms)
