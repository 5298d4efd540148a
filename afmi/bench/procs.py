"""Cross-process bench: every rank its own process, beside a blocking socket and mpi4py.

``afmi bench --processes`` (:func:`run_procs`) measures, for each channel:

* ping-pong between two rank processes (half round trip, 1 B .. ``--max-size``);
* the collectives of ``--ops`` (barrier, bcast, allreduce, gather) on each
  ``--ranks`` count, timed as the in-process bench times them
  (:class:`afmi.bench.measure.ClockStartLine`: every rank enters each call at
  one instant of the machine's monotonic clock, and a call lasts until the
  last rank's exit); these rows and the ping-pong are what the model is
  compared with;
* when the mpi4py anchor runs, also ``allreduce`` of float64 arrays (SUM)
  timed the way mpi4py's ``Allreduce`` is: back-to-back calls after a
  barrier, the slowest rank's mean. Back-to-back calls overlap one call's
  exit with the next one's start (a 2-rank ``direct`` allreduce of 8 B took
  55 µs a call so, 89 µs from one start instant), so these rows are for the
  side-by-side ratio only, not for the model.

Each job is started with :func:`afmi.runtime.process.run_processes` (what
``afmi run`` does); its ranks run :func:`rank_main` (``python -m
afmi.bench.procs rank PLAN OUT``), which joins with :func:`afmi.connect`,
measures and lets rank 0 write the figures as JSON to ``OUT``.

The anchors run the same sizes: the blocking-socket ping-pong of
:mod:`afmi.bench.anchors`, and mpi4py over Open MPI's TCP transport
(``mpiexec -n N``, ``btl tcp,self``; buffer-form ``Send``/``Recv`` and
``Allreduce``) with the iteration counts afmi used. mpi4py is skipped, with
the reason, when mpi4py or ``mpiexec`` is missing.

Timing follows :mod:`afmi.bench.measure`: warm-up, then the timed
iterations in five batches; a point is the median batch mean. With
``repeat`` > 1 every job runs again and each point keeps its fastest median
(best of N), which is what a shared, noisy machine needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afmi.bench import measure
from afmi.bench.anchors import (
    ANCHORS,
    _child_env,
    _mpiexec,
    mpi4py_unavailable,
    mpi_env,
    socket_pingpong,
)
from afmi.config import Config
from afmi.errors import ArgumentError

__all__ = ["ProcsOptions", "rank_main", "run_procs", "mpi4py_job", "afmi_job", "ratios"]

#: Channels a cross-process run can use (``local`` lives in one process only).
CHANNELS = ("direct", "redis", "s3")


@dataclass
class ProcsOptions:
    """What a cross-process run measures."""

    channels: list[str] = field(default_factory=lambda: ["direct", "redis"])
    ranks: list[int] = field(default_factory=lambda: [2, 4])
    max_bytes: int = 64 << 20  # largest ping-pong message
    allreduce_max_bytes: int = 16 << 20  # largest allreduce array, bytes per rank
    quick: bool = False
    #: Measure the ping-pong (``--no-pingpong``: False). Collectives: ``ops``
    #: (``--no-collectives``: empty).
    pingpong: bool = True
    anchors: bool = True
    repeat: int = 1  # best of N
    seconds_per_point: float | None = None
    timeout: float = 600.0  # per job
    #: Collectives to time from one start instant (sizes of ``allreduce_sizes``; a
    #: barrier has one, 0 B).
    ops: list[str] = field(default_factory=lambda: ["barrier", "bcast", "allreduce", "gather"])
    #: Times a point measured while the machine ran slow is measured again
    #: (:class:`afmi.bench.measure.MachineWatch`).
    slow_retries: int = measure.SLOW_RETRIES

    def budget(self, channel: str | None = None) -> measure.Budget:
        """Per-point budget (as in the in-process bench, with its
        :data:`afmi.bench.measure.BUDGET_SCALE` for ``channel``)."""
        return measure.point_budget(self.quick, self.seconds_per_point, channel)

    def pingpong_sizes(self) -> list[int]:
        """1 B .. max_bytes: every power of two (quick: 1 B, 16 B, ... x16, up to 1 MiB);
        none without ``pingpong``."""
        if not self.pingpong:
            return []
        top = min(self.max_bytes, 1 << 20) if self.quick else self.max_bytes
        return measure.sizes(top, self.quick)

    def allreduce_sizes(self) -> list[int]:
        """Bytes per rank: 8 B .. allreduce_max_bytes in x4 steps (quick: 8 B, 64 KiB, 1 MiB)."""
        top = min(self.allreduce_max_bytes, 1 << 20) if self.quick else self.allreduce_max_bytes
        if top < 8:
            return []
        if self.quick:
            return [s for s in (8, 1 << 16, 1 << 20) if s <= top] or [8]
        out = [8 << (2 * i) for i in range(20) if (8 << (2 * i)) <= top]
        if out[-1] != top and top % 8 == 0:
            out.append(top)
        return out

    def check(self) -> None:
        """Raise :class:`ArgumentError` for options a cross-process run cannot honour."""
        for name in self.channels:
            if name not in CHANNELS:
                raise ArgumentError(
                    f"--processes measures {', '.join(CHANNELS)} (the local channel lives in "
                    f"one process); not {name!r}"
                )
        if not self.ranks or any(r < 2 for r in self.ranks):
            raise ArgumentError(f"--ranks must be counts of 2 or more, got {self.ranks}")
        if self.repeat < 1:
            raise ArgumentError(f"--repeat must be at least 1, got {self.repeat}")
        if self.slow_retries < 0:
            raise ArgumentError(f"--slow-retries must be 0 or more, got {self.slow_retries}")
        if not self.pingpong and not self.ops:
            raise ArgumentError(
                "nothing to measure: --no-pingpong and --no-collectives (or an empty --ops) "
                "together leave no point; drop one of them"
            )
        if self.pingpong and not self.ops and 2 not in self.ranks:
            raise ArgumentError(
                f"nothing to measure: the ping-pong runs on 2 processes, and --ranks "
                f"{','.join(map(str, self.ranks))} has no 2; add 2 to --ranks or drop "
                "--no-collectives"
            )
        for op in self.ops:
            if op not in measure.COLLECTIVES:
                raise ArgumentError(
                    f"--ops: the bench times {', '.join(measure.COLLECTIVES)}; not {op!r}"
                )

    def collective_sizes(self) -> dict[str, list[int]]:
        """Payload sizes of every collective in ``ops`` (barrier: 0 B)."""
        sizes = self.allreduce_sizes()
        return {op: [0] if op == "barrier" else sizes for op in self.ops}

    def back_to_back_sizes(self) -> list[int]:
        """Sizes of the back-to-back allreduce: only when the mpi4py anchor runs beside it."""
        if "allreduce" not in self.ops or not self.anchors or mpi4py_unavailable() is not None:
            return []
        return self.allreduce_sizes()


# -- the rank side -------------------------------------------------------------------------------


async def _allreduce_main(
    comm: Any, nbytes_list: list[int], budget: measure.Budget, jitter_s: float = 0.0
) -> list[tuple[int, int, float]]:
    out = []
    for nbytes in nbytes_list:
        pause = measure.Pauses(jitter_s, seed=nbytes) if jitter_s > 0 else None
        x = np.ones(max(nbytes // 8, 1), dtype=np.float64)
        # Into one reused result array, as the mpi4py anchor's Allreduce(x, y) does.
        y = np.empty_like(x)

        async def one(x: np.ndarray = x, y: np.ndarray = y) -> None:
            await comm.allreduce(x, out=y)

        iters = await measure._warm_then_count(comm, budget, nbytes, one)
        await comm.barrier()
        mine = await measure._timed(iters, one, pause)
        slowest = await comm.allreduce(mine, op=_max())
        out.append((nbytes, iters, float(slowest)))
    return out


def _max() -> Any:
    from afmi.ops import MAX

    return MAX


async def _rank(plan: dict[str, Any], out_path: str) -> None:
    import afmi

    budget = measure.Budget(**plan["budget"])
    jitter = float(plan.get("jitter_s", 0.0))
    watch = measure.MachineWatch(
        float(plan.get("reference_s", 0.0)), int(plan.get("slow_retries", 0))
    )
    async with afmi.connect() as comm:
        pingpong: list[Any] = []
        if comm.size == 2 and plan["pingpong"]:
            pingpong = await measure._pingpong_main(comm, plan["pingpong"], budget, jitter, watch)
        allreduce = await _allreduce_main(comm, plan["allreduce"], budget, jitter)
        collectives = {}
        for op, sizes in plan.get("collectives", {}).items():
            line = measure.ClockStartLine(jitter)
            collectives[op] = await measure._collective_main(comm, op, sizes, budget, line, watch)
        if comm.rank == 0:
            text = json.dumps(
                {
                    "pingpong": pingpong,
                    "allreduce": allreduce,
                    "collectives": collectives,
                    "reference_s": measure.MachineWatch.fastest_s,
                }
            )
            Path(out_path).write_text(text)  # noqa: ASYNC240 - once, after the measurements


def rank_main(argv: Sequence[str] | None = None) -> int:
    """One rank of a cross-process bench job: ``rank PLAN_JSON_FILE OUT_JSON_FILE``."""
    from afmi.launch import new_event_loop

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "rank":
        print("usage: python -m afmi.bench.procs rank PLAN.json OUT.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(args[1]).read_text())
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_rank(plan, args[2]))
    return 0


# -- the launcher side ---------------------------------------------------------------------------


def _plan(
    pingpong: Sequence[int],
    allreduce: Sequence[int],
    budget: measure.Budget,
    collectives: Mapping[str, Sequence[int]] | None = None,
    jitter_s: float = 0.0,
    reference_s: float = 0.0,
    slow_retries: int = 0,
) -> dict[str, Any]:
    return {
        "pingpong": list(pingpong),
        "allreduce": list(allreduce),
        "collectives": {op: list(sizes) for op, sizes in (collectives or {}).items()},
        "budget": dataclasses.asdict(budget),
        "jitter_s": jitter_s,
        "reference_s": reference_s,
        "slow_retries": slow_retries,
    }


def afmi_job(
    channel: str,
    ranks: int,
    pingpong: Sequence[int],
    allreduce: Sequence[int],
    budget: measure.Budget,
    config: Config | None = None,
    timeout: float = 600.0,
    collectives: Mapping[str, Sequence[int]] | None = None,
    slow_retries: int = measure.SLOW_RETRIES,
) -> dict[str, Any]:
    """Run one job of ``ranks`` processes on ``channel``; rank 0's figures as a dict.

    Returns ``{"pingpong": [(nbytes, iters, seconds, slowdown)...], "allreduce": [...],
    "collectives": {op: [...]}}``; ``collectives`` names the other collectives to
    time and their sizes.

    Raises:
        RuntimeError: a rank failed (the message has the end of its output).
    """
    from afmi.launch import new_event_loop
    from afmi.runtime.process import run_processes

    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="afmi-bench-") as tmp:
        plan_path = Path(tmp, "plan.json")
        out_path = Path(tmp, "out.json")
        jitter = measure.start_jitter_s(channel, config or Config())
        # the fastest the machine ran in this run so far: the ranks' baseline speed
        measure.MachineWatch.lower_baseline(measure.reference_s())
        reference = measure.MachineWatch.fastest_s
        plan_path.write_text(
            json.dumps(
                _plan(pingpong, allreduce, budget, collectives, jitter, reference, slow_retries)
            )
        )
        if config is not None:
            cfg_path = Path(tmp, "config.json")
            cfg_path.write_text(json.dumps(config.to_dict()))
            env["AFMI_CONFIG"] = str(cfg_path)
        log = io.StringIO()
        command = [sys.executable, "-m", "afmi.bench.procs", "rank", str(plan_path), str(out_path)]
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            codes = runner.run(
                run_processes(command, ranks, channel=channel, env=env, timeout=timeout, output=log)
            )
        if any(codes) or not out_path.exists():
            tail = " | ".join(log.getvalue().strip().splitlines()[-4:])
            raise RuntimeError(f"{channel} job on {ranks} processes failed (codes {codes}): {tail}")
        data: dict[str, Any] = json.loads(out_path.read_text())
        measure.MachineWatch.lower_baseline(float(data.get("reference_s", 0.0)))
        return data


_MPI_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
plan = json.loads(open(sys.argv[1]).read())

def timed(iters, one):
    batches = min(5, iters)
    counts = [iters // batches + (1 if i < iters % batches else 0) for i in range(batches)]
    means = []
    for c in counts:
        t0 = MPI.Wtime()
        for _ in range(c):
            one()
        means.append((MPI.Wtime() - t0) / c)
    means.sort()
    m = len(means) // 2
    return means[m] if len(means) % 2 else (means[m - 1] + means[m]) / 2

out = {"pingpong": [], "allreduce": []}
if comm.Get_size() == 2:
    for nbytes, warm, iters in plan["pingpong"]:
        buf = np.ones(nbytes, dtype=np.uint8)
        def one():
            if rank == 0:
                comm.Send(buf, dest=1, tag=1)
                comm.Recv(buf, source=1, tag=1)
            else:
                comm.Recv(buf, source=0, tag=1)
                comm.Send(buf, dest=0, tag=1)
        for _ in range(warm):
            one()
        comm.Barrier()
        out["pingpong"].append((nbytes, iters, timed(iters, one) / 2))
for nbytes, warm, iters in plan["allreduce"]:
    x = np.ones(max(nbytes // 8, 1), dtype=np.float64)
    y = np.empty_like(x)
    def one():
        comm.Allreduce(x, y, op=MPI.SUM)
    for _ in range(warm):
        one()
    comm.Barrier()
    mine = timed(iters, one)
    out["allreduce"].append((nbytes, iters, comm.allreduce(mine, op=MPI.MAX)))
if rank == 0:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
"""


