"""Measurements on afmi channels: OSU-style ping-pong, bursts, fan-out, collectives.

Every measurement runs its ranks as tasks of one event loop through
:func:`afmi.launch_local` on the named channel, and follows the OSU / mpi4py
method: warm-up iterations first, then timed iterations; ping-pong reports
half the round-trip time. Iteration counts shrink for large messages and are
capped by a time budget per point, decided by rank 0 after the warm-up and
sent to the others so every rank runs the same count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from afmi.comm import Communicator
from afmi.config import Config
from afmi.launch import launch_local, new_event_loop

__all__ = [
    "Budget",
    "ClockStartLine",
    "MachineWatch",
    "LoopStartLine",
    "StartLine",
    "collective_latency",
    "fanout_time",
    "burst_time",
    "pingpong",
    "point_budget",
    "reference_s",
    "sizes",
    "start_jitter_s",
]


@dataclass(frozen=True)
class Budget:
    """Iterations and time allowed per measured point."""

    #: Timed iterations for messages up to 8 KiB, and above.
    iters_small: int = 1000
    iters_large: int = 100
    #: Warm-up iterations for messages up to 8 KiB, and above.
    warmup_small: int = 100
    warmup_large: int = 10
    #: Stop adding iterations once a point would take longer than this, seconds.
    seconds_per_point: float = 1.0
    #: Never fewer timed iterations than this.
    min_iters: int = 3

    @classmethod
    def quick(cls) -> Budget:
        """A budget for a fast smoke run (``--quick``)."""
        return cls(100, 10, 10, 2, 0.15, 2)

    def plan(self, nbytes: int) -> tuple[int, int]:
        """``(warmup, iterations)`` before the time cap."""
        if nbytes <= 8192:
            return self.warmup_small, self.iters_small
        return self.warmup_large, self.iters_large

    def cap(self, iters: int, seconds_per_iter: float) -> int:
        """Iterations that fit the time budget."""
        if seconds_per_iter <= 0:
            return iters
        return max(self.min_iters, min(iters, int(self.seconds_per_point / seconds_per_iter)))


def sizes(max_bytes: int = 1 << 24, quick: bool = False) -> list[int]:
    """Message sizes 2^0 .. max_bytes (every power of two; every fourth with ``quick``)."""
    step = 4 if quick else 1
    out = [1 << e for e in range(0, max_bytes.bit_length(), step) if (1 << e) <= max_bytes]
    return out


#: Channels whose points get a multiple of the budget (in process and across
#: processes, not with ``quick``). An S3 call takes 10-300 ms on moto, so half a
#: second a point timed 1 to 10 calls a pass; in one run each of the S3 sweep, a
#: point's passes lay apart by a median of 49 % with the plain budget, 32 % with
#: three times it, 21 % with three times it and :func:`start_jitter_s`.
BUDGET_SCALE: dict[str, float] = {"s3": 3.0}


def point_budget(
    quick: bool = False, seconds_per_point: float | None = None, channel: str | None = None
) -> Budget:
    """The bench's budget of one point (all its passes together): half a second, a
    ``quick`` one, or ``seconds_per_point``; times :data:`BUDGET_SCALE` for ``channel``
    (not with ``quick``)."""
    b = Budget.quick() if quick else Budget(seconds_per_point=0.5)
    if seconds_per_point is not None:
        b = dataclasses.replace(b, seconds_per_point=seconds_per_point)
    scale = BUDGET_SCALE.get(channel, 1.0) if channel and not quick else 1.0
    if scale != 1.0:
        b = dataclasses.replace(b, seconds_per_point=b.seconds_per_point * scale)
    return b


def _payload(nbytes: int) -> np.ndarray:
    return np.ones(nbytes, dtype=np.uint8)


def _run(main: Callable[..., Any], size: int, channel: str, config: Config, *args: Any) -> Any:
    import asyncio

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(launch_local(main, size, *args, channel=channel, config=config))


#: Storage request types a :class:`Tally` counts only while its rank is in a timed call
#: (a poller's LISTs go on between calls, for no call); every other type (writes,
#: reads, deletes) is made for a timed message whenever it comes, and is counted over
#: the whole timed loop: S3's poller fetches a message as soon as a LIST shows it,
#: which may be before its rank has entered the call that receives it.
SPAN_COUNTED = ("list",)


class Tally:
    """The storage requests (:func:`storage_requests`) of a rank's timed calls, in
    ``total`` once :meth:`end` is called: the polls (:data:`SPAN_COUNTED`) made
    between each :meth:`start` and :meth:`stop`, every other type from the tally's
    creation to :meth:`end`. A rank whose channels count no requests (or no ``comm``)
    does nothing (``counting`` is false)."""

    def __init__(self, comm: Communicator | None) -> None:
        first = storage_requests(comm) if comm is not None else None
        self.comm = comm if first is not None else None
        self.total: dict[str, int] = {}
        self._first: dict[str, int] = first or {}
        self._spans: dict[str, int] = {}
        self._before: dict[str, int] = {}

    @property
    def counting(self) -> bool:
        """Whether the rank's channels count their requests."""
        return self.comm is not None

    def start(self) -> None:
        """A timed call begins."""
        if self.comm is not None:
            self._before = storage_requests(self.comm) or {}

    def stop(self) -> None:
        """The timed call ends: add its polls."""
        if self.comm is None:
            return
        now = storage_requests(self.comm) or {}
        for kind in SPAN_COUNTED:
            self._spans[kind] = self._spans.get(kind, 0) + now.get(kind, 0)
            self._spans[kind] -= self._before.get(kind, 0)

    def end(self) -> dict[str, int]:
        """The timed calls are over: ``total`` (also returned)."""
        if self.comm is not None:
            now = storage_requests(self.comm) or {}
            self.total = {k: n - self._first.get(k, 0) for k, n in now.items()}
            self.total.update(self._spans)
        return self.total


