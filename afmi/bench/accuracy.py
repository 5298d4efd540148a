"""How well the model predicts what the bench measured.

The figures, all printed by ``afmi bench`` and stored in its JSON:

* time: for every measured point, ``predicted / measured - 1``; the share of
  points within +-30 % and the worst point, over all points and over the
  points held out of the calibration (rows not marked ``fitted``);
* the points outside the tolerance, worst first (up to :data:`MAX_LISTED`), each
  with every pass's time, whether it was fitted and how slow the machine ran:
  what tells a noisy measurement from the model's error;
* choice: for every point measured on two or more channels, whether the
  ``fast`` hint picks the channel that measured fastest (and, to tell misses
  from near ties, whether the picked channel measured within 10 % of it);
* requests: for every point whose storage requests were counted (S3:
  ``requests_per_call``, every rank's LISTs from each timed call's start to
  its exit, its PUTs, GETs and DELETEs over all the timed calls, per call;
  per message of a ping-pong; :class:`afmi.bench.measure.Tally`), the request
  dollars the model predicts against the counted requests at the model's
  prices, and how many points predict the writes and reads exactly;
* noise: for rows measured in several passes, how far a point's passes lay
  apart (median per channel), how many points outside the tolerance moved
  by more than the tolerance between their own passes, and how many of the
  points whose passes lay within the tolerance of each other are within it; and how many points
  outside the tolerance were measured while the machine ran slow
  (``machine_slowdown`` above :data:`afmi.bench.measure.SLOW_MACHINE`, after
  any retries), the slowest it ran for a kept measurement, and the share
  within the tolerance of the points measured at speed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from afmi.config import Config
from afmi.model.cli import explain_offline

__all__ = ["TOLERANCE", "annotate", "summarize"]

#: Relative error a prediction may have and still count as accurate.
TOLERANCE = 0.30
#: A picked channel measured within this fraction of the fastest counts as "near".
NEAR = 0.10
#: The most points outside the tolerance (and fast-choice misses) the summary lists.
MAX_LISTED = 20


def _predicted(row: dict[str, Any], config: Config, channels: list[str]) -> Any:
    op = row.get("op", "send")
    size = 2 if op == "send" else int(row["ranks"])
    return explain_offline(op, int(row["nbytes"]), size, channels, config, "fast")


#: Storage request types by how a channel model prices them (DELETE is free).
WRITES = ("put", "post")
READS = ("get", "head")
POLLS = ("list",)


def counted_requests(counted: dict[str, float]) -> dict[str, float]:
    """``{"writes", "reads", "polls"}`` of counted requests by type (``put``, ``get``, ...)."""
    return {
        "writes": sum(counted.get(k, 0.0) for k in WRITES),
        "reads": sum(counted.get(k, 0.0) for k in READS),
        "polls": sum(counted.get(k, 0.0) for k in POLLS),
    }


def annotate(rows: list[dict[str, Any]], config: Config) -> None:
    """Add ``predicted_s``, ``algorithm`` and ``rel_error`` to measured rows (in place);
    rows with counted storage requests (``requests_per_call``) also get the predicted
    and counted requests and their dollars, and ``request_error``."""
    from afmi.model.params import model_for

    for row in rows:
        winner = _predicted(row, config, [row["channel"]]).winner
        row["predicted_s"] = winner.time_s
        row["predicted_usd"] = winner.usd
        row["algorithm"] = winner.algorithm
        row["rel_error"] = winner.time_s / row["latency_s"] - 1 if row["latency_s"] > 0 else None
        if not row.get("requests_per_call"):
            continue
        model = model_for(row["channel"], config)
        counted = counted_requests(row["requests_per_call"])
        usd = model.requests_usd(**counted)
        row["predicted_requests"] = {
            "writes": winner.writes,
            "reads": winner.reads,
            "polls": winner.polls,
        }
        row["predicted_request_usd"] = winner.request_usd
        row["counted_request_usd"] = usd
        row["request_error"] = winner.request_usd / usd - 1 if usd > 0 else None


def summarize(rows: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Accuracy of time predictions and of the ``fast`` choice over annotated ``rows``."""
    errors = [(abs(r["rel_error"]), r) for r in rows if r.get("rel_error") is not None]
    within = sum(1 for e, _ in errors if e <= TOLERANCE)
    worst = max(errors, key=lambda er: er[0], default=None)
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        op = r.get("op", "send")
        groups[(op, int(r.get("ranks", 2)), int(r["nbytes"]))].append(r)
    judged = correct = near = 0
    misses = []
    for (op, ranks, nbytes), members in sorted(groups.items()):
        channels = sorted({m["channel"] for m in members})
        if len(channels) < 2:
            continue
        judged += 1
        best = min(members, key=lambda m: m["latency_s"])
        fastest = best["channel"]
        picked = _predicted(members[0], config, channels).winner.channel
        picked_s = next(m["latency_s"] for m in members if m["channel"] == picked)
        if picked_s <= best["latency_s"] * (1 + NEAR):
            near += 1
        if picked == fastest:
            correct += 1
        else:
            misses.append(
                {"op": op, "ranks": ranks, "nbytes": nbytes, "picked": picked, "fastest": fastest}
            )
    held = [e for e, r in errors if not r.get("fitted")]
    held_within = sum(1 for e in held if e <= TOLERANCE)
    by_channel: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e, r in errors:
        by_channel[r["channel"]][0] += e <= TOLERANCE
        by_channel[r["channel"]][1] += 1
    out: dict[str, Any] = {
        "tolerance": TOLERANCE,
        "points": len(errors),
        "within_tolerance": within,
        "fraction_within": within / len(errors) if errors else None,
        "held_out_points": len(held),
        "held_out_within": held_within,
        "held_out_fraction": held_within / len(held) if held else None,
        "within_by_channel": {c: list(v) for c, v in sorted(by_channel.items())},
        "max_abs_rel_error": worst[0] if worst else None,
        "worst": _brief(worst[1]) if worst else None,
        "choice_points": judged,
        "choice_correct": correct,
        "choice_fraction": correct / judged if judged else None,
        "choice_near": near,
        "choice_near_fraction": near / judged if judged else None,
        "choice_misses": misses[:MAX_LISTED],
        "time_misses": [
            _miss(r) for e, r in sorted(errors, key=lambda er: -er[0]) if e > TOLERANCE
        ][:MAX_LISTED],
    }
    if not judged:
        out["choice_note"] = "only one channel measured: the fast choice cannot be judged"
    out.update(_noise(errors))
    out.update(_requests(rows))
    return out


