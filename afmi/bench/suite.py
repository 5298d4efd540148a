"""The whole ``afmi bench`` run: channels, measurements, calibration, accuracy.

:func:`run_suite` finds the channels it can measure (``local`` always;
``direct``, ``redis`` and ``s3`` when their drivers are installed, starting a
private Redis or moto S3 server when none is configured and
``start_servers`` is set), measures them, optionally calibrates the model,
and returns one JSON-ready dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afmi.bench import accuracy, anchors, calibrate, measure
from afmi.channels import get_driver
from afmi.config import Config
from afmi.errors import ArgumentError
from afmi.launch import event_loop_name

__all__ = ["Options", "calibration_sizes", "merge_passes", "noisy_points", "run_suite", "CHANNELS"]

#: Channels the bench knows how to measure, in report order.
CHANNELS = ("local", "direct", "redis", "s3")


@dataclass
class Options:
    """What to measure (the ``afmi bench`` options)."""

    channels: list[str] | None = None  # None: every available channel
    quick: bool = False
    max_bytes: int = 1 << 24
    collective_max_bytes: int = 1 << 20
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8])
    ops: list[str] = field(default_factory=lambda: ["barrier", "bcast", "allreduce", "gather"])
    pingpong: bool = True
    collectives: bool = True
    anchors: bool = True
    calibrate: str | None = None  # model file to write
    start_servers: bool = True
    seconds_per_point: float | None = None
    #: Passes over the whole sweep; each point keeps its fastest pass, or the
    #: median of its passes when they timed few calls or on a channel whose calls
    #: start at random phases of its poller (:func:`merge_passes`; None: 3 passes,
    #: or 1 with ``quick``).
    passes: int | None = None
    #: Times a point measured while the machine ran slow is measured again
    #: (:class:`afmi.bench.measure.MachineWatch`).
    slow_retries: int = measure.SLOW_RETRIES
    #: Passes added, after three or more, for the points that keep the median of their
    #: passes (a channel whose calls start at random phases of its poller: S3) and
    #: whose passes lay more than :data:`NOISY_SPREAD` apart (:func:`noisy_points`).
    extra_passes: int = 2

    def pass_count(self) -> int:
        """How many passes the sweep makes."""
        if self.passes is None:
            return 1 if self.quick else 3
        if self.passes < 1:
            raise ArgumentError(f"passes must be at least 1, got {self.passes}")
        return self.passes

    def budget(self, channel: str | None = None) -> measure.Budget:
        """The budget of every point (all its passes together); a ``channel`` in
        :data:`afmi.bench.measure.BUDGET_SCALE` gets that many times the seconds."""
        return measure.point_budget(self.quick, self.seconds_per_point, channel)

    def pass_budget(self, channel: str | None = None) -> measure.Budget:
        """The budget of one pass: the point's budget shared among the passes."""
        b, n = self.budget(channel), self.pass_count()
        if n == 1:
            return b
        return dataclasses.replace(
            b,
            seconds_per_point=b.seconds_per_point / n,
            iters_small=max(b.iters_small // n, 1),
            iters_large=max(b.iters_large // n, 1),
            min_iters=max(b.min_iters // n, 1),
        )


def _with(config: Config, section: str, values: dict[str, Any]) -> Config:
    data = config.to_dict()
    data["channels"][section].update(values)
    return Config.from_dict(data)


@contextlib.contextmanager
def _environment(
    wanted: list[str] | None, config: Config, start_servers: bool, skipped: dict[str, str]
) -> Iterator[tuple[list[str], Config]]:
    """Yield the channels to measure and a config that reaches them."""
    from afmi.testing import servers

    names = list(CHANNELS) if wanted is None else list(wanted)
    for name in names:
        if name not in CHANNELS:
            raise ArgumentError(f"the bench measures {', '.join(CHANNELS)}; not {name!r}")
    usable: list[str] = []
    with contextlib.ExitStack() as stack:
        for name in names:
            try:
                get_driver(name)
            except ArgumentError as exc:
                skipped[name] = f"driver not available ({exc})"
                continue
            if name == "redis" and start_servers:
                try:
                    url = stack.enter_context(servers.redis_server())
                except Exception as exc:  # noqa: BLE001 - reported as skipped
                    skipped[name] = f"no Redis server: {exc}"
                    continue
                config = _with(config, "redis", {"url": url})
            if name == "s3" and not config.channels.s3.bucket:
                if not start_servers:
                    skipped[name] = "channels.s3.bucket is not configured"
                    continue
                try:
                    server = stack.enter_context(servers.s3_server())
                except Exception as exc:  # noqa: BLE001 - reported as skipped
                    skipped[name] = f"no S3 server: {exc}"
                    continue
                for key, value in server.env().items():
                    stack.callback(_restore, key, os.environ.get(key))
                    os.environ[key] = value
                config = _with(config, "s3", server.config(prefix="afmi-bench"))
            usable.append(name)
        yield usable, config


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def calibration_sizes(top: int) -> list[int]:
    """Collective payloads the calibration measures: odd powers of two up to ``top``.

    The sweep measures even powers of two (1, 4, 16, ...), so its collective
    points stay out of the fit.
    """
    exponent = max(top, 2).bit_length() - 1
    large = 1 << (exponent if exponent % 2 else exponent - 1)
    return sorted({n for n in (2, 2048, large) if n <= large})


def _calibrate_channel(
    channel: str,
    rows: list[dict[str, Any]],
    config: Config,
    opts: Options,
    ranks: list[int],
    reduction: dict[str, float],
    swept: list[dict[str, Any]],
) -> tuple[dict[str, float], list[tuple[str, int, int, float]]]:
    """Fit one channel: the wire from every other ping-pong row (marked ``fitted``; the
    rest are held out), the collective parameters from every other size of each swept
    collective and the first size past the split limit (``swept``, marked likewise:
    :func:`afmi.bench.calibrate.split_fitted`; barriers have one size and are always
    fitted), or, when nothing was swept, from calls of :func:`calibration_sizes`;
    for a channel whose receivers poll (S3), also the time of one poll, from the
    polls those fitted points counted (:func:`afmi.bench.calibrate.fit_poll_request`).

    Fitting on the sweep's own rows keeps the fitted and the held-out points
    measured side by side, under the same load of a shared machine. All ranks of
    the bench share one event loop, so ``parallel_ranks`` is 1.
    """
    from afmi.model.params import model_for

    budget = opts.budget(channel)
    fit_rows = calibrate.split_fitted(rows)
    inline = model_for(channel, config).inline_max_bytes  # small messages ride inline
    split = calibrate.split_params(channel)  # direct: frames longer than a TCP segment
    params: dict[str, float] = dict(
        calibrate.fit_wire(
            [(r["nbytes"], r["latency_s"]) for r in fit_rows],
            inline=inline,
            split=split.get("split_message_bytes"),
        )
    )
    params.update(split)
    top = min(1 << 18, opts.collective_max_bytes) if opts.quick else opts.collective_max_bytes
    points = []
    fitted_rows = list(fit_rows)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in swept:
        groups.setdefault((r["op"], r["ranks"]), []).append(r)
    for group in groups.values():
        steps = calibrate.fit_steps(params, group[0]["ranks"])
        for r in calibrate.split_fitted([dict(r) for r in group], steps):
            points.append((r["op"], r["ranks"], r["nbytes"], r["latency_s"]))
            fitted_rows.append(r)
    if len(points) < 3:
        points = []
        for op in ("barrier", "bcast", "gather", "allreduce"):
            for n in ranks:
                for nbytes in [0] if op == "barrier" else calibration_sizes(top):
                    seconds = measure.collective_time(channel, op, n, nbytes, config, budget)
                    points.append((op, n, nbytes, seconds))
    params.update(
        calibrate.fit_rounds(
            channel,
            params,
            points,
            **reduction,
            parallel_ranks=1.0,
            config=config,
        )
    )
    params["poll_interval_s"] = 0.0
    # the time of one poll, from the polls the fitted points counted (S3's LISTs)
    params.update(calibrate.poll_params(channel, params, config, fitted_rows))
    return params, points


def _sweep(
    opts: Options,
    channels: list[str],
    config: Config,
    pp_sizes: list[int],
    coll_sizes: list[int],
    ranks: list[int],
    skipped: dict[str, str],
    say: Callable[[str], None],
) -> _Swept:
    """Measure the ping-pongs and collectives in :meth:`Options.pass_count` passes.

    Every pass runs the whole sweep with a share of each point's budget
    (:meth:`Options.pass_budget`), so each point is measured in several windows
    spread over the run; it keeps its fastest pass, or the median of passes
    that timed only a call or two (:func:`merge_passes`). On a shared machine
    whose cores change speed from one second to the next this keeps one slow
    window from moving a point, and keeps points that are compared (fitted and
    held out) measured under the same conditions. Within a pass the channels
    of one point (a ping-pong size; an operation on a rank count) are measured
    one right after the other: the fast choice compares them, and a sweep of
    one channel after the other let a slow minute fall on one channel alone
    (session 11: ``local``'s collectives measured at 1.3-1.8x slow, ``direct``'s
    at speed, and ``fast`` picked the measured-fastest channel at 93 of 116
    points).
    With ``--calibrate`` every pass also times the reduction, on arrays of the
    sweep's largest collective size, and the fastest pass's rate is kept.
    """
    passes = opts.pass_count()
    measured = list(channels)
    failed: set[tuple[str, str, int]] = set()
    runs: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    ladders: list[dict[int, float]] = []
    for number in range(passes):
        prefix = f"pass {number + 1}/{passes}: " if passes > 1 else ""

        def tell(message: str, prefix: str = prefix) -> None:
            say(prefix + message)

        if opts.calibrate:
            tell("the reduction (SUM of uint8 arrays, as the bench's payloads)")
            top = max(coll_sizes, default=1 << 18)
            ladders.append(calibrate.measure_reduce_rates("uint8", top))

        # The channels of one point are measured one after the other, so the channels
        # the fast choice compares meet the same state of the machine.
        for nbytes in pp_sizes if opts.pingpong or opts.calibrate else []:
            for ch in list(measured):
                try:
                    rows = measure.pingpong(
                        ch, [nbytes], config, opts.pass_budget(ch), tell, opts.slow_retries
                    )
                except Exception as exc:  # noqa: BLE001 - one broken channel must not end the run
                    skipped[ch] = f"failed: {type(exc).__name__}: {exc}"
                    measured.remove(ch)
                    continue
                for row in rows:
                    runs.setdefault(("send", ch, 2, row["nbytes"]), []).append(row)
        if not opts.collectives:
            continue
        for op in opts.ops:
            for n in ranks:
                for ch in measured:
                    if (ch, op, n) in failed:
                        continue
                    try:
                        rows = measure.collective_latency(
                            ch,
                            op,
                            n,
                            coll_sizes,
                            config,
                            opts.pass_budget(ch),
                            tell,
                            opts.slow_retries,
                        )
                    except Exception as exc:  # noqa: BLE001 - reported, run continues
                        skipped[f"{ch} {op} n={n}"] = f"{type(exc).__name__}: {exc}"
                        failed.add((ch, op, n))
                        continue
                    for row in rows:
                        runs.setdefault((op, ch, n, row["nbytes"]), []).append(row)
    again = noisy_points(runs, config) if passes >= 3 and not opts.quick else {}
    for number in range(opts.extra_passes if again else 0):
        prefix = f"extra pass {number + 1}/{opts.extra_passes} (noisy points): "
        for (op, ch, n), sizes in again.items():
            budget = opts.pass_budget(ch)
            what = f"ping-pong {ch}" if op == "send" else f"{op} {ch} {n} ranks"
            say(f"{prefix}{what}, {len(sizes)} sizes")
            try:
                if op == "send":
                    rows = measure.pingpong(ch, sizes, config, budget, None, opts.slow_retries)
                else:
                    rows = measure.collective_latency(
                        ch, op, n, sizes, config, budget, None, opts.slow_retries
                    )
            except Exception as exc:  # noqa: BLE001 - the point keeps the passes it has
                skipped[f"{ch} {op} n={n} extra pass"] = f"{type(exc).__name__}: {exc}"
                continue
            for row in rows:
                runs[(op, ch, n, row["nbytes"])].append(row)
    merged = [
        merge_passes(rows, measure.start_jitter_s(key[1], config) <= 0)
        for key, rows in runs.items()
        if key[1] in measured
    ]
    pingpong = [r for r in merged if "op" not in r]
    collectives = [
        r for r in merged if "op" in r and (r["channel"], r["op"], r["ranks"]) not in failed
    ]
    # every input size at its fastest pass
    reduction = calibrate.fastest_reduction(ladders) if ladders else {"reduce_bytes_per_s": 0.0}
    return _Swept(measured, pingpong, collectives, reduction)


#: A point of a jittered channel whose passes lay further apart than this
#: (slowest / fastest - 1) gets :attr:`Options.extra_passes` more.
NOISY_SPREAD = 0.30


def noisy_points(
    runs: dict[tuple[Any, ...], list[dict[str, Any]]], config: Config
) -> dict[tuple[str, str, int], list[int]]:
    """The points of ``runs`` (keyed ``(op, channel, ranks, nbytes)``, ``op`` "send"
    for a ping-pong) that keep the median of their passes and whose passes lay more
    than :data:`NOISY_SPREAD` apart, as ``{(op, channel, ranks): [nbytes, ...]}``.

    On S3 in one process a point's few calls a pass differ by the phase of the
    poller and by the machine's speed: the 8-rank gathers of 1-256 B, the same work,
    had times spread over 35-84 ms in one run (session 26), and a median of three
    such passes missed the model by more than 30 % at 1-3 points a run. Resampled
    from those runs' passes, a median of five missed about half as often.
    """
    out: dict[tuple[str, str, int], list[int]] = {}
    for (op, ch, n, nbytes), rows in runs.items():
        times = [float(r["latency_s"]) for r in rows]
        if measure.start_jitter_s(ch, config) <= 0 or min(times) <= 0:
            continue
        if max(times) / min(times) - 1 > NOISY_SPREAD:
            out.setdefault((op, ch, n), []).append(nbytes)
    return out


@dataclasses.dataclass
class _Swept:
    """What :func:`_sweep` measured."""

    #: The channels that could be measured.
    channels: list[str]
    pingpong: list[dict[str, Any]]
    collectives: list[dict[str, Any]]
    #: The reduction's rates (:func:`afmi.bench.calibrate.reduction_regimes`) from every
    #: input size's fastest pass (``reduce_bytes_per_s`` 0 without ``--calibrate``).
    reduction: dict[str, float]


#: A point whose every pass timed at least this many calls keeps its fastest pass.
BEST_PASS_MIN_CALLS = 3


def merge_passes(rows: list[dict[str, Any]], fastest: bool = True) -> dict[str, Any]:
    """One point from its passes, with the iterations and late calls of all of them and
    every pass's time in ``pass_latencies_s``.

    The point's time is its fastest pass (best of N, as ``--processes --repeat N``
    keeps) when every pass timed at least :data:`BEST_PASS_MIN_CALLS` calls: a
    pass's time is then a median over calls, and what slows one pass more than
    another is a slow window of the machine, which only ever adds time. Points
    timed with fewer calls per pass (S3 collectives get one) keep the median of
    their passes (the upper median of an even count): their passes are single
    calls, and the fastest single call is a lucky draw of the polling, not the
    machine at its quietest. So do all points with ``fastest`` False: those of
    a channel whose calls start at random phases of its poller
    (:func:`afmi.bench.measure.start_jitter_s`), where a pass's few calls
    differ by their phases more than by the machine's load (S3 in one run:
    2-rank bcasts of 1-256 B had passes 12-22 ms apart, and their fastest pass
    was a third below the ping-pong).
    """
    out = dict(rows[0])
    times = [r["latency_s"] for r in rows]
    best = fastest and all(int(r["iterations"]) >= BEST_PASS_MIN_CALLS for r in rows)
    out["latency_s"] = min(times) if best else statistics.median_high(times)
    if all("machine_slowdown" in r for r in rows):
        kept = rows[times.index(out["latency_s"])]
        out["machine_slowdown"] = kept["machine_slowdown"]
        out["pass_machine_slowdown"] = [r["machine_slowdown"] for r in rows]
    out["pass_estimate"] = "fastest" if best else "median"
    out["iterations"] = sum(int(r["iterations"]) for r in rows)
    out["pass_latencies_s"] = times
    if "late_calls" in out:
        out["late_calls"] = sum(int(r.get("late_calls", 0)) for r in rows)
    counted = [r["requests_per_call"] for r in rows if r.get("requests_per_call")]
    if counted:  # storage requests per call: the mean over the passes that counted them
        out["requests_per_call"] = measure.per_count(counted, len(counted))
    if "bandwidth_bytes_per_s" in out:
        n, t = out["nbytes"], out["latency_s"]
        out["bandwidth_bytes_per_s"] = n / t if t > 0 else 0.0
    return out


def run_suite(
    opts: Options, config: Config | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the bench; see the module docstring. Returns the JSON-ready results."""
    config = config or Config()
    say = progress or (lambda _m: None)
    budget = opts.budget()
    opts.pass_count()  # a bad count fails before any server starts
    if opts.slow_retries < 0:
        raise ArgumentError(f"--slow-retries must be 0 or more, got {opts.slow_retries}")
    measured = opts.pingpong or opts.calibrate or (opts.collectives and opts.ops)
    if not measured and not opts.anchors:
        raise ArgumentError(
            "nothing to measure: --no-pingpong, --no-collectives (or an empty --ops) and "
            "--no-anchors together leave no point; drop one of them"
        )
    max_pp = min(opts.max_bytes, 1 << 20) if opts.quick else opts.max_bytes
    pp_sizes = measure.sizes(max_pp, opts.quick)
    coll_sizes = [8, 4096, 1 << 18] if opts.quick else measure.sizes(opts.collective_max_bytes)[::2]
    coll_sizes = [s for s in coll_sizes if s <= opts.collective_max_bytes]
    ranks = [r for r in opts.ranks if r >= 2]
    results: dict[str, Any] = {
        "afmi_bench": 1,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "event_loop": event_loop_name(),
        "cpus": os.cpu_count(),
        "quick": opts.quick,
        "channels": [],
        "skipped": {},
        "pingpong": [],
        "collectives": [],
        "anchors": {},
        "calibration": None,
    }
    with _environment(opts.channels, config, opts.start_servers, results["skipped"]) as (
        channels,
        run_config,
    ):
        results["channels"] = channels
        swept = _sweep(
            opts, channels, run_config, pp_sizes, coll_sizes, ranks, results["skipped"], say
        )
        measured = swept.channels
        results["channels"] = measured
        results["passes"] = opts.pass_count()
        results["pingpong"] = swept.pingpong
        results["collectives"] = swept.collectives
        model_config = config
        fitted: set[tuple[str, str, int, int]] = set()
        if opts.calibrate:
            params = {}
            used: dict[str, list[tuple[str, int, int, float]]] = {}
            reduction = swept.reduction
            reduce_rate = reduction["reduce_bytes_per_s"]
            for ch in measured:
                say(f"calibrating {ch}")
                rows = [r for r in results["pingpong"] if r["channel"] == ch]
                calls = [r for r in results["collectives"] if r["channel"] == ch]
                params[ch], points = _calibrate_channel(
                    ch, rows, run_config, opts, ranks, reduction, calls
                )
                fitted.update((ch, op, n, nbytes) for op, n, nbytes, _ in points)
                used[ch] = points
            results["calibration"], model_config = calibrate.write_and_use(
                opts.calibrate, params, reduce_rate, config, points=used, reduction=reduction
            )
    if opts.anchors:
        say("anchor: blocking socket ping-pong")
        try:
            results["anchors"]["socket"] = anchors.socket_pingpong(
                pp_sizes, budget, config.channels.direct.tcp_congestion
            )
        except Exception as exc:  # noqa: BLE001
            results["anchors"]["socket"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        reason = anchors.mpi4py_unavailable()
        if reason:
            results["anchors"]["mpi4py"] = {"skipped": reason}
        else:
            say("anchor: mpi4py ping-pong over TCP")
            try:
                results["anchors"]["mpi4py"] = anchors.mpi4py_pingpong(pp_sizes, budget)
            except Exception as exc:  # noqa: BLE001
                results["anchors"]["mpi4py"] = {"skipped": str(exc)}
    for row in results["collectives"]:
        if (row["channel"], row["op"], row["ranks"], row["nbytes"]) in fitted:
            row["fitted"] = True  # the same call was measured for the calibration
    rows = results["pingpong"] + results["collectives"]
    say("comparing with the model")
    accuracy.annotate(rows, model_config)
    results["model_source"] = (
        f"calibrated in this run ({results['calibration']['file']})"
        if results["calibration"]
        else f"model file {config.model.file}"
        if config.model.file
        else "built-in defaults"
    )
    results["accuracy"] = accuracy.summarize(rows, model_config)
    return results


def default_model_path() -> Path:
    """Where ``--calibrate`` writes when no file is named."""
    return Path("afmi-model.json")