def per_count(tallies: Sequence[Mapping[str, float]] | None, count: int) -> dict[str, float]:
    """Requests by type summed over ``tallies`` (ranks' :meth:`Tally.end`, or passes'
    ``requests_per_call``), per one of ``count``."""
    out: dict[str, float] = {}
    for counted in tallies or []:
        for kind, n in counted.items():
            out[kind] = out.get(kind, 0.0) + n / count
    return out


async def _timed(
    iters: int, one: Callable[[], Any], pause: Pauses | None = None, tally: Tally | None = None
) -> float:
    """Seconds per iteration: the median of up to five batch means (robust to interference).

    With ``pause``, every iteration starts after a sleep of ``pause.next()`` seconds,
    which is not timed (see :func:`start_jitter_s`). ``tally`` counts the storage
    requests of the timed iterations (not those of the pauses).
    """
    tally = tally or Tally(None)
    batches = min(5, iters)
    per_batch = [iters // batches + (1 if i < iters % batches else 0) for i in range(batches)]
    means = []
    for count in per_batch:
        if pause is None:
            tally.start()
            t0 = time.perf_counter()
            for _ in range(count):
                await one()
            means.append((time.perf_counter() - t0) / count)
            tally.stop()
            continue
        spent = 0.0
        for _ in range(count):
            await asyncio.sleep(pause.next())
            tally.start()
            t0 = time.perf_counter()
            await one()
            spent += time.perf_counter() - t0
            tally.stop()
        means.append(spent / count)
    means.sort()
    mid = len(means) // 2
    return means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2


#: Calls on a channel whose receivers poll start after a random pause of up to this
#: many of its shortest poll intervals (:func:`start_jitter_s`).
JITTER_POLL_INTERVALS = 4.0


def start_jitter_s(channel: str, config: Config) -> float:
    """Longest random pause before each timed call on ``channel``, seconds (0: none).

    A receiver on S3 finds a message with its next LIST: it lists again at once
    after a message, then waits ``poll_min`` and doubles the wait while nothing
    comes. Calls started on a fixed beat lock into one phase of that cycle, and
    the bench would measure that phase only: 2-rank S3 bcasts of 1 KiB to 256 KiB
    took no longer than 1 B, because the first LIST after the root's PUT
    happened to start as the PUT ended, while a 1 B bcast met the poller in
    the middle of its wait. A user's calls meet the poller at any phase, so on
    such a channel every timed call starts after a pause drawn uniformly from
    ``[0, JITTER_POLL_INTERVALS * poll_min)`` (the pause is not timed), the
    same pauses on every rank (:class:`Pauses`).
    """
    if channel == "s3":
        return JITTER_POLL_INTERVALS * config.channels.s3.poll_min
    return 0.0


class Pauses:
    """The random pauses before timed calls: the same sequence on every rank of a point.

    Pause ``i`` depends only on the seed and ``i`` (:meth:`at`), so ranks that
    share the seed pause alike without waiting for one another; ``longest_s`` 0
    gives no pauses.
    """

    def __init__(self, longest_s: float, seed: int = 0) -> None:
        self.longest_s = max(float(longest_s), 0.0)
        self.seed = int(seed)
        self._count = 0

    def at(self, i: int) -> float:
        """Pause ``i``, seconds (uniform in ``[0, longest_s)``)."""
        if self.longest_s <= 0:
            return 0.0
        return random.Random(self.seed * 1_000_003 + i).uniform(0.0, self.longest_s)

    def next(self) -> float:
        """The pause after the last one :meth:`next` gave (the first is ``at(0)``)."""
        self._count += 1
        return self.at(self._count - 1)


#: Iterations of the reference loop that :class:`MachineWatch` times (about 0.3 ms
#: of one core at this machine's fastest).
REFERENCE_LOOPS = 5000
#: A point measured while the machine ran slower than this ratio of its fastest
#: (:class:`MachineWatch`) counts as measured on a slow machine; with retries
#: (``--slow-retries``) it is measured again and keeps its fastest attempt.
SLOW_MACHINE = 1.25
#: Retries of a point measured on a slow machine, by default. On this project's VM
#: the slow spells often last minutes: with 2 retries a run took 12.5 instead of
#: 6.5 minutes, and 65 % of its passes still ran slow.
SLOW_RETRIES = 0


def reference_s() -> float:
    """CPU seconds this thread takes for a fixed loop of Python (the fastest of 3).

    Thread CPU time, not wall time: with more ranks than cores the loop is not
    charged for the time other processes ran, only for how fast the core ran
    it. On this project's shared 2-core VM that speed changes from one second
    to the next by up to 1.7x (the same loop took 245-410 us in one half
    minute), and every call measured meanwhile slows down with it.
    """
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        x = 0
        for i in range(REFERENCE_LOOPS):
            x += i * i
        best = min(best, time.thread_time() - t0)
    return max(best, 1e-9)


class MachineWatch:
    """How fast the machine runs now, against the fastest it ran in this process.

    :meth:`sample` times :func:`reference_s` once per key: ranks that are tasks
    of one event loop share a watch (``shared``: they see the same samples, so
    they need not tell each other theirs); ranks in processes of their own each
    keep one. The fastest time of every watch of the process is the baseline
    (``fastest_s`` starts it lower, from an earlier process).
    """

    #: The fastest reference seen in this process, seconds.
    fastest_s = float("inf")

    def __init__(
        self, fastest_s: float | None = None, retries: int = SLOW_RETRIES, shared: bool = False
    ) -> None:
        if fastest_s is not None:
            MachineWatch.lower_baseline(fastest_s)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        #: How many times a point measured on a slow machine is measured again.
        self.retries = int(retries)
        #: Whether every rank of the measurement uses this one watch (one process).
        self.shared = shared
        self._samples: dict[Any, float] = {}
        self._slowdowns: dict[tuple[Any, ...], float] = {}

    @classmethod
    def lower_baseline(cls, seconds: float) -> None:
        """Take ``seconds`` (a reference time seen elsewhere) as the fastest, if it is."""
        if seconds > 0:
            MachineWatch.fastest_s = min(MachineWatch.fastest_s, float(seconds))

    def sample(self, key: Any) -> float:
        """The reference time for ``key`` (timed on the first call with it)."""
        seconds = self._samples.get(key)
        if seconds is None:
            seconds = self._samples[key] = reference_s()
            MachineWatch.lower_baseline(seconds)
        return seconds

    def slowdown(self, *keys: Any) -> float:
        """The slowest sample of ``keys`` over the fastest ever (1.0: full speed).

        Fixed the first time it is asked for: a rank sharing the watch that asks
        later, after a sample of the next point lowered the baseline, gets the
        same answer (else it could measure the point again alone, and wait for
        the other ranks forever).
        """
        seconds = self._slowdowns.get(keys)
        if seconds is None:
            seconds = max(self._samples[k] for k in keys) / MachineWatch.fastest_s
            self._slowdowns[keys] = seconds
        return seconds


async def _steady(
    comm: Communicator, watch: MachineWatch, point: Any, attempt: Callable[[int], Any]
) -> tuple[Any, float]:
    """Run ``attempt(i)`` until the machine ran at speed through one (at most
    1 + ``watch.retries`` times); return ``(rank 0's fastest result, its slowdown)``.

    An attempt's slowdown is the slowest of every rank's reference before and
    after it (:class:`MachineWatch`). Ranks that share the watch already agree
    on it; otherwise, with retries every rank learns it (one allgather) and so
    makes the same decision, and without, only rank 0 does (one gather: on S3 a
    collective takes tens of milliseconds). Rank 0 compares
    results by their first element (seconds); the other ranks return their
    first attempt's result.
    """
    best: tuple[Any, float] | None = None
    for i in range(1 + watch.retries):
        watch.sample((point, i, 0))
        result = await attempt(i)
        watch.sample((point, i, 1))
        mine = watch.slowdown((point, i, 0), (point, i, 1))
        every: list[float] | None = None
        if not watch.shared:
            last = i == watch.retries
            every = await (comm.gather(mine, root=0) if last else comm.allgather(mine))
        slow = max(every) if every else mine
        if best is None or (comm.rank == 0 and result[0] < best[0][0]):
            best = (result, slow)
        if slow <= SLOW_MACHINE:
            break
    assert best is not None
    return best


async def _warm_then_count(comm: Communicator, budget: Budget, nbytes: int, one: Any) -> int:
    """Run the warm-up (``await one()`` per iteration) and agree on the timed count."""
    count, _ = await _warm_then_plan(comm, budget, nbytes, one)
    return count


async def _warm_then_plan(
    comm: Communicator, budget: Budget, nbytes: int, one: Any
) -> tuple[int, float]:
    """Run the warm-up and agree on ``(timed iterations, rank 0's seconds per iteration)``.

    One iteration first tells rank 0 how slow the point is; it then sends every
    rank the number of further warm-up iterations (at most a quarter of the
    time budget) and, after them, the number of timed iterations with the
    warm-up's seconds per iteration.
    """
    warm, iters = budget.plan(nbytes)
    t0 = time.perf_counter()
    await one()
    first = time.perf_counter() - t0
    more = min(warm - 1, int(budget.seconds_per_point / 4 / first)) if first > 0 else warm - 1
    more = int(await comm.bcast(max(more, 0) if comm.rank == 0 else 0, root=0))
    t0 = time.perf_counter()
    for _ in range(more):
        await one()
    per_iter = (time.perf_counter() - t0) / more if more else first
    plan = (budget.cap(iters, per_iter), per_iter) if comm.rank == 0 else None
    count, per_iter = await comm.bcast(plan, root=0)
    return int(count), float(per_iter)


async def _pingpong_main(
    comm: Communicator,
    nbytes_list: list[int],
    budget: Budget,
    jitter_s: float = 0.0,
    watch: MachineWatch | None = None,
) -> Any:
    """Ping-pong per size: ``(nbytes, iterations, half round trip s, slowdown, storage
    requests per message by type)`` on rank 0."""
    watch = watch or MachineWatch()
    out = []
    for nbytes in nbytes_list:
        pause = Pauses(jitter_s, seed=nbytes) if jitter_s > 0 else None
        buf = _payload(nbytes)

        async def one(buf: np.ndarray = buf) -> None:
            if comm.rank == 0:
                await comm.send(buf, 1)
                await comm.recv(1)
            elif comm.rank == 1:
                await comm.send(await comm.recv(0), 0)

        iters = 0

        async def attempt(
            i: int, one: Any = one, pause: Any = pause, nbytes: int = nbytes
        ) -> tuple[float, int, dict[str, float]]:
            nonlocal iters
            if i == 0:
                iters = await _warm_then_count(comm, budget, nbytes, one)
            await comm.barrier()
            tally = Tally(comm)
            seconds = await _timed(iters, one, pause, tally)
            if not tally.counting:  # no channel counts its requests: nothing to gather
                return seconds / 2, iters, {}
            every = await comm.gather(tally.end(), root=0)
            return seconds / 2, iters, per_count(every, 2 * iters)  # two messages an iteration

        (half, count, requests), slow = await _steady(comm, watch, ("send", nbytes), attempt)
        out.append((nbytes, count, half, slow, requests))
    return out


def pingpong(
    channel: str,
    nbytes_list: Sequence[int],
    config: Config | None = None,
    budget: Budget | None = None,
    progress: Callable[[str], None] | None = None,
    slow_retries: int = SLOW_RETRIES,
) -> list[dict[str, Any]]:
    """Ping-pong between two ranks: half round-trip seconds and bandwidth per size.

    A size measured on a slow machine is measured again up to ``slow_retries``
    times (:class:`MachineWatch`)."""
    config = config or Config()
    budget = budget or Budget()
    rows = []
    for nbytes in nbytes_list:
        if progress:
            progress(f"ping-pong {channel} {nbytes} B")
        jitter = start_jitter_s(channel, config)
        watch = MachineWatch(retries=slow_retries, shared=True)
        ((n, iters, half, slow, requests),) = _run(
            _pingpong_main, 2, channel, config, [nbytes], budget, jitter, watch
        )[0]
        rows.append(
            {
                "channel": channel,
                "nbytes": n,
                "iterations": iters,
                "latency_s": half,
                "bandwidth_bytes_per_s": n / half if half > 0 else 0.0,
                "machine_slowdown": slow,
            }
        )
        if requests:
            rows[-1]["requests_per_call"] = requests  # both ranks' requests, per message
    return rows


async def _burst_main(comm: Communicator, count: int, nbytes: int, budget: Budget) -> float:
    buf = _payload(nbytes)

    async def one() -> None:
        if comm.rank == 0:
            for _ in range(count):
                await comm.send(buf, 1)
            await comm.recv(1)
        else:
            for _ in range(count):
                await comm.recv(0)
            await comm.send(b"", 0)

    iters = await _warm_then_count(comm, budget, nbytes * count, one)
    await comm.barrier()
    return await _timed(iters, one)


def burst_time(
    channel: str,
    count: int,
    nbytes: int,
    config: Config | None = None,
    budget: Budget | None = None,
) -> float:
    """Seconds for ``count`` back-to-back messages to one peer plus its one-byte answer."""
    return float(
        _run(_burst_main, 2, channel, config or Config(), count, nbytes, budget or Budget())[0]
    )


async def _fanout_main(comm: Communicator, nbytes: int, budget: Budget) -> float:
    buf = _payload(nbytes)
    import asyncio

    async def one() -> None:
        if comm.rank == 0:
            await asyncio.gather(*(comm.send(buf, r) for r in range(1, comm.size)))
            for r in range(1, comm.size):
                await comm.recv(r)
        else:
            await comm.recv(0)
            await comm.send(b"", 0)

    iters = await _warm_then_count(comm, budget, nbytes * (comm.size - 1), one)
    await comm.barrier()
    return await _timed(iters, one)


def fanout_time(
    channel: str,
    peers: int,
    nbytes: int,
    config: Config | None = None,
    budget: Budget | None = None,
) -> float:
    """Seconds for one rank to send ``nbytes`` to each of ``peers`` ranks, and get answers."""
    return float(
        _run(_fanout_main, peers + 1, channel, config or Config(), nbytes, budget or Budget())[0]
    )


#: The collectives the bench measures, and how each rank calls them with its payload
#: and a result array of the payload's shape that every call of a point reuses.
#: allreduce writes into it (``out=``), as a training loop should and as mpi4py's
#: ``Allreduce(x, y)`` does: a fresh result per call can land on memory the machine
#: has not touched yet, and on this VM that made a 2-rank ``direct`` allreduce of
#: 8 MiB take about 40 ms instead of 8-10 ms in runs of ten calls or so (26 of 80
#: calls in one test, none of 80 with the result reused).
COLLECTIVES: dict[str, Callable[[Communicator, Any, Any], Any]] = {
    "barrier": lambda comm, buf, result: comm.barrier(),
    "bcast": lambda comm, buf, result: comm.bcast(buf if comm.rank == 0 else None, root=0),
    "allreduce": lambda comm, buf, result: comm.allreduce(buf, out=result),
    "gather": lambda comm, buf, result: comm.gather(buf, root=0),
}

#: Seconds before a scheduled start that a waiting rank stops sleeping and polls
#: the event loop instead (a rank woken from a sleep answers tens of µs late here,
#: and uvloop's timers fire up to a millisecond late).
SPIN_BEFORE_START_S = 0.002
#: A rank that first sees the clock past its start instant later than this was not
#: running at the instant (more ranks than cores: the OS ran another process), and is late.
LATE_AFTER_START_S = 200e-6


def _yield_core() -> None:
    """Let another ready process of the machine run (a no-op where the OS has no call)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


class StartLine(Protocol):
    """How the ranks of a collective measurement start each timed call together.

    The model predicts one call that every rank enters at the same instant, so
    the bench starts every rank at one instant, on the machine's one monotonic
    clock, and a call lasts from that instant to the last rank's exit. (A
    barrier before each call would not do: ranks leave a barrier one after
    another, up to a message latency apart, and that skew would be charged to
    the call: a gather, whose root waits for the last rank, looked twice as slow
    as a bcast with the same messages.)
    """

    async def agree(self, comm: Communicator, per_iter_s: float) -> None:
        """Called by every rank once before the timed calls of one point."""

    async def start(self, comm: Communicator, i: int) -> tuple[float, bool]:
        """Wait for the start of call ``i``: ``(start instant, whether this rank was late)``."""


class LoopStartLine:
    """Start line for ranks that are tasks of one event loop (the in-process bench).

    The last rank to arrive releases all of them in the same loop iteration: no
    rank is late and none polls while it waits. With ``jitter_s`` it first
    sleeps a random pause of up to that long (:func:`start_jitter_s`); the call
    starts when the pause ends.
    """

    def __init__(self, size: int, jitter_s: float = 0.0) -> None:
        self._size = size
        self._arrived = 0
        self._released: asyncio.Event | None = None
        self._instant = 0.0
        self._pauses = Pauses(jitter_s)

    async def agree(self, comm: Communicator, per_iter_s: float) -> None:
        """Nothing to agree on: arrival is the signal."""

    async def start(self, comm: Communicator, i: int) -> tuple[float, bool]:
        """Wait until every rank has arrived at call ``i`` (and the pause has passed)."""
        if self._released is None:
            self._released = asyncio.Event()
        released = self._released
        self._arrived += 1
        if self._arrived == self._size:
            self._arrived = 0
            pause = self._pauses.next()
            if pause > 0:
                await asyncio.sleep(pause)
            self._released = None
            self._instant = time.perf_counter()
            released.set()
        else:
            await released.wait()
        return self._instant, False


class ClockStartLine:
    """Start line for ranks in separate processes of one machine (``--processes``).

    Rank 0 sets a timetable: call ``i`` starts at ``first + i * slot`` on
    ``time.perf_counter`` (the machine's monotonic clock, shared by its
    processes), with ``slot`` twice the warm-up's time per call (barrier and
    call) plus :data:`SPIN_BEFORE_START_S`. A rank sleeps until just before its
    start, then polls the loop until the instant, giving its core to any other
    process that is ready (``os.sched_yield``: with more ranks than cores, a
    rank that spins would otherwise keep another from its start). A rank still
    busy with the previous call at a start is late, and so is one that first
    sees the clock past the instant more than :data:`LATE_AFTER_START_S` after
    it (the OS was running another process then); calls that any rank was late
    for are not counted. With ``jitter_s`` every start moves later by a random
    pause of up to that long (:func:`start_jitter_s`), the same on every rank
    (rank 0 sends the seed with the timetable), and the slot grows by it.
    """

    def __init__(self, jitter_s: float = 0.0) -> None:
        self._first = 0.0
        self._slot = 0.0
        self._jitter_s = max(float(jitter_s), 0.0)
        self._pauses = Pauses(0.0)

    def slot_s(self, per_iter_s: float) -> float:
        """Seconds between two starts, from the warm-up's seconds per call."""
        return 2 * per_iter_s + SPIN_BEFORE_START_S + self._jitter_s

    async def agree(self, comm: Communicator, per_iter_s: float) -> None:
        """Rank 0 sends the timetable; every rank receives it before the first start."""
        plan = None
        if comm.rank == 0:
            slot = self.slot_s(per_iter_s)
            plan = (time.perf_counter() + 2 * slot + 0.01, slot, random.randrange(1 << 30))
        first, slot, seed = await comm.bcast(plan, root=0)
        self._first, self._slot = float(first), float(slot)
        self._pauses = Pauses(self._jitter_s, seed=int(seed))

    async def start(self, comm: Communicator, i: int) -> tuple[float, bool]:
        """Wait for call ``i``'s start instant."""
        at = self._first + i * self._slot + self._pauses.at(i)
        now = time.perf_counter()
        if now > at:
            return at, True
        if at - now > SPIN_BEFORE_START_S:
            await asyncio.sleep(at - now - SPIN_BEFORE_START_S)
        while (now := time.perf_counter()) < at:  # noqa: ASYNC110 - a spin on the clock
            _yield_core()
            await asyncio.sleep(0)
        return at, now - at > LATE_AFTER_START_S


