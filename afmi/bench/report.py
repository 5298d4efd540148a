"""Bench output: progress on stderr, tables on the terminal, JSON, PNG plots."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

from afmi.bench.anchors import ANCHORS

__all__ = ["Progress", "format_processes", "format_report", "write_json", "write_plots"]


class Progress:
    """One line per step on stderr (rewritten in place on a terminal)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.monotonic()
        self.tty = self.stream.isatty()
        self._width = 0

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.monotonic() - self.start:6.1f} s] {message}"
        if self.tty:
            pad = max(self._width - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _us(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 0.1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers)] + [fmt.format(*r) for r in rows])


def format_report(results: dict[str, Any]) -> str:
    """The terminal summary of a bench run."""
    out: list[str] = []
    pp = results.get("pingpong", [])
    anchors = [r for a in results.get("anchors", {}).values() if isinstance(a, list) for r in a]
    if pp or anchors:
        names = sorted({r["channel"] for r in pp}) + sorted({r["channel"] for r in anchors})
        by = {(r["channel"], r["nbytes"]): r for r in pp + anchors}
        sizes = sorted({r["nbytes"] for r in pp + anchors})
        headers = ["size"]
        for n in names:
            headers += [f"{n} latency", f"{n} MB/s"]
            if any(by.get((n, s), {}).get("predicted_s") for s in sizes):
                headers.append(f"{n} model")
        rows = []
        for s in sizes:
            row = [_size(s)]
            for n in names:
                r = by.get((n, s))
                row += [
                    _us(r["latency_s"]) if r else "-",
                    f"{r['bandwidth_bytes_per_s'] / 1e6:.1f}" if r else "-",
                ]
                if f"{n} model" in headers:
                    row.append(_us(r.get("predicted_s")) if r else "-")
            rows.append(row)
        out.append("Ping-pong (half round trip; bandwidth = size / time)")
        out.append(_table(headers, rows))
    coll = results.get("collectives", [])
    if coll:
        rows = [
            [
                r["op"],
                str(r["ranks"]),
                _size(r["nbytes"]),
                r["channel"],
                r.get("algorithm", "?"),
                _us(r["latency_s"]),
                _us(r.get("predicted_s")),
                f"{r['rel_error']:+.0%}" if r.get("rel_error") is not None else "-",
            ]
            for r in sorted(coll, key=lambda r: (r["op"], r["ranks"], r["nbytes"], r["channel"]))
        ]
        out.append("\nCollective latency (median call, one start instant to the last rank out)")
        out.append(
            _table(
                ["op", "ranks", "size", "channel", "algorithm", "measured", "model", "error"], rows
            )
        )
    for name, value in results.get("anchors", {}).items():
        if isinstance(value, dict) and "skipped" in value:
            out.append(f"\nanchor {name} skipped: {value['skipped']}")
    for name, reason in results.get("skipped", {}).items():
        out.append(f"channel {name} skipped: {reason}")
    out += _model_lines(results, "Model accuracy", "configured model", "\n")
    return "\n".join(out)


def _model_lines(results: dict[str, Any], title: str, source: str, gap: str) -> list[str]:
    """The model's accuracy on a run's rows and the calibrated model it wrote, if any."""
    out: list[str] = []
    acc = results.get("accuracy")
    if acc and acc.get("points"):
        source = results.get("model_source", source)
        out += _accuracy_lines(f"\n{title} ({source}):", acc)
    cal = results.get("calibration")
    if cal:
        out.append(f"{gap}Calibrated model written to {cal['file']}")
        out += _calibrated_lines(cal)
    return out


