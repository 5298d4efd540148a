"""The clairvoyant loader: prefetch in plan order from tiers, peers and the origin.

Usage (every rank, together, since starting the loader duplicates ``comm``)::

    plan = AccessPlan(len(source), comm.size, global_batch_size=64, epochs=3, seed=1)
    async with Loader(source, plan, comm=comm, memory_bytes=256 << 20) as loader:
        for epoch in range(plan.epochs):
            async for batch in loader.epoch(epoch):
                ...                      # batch: this rank's share, in plan order
    print(loader.stats())

For every sample the loader reads, in the order the plan gives, it picks the
source the model predicts best among: a local tier holding it, the peer whose
home it is (once that peer has read it), and the origin. A peer answering
"not there yet" makes the loader read the origin instead. Samples this rank
is the home of are kept in its tiers when first read; spare tier capacity
holds samples read again soon (see :mod:`afmi.data.placement`).

At most ``prefetch`` samples are fetched ahead of the consumer (the bounded
staging window): a slow consumer stops the fetching (backpressure). Batches
come out strictly in plan order, every batch of the epoch, including empty
shares.

Cancellation: leaving ``async for`` early (``break``, an exception, a
cancelled task) cancels the epoch's background fetches; call
``await it.aclose()`` to wait for that, or let the iterator go (it cancels
them when collected), or close the loader, which closes every iterator.
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from afmi.comm import Communicator
from afmi.data.model import SourceModel, peer_cost_for_channel
from afmi.data.peers import PeerService
from afmi.data.placement import NextUseCache, Placement
from afmi.data.plan import AccessPlan
from afmi.data.sources import SampleReadError, Source
from afmi.data.stats import EpochStats
from afmi.data.tiers import DiskTier, MemoryTier, Tier
from afmi.errors import ArgumentError

__all__ = ["EpochIterator", "Loader", "default_collate"]

Collate = Callable[[list[Any]], Any]


def default_collate(samples: list[Any]) -> Any:
    """Stack arrays (and numbers) into one array; tuples/lists of them field by field.

    Anything else is returned as the list it is; an empty batch is ``[]``.
    """
    if not samples:
        return []
    first = samples[0]
    if isinstance(first, np.ndarray):
        return np.stack(samples)
    if isinstance(first, (int, float, np.number)) and not isinstance(first, bool):
        return np.asarray(samples)
    if isinstance(first, (tuple, list)) and all(
        isinstance(s, type(first)) and len(s) == len(first) for s in samples
    ):
        return type(first)(default_collate(list(field)) for field in zip(*samples))
    return samples


def _nonneg_int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ArgumentError(f"{name} must be an int >= 0, got {value!r}")
    return value


class Loader:
    """One rank's clairvoyant data loader; see the module docstring.

    Args:
        source: the origin (:class:`~afmi.data.sources.S3Source`, ...). Not closed by the loader.
        plan: the access plan; ``plan.num_samples`` must equal ``len(source)``.
        comm: communicator of the ranks reading (``size == plan.world_size``); None: no peers.
        rank: this rank in the plan when ``comm`` is None (default 0).
        memory_bytes: memory tier budget, bytes.
        disk_bytes: disk tier budget, bytes (needs ``disk_dir``).
        disk_dir: directory for the disk tier (a private subdirectory is made and removed).
        memory_concurrency, disk_concurrency: concurrent reads/writes per tier.
        prefetch: staging window, in samples fetched ahead of the consumer.
        model: source-choice model; default: HDMLP formulas with this source's and
            channel's parameters (see :mod:`afmi.data.model`).
        hint: ``"fast"`` or ``"cheap"`` for the default model.
        collate: False: batches are lists of samples; True: :func:`default_collate`;
            or a callable taking the list.
        peer_wait: seconds a holder waits for a sample it is fetching right now
            before answering "not there".
        peer_batch: most samples per peer request message.
        peer_timeout: seconds before an unanswered peer request counts as a miss.
        close_timeout: seconds :meth:`aclose` waits for the other ranks to finish.
    """

    def __init__(
        self,
        source: Source,
        plan: AccessPlan,
        *,
        comm: Communicator | None = None,
        rank: int | None = None,
        memory_bytes: int = 0,
        disk_bytes: int = 0,
        disk_dir: str | None = None,
        memory_concurrency: int = 64,
        disk_concurrency: int = 4,
        prefetch: int = 64,
        model: SourceModel | None = None,
        hint: Literal["fast", "cheap"] = "fast",
        collate: bool | Collate = False,
        peer_wait: float = 1.0,
        peer_batch: int = 64,
        peer_timeout: float = 30.0,
        close_timeout: float = 60.0,
    ) -> None:
        if not isinstance(source, Source):
            raise ArgumentError(f"source must be an afmi.data Source, got {type(source).__name__}")
        if not isinstance(plan, AccessPlan):
            raise ArgumentError(f"plan must be an AccessPlan, got {type(plan).__name__}")
        if len(source) != plan.num_samples:
            raise ArgumentError(
                f"the source has {len(source)} samples but the plan has {plan.num_samples}: "
                "build the plan with num_samples=len(source)"
            )
        if comm is not None:
            if comm.size != plan.world_size:
                raise ArgumentError(
                    f"the communicator has {comm.size} ranks but the plan has "
                    f"world_size={plan.world_size}"
                )
            if rank is not None and rank != comm.rank:
                raise ArgumentError("give rank= only without comm= (the comm's rank is used)")
            rank = comm.rank
        self.rank = plan._rank(0 if rank is None else rank)
        self.source = source
        self.plan = plan
        self._user_comm = comm
        self.memory_bytes = _nonneg_int(memory_bytes, "memory_bytes")
        self.disk_bytes = _nonneg_int(disk_bytes, "disk_bytes")
        if self.disk_bytes and disk_dir is None:
            raise ArgumentError("disk_bytes > 0 needs disk_dir= (where the disk tier lives)")
        self.disk_dir = disk_dir
        self.memory_concurrency = memory_concurrency
        self.disk_concurrency = disk_concurrency
        if type(prefetch) is not int or prefetch < 1:
            raise ArgumentError(f"prefetch must be an int >= 1 (samples ahead), got {prefetch!r}")
        self.prefetch = prefetch
        if model is None:
            channel = comm.endpoint.default_channel if comm is not None else "local"
            model = SourceModel(
                {"origin": source.default_cost, "peer": peer_cost_for_channel(channel)},
                hint=hint,
                concurrency={"origin": plan.world_size, "memory": 1, "disk": disk_concurrency},
            )
        elif not isinstance(model, SourceModel):
            raise ArgumentError(f"model must be a SourceModel, got {type(model).__name__}")
        self.model = model
        if collate is True:
            self._collate: Collate | None = default_collate
        elif collate is False or collate is None:
            self._collate = None
        elif callable(collate):
            self._collate = collate
        else:
            raise ArgumentError(f"collate must be True, False or a callable, got {collate!r}")
        self.peer_wait = peer_wait
        self.peer_batch = peer_batch
        self.peer_timeout = peer_timeout
        self.close_timeout = close_timeout
        self.placement: Placement | None = None
        self.tiers: list[Tier] = []
        self._caches: list[NextUseCache] = []
        self._peers: PeerService | None = None
        self._comm: Communicator | None = None
        self._origin_sem = asyncio.Semaphore(max(1, source.max_concurrency))
        self._inflight: dict[int, asyncio.Future[bytes | None]] = {}
        self._epochs: dict[int, EpochStats] = {}
        self._iterators: weakref.WeakSet[EpochIterator] = weakref.WeakSet()
        self._stream: _Stream | None = None
        self._obtaining: set[int] = set()
        self._observed: dict[str, collections.deque[tuple[int, float]]] = {
            k: collections.deque(maxlen=1000) for k in ("peer", "origin")
        }
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Loader rank {self.rank}/{self.plan.world_size} of {self.source!r}>"

    # -- life cycle --
    async def start(self) -> Loader:
        """Compute the placement, open the tiers and start the peer service.

        With a communicator this is collective: every rank must call it.
        """
        if self._started:
            return self
        self._started = True
        caps = [self.memory_bytes, self.disk_bytes]
        if self._user_comm is not None and self._user_comm.size > 1:
            self._comm = await self._user_comm.dup()
            all_caps = await self._comm.allgather(caps)
        else:
            all_caps = [caps] * self.plan.world_size
        self.placement = Placement(self.plan, self.source.manifest.sizes, all_caps)
        self.tiers = [MemoryTier(self.memory_bytes, self.memory_concurrency)]
        if self.disk_bytes:
            assert self.disk_dir is not None
            self.tiers.append(DiskTier(self.disk_dir, self.disk_bytes, self.disk_concurrency))
        reserved = self.placement.reserved[self.rank]
        self._caches = [NextUseCache(t.capacity - reserved[i]) for i, t in enumerate(self.tiers)]
        if self._comm is not None:
            memory = self.tiers[0]
            assert isinstance(memory, MemoryTier)
            self._peers = PeerService(
                self._comm, self._lookup, self.peer_batch, self.peer_timeout, peek=memory.peek
            )
            self._peers.start()
        return self

    async def __aenter__(self) -> Loader:
        return await self.start()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.aclose(wait_for_peers=exc_type is None)

    async def aclose(self, wait_for_peers: bool = True) -> None:
        """Stop every epoch iterator and the peer service; empty the tiers. Idempotent.

        With ``wait_for_peers`` (the default on a clean exit) the ranks first
        meet in a barrier, so no rank stops serving while another still needs it.
        """
        if self._closed:
            return
        self._closed = True
        for it in list(self._iterators):
            await it.aclose()
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        try:
            if self._peers is not None:
                await self._peers.drain()
                if wait_for_peers and self._comm is not None:
                    await self._comm.barrier(timeout=self.close_timeout)
        finally:
            if self._peers is not None:
                await self._peers.aclose()
            for tier in self.tiers:
                await tier.aclose()

    # -- delivery --
    def epoch(self, epoch: int) -> EpochIterator:
        """This rank's batches of ``epoch``, in plan order (``async for batch in ...``)."""
        if not self._started:
            raise ArgumentError(
                "the loader is not started: use `async with Loader(...) as loader` or "
                "`await loader.start()` first"
            )
        if self._closed:
            raise ArgumentError("the loader is closed")
        epoch = self.plan._epoch(epoch)
        it = EpochIterator(self, epoch)
        self._iterators.add(it)
        return it

    async def _take_stream(self, epoch: int) -> _Stream:
        stream, self._stream = self._stream, None
        if stream is not None:
            if stream.epoch == epoch and not stream.closed:
                return stream
            await stream.aclose()
        return _Stream(self, epoch)

    def _give_back_stream(self, stream: _Stream) -> None:
        if stream.epoch >= self.plan.epochs or self._closed:
            stream.cancel()  # nothing left to prefetch (the producer has ended)
            return
        old, self._stream = self._stream, stream
        if old is not None:
            old.cancel()

    # -- statistics --
    def stats(self) -> dict[str, Any]:
        """Per-epoch metrics, totals, what this rank served to peers, and its placement."""
        epochs = [self._epochs[e].to_dict() for e in sorted(self._epochs)]
        total: dict[str, Any] = {
            "samples": {},
            "bytes": {},
            "origin_requests": 0,
            "peer_requests": 0,
            "peer_misses": 0,
            "evictions": 0,
            "stall_seconds": 0.0,
        }
        for e in epochs:
            for key in ("samples", "bytes"):
                for k, v in e[key].items():
                    total[key][k] = total[key].get(k, 0) + v
            for key in ("origin_requests", "peer_requests", "peer_misses", "evictions"):
                total[key] += e[key]
            total["stall_seconds"] += e["stall_seconds"]
        placement: dict[str, Any] = {}
        if self.placement is not None:
            placement = {
                "home_samples": [
                    int(self.placement.homes(self.rank, t).size) for t in range(len(self.tiers))
                ],
                "home_bytes": list(self.placement.reserved[self.rank][: len(self.tiers)]),
                "coverage": self.placement.coverage(),
            }
        peers = self._peers
        return {
            "rank": self.rank,
            "epochs": epochs,
            "total": total,
            "served": {
                "samples": peers.served_samples if peers else 0,
                "bytes": peers.served_bytes if peers else 0,
                "misses": peers.served_misses if peers else 0,
            },
            "placement": placement,
        }

    def calibrate(self) -> SourceModel:
        """Refit the model's peer and origin latency/bandwidth to the reads measured so far."""
        for kind, obs in self._observed.items():
            if len(obs) >= 2:
                self.model = self.model.calibrate(kind, list(obs))
        return self.model

    # -- fetching one sample --
    def _epoch_stats(self, epoch: int) -> EpochStats:
        st = self._epochs.get(epoch)
        if st is None:
            st = self._epochs[epoch] = EpochStats(epoch)
        return st

    async def _lookup(self, sample: int) -> bytes | None:
        """Serve a peer: the sample from a local tier, or once this rank has fetched it.

        A sample whose home is this rank but which is not here yet (this rank
        is fetching it, or will within moments) is waited for up to
        ``peer_wait`` seconds; then the answer is None ("not there yet").
        """
        for tier in self.tiers:
            if sample in tier:
                data = await tier.get(sample)
                if data is not None:
                    return data
        pending = self._inflight.get(sample)
        if pending is None:
            assert self.placement is not None
            home = self.placement.holder(sample)
            if home is None or home[0] != self.rank or home[1] >= len(self.tiers):
                return None
            pending = asyncio.get_running_loop().create_future()
            self._inflight[sample] = pending
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.peer_wait)
        except TimeoutError:
            if sample not in self._obtaining and self._inflight.get(sample) is pending:
                del self._inflight[sample]  # nobody is fetching it: do not keep the future
            return None

    def _from_memory(self, sample: int, step: int, stats: EpochStats) -> bytes | None:
        memory = self.tiers[0]
        assert isinstance(memory, MemoryTier)
        data = memory.peek(sample)
        if data is not None:
            self._used_from_tier(0, sample, step)
            stats.record("memory", len(data))
        return data

    async def _obtain(self, sample: int, step: int, stats: EpochStats) -> bytes:
        assert self.placement is not None
        for t, tier in enumerate(self.tiers):
            if sample in tier:
                cached = await tier.get(sample)
                if cached is not None:
                    self._used_from_tier(t, sample, step)
                    stats.record(tier.kind, len(cached))
                    return cached
        if sample in self._obtaining:  # this rank is fetching it already (previous epoch)
            early = await asyncio.shield(self._inflight[sample])
            if early is not None:
                assert self.placement is not None
                home = self.placement.holder(sample)
                stats.record(self.tiers[home[1]].kind if home else "memory", len(early))
                return early
        size = self.source.size(sample)
        home = self.placement.holder(sample)
        candidates = ["origin"]
        if (
            self._peers is not None
            and home is not None
            and home[0] != self.rank
            and int(self.placement.fill_step[sample]) < step
        ):
            candidates.append("peer")
        kind = self.model.choose(size, candidates)
        data: bytes | None = None
        mine = home is not None and home[0] == self.rank
        waiter: asyncio.Future[bytes | None] | None = None
        if mine:  # peers may be waiting for this fetch
            waiter = self._inflight.get(sample)
            if waiter is None:
                waiter = self._inflight[sample] = asyncio.get_running_loop().create_future()
            self._obtaining.add(sample)
        try:
            if kind == "peer":
                assert self._peers is not None and home is not None
                t0 = time.perf_counter()
                data = await self._peers.fetch(home[0], sample)
                if data is None:
                    stats.peer_misses += 1
                else:
                    self._observed["peer"].append((len(data), time.perf_counter() - t0))
                    stats.record("peer", len(data))
            if data is None:
                data = await self._read_origin(sample, stats)
                stats.record("origin", len(data))
            await self._keep(sample, step, data, home, stats)
        finally:
            if waiter is not None:
                self._obtaining.discard(sample)
                if self._inflight.get(sample) is waiter:
                    del self._inflight[sample]
                if not waiter.done():
                    waiter.set_result(data)
        return data

    async def _read_origin(self, sample: int, stats: EpochStats) -> bytes:
        async with self._origin_sem:
            t0 = time.perf_counter()
            stats.origin_requests += self.source.requests_for(sample)
            try:
                data = await self.source.read(sample)
            except SampleReadError:
                raise
            except Exception as exc:
                raise SampleReadError(
                    sample, self.source.describe(sample), f"{type(exc).__name__}: {exc}"
                ) from exc
            self._observed["origin"].append((len(data), time.perf_counter() - t0))
        expected = self.source.size(sample)
        if len(data) != expected:
            raise SampleReadError(
                sample,
                self.source.describe(sample),
                f"got {len(data)} bytes, the manifest says {expected}",
            )
        return data

    def _used_from_tier(self, t: int, sample: int, step: int) -> None:
        cache = self._caches[t]
        if sample in cache:
            if cache.touch(sample, self.plan.next_use(self.rank, sample, step)):
                self.tiers[t].remove(sample)

    async def _keep(
        self,
        sample: int,
        step: int,
        data: bytes,
        home: tuple[int, int] | None,
        stats: EpochStats,
    ) -> None:
        if home is not None and home[0] == self.rank and home[1] < len(self.tiers):
            await self.tiers[home[1]].put(sample, data)
            return
        if not self.tiers or all(c.capacity == 0 for c in self._caches):
            return
        next_step = self.plan.next_use(self.rank, sample, step)
        if next_step is None:
            return
        for t, cache in enumerate(self._caches):
            victims = cache.offer(sample, len(data), next_step)
            if victims is None:
                continue
            for v in victims:
                self.tiers[t].remove(v)
            stats.evictions += len(victims)
            try:
                await self.tiers[t].put(sample, data)
            except BaseException:
                cache.discard(sample)
                raise
            return