async def _collective_main(
    comm: Communicator,
    op: str,
    nbytes_list: list[int],
    budget: Budget,
    line: StartLine | None = None,
    watch: MachineWatch | None = None,
) -> list[tuple[int, int, float, int, float, dict[str, float]]]:
    """Time ``op`` per size: ``(nbytes, iterations, median seconds, late calls,
    slowdown, storage requests per call by type)`` on rank 0.

    ``line`` starts the calls (default: a :class:`ClockStartLine` without pauses).
    A point measured while the machine ran slow is measured again when ``watch``
    allows retries (:func:`_steady`).
    """
    call = COLLECTIVES[op]
    line = line or ClockStartLine()
    watch = watch or MachineWatch()
    out = []
    for nbytes in nbytes_list:
        buf = _payload(nbytes)
        result = np.empty_like(buf)

        async def with_op(buf: np.ndarray = buf, result: np.ndarray = result) -> None:
            await comm.barrier()
            await call(comm, buf, result)

        plan = (0, 0.0)

        async def attempt(
            i: int,
            buf: np.ndarray = buf,
            result: np.ndarray = result,
            with_op: Any = with_op,
            nbytes: int = nbytes,
        ) -> tuple[float, int, int, dict[str, float]]:
            nonlocal plan
            if i == 0:
                plan = await _warm_then_plan(comm, budget, nbytes, with_op)
            iters, per_iter = plan
            await line.agree(comm, per_iter)
            stamps = []
            # a rank's polls from the call's start to its own exit (its poller's LISTs
            # between calls belong to no call), its other requests over all the calls
            tally = Tally(comm)
            for k in range(iters):
                t0, late = await line.start(comm, k)
                tally.start()
                await call(comm, buf, result)
                stamps.append((t0, time.perf_counter(), late))
                tally.stop()
            every = await comm.gather((stamps, tally.end()), root=0)
            if comm.rank != 0:
                return 0.0, iters, 0, {}
            assert every is not None
            spans, late_calls = _spans([s for s, _ in every], iters)
            return _median(spans), iters, late_calls, per_count([t for _, t in every], iters)

        (seconds, iters, late_calls, requests), slow = await _steady(
            comm, watch, (op, nbytes), attempt
        )
        out.append((nbytes, iters, seconds, late_calls, slow, requests))
    return out