def _calibrated_lines(cal: dict[str, Any]) -> list[str]:
    """One line per calibrated channel: its wire, its CPU costs, how many ranks run at once."""
    lines = []
    for name, params in cal["channels"].items():
        fetch = shared = data = ""
        if params.get("cpu_per_payload_message_s", 0.0) > 0:
            data = f" + {_us(params['cpu_per_payload_message_s'])} with the data"
        if params.get("cpu_per_shared_read_s", 0.0) > 0:
            shared = f" + {_us(params['cpu_per_shared_read_s'])} per read of a shared payload"
        if params.get("fetch_s", 0.0) > 0 and params.get("cpu_per_fetch_s") is not None:
            shared += f" + {_us(params['cpu_per_fetch_s'])} per fetch"
        if params.get("cpu_per_wait_s", 0.0) > 0:
            shared += f" + {_us(params['cpu_per_wait_s'])} per wait for messages"
        if params.get("cpu_per_split_message_s", 0.0) > 0:
            shared += (
                f" + {_us(params['cpu_per_split_message_s'])} per message over "
                f"{params.get('split_message_bytes', 0.0):.0f} B (more than one TCP segment)"
            )
        if params.get("cpu_bytes_per_s", 0.0) > 0:
            shared += f", copies {params['cpu_bytes_per_s'] / 1e9:.1f} GB/s"
        if params.get("cpu_cache_bytes", 0.0) > 0 and params.get("cpu_bytes_large_per_s", 0.0):
            shared += (
                f" ({params['cpu_bytes_large_per_s'] / 1e9:.1f} GB/s beyond a call's first "
                f"{_size(int(params['cpu_cache_bytes']))})"
            )
        if params.get("fetch_s", 0.0) > 0:
            fetch = (
                f" (+{_us(params['fetch_s'])} to fetch a message over "
                f"{params.get('inline_max_bytes', 0.0):.0f} B)"
            )
        if params.get("split_latency_s", 0.0) > 0:
            fetch += (
                f" (+{_us(params['split_latency_s'])} for a message over "
                f"{params.get('split_message_bytes', 0.0):.0f} B: more than one TCP segment)"
            )
        reduce = f"reduce {params.get('reduce_bytes_per_s', 0.0) / 1e9:.1f} GB/s"
        if params.get("reduce_cache_bytes", 0.0) > 0 and params.get("reduce_bytes_large_per_s"):
            reduce += (
                f" ({params['reduce_bytes_large_per_s'] / 1e9:.1f} GB/s beyond an input's first "
                f"{_size(int(params['reduce_cache_bytes']))})"
            )
        later = ""
        if params.get("first_round_saving_s", 0.0) > 0:
            later = f", -{_us(params['first_round_saving_s'])} a call's first round"
        if params.get("later_round_s", 0.0) > 0:
            later += f", +{_us(params['later_round_s'])} every round after it"
        if params.get("poll_request_s", 0.0) > 0:
            later += f", a poll takes {_us(params['poll_request_s'])}"
        if params.get("finds_per_further_message", 0.0) > 0:
            share = params["finds_per_further_message"]
            later += f", {share:.0%} of a wait's further messages found by a poll of their own"
        lines.append(
            f"  {name}: latency {_us(params['latency_s'])}{fetch}{later}, "
            f"{params['bandwidth_single_bytes_per_s'] / 1e6:.0f} MB/s single stream"
            f"{_beyond(params)}, "
            f"call {_us(params.get('call_overhead_s', 0.0))} "
            f"+ {_us(params.get('payload_overhead_s', 0.0))} with a payload, "
            f"CPU per message {_us(params.get('cpu_per_message_s', 0.0))} "
            f"+ {_us(params.get('cpu_per_message_rank_s', 0.0))} per further rank"
            f"{data}{shared}, "
            f"{reduce}, "
            f"parallel ranks {params.get('parallel_ranks', 0.0):g}{_crowding(params)}"
        )
    return lines


def _crowding(params: dict[str, Any]) -> str:
    """ ", crowding 0.75 beyond 2 CPUs" where more ranks than cores work more slowly."""
    if params.get("crowding", 0.0) > 0 and params.get("shared_cpus", 0.0) > 0:
        return f", crowding {params['crowding']:g} beyond {params['shared_cpus']:g} CPUs"
    return ""


def _beyond(params: dict[str, Any]) -> str:
    """The wire's slower rates and where they begin: " (3581 MB/s beyond 512 KiB, ...)"."""
    rates = [
        f"{params[rate] / 1e6:.0f} MB/s beyond {_size(int(params[limit]))}"
        for limit, rate in (
            ("large_message_bytes", "bandwidth_large_bytes_per_s"),
            ("huge_message_bytes", "bandwidth_huge_bytes_per_s"),
        )
        if params.get(limit, 0.0) > 0 and params.get(rate, 0.0) > 0
    ]
    return f" ({', '.join(rates)})" if rates else ""