def mpi4py_job(
    ranks: int,
    pingpong: Sequence[tuple[int, int, int]],
    allreduce: Sequence[tuple[int, int, int]],
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The same measurements with mpi4py over Open MPI's TCP transport.

    ``pingpong`` and ``allreduce`` are ``(nbytes, warmup, iterations)`` plans.

    Raises:
        RuntimeError: mpi4py or ``mpiexec`` is missing, or the MPI run failed.
    """
    reason = mpi4py_unavailable()
    if reason:
        raise RuntimeError(reason)
    exe = _mpiexec()
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="afmi-bench-mpi-") as tmp:
        script, plan_path, out_path = Path(tmp, "job.py"), Path(tmp, "plan.json"), Path(tmp, "o")
        script.write_text(_MPI_SCRIPT)
        plan_path.write_text(json.dumps({"pingpong": pingpong, "allreduce": allreduce}))
        cmd = [exe, "--oversubscribe", "-n", str(ranks), sys.executable, str(script)]
        proc = subprocess.run(
            [*cmd, str(plan_path), str(out_path)],
            capture_output=True,
            text=True,
            env=mpi_env(),
            timeout=timeout,
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"mpiexec failed (exit {proc.returncode}): {' | '.join(tail)}")
        data: dict[str, Any] = json.loads(out_path.read_text())
        return data


# -- the whole run -------------------------------------------------------------------------------


def _pp_row(
    channel: str,
    nbytes: int,
    iters: int,
    half: float,
    slowdown: float | None = None,
    requests: dict[str, float] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "channel": channel,
        "processes": 2,
        "nbytes": nbytes,
        "iterations": iters,
        "latency_s": half,
        "bandwidth_bytes_per_s": nbytes / half if half > 0 else 0.0,
    }
    if slowdown is not None:
        row["machine_slowdown"] = slowdown
    if requests:
        row["requests_per_call"] = requests  # both ranks' storage requests, per message (S3)
    return row


def _coll_row(
    channel: str,
    ranks: int,
    nbytes: int,
    iters: int,
    seconds: float,
    op: str = "allreduce",
    late: int | None = None,
    slowdown: float | None = None,
    requests: dict[str, float] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "channel": channel,
        "op": op,
        "ranks": ranks,
        "processes": ranks,
        "nbytes": nbytes,
        "iterations": iters,
        "latency_s": seconds,
    }
    if late is not None:
        row["late_calls"] = late
    if slowdown is not None:
        row["machine_slowdown"] = slowdown
    if requests:
        row["requests_per_call"] = requests  # every rank's storage requests, per call (S3)
    return row


def _best(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``new`` into ``rows`` keeping the fastest measurement of every point (sorted);
    every point lists each run's time in ``pass_latencies_s``, in run order."""
    key: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda r: (  # noqa: E731
        r["channel"],
        r.get("op", "send"),
        r.get("ranks", 2),
        r["nbytes"],
    )
    by = {key(r): r for r in rows}
    for r in new:
        old = by.get(key(r))
        times = [*(old.get("pass_latencies_s", [old["latency_s"]]) if old else ()), r["latency_s"]]
        if old is None or r["latency_s"] < old["latency_s"]:
            by[key(r)] = r
        by[key(r)]["pass_latencies_s"] = times
    return sorted(by.values(), key=key)


def ratios(pingpong: list[dict[str, Any]], allreduce: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point: afmi time / anchor time (``> 1`` means afmi is slower)."""
    out = []
    by = {
        (r["channel"], r.get("op", "pingpong"), r.get("ranks", 2), r["nbytes"]): r
        for r in pingpong + allreduce
    }
    for r in pingpong + allreduce:
        if r["channel"] in ANCHORS:
            continue
        op = r.get("op", "pingpong")
        ranks = r.get("ranks", 2)
        item: dict[str, Any] = {
            "channel": r["channel"],
            "op": op,
            "ranks": ranks,
            "nbytes": r["nbytes"],
        }
        for anchor in ANCHORS:
            a = by.get((anchor, op, ranks, r["nbytes"]))
            if a is not None and a["latency_s"] > 0:
                item[f"vs_{anchor}"] = r["latency_s"] / a["latency_s"]
        out.append(item)
    return out


def run_procs(
    opts: ProcsOptions,
    config: Config | None = None,
    progress: Callable[[str], None] | None = None,
    start_servers: bool = True,
) -> dict[str, Any]:
    """Run the cross-process bench; returns the ``processes`` part of the bench JSON.

    Keys: ``pingpong`` and ``allreduce`` (rows of every channel and anchor; the
    back-to-back allreduce only when the mpi4py anchor runs), ``collectives``
    (every collective of ``ops`` from one start instant, afmi channels only),
    ``ratios``, ``skipped`` (reason per channel or anchor), ``sizes``, ``repeat``.
    """
    from afmi.bench.suite import _environment

    opts.check()
    config = config or Config()
    say = progress or (lambda _m: None)
    budget = opts.budget()
    pp_sizes = opts.pingpong_sizes()
    ar_sizes = opts.back_to_back_sizes()
    coll_sizes = opts.collective_sizes()
    result: dict[str, Any] = {
        "ranks": opts.ranks,
        "repeat": opts.repeat,
        "pingpong_sizes": pp_sizes,
        "allreduce_sizes": ar_sizes,
        "pingpong": [],
        "allreduce": [],
        "collectives": [],
        "skipped": {},
    }
    counts: dict[tuple[str, int, int], int] = {}  # (kind, ranks, nbytes) -> iterations used
    t_start = time.monotonic()
    with _environment(opts.channels, config, start_servers, result["skipped"]) as (
        channels,
        run_config,
    ):
        for round_ in range(opts.repeat):
            for ch in channels:
                if ch in result["skipped"]:
                    continue
                for n in opts.ranks:
                    if not (pp_sizes and n == 2) and not ar_sizes and not any(coll_sizes.values()):
                        continue  # this rank count has nothing to measure (--no-collectives)
                    say(f"processes: {ch} on {n} processes (round {round_ + 1}/{opts.repeat})")
                    try:
                        data = afmi_job(
                            ch,
                            n,
                            pp_sizes if n == 2 else [],
                            ar_sizes,
                            opts.budget(ch),
                            run_config,
                            opts.timeout,
                            coll_sizes,
                            opts.slow_retries,
                        )
                    except Exception as exc:  # noqa: BLE001 - one broken channel must not end the run
                        result["skipped"][ch] = f"{type(exc).__name__}: {exc}"
                        break
                    pp = [_pp_row(ch, *p) for p in data["pingpong"]]
                    ar = [_coll_row(ch, n, *p) for p in data["allreduce"]]
                    for r in pp:
                        counts[("pp", 2, r["nbytes"])] = r["iterations"]
                    for r in ar:
                        counts[("ar", n, r["nbytes"])] = r["iterations"]
                    result["pingpong"] = _best(result["pingpong"], pp)
                    result["allreduce"] = _best(result["allreduce"], ar)
                    other = [
                        _coll_row(ch, n, nbytes, iters, seconds, op, late, slow, requests)
                        for op, points in data.get("collectives", {}).items()
                        for nbytes, iters, seconds, late, slow, requests in points
                    ]
                    result["collectives"] = _best(result["collectives"], other)
            if opts.anchors:
                _anchors(opts, budget, pp_sizes, ar_sizes, counts, result, say, round_, config)
    result["channels"] = [c for c in opts.channels if c not in result["skipped"]]
    result["ratios"] = ratios(result["pingpong"], result["allreduce"])
    result["seconds"] = time.monotonic() - t_start
    return result


def _anchors(
    opts: ProcsOptions,
    budget: measure.Budget,
    pp_sizes: list[int],
    ar_sizes: list[int],
    counts: dict[tuple[str, int, int], int],
    result: dict[str, Any],
    say: Callable[[str], None],
    round_: int,
    config: Config,
) -> None:
    skipped = result["skipped"]
    if "socket" not in skipped and 2 in opts.ranks and pp_sizes:
        say("processes: blocking socket ping-pong")
        try:
            result["pingpong"] = _best(
                result["pingpong"],
                socket_pingpong(pp_sizes, budget, config.channels.direct.tcp_congestion),
            )
        except Exception as exc:  # noqa: BLE001 - reported as skipped
            skipped["socket"] = f"{type(exc).__name__}: {exc}"
    if "mpi4py" in skipped:
        return
    reason = mpi4py_unavailable()
    if reason:
        skipped["mpi4py"] = reason
        return

    def plan(kind: str, n: int, sizes: list[int]) -> list[tuple[int, int, int]]:
        out = []
        for s in sizes:
            warm, iters = budget.plan(s)
            iters = counts.get((kind, n, s), budget.cap(iters, s / 1e9 + 2e-5))
            out.append((s, max(min(warm, iters // 2), 1), iters))
        return out

    for n in opts.ranks:
        if not (pp_sizes and n == 2) and not ar_sizes:
            continue
        say(f"processes: mpi4py on {n} processes (round {round_ + 1}/{opts.repeat})")
        try:
            data = mpi4py_job(
                n,
                plan("pp", 2, pp_sizes) if n == 2 else [],
                plan("ar", n, ar_sizes),
                opts.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - reported as skipped
            skipped["mpi4py"] = f"{type(exc).__name__}: {exc}"
            return
        result["pingpong"] = _best(
            result["pingpong"], [_pp_row("mpi4py", *p) for p in data["pingpong"]]
        )
        result["allreduce"] = _best(
            result["allreduce"], [_coll_row("mpi4py", n, *p) for p in data["allreduce"]]
        )


def model_accuracy(
    result: dict[str, Any], config: Config, calibrate_path: str | None = None
) -> dict[str, Any]:
    """Compare the model with the cross-process rows of ``result`` (annotated in place).

    With ``calibrate_path`` every channel is first fitted to every other size
    of its own cross-process rows, and to the first size past the split limit of
    each collective of more than two ranks (:func:`afmi.bench.calibrate.split_fitted`;
    wire from the ping-pong, the collective
    parameters and ``parallel_ranks``, at most this machine's CPU count, from the
    collective points; the reduction rate is measured here, on uint8 arrays of the
    largest allreduce's size, as in process) and the model file is
    written there; the accuracy is reported over all rows and over the held-out
    ones. Returns ``{"model_source", "accuracy", "calibration"}``.
    """
    from afmi.bench import accuracy, calibrate
    from afmi.model.params import model_for

    # The back-to-back allreduce rows (result["allreduce"]) overlap one call with the
    # next; the model describes one call from a common start, as the collectives rows time it.
    rows = [
        r for r in result["pingpong"] + result.get("collectives", []) if r["channel"] not in ANCHORS
    ]
    out: dict[str, Any] = {"calibration": None}
    model_config = config
    if calibrate_path:
        import os

        params: dict[str, dict[str, float]] = {}
        cpus = float(os.cpu_count() or 1)
        # As in process: SUM of the bench's uint8 payloads up to the largest size it
        # reduced, every size the fastest of three measurements.
        top = max((r["nbytes"] for r in rows if r.get("op") == "allreduce"), default=1 << 23)
        reduction = calibrate.fastest_reduction(
            [calibrate.measure_reduce_rates("uint8", top) for _ in range(3)]
        )
        reduce_rate = reduction["reduce_bytes_per_s"]
        for ch in sorted({r["channel"] for r in rows}):
            split = calibrate.split_params(ch)
            pp = calibrate.split_fitted([r for r in rows if r["channel"] == ch and "op" not in r])
            coll = [r for r in rows if r["channel"] == ch and "op" in r]
            fitted = pp + [
                r
                for op, n in sorted({(r["op"], r["ranks"]) for r in coll})
                for r in calibrate.split_fitted(
                    [r for r in coll if r["op"] == op and r["ranks"] == n],
                    calibrate.fit_steps(split, n),
                )
            ]
            points = [(r["op"], r["ranks"], r["nbytes"], r["latency_s"]) for r in fitted[len(pp) :]]
            try:
                # S3 and Redis: small messages ride inline, larger ones are fetched
                inline = model_for(ch, config).inline_max_bytes
                wire = dict(
                    calibrate.fit_wire(
                        [(r["nbytes"], r["latency_s"]) for r in pp],
                        inline=inline,
                        split=split.get("split_message_bytes"),
                    )
                )
                wire.update(split)
                wire.update(
                    calibrate.fit_parallel(
                        ch,
                        wire,
                        points,
                        **reduction,
                        cpus=int(cpus),
                        config=config,
                    )
                )
            except ValueError as exc:
                result["skipped"][f"calibrate {ch}"] = str(exc)
                continue
            wire["poll_interval_s"] = 0.0
            wire.update(calibrate.poll_params(ch, wire, config, fitted))
            params[ch] = wire
        if params:
            out["calibration"], model_config = calibrate.write_and_use(
                calibrate_path, params, reduce_rate, config, cpus=cpus, reduction=reduction
            )
    accuracy.annotate(rows, model_config)
    out["model_source"] = (
        f"calibrated on every other size of these rows ({out['calibration']['file']}); "
        "the rest are held out"
        if out["calibration"]
        else f"model file {config.model.file}"
        if config.model.file
        else "built-in defaults"
    )
    out["accuracy"] = accuracy.summarize(rows, model_config)
    return out


if __name__ == "__main__":
    sys.exit(rank_main())
