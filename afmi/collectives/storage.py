"""Collective algorithms suited to storage channels (``redis``, ``s3``).

On storage every message is an upload plus a download, and one stored
payload can be read by any number of ranks. So:

* :class:`StorageBcast` uploads the payload once (:meth:`Channel.publish`)
  and every other rank reads it (S3 does so from ``channels.s3.publish_min_bytes``
  on; a smaller payload goes to every reader as an object of its own, which
  takes fewer requests).
* :class:`ScatterReduceAllreduce` is LambdaML's ScatterReduce: the array is
  cut into ``size`` slices, rank ``j`` receives slice ``j`` from everybody,
  reduces it, and publishes the reduced slice once; everybody reads all
  reduced slices. Every rank moves about ``2·nbytes`` instead of the root
  moving ``2·(size-1)·nbytes``. It runs numpy arrays with a built-in
  (elementwise) op; on storage channels it is chosen from
  ``MIN_SCATTER_BYTES`` on (``S3_MIN_SCATTER_BYTES`` on S3; a wrapper around
  the allreduce chooser that leaves other channels to the rule installed
  before it).
* :class:`StorageAllreduce` covers the rest: gather at rank 0, reduce in
  rank order, publish the result once (LambdaML's AllReduce).

* :class:`RedisCounterBarrier` counts arrivals with ``INCR`` on a job-scoped
  key; the rank that brings the count to ``size`` deletes the key and
  releases the others with one pipelined push into their mailboxes.
  Redis only: S3 has no atomic increment, so on S3 the barrier chooser
  takes the generic ``linear`` barrier (gather to rank 0, release: two
  rounds whatever the size, its tiny messages riding in object keys) over
  dissemination's ``ceil(log2 size)`` rounds.

On S3 every collective without an algorithm of its own here runs its
``linear`` algorithm (:data:`LINEAR_ON_S3`): a round costs a PUT and a LIST
poll, so one or two rounds beat a tree's ``log2 size`` or a ring's
``size - 1``.

Every algorithm here sets ``channels`` (``{"redis", "s3"}``, or ``{"redis"}``
for the barrier), so the registry prefers them on those channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.linear import fold, gather_to, send_items
from afmi.collectives.registry import Chooser, register, set_chooser
from afmi.ops import Op
from afmi.wire.matching import ANY_SOURCE
from afmi.wire.serialize import encode

__all__ = [
    "COUNTER_BARRIER_MIN_SIZE",
    "LINEAR_ON_S3",
    "MIN_SCATTER_BYTES",
    "S3_MIN_SCATTER_BYTES",
    "STORAGE_CHANNELS",
    "RedisCounterBarrier",
    "ScatterReduceAllreduce",
    "StorageAllreduce",
    "StorageBcast",
    "publish",
]

#: Channels these algorithms are meant for.
STORAGE_CHANNELS = frozenset({"redis", "s3"})
#: Smallest array for which ScatterReduce is chosen over reduce-then-publish. Below
#: it, request latency dominates and ScatterReduce's ``size·(size-1)`` slice
#: messages cost more than the root's extra bandwidth (see docs/storage.md).
MIN_SCATTER_BYTES = 1024 * 1024
#: The same on S3, where every slice message is a PUT, a GET and a share of the LIST
#: polls: from 1 MiB up to 4 MiB ScatterReduce took 2.0-4.5x as long as
#: reduce-then-publish on 4 and 8 ranks (moto), at 16 MiB 0.80x and 0.97x.
S3_MIN_SCATTER_BYTES = 16 * 1024 * 1024
#: Smallest communicator on which Redis barriers count arrivals (:class:`RedisCounterBarrier`).
#: On two ranks the dissemination barrier (one exchange) is as fast as the counter's round
#: trip plus release, and from three on the counter wins (see docs/storage.md).
COUNTER_BARRIER_MIN_SIZE = 3


async def publish(ctx: CollectiveContext, obj: Any, dests: list[int], sub: int = 0) -> None:
    """Send ``obj`` to communicator ranks ``dests``, serialized and stored only once."""
    dests = [d for d in dests if d != ctx.rank]
    if not dests:
        return
    ep = ctx._ep
    ep.check_alive()
    header, buffers = encode(obj, allow_pickle=ep.config.pickle)
    tag = ctx._tag(sub)
    worlds = [ctx._group[d] for d in dests]
    msgs = [ep.stamp(w, ctx._context, tag, header, buffers) for w in worlds]
    await ep.channels[ctx.channel].publish(worlds, msgs)


class _Storage(Algorithm):
    channels = STORAGE_CHANNELS


class StorageBcast(_Storage):
    """One upload by the root, read by every other rank."""

    collective = "bcast"
    name = "storage_publish"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(1, nbytes, 1)] if size > 1 else []

    async def run(self, ctx: CollectiveContext, *, obj: Any, root: int) -> Any:
        if ctx.rank == root:
            await publish(ctx, obj, list(range(ctx.size)))
            return obj
        return await ctx.recv(root)


class ScatterReduceAllreduce(_Storage):
    """LambdaML's ScatterReduce; see the module docstring."""

    collective = "allreduce"
    name = "scatter_reduce"

    def applicable(self, size: int, nbytes: int, args: dict[str, Any]) -> bool:
        x, op = args.get("x"), args.get("op")
        return (
            isinstance(x, np.ndarray)
            and x.ndim > 0
            and isinstance(op, Op)
            and op.builtin
            and op.name not in ("MAXLOC", "MINLOC")
        )

    def steps(self, size: int, nbytes: int) -> list[Step]:
        part = -(-nbytes // max(size, 1))
        return [Step(1, part, size - 1), Step(1, part, size - 1)]

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        n, me = ctx.size, ctx.rank
        slices = np.array_split(np.ascontiguousarray(x).reshape(-1), n)
        others = [r for r in range(n) if r != me]
        # Round 1: slice j of every rank goes to rank j, which reduces it.
        received = await ctx.exchange(others, send_items(ctx, [(slices[r], r) for r in others]))
        parts: list[Any] = [None] * n
        parts[me] = slices[me]
        for r, v in zip(others, received):
            parts[r] = v
        mine = fold(op, parts, me)
        # Round 2: each reduced slice is uploaded once and read by all.
        reduced = await ctx.exchange(others, publish(ctx, mine, list(range(n)), 1), 1)
        pieces: list[Any] = [None] * n
        pieces[me] = mine
        for r, v in zip(others, reduced):
            pieces[r] = v
        return np.concatenate(pieces).reshape(x.shape)


def _choose_allreduce(previous: Chooser | None) -> Chooser:
    """On storage channels pick ScatterReduce from :data:`MIN_SCATTER_BYTES` on
    (:data:`S3_MIN_SCATTER_BYTES` on S3), else reduce-then-publish.

    Every other channel keeps the rule that was installed before (``previous``).
    """

    def choose(
        candidates: list[Algorithm],
        size: int,
        nbytes: int,
        args: dict[str, Any],
        ctx: CollectiveContext,
    ) -> Algorithm:
        if ctx.channel in STORAGE_CHANNELS:
            by_name = {a.name: a for a in candidates}
            least = S3_MIN_SCATTER_BYTES if ctx.channel == "s3" else MIN_SCATTER_BYTES
            big = size > 1 and nbytes >= least
            for name in ("scatter_reduce", "reduce_publish") if big else ("reduce_publish",):
                if name in by_name:
                    return by_name[name]
        if previous is not None:
            return previous(candidates, size, nbytes, args, ctx)
        return candidates[0]

    return choose


class StorageAllreduce(_Storage):
    """Reduce at rank 0 in rank order, then one upload of the result read by all."""

    collective = "allreduce"
    name = "reduce_publish"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(1, nbytes, max(size - 1, 0)), Step(1, nbytes, 1)]

    async def run(self, ctx: CollectiveContext, *, x: Any, op: Op) -> Any:
        values = await gather_to(ctx, x, 0, 0)
        if ctx.rank == 0:
            assert values is not None
            result = fold(op, values, 0)
            await publish(ctx, result, list(range(ctx.size)), 1)
            return result
        return await ctx.recv(0, 1)