def storage_requests(comm: Communicator) -> dict[str, int] | None:
    """The storage requests this rank's channels made so far, by type (S3: ``put``,
    ``get``, ``list``, ``delete``, ...); None where no channel counts requests."""
    out: dict[str, int] | None = None
    for channel in comm.endpoint.channels.values():
        stats = channel.stats()
        if "requests" not in stats:
            continue
        out = out if out is not None else {}
        for kind, n in stats["requests"].items():
            out[kind] = out.get(kind, 0) + int(n)
    return out


def _spans(every: list[Any], iters: int) -> tuple[list[float], int]:
    """Each call's start to its last rank's exit, leaving out calls a rank was late for.

    Returns the spans and how many calls were left out (if every call was late,
    all are kept: a slow point still gets a figure, and the count says so).
    """
    spans = [max(s[i][1] for s in every) - every[0][i][0] for i in range(iters)]
    on_time = [span for i, span in enumerate(spans) if not any(s[i][2] for s in every)]
    return on_time or spans, iters - len(on_time)


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def collective_time(
    channel: str,
    op: str,
    ranks: int,
    nbytes: int,
    config: Config | None = None,
    budget: Budget | None = None,
) -> float:
    """Seconds per call of ``op`` on ``ranks`` ranks with ``nbytes`` (one point)."""
    rows = collective_latency(channel, op, ranks, [nbytes], config, budget)
    return float(rows[0]["latency_s"])


