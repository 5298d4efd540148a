"""Calibration: fit a channel's latency and bandwidth to measurements; write a model file.

Two steps, both minimising the *relative* squared error (every size counts
alike, from 1 byte to 16 MiB):

1. the ping-pong sweep gives half round-trip times ``t(n)``, fitted by
   ``latency_s + x(n)`` with one bandwidth, or two when large messages move
   at a different rate (:func:`fit_wire`);
2. a few collective calls (bcast, gather, allreduce, barrier of 1 byte and
   of a large payload, on each rank count) give ``call_overhead_s``,
   ``per_message_s`` and the aggregate bandwidth (:func:`fit_rounds`).

Prices are not measured: they keep their configured values.

The model file is a config file holding only a ``model`` table, so both
``Config.from_file(path)`` and ``Config(model.file=path)`` read it.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "fit_aggregate",
    "fit_rounds",
    "fit_latency_bandwidth",
    "fit_per_message",
    "fit_wire",
    "model_file",
    "write_model_file",
]


def fit_latency_bandwidth(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(latency_s, bandwidth_bytes_per_s)`` from ``(nbytes, seconds)`` points.

    Weighted least squares of ``t = a + b * n`` with weights ``1 / t**2``
    (relative error); the results are clamped to positive values.
    """
    pts = [(float(n), float(t)) for n, t in points if t > 0]
    if not pts:
        raise ValueError("no positive timings to fit")
    s00 = s01 = s11 = r0 = r1 = 0.0
    for n, t in pts:
        w = 1.0 / (t * t)
        s00 += w
        s01 += w * n
        s11 += w * n * n
        r0 += w * t
        r1 += w * n * t
    det = s00 * s11 - s01 * s01
    if len(pts) < 2 or det <= 1e-12 * s00 * s11:
        a, b = min(t for _, t in pts), 0.0
    else:
        a = (r0 * s11 - r1 * s01) / det
        b = (s00 * r1 - s01 * r0) / det
    if a <= 0:
        a = min(t for _, t in pts) * 0.5
    if b <= 0:
        n, t = max(pts)
        b = max(t - a, t * 0.01) / max(n, 1.0)
    return a, 1.0 / b


def _wire(params: dict[str, float], n: float) -> float:
    limit = params["large_message_bytes"]
    x = min(n, limit) if limit > 0 else n
    t = params["latency_s"] + x / params["bandwidth_single_bytes_per_s"]
    if limit > 0 and n > limit:
        t += (n - limit) / params["bandwidth_large_bytes_per_s"]
    return t


def _score(params: dict[str, float], pts: list[tuple[float, float]]) -> tuple[float, float]:
    errs = [abs(_wire(params, n) / t - 1) for n, t in pts]
    return max(errs), sum(e * e for e in errs)