def _requests(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The request figures (see the module docstring) over rows with ``request_error``."""
    judged = [r for r in rows if r.get("request_error") is not None]
    if not judged:
        return {}
    worst = max(judged, key=lambda r: abs(r["request_error"]))

    def exact(kind: str) -> int:
        return sum(
            1
            for r in judged
            if abs(r["predicted_requests"][kind] - counted_requests(r["requests_per_call"])[kind])
            < 0.05
        )

    return {
        "request_points": len(judged),
        "request_within": sum(1 for r in judged if abs(r["request_error"]) <= TOLERANCE),
        "request_worst": {
            **_brief(worst),
            "request_error": worst["request_error"],
            "predicted_requests": worst["predicted_requests"],
            "counted_requests": counted_requests(worst["requests_per_call"]),
        },
        "request_writes_exact": exact("writes"),
        "request_reads_exact": exact("reads"),
    }


def _spread(row: dict[str, Any]) -> float | None:
    """How far a point's passes lay apart: slowest / fastest - 1 (None for one pass)."""
    times = [t for t in row.get("pass_latencies_s", ()) if t > 0]
    return max(times) / min(times) - 1 if len(times) > 1 else None


def _noise(errors: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The measurement's own noise: for rows measured in several passes, the median
    spread of a point's passes per channel, and how many points outside the
    tolerance moved by more than it between their own passes, and how the points
    whose passes lay within it of each other fared; for rows that
    watched the machine's speed, how many points outside the tolerance were
    measured while it ran slow, and how the points measured at speed fared."""
    from afmi.bench.measure import SLOW_MACHINE

    spreads: dict[str, list[float]] = defaultdict(list)
    noisy_misses = steady = steady_within = 0
    watched = slow_misses = at_speed = at_speed_within = 0
    slowest = 1.0
    for e, r in errors:
        slowdown = r.get("machine_slowdown")
        if slowdown is not None:
            watched += 1
            slowest = max(slowest, float(slowdown))
            slow_misses += e > TOLERANCE and slowdown > SLOW_MACHINE
            at_speed += slowdown <= SLOW_MACHINE
            at_speed_within += slowdown <= SLOW_MACHINE and e <= TOLERANCE
        spread = _spread(r)
        if spread is None:
            continue
        spreads[r["channel"]].append(spread)
        noisy_misses += e > TOLERANCE and spread > TOLERANCE
        steady += spread <= TOLERANCE
        steady_within += spread <= TOLERANCE and e <= TOLERANCE
    out: dict[str, Any] = {}
    if spreads:
        out["pass_spread_by_channel"] = {
            c: statistics.median_high(v) for c, v in sorted(spreads.items())
        }
        out["misses_noisier_than_tolerance"] = noisy_misses
        out["steady_points"] = steady
        out["steady_within"] = steady_within
    if watched:
        out["slowest_machine"] = slowest
        out["misses_on_slow_machine"] = slow_misses
        out["at_speed_points"] = at_speed
        out["at_speed_within"] = at_speed_within
    return out


def _miss(row: dict[str, Any]) -> dict[str, Any]:
    """A point outside the tolerance, with what tells noise from the model's error: every
    pass's time, whether the calibration fitted it, how slow the machine ran."""
    out = _brief(row)
    out["fitted"] = bool(row.get("fitted"))
    for key in ("pass_latencies_s", "pass_estimate", "machine_slowdown"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("channel", "op", "ranks", "nbytes", "latency_s", "predicted_s", "rel_error")
    return {k: row.get(k, "send" if k == "op" else None) for k in keys}