class _Stream:
    """The prefetch stream: fetch tasks in plan order, at most ``prefetch`` ahead.

    It starts at one epoch and runs on into the following ones, so the next
    epoch's first batches are ready when the consumer gets there. The producer
    task does not reference the stream or the iterator (they can be collected).
    """

    def __init__(self, loader: Loader, epoch: int) -> None:
        #: The epoch the consumer reads next from this stream.
        self.epoch = epoch
        self.queue: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue(
            maxsize=max(1, loader.prefetch - 1)  # plus the one being enqueued
        )
        self.tasks: set[asyncio.Task[Any]] = set()
        self.producer: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._produce(loader, epoch, self.queue, self.tasks)
        )
        self.closed = False

    @staticmethod
    async def _produce(
        loader: Loader,
        start: int,
        queue: asyncio.Queue[asyncio.Future[bytes]],
        tasks: set[asyncio.Task[Any]],
    ) -> None:
        loop = asyncio.get_running_loop()
        plan = loader.plan
        for epoch in range(start, plan.epochs):
            stats = loader._epoch_stats(epoch)
            for j, share in enumerate(plan.batches(loader.rank, epoch)):
                step = plan.step_of(epoch, j)
                for sample in share.tolist():
                    ready = loader._from_memory(sample, step, stats)
                    item: asyncio.Future[bytes]
                    if ready is not None:  # a memory hit needs no task
                        item = loop.create_future()
                        item.set_result(ready)
                    else:
                        task = loop.create_task(loader._obtain(sample, step, stats))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        item = task
                    await queue.put(item)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel the producer and every fetch (synchronous); return the tasks."""
        self.closed = True
        tasks = [*self.tasks, self.producer]
        for task in tasks:
            task.cancel()
        return tasks

    def pending(self) -> int:
        """Tasks still running."""
        return sum(1 for t in (*self.tasks, self.producer) if not t.done())

    async def aclose(self) -> None:
        """Cancel everything and wait for it to end."""
        tasks = self.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


class EpochIterator:
    """Batches of one epoch for one rank; see :meth:`Loader.epoch`."""

    def __init__(self, loader: Loader, epoch: int) -> None:
        self._loader = loader
        self.epoch = epoch
        self._batches = loader.plan.batches(loader.rank, epoch)
        self._next = 0
        self._stream: _Stream | None = None
        self._closed = False
        self._t0 = 0.0
        self._requests0 = 0
        self.stats = loader._epoch_stats(epoch)

    def __aiter__(self) -> EpochIterator:
        return self

    async def __aenter__(self) -> EpochIterator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __len__(self) -> int:
        return len(self._batches)

    async def __anext__(self) -> Any:
        if self._closed or self._next >= len(self._batches):
            await self.aclose()
            raise StopAsyncIteration
        loader = self._loader
        if self._stream is None:
            self._t0 = time.perf_counter()
            peers = loader._peers
            self._requests0 = peers.requests_sent if peers is not None else 0
            self._stream = await loader._take_stream(self.epoch)
        stream = self._stream
        share = self._batches[self._next]
        t0 = time.perf_counter()
        out = []
        try:
            for sample in share.tolist():
                task = await stream.queue.get()
                data = await task
                out.append(loader.source.decode(sample, data))
        except BaseException:
            await self.aclose()
            raise
        self.stats.stall_seconds += time.perf_counter() - t0
        self.stats.batches += 1
        peers = loader._peers
        if peers is not None:
            self.stats.peer_requests = peers.requests_sent - self._requests0
        self._next += 1
        if self._next >= len(self._batches):
            self.stats.seconds += time.perf_counter() - self._t0
            stream.epoch = self.epoch + 1
            self._stream = None
            self._closed = True
            loader._give_back_stream(stream)
        collate = loader._collate
        return collate(out) if collate is not None else out

    async def aclose(self) -> None:
        """Stop this epoch: cancel the background fetches and wait for them. Idempotent."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    def pending(self) -> int:
        """Background tasks of this iterator still running."""
        return self._stream.pending() if self._stream is not None else 0

    def __del__(self) -> None:
        stream = self._stream
        if stream is not None and not stream.closed:
            try:
                stream.cancel()
            except RuntimeError:  # the loop is already closed
                pass