class RedisCounterBarrier(Algorithm):
    """Arrivals counted by ``INCR``; the last arriver releases everyone.

    Every rank increments the barrier's counter ``{prefix}:{job}:bar:{name}``
    (one round trip, with a TTL), where ``name`` is the communicator's
    collective context, the world rank of its rank 0 (split communicators
    share a context but not members) and the call's sequence number, so
    repeated barriers and barriers of split or duplicated communicators never
    share a key. The rank that reads ``size`` deletes the key and pushes an
    empty release message into every other rank's mailbox, all in one
    pipelined write; the others wait for it on their mailbox's ``BLPOP``. No
    ``KEYS``/``SCAN``, nothing left behind; a counter whose barrier timed out
    or was cancelled is deleted when its ranks close their channels.
    """

    collective = "barrier"
    name = "redis_counter"
    channels = frozenset({"redis"})

    def applicable(self, size: int, nbytes: int, args: dict[str, Any]) -> bool:
        return size >= COUNTER_BARRIER_MIN_SIZE

    def steps(self, size: int, nbytes: int) -> list[Step]:
        # The INCR round trip, then the last arriver's release.
        return [Step(2, 0, 1)] if size > 1 else []

    def traffic(self, size: int, nbytes: int) -> tuple[int, int]:
        """``size`` increments and ``size - 1`` releases (requests, bytes)."""
        return (2 * size - 1, 0) if size > 1 else (0, 0)

    def work(self, size: int, nbytes: int) -> Any:
        """For the model (:mod:`afmi.model.work`): every increment and release is a
        request written and a reply or message read; no payload, no reduction. Only
        the ``size - 1`` ranks the release lets through wait for a message."""
        from afmi.model.work import Work

        n = 2 * size - 1 if size > 1 else 0
        return Work(n, 0, n, 0, waits=max(size - 1, 0))

    async def run(self, ctx: CollectiveContext) -> None:
        if ctx.size == 1:
            return
        ep = ctx._ep
        channel = ep.channels[ctx.channel]
        arrive = getattr(channel, "arrive", None)
        released = getattr(channel, "released", None)
        if arrive is None or released is None:
            raise ValueError(
                f"the redis_counter barrier needs the redis channel, not {ctx.channel}"
            )
        name = f"{ctx._context}:{ctx._group[0]}:{ctx._base}"
        if await arrive(name, ctx.size):
            await publish(ctx, None, list(range(ctx.size)))
            return
        await ep.arrival(ep.post(ctx._context, ANY_SOURCE, ctx._tag(0)))
        released(name)