def collective_latency(
    channel: str,
    op: str,
    ranks: int,
    nbytes_list: Sequence[int],
    config: Config | None = None,
    budget: Budget | None = None,
    progress: Callable[[str], None] | None = None,
    slow_retries: int = SLOW_RETRIES,
) -> list[dict[str, Any]]:
    """Seconds per call of collective ``op`` on ``ranks`` ranks, for each payload size.

    Every rank enters each timed call at the same instant (:class:`LoopStartLine`:
    the last rank to arrive releases them all), and a call lasts from that
    instant to the last rank's exit. The median over the calls is reported.
    """
    if op not in COLLECTIVES:
        raise ValueError(f"unknown collective {op!r}; choose from {', '.join(COLLECTIVES)}")
    config = config or Config()
    budget = budget or Budget()
    if progress:
        progress(f"{op} {channel} {ranks} ranks")
    sizes_used = [0] if op == "barrier" else list(nbytes_list)
    line = LoopStartLine(ranks, start_jitter_s(channel, config))
    watch = MachineWatch(retries=slow_retries, shared=True)
    per_rank = _run(_collective_main, ranks, channel, config, op, sizes_used, budget, line, watch)
    rows = []
    for i, nbytes in enumerate(sizes_used):
        rows.append(
            {
                "channel": channel,
                "op": op,
                "ranks": ranks,
                "nbytes": nbytes,
                "iterations": per_rank[0][i][1],
                "latency_s": per_rank[0][i][2],
                "late_calls": per_rank[0][i][3],
                "machine_slowdown": per_rank[0][i][4],
            }
        )
        if per_rank[0][i][5]:
            # every rank's storage requests in the timed calls, per call (S3; Tally)
            rows[-1]["requests_per_call"] = per_rank[0][i][5]
    return rows