def _ratio(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "-"


def _other_collectives(proc: dict[str, Any]) -> list[str]:
    """The table of a cross-process run's collectives (one start instant), beside the model."""
    rows_in = proc.get("collectives", [])
    if not rows_in:
        return []
    by = {(r["channel"], r["op"], r["ranks"], r["nbytes"]): r for r in rows_in}
    chans = [c for c in proc.get("channels", []) if any(r["channel"] == c for r in rows_in)]
    model = any("predicted_s" in r for r in rows_in)
    headers = ["op", "ranks", "size", *chans] + ([f"{c} model" for c in chans] if model else [])
    rows = []
    for op, n, s in sorted({(r["op"], r["ranks"], r["nbytes"]) for r in rows_in}):
        row = [op, str(n), _size(s)]
        row += [_us(by[(c, op, n, s)]["latency_s"]) if (c, op, n, s) in by else "-" for c in chans]
        if model:
            row += [_us(by.get((c, op, n, s), {}).get("predicted_s")) for c in chans]
        rows.append(row)
    title = "\nCollectives, one process per rank (median call, start instant to last out)"
    return [title, _table(headers, rows)]


def format_processes(proc: dict[str, Any]) -> str:
    """The terminal tables of a cross-process run (``afmi bench --processes``)."""
    out: list[str] = []
    ratio = {(r["channel"], r["op"], r["ranks"], r["nbytes"]): r for r in proc.get("ratios", [])}
    pp = proc.get("pingpong", [])
    names = [c for c in proc.get("channels", []) if any(r["channel"] == c for r in pp)]
    anchors = [a for a in ANCHORS if any(r["channel"] == a for r in pp)]
    if pp:
        by = {(r["channel"], r["nbytes"]): r for r in pp}
        headers = ["size"]
        for n in names + anchors:
            headers += [f"{n} time", f"{n} MB/s"]
        for n in names:
            headers += [f"{n}/{a}" for a in anchors]
        rows = []
        for s in sorted({r["nbytes"] for r in pp}):
            row = [_size(s)]
            for n in names + anchors:
                r = by.get((n, s))
                row += [
                    _us(r["latency_s"]) if r else "-",
                    f"{r['bandwidth_bytes_per_s'] / 1e6:.1f}" if r else "-",
                ]
            for n in names:
                q = ratio.get((n, "pingpong", 2, s), {})
                row += [_ratio(q.get(f"vs_{a}")) for a in anchors]
            rows.append(row)
        out.append("Ping-pong between 2 processes (half round trip; ratio > 1: afmi slower)")
        out.append(_table(headers, rows))
    ar = proc.get("allreduce", [])
    if ar:
        by3 = {(r["channel"], r["ranks"], r["nbytes"]): r for r in ar}
        chans = [c for c in proc.get("channels", []) if any(r["channel"] == c for r in ar)]
        mpi = any(r["channel"] == "mpi4py" for r in ar)
        headers = ["ranks", "size"] + [f"{c}" for c in chans] + (["mpi4py"] if mpi else [])
        if mpi:
            headers += [f"{c}/mpi4py" for c in chans]
        rows = []
        for n, s in sorted({(r["ranks"], r["nbytes"]) for r in ar}):
            row = [str(n), _size(s)]
            row += [_us(by3[(c, n, s)]["latency_s"]) if (c, n, s) in by3 else "-" for c in chans]
            if mpi:
                row.append(
                    _us(by3[("mpi4py", n, s)]["latency_s"]) if ("mpi4py", n, s) in by3 else "-"
                )
                row += [
                    _ratio(ratio.get((c, "allreduce", n, s), {}).get("vs_mpi4py")) for c in chans
                ]
            rows.append(row)
        out.append(
            "\nAllreduce of float64 (SUM) beside mpi4py, back-to-back calls as mpi4py's are"
            " timed (slowest rank's mean call; not compared with the model)"
        )
        out.append(_table(headers, rows))
    out += _other_collectives(proc)
    for name, reason in proc.get("skipped", {}).items():
        out.append(f"{name} skipped: {reason}")
    out += _model_lines(proc, "Model accuracy on these rows", "model", "")
    return "\n".join(out)


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write the results as JSON."""
    p = Path(path)
    p.write_text(json.dumps(results, indent=2) + "\n")
    return p


def write_plots(results: dict[str, Any], directory: str | Path) -> list[Path]:
    """PNG plots: ping-pong latency and bandwidth vs size per channel (with the model's
    prediction and the anchors), collective latency, and, for a cross-process run
    (``results`` of :func:`afmi.bench.procs.run_procs`) that timed allreduce beside
    mpi4py, the back-to-back allreduce of every channel and mpi4py.

    Raises:
        RuntimeError: matplotlib is not installed (``pip install afmi[bench]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'afmi[bench]'") from exc
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results.get("pingpong", []):
        anchor = r["channel"] in ANCHORS
        series[f"{r['channel']} (anchor)" if anchor else r["channel"]].append(r)
    for value in results.get("anchors", {}).values():
        if isinstance(value, list):
            for r in value:
                series[f"{r['channel']} (anchor)"].append(r)
    if series:
        for key, ylabel, scale, fname in (
            ("latency_s", "half round trip (us)", 1e6, "pingpong_latency.png"),
            ("bandwidth_bytes_per_s", "bandwidth (MB/s)", 1e-6, "pingpong_bandwidth.png"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for name, rows in sorted(series.items()):
                rows = sorted(rows, key=lambda r: r["nbytes"])
                ax.plot(
                    [r["nbytes"] for r in rows],
                    [r[key] * scale for r in rows],
                    "o-",
                    label=name,
                    markersize=3,
                )
                if key == "latency_s" and any("predicted_s" in r for r in rows):
                    ax.plot(
                        [r["nbytes"] for r in rows],
                        [r["predicted_s"] * scale for r in rows],
                        "--",
                        label=f"{name} model",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("message size (bytes)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(d / fname, dpi=110)
            plt.close(fig)
            written.append(d / fname)
    written += _plot_collectives(plt, d, results.get("collectives", []), "collectives_latency.png")
    written += _plot_collectives(
        plt, d, results.get("allreduce", []), "allreduce_vs_anchor.png", "back to back"
    )
    return written


def _plot_collectives(
    plt: Any, d: Path, coll: list[dict[str, Any]], fname: str, note: str = ""
) -> list[Path]:
    """One panel per op of ``coll``: latency vs bytes per rank, a line per channel and rank
    count; nothing (and no file) without rows."""
    ops = sorted({r["op"] for r in coll})
    written = []
    if ops:
        fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 4), squeeze=False)
        for ax, op in zip(axes[0], ops):
            lines: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
            for r in coll:
                if r["op"] == op:
                    lines[(r["channel"], r["ranks"])].append(r)
            for (ch, ranks), rows in sorted(lines.items()):
                rows = sorted(rows, key=lambda r: r["nbytes"])
                xs = [max(r["nbytes"], 1) for r in rows]
                ax.plot(
                    xs,
                    [r["latency_s"] * 1e6 for r in rows],
                    "o-",
                    markersize=3,
                    label=f"{ch} n={ranks}",
                )
            ax.set_title(f"{op} ({note})" if note else op)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("bytes per rank")
            ax.set_ylabel("latency (us)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(d / fname, dpi=110)
        plt.close(fig)
        written.append(d / fname)
    return written


def _point(row: dict[str, Any] | None) -> str:
    """One measured point in words: ``direct send 2 MiB: measured 533 us, model 1.50 ms``."""
    if not row:
        return "-"
    op = row.get("op") or "send"
    ranks = "" if op == "send" else f" on {row.get('ranks')} ranks"
    return (
        f"{row.get('channel')} {op} {_size(int(row.get('nbytes') or 0))}{ranks}: "
        f"measured {_us(row.get('latency_s'))}, model {_us(row.get('predicted_s'))}"
    )


def _accuracy_lines(title: str, acc: dict[str, Any]) -> list[str]:
    """The accuracy report: time predictions within tolerance, and the fast choice."""
    from afmi.bench.measure import SLOW_MACHINE

    lines = [
        title,
        f"  time: {acc['within_tolerance']}/{acc['points']} points within "
        f"{acc['tolerance']:.0%} ({acc['fraction_within']:.0%}); worst "
        f"{acc['max_abs_rel_error']:.0%}: {_point(acc['worst'])}",
    ]
    if acc.get("held_out_points") is not None and acc["held_out_points"] < acc["points"]:
        lines.append(
            f"  held out of the calibration: {acc['held_out_within']}/"
            f"{acc['held_out_points']} points within {acc['tolerance']:.0%}"
            + (f" ({acc['held_out_fraction']:.0%})" if acc["held_out_points"] else "")
        )
    if acc.get("within_by_channel"):
        lines.append(
            "  within per channel: "
            + ", ".join(f"{c} {w}/{n}" for c, (w, n) in acc["within_by_channel"].items())
        )
    if acc.get("pass_spread_by_channel"):
        misses = acc["points"] - acc["within_tolerance"]
        lines.append(
            "  measurement noise: a point's passes lay apart by a median of "
            + ", ".join(f"{v:.0%} ({c})" for c, v in acc["pass_spread_by_channel"].items())
            + f"; {acc['misses_noisier_than_tolerance']} of the {misses} points outside "
            f"{acc['tolerance']:.0%} moved by more than that between their own passes; "
            f"of the {acc['steady_points']} points whose passes lay within "
            f"{acc['tolerance']:.0%} of each other, {acc['steady_within']} are within "
            f"{acc['tolerance']:.0%}"
        )
    if acc.get("slowest_machine") is not None:
        misses = acc["points"] - acc["within_tolerance"]
        lines.append(
            f"  machine speed: {acc['misses_on_slow_machine']} of the {misses} points outside "
            f"{acc['tolerance']:.0%} were measured while the CPU ran over {SLOW_MACHINE:g}x "
            f"slower than its fastest in the run (at worst {acc['slowest_machine']:.2f}x); "
            f"of the {acc['at_speed_points']} points measured at speed, "
            f"{acc['at_speed_within']} are within {acc['tolerance']:.0%}"
        )
    if acc.get("request_points"):
        w = acc["request_worst"]
        lines.append(
            f"  storage requests: {acc['request_within']}/{acc['request_points']} points "
            f"predict the request dollars within {acc['tolerance']:.0%} of the requests "
            f"counted; writes exact at {acc['request_writes_exact']}, reads at "
            f"{acc['request_reads_exact']}; worst {w['request_error']:+.0%}: "
            f"{w['channel']} {w['op']} {_size(int(w['nbytes'] or 0))} on {w['ranks']} ranks "
            f"(polls {w['predicted_requests']['polls']:.1f} predicted, "
            f"{w['counted_requests']['polls']:.1f} counted)"
        )
    if acc.get("choice_points"):
        lines.append(
            f"  fast choice: {acc['choice_correct']}/{acc['choice_points']} points pick the "
            f"measured-fastest channel ({acc['choice_fraction']:.0%}); "
            f"{acc['choice_near']} ({acc['choice_near_fraction']:.0%}) pick a channel "
            f"within 10% of it"
        )
    else:
        lines.append(f"  fast choice: {acc.get('choice_note')}")
    if acc.get("time_misses"):
        lines.append(
            f"  outside {acc['tolerance']:.0%}, worst first (every pass's time, in run order; "
            "how slow the CPU ran for the kept one):"
        )
        lines.extend(f"    {_miss_line(m)}" for m in acc["time_misses"])
    return lines


def _miss_line(miss: dict[str, Any]) -> str:
    """One point outside the tolerance: its error, passes, whether fitted, the CPU's speed."""
    parts = [f"{_point(miss)} ({miss['rel_error']:+.0%})"]
    passes = miss.get("pass_latencies_s") or []
    if len(passes) > 1:
        estimate = "median" if miss.get("pass_estimate") == "median" else "fastest kept"
        parts.append(f"passes {', '.join(_us(t) for t in passes)} ({estimate})")
    if miss.get("fitted"):
        parts.append("fitted")
    if miss.get("machine_slowdown") is not None:
        parts.append(f"CPU slowdown {miss['machine_slowdown']:.2f}x")
    return "; ".join(parts)