#: Collectives that run their ``linear`` algorithm on S3 (fewest rounds; bcast and
#: allreduce have algorithms of their own for storage channels).
LINEAR_ON_S3 = (
    "barrier",
    "gather",
    "scatter",
    "reduce",
    "allgather",
    "alltoall",
    "reduce_scatter",
    "scan",
    "exscan",
)


def _linear_on_s3(previous: Chooser | None) -> Chooser:
    """On S3 pick the ``linear`` algorithm; other channels keep ``previous``.

    Every S3 round costs a PUT and a LIST poll of tens of milliseconds, and a
    rank's concurrent requests overlap, so the fewest rounds win over the
    fewest messages per rank: the centralised algorithms take one or two
    rounds, the trees and rings ``log2 size`` or ``size - 1``. Measured on
    moto (docs/storage.md), linear against the registry's previous pick:
    barrier 156 vs 248 ms on 4 ranks and 670 vs 915 ms on 8 (dissemination);
    on 8 ranks with 4 KiB a gather 126 vs 210 ms (binomial), an allgather 200
    vs 611 ms (Bruck), a reduce_scatter 222 vs 712 ms (ring).
    """

    def choose(
        candidates: list[Algorithm],
        size: int,
        nbytes: int,
        args: dict[str, Any],
        ctx: CollectiveContext,
    ) -> Algorithm:
        if ctx.channel == "s3":
            for a in candidates:
                if a.name == "linear":
                    return a
        if previous is not None:
            return previous(candidates, size, nbytes, args, ctx)
        return candidates[0]

    return choose


for _cls in (StorageBcast, StorageAllreduce, ScatterReduceAllreduce, RedisCounterBarrier):
    register(_cls())
set_chooser("allreduce", _choose_allreduce(set_chooser("allreduce", None)))
for _collective in LINEAR_ON_S3:
    set_chooser(_collective, _linear_on_s3(set_chooser(_collective, None)))
