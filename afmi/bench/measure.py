"""Measurements on afmi channels: OSU-style ping-pong, bursts, fan-out, collectives.

Every measurement runs its ranks as tasks of one event loop through
:func:`afmi.launch_local` on the named channel, and follows the OSU / mpi4py
method: warm-up iterations first, then timed iterations; ping-pong reports
half the round-trip time. Iteration counts shrink for large messages and are
capped by a time budget per point, decided by rank 0 after the warm-up and
sent to the others so every rank runs the same count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from afmi.comm import Communicator
from afmi.config import Config
from afmi.launch import launch_local, new_event_loop

__all__ = [
    "Budget",
    "collective_latency",
    "fanout_time",
    "burst_time",
    "pingpong",
    "sizes",
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


def _payload(nbytes: int) -> np.ndarray:
    return np.ones(nbytes, dtype=np.uint8)


def _run(main: Callable[..., Any], size: int, channel: str, config: Config, *args: Any) -> Any:
    import asyncio

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(launch_local(main, size, *args, channel=channel, config=config))


async def _timed(iters: int, one: Callable[[], Any]) -> float:
    """Seconds per iteration: the median of up to five batch means (robust to interference)."""
    batches = min(5, iters)
    per_batch = [iters // batches + (1 if i < iters % batches else 0) for i in range(batches)]
    means = []
    for count in per_batch:
        t0 = time.perf_counter()
        for _ in range(count):
            await one()
        means.append((time.perf_counter() - t0) / count)
    means.sort()
    mid = len(means) // 2
    return means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2


async def _warm_then_count(comm: Communicator, budget: Budget, nbytes: int, one: Any) -> int:
    """Run the warm-up (``await one()`` per iteration) and agree on the timed count.

    One iteration first tells rank 0 how slow the point is; it then sends every
    rank the number of further warm-up iterations (at most a quarter of the
    time budget) and, after them, the number of timed iterations.
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
    count = budget.cap(iters, per_iter) if comm.rank == 0 else 0
    return int(await comm.bcast(count, root=0))


async def _pingpong_main(comm: Communicator, nbytes_list: list[int], budget: Budget) -> Any:
    out = []
    for nbytes in nbytes_list:
        buf = _payload(nbytes)

        async def one(buf: np.ndarray = buf) -> None:
            if comm.rank == 0:
                await comm.send(buf, 1)
                await comm.recv(1)
            elif comm.rank == 1:
                await comm.send(await comm.recv(0), 0)

        iters = await _warm_then_count(comm, budget, nbytes, one)
        await comm.barrier()
        out.append((nbytes, iters, await _timed(iters, one) / 2))
    return out


def pingpong(
    channel: str,
    nbytes_list: Sequence[int],
    config: Config | None = None,
    budget: Budget | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Ping-pong between two ranks: half round-trip seconds and bandwidth per size."""
    config = config or Config()
    budget = budget or Budget()
    rows = []
    for nbytes in nbytes_list:
        if progress:
            progress(f"ping-pong {channel} {nbytes} B")
        ((n, iters, half),) = _run(_pingpong_main, 2, channel, config, [nbytes], budget)[0]
        rows.append(
            {
                "channel": channel,
                "nbytes": n,
                "iterations": iters,
                "latency_s": half,
                "bandwidth_bytes_per_s": n / half if half > 0 else 0.0,
            }
        )
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


#: The collectives the bench measures, and how each rank calls them with ``nbytes``.
COLLECTIVES: dict[str, Callable[[Communicator, Any], Any]] = {
    "barrier": lambda comm, buf: comm.barrier(),
    "bcast": lambda comm, buf: comm.bcast(buf if comm.rank == 0 else None, root=0),
    "allreduce": lambda comm, buf: comm.allreduce(buf),
    "gather": lambda comm, buf: comm.gather(buf, root=0),
}


async def _collective_main(
    comm: Communicator, op: str, nbytes_list: list[int], budget: Budget
) -> list[tuple[int, int, float]]:
    call = COLLECTIVES[op]
    out = []
    for nbytes in nbytes_list:
        buf = _payload(nbytes)

        async def with_op(buf: np.ndarray = buf) -> None:
            await comm.barrier()
            await call(comm, buf)

        iters = await _warm_then_count(comm, budget, nbytes, with_op)
        # A barrier before every call keeps ranks from running ahead into the
        # next call (the model predicts one isolated call). Every rank stamps
        # when it enters and leaves each call; the ranks share one clock (one
        # machine), so a call takes from the first rank in to the last rank out.
        stamps = []
        for _ in range(iters):
            await comm.barrier()
            t0 = time.perf_counter()
            await call(comm, buf)
            stamps.append((t0, time.perf_counter()))
        every = await comm.gather(stamps, root=0)
        seconds = 0.0
        if comm.rank == 0:
            assert every is not None
            spans = [
                max(s[i][1] for s in every) - min(s[i][0] for s in every) for i in range(iters)
            ]
            seconds = _median(spans)
        out.append((nbytes, iters, seconds))
    return out


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
) -> list[dict[str, Any]]:
    """Seconds per call of collective ``op`` on ``ranks`` ranks, for each payload size.

    Calls run as ``barrier; call``; each rank stamps when it enters and leaves
    every call, and a call takes from the first rank's entry to the last rank's
    exit (the ranks share one clock). The median over the calls is reported.
    """
    if op not in COLLECTIVES:
        raise ValueError(f"unknown collective {op!r}; choose from {', '.join(COLLECTIVES)}")
    config = config or Config()
    budget = budget or Budget()
    if progress:
        progress(f"{op} {channel} {ranks} ranks")
    sizes_used = [0] if op == "barrier" else list(nbytes_list)
    per_rank = _run(_collective_main, ranks, channel, config, op, sizes_used, budget)
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
            }
        )
    return rows