def fit_wire(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Latency, bandwidth and (when it helps) a second bandwidth for large messages.

    Tries one bandwidth for all sizes, then every measured size as the
    threshold of a continuous two-piece line (small messages fit as in
    :func:`fit_latency_bandwidth`, the bytes beyond the threshold get their
    own bandwidth), and keeps the fit with the smallest worst relative error.
    The second regime is kept only if it lowers that error by 5 points.
    """
    pts = sorted((float(n), float(t)) for n, t in points if t > 0)
    latency, single = fit_latency_bandwidth(pts)
    best = {
        "latency_s": latency,
        "bandwidth_single_bytes_per_s": single,
        "large_message_bytes": 0.0,
        "bandwidth_large_bytes_per_s": single,
    }
    best_score = _score(best, pts)
    sizes = sorted({n for n, _ in pts})
    for limit in sizes[2:-1]:
        small = [(n, t) for n, t in pts if n <= limit]
        large = [(n, t) for n, t in pts if n > limit]
        lat, bw = fit_latency_bandwidth(small)
        base = lat + limit / bw
        num = den = 0.0
        for n, t in large:
            w = 1.0 / (t * t)
            num += w * (n - limit) * (t - base)
            den += w * (n - limit) ** 2
        if num <= 0 or den <= 0 or bw < (den / num) / 10:
            continue  # latency noise posing as a slow small-message bandwidth
        cand = {
            "latency_s": lat,
            "bandwidth_single_bytes_per_s": bw,
            "large_message_bytes": float(limit),
            "bandwidth_large_bytes_per_s": den / num,
        }
        score = _score(cand, pts)
        if score[0] < best_score[0] - 0.05 or (
            best["large_message_bytes"] > 0 and score < best_score
        ):
            best, best_score = cand, score
    return best


def fit_per_message(fanout_s: float, peers: int, latency_s: float) -> float:
    """Extra seconds per further message in a round, from a fan-out of small messages.

    One rank sends a tiny message to each of ``peers`` ranks and waits for
    their answers: two rounds of ``peers`` messages, which the model puts at
    ``2 * latency_s + 2 * (peers - 1) * per_message_s``.
    """
    if peers < 2:
        raise ValueError("a fan-out needs at least 2 peers")
    return max((fanout_s - 2 * latency_s) / (2 * (peers - 1)), 0.0)


def fit_aggregate(
    fanout_s: float,
    peers: int,
    wire_s: float,
    latency_s: float,
    per_message_s: float,
    single: float,
) -> float:
    """Aggregate bandwidth from a fan-out of one large message to each of ``peers`` peers.

    ``wire_s`` is one such message's time on a single stream. The model puts
    the fan-out (with tiny answers) at ``2 * latency_s + 2 * (peers - 1) *
    per_message_s + wire_s * peers * single / min(peers * single, aggregate)``;
    the result is kept between ``single / 4`` and ``peers * single``.
    """
    transfer = fanout_s - 2 * latency_s - 2 * (peers - 1) * per_message_s
    if transfer <= 0 or wire_s <= 0:
        return peers * single
    share = transfer / wire_s
    if share <= 1:
        return peers * single
    return min(max(peers * single / share, single / 4), peers * single)


def fit_rounds(
    channel: str, wire: dict[str, float], points: Sequence[tuple[str, int, int, float]]
) -> dict[str, float]:
    """``call_overhead_s``, ``per_message_s`` and the aggregate bandwidth from collectives.

    ``points`` are ``(op, ranks, nbytes, seconds)`` measurements. With the
    wire parameters fixed, the model of a call is linear in the three
    unknowns (``1 / aggregate`` while the aggregate limits a round of two or
    more messages), so a least-squares fit of the relative error finds them;
    negative results are clamped to zero and the aggregate to at least a
    quarter of the single-stream bandwidth.
    """
    import numpy as np

    from afmi.model.params import ChannelModel
    from afmi.model.select import candidates

    single = wire["bandwidth_single_bytes_per_s"]
    values: dict[str, Any] = dict(wire)
    base_model = ChannelModel(name=channel, bandwidth_aggregate_bytes_per_s=single, **values)
    rows, targets = [], []
    for op, ranks, nbytes, seconds in points:
        if seconds <= 0 or ranks < 2:
            continue
        alg = candidates(op, channel, ranks, nbytes)[0]
        fixed = messages_term = bytes_term = 0.0
        for step in alg.steps(ranks, nbytes):
            if step.rounds <= 0 or step.messages <= 0:
                continue
            fixed += step.rounds * wire["latency_s"]
            messages_term += step.rounds * (step.messages - 1)
            if step.messages == 1:
                fixed += step.rounds * base_model.wire_time_s(step.nbytes)
            else:
                wire_s = base_model.wire_time_s(step.nbytes)
                bytes_term += step.rounds * wire_s * step.messages * single
        rows.append([1.0 / seconds, messages_term / seconds, bytes_term / seconds])
        targets.append((seconds - fixed) / seconds)
    if len(rows) < 3:
        raise ValueError("fitting the rounds needs at least 3 collective measurements")
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    overhead, per_message, inverse_aggregate = (float(v) for v in solution)
    aggregate = 1.0 / inverse_aggregate if inverse_aggregate > 0 else 64 * single
    return {
        "call_overhead_s": max(overhead, 0.0),
        "per_message_s": max(per_message, 0.0),
        "bandwidth_aggregate_bytes_per_s": max(aggregate, single / 4),
    }


def model_file(channels: dict[str, dict[str, float]], where: str | None = None) -> dict[str, Any]:
    """The content of a model file for calibrated ``channels`` (``name -> parameters``)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    table: dict[str, Any] = {
        "calibrated": where or f"afmi bench --calibrate on {platform.node()} at {stamp}"
    }
    for name, params in sorted(channels.items()):
        table[name] = {k: float(v) for k, v in params.items()}
    return {"model": table}


def write_model_file(path: str | Path, channels: dict[str, dict[str, float]]) -> Path:
    """Write a model file (JSON, or TOML when ``path`` ends in ``.toml``); return its path.

    The file is checked by loading it back through :class:`afmi.Config`.
    """
    from afmi.config import Config

    p = Path(path)
    content = model_file(channels)
    if p.suffix == ".toml":
        lines = [f"[model]\ncalibrated = {json.dumps(content['model']['calibrated'])}"]
        for name, params in content["model"].items():
            if isinstance(params, dict):
                lines.append(f"\n[model.{name}]")
                lines.extend(f"{k} = {v!r}" for k, v in params.items())
        p.write_text("\n".join(lines) + "\n")
    else:
        p.write_text(json.dumps(content, indent=2) + "\n")
    Config.from_file(p)
    return p
