"""Calibration: fit a channel's latency and bandwidth to measurements; write a model file.

The ping-pong sweep gives half round-trip times ``t(n)``; the model says
``t(n) = latency_s + n / bandwidth_single_bytes_per_s``. The fit minimises
the *relative* squared error (every size counts alike, from 1 byte to
16 MiB). A burst of back-to-back messages gives ``per_message_s``, and a
fan-out of large messages to three peers gives the aggregate bandwidth.
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

__all__ = ["fit_latency_bandwidth", "fit_per_message", "fit_aggregate", "model_file", "write_model_file"]


def fit_latency_bandwidth(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """``(latency_s, bandwidth_bytes_per_s)`` from ``(nbytes, seconds)`` points.

    Weighted least squares of ``t = a + b * n`` with weights ``1 / t``; the
    results are clamped to positive values.
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
    if det <= 0 or len(pts) < 2:
        a, b = min(t for _, t in pts), 0.0
    else:
        a = (r0 * s11 - r1 * s01) / det
        b = (s00 * r1 - s01 * r0) / det
    small = min(pts)
    if a <= 0:
        a = small[1] * 0.5
    if b <= 0:
        big = max(pts)
        b = max(big[1] - a, big[1] * 0.01) / max(big[0], 1.0)
    return a, 1.0 / b


def fit_per_message(burst_s: float, count: int, latency_s: float) -> float:
    """Extra seconds per message in a round, from a burst of ``count`` messages plus an answer.

    The burst takes ``2 * latency_s + (count - 1) * per_message_s``.
    """
    if count < 2:
        raise ValueError("a burst needs at least 2 messages")
    return max((burst_s - 2 * latency_s) / (count - 1), 0.0)


def fit_aggregate(
    fanout_s: float, peers: int, nbytes: int, latency_s: float, per_message_s: float, single: float
) -> float:
    """Aggregate bandwidth from a fan-out of ``nbytes`` to ``peers`` peers (plus answers).

    The round takes ``2 * latency_s + (peers - 1) * per_message_s + peers * nbytes / agg``;
    the result lies between ``single`` and ``peers * single``.
    """
    transfer = fanout_s - 2 * latency_s - (peers - 1) * per_message_s
    if transfer <= 0:
        return peers * single
    return min(max(peers * nbytes / transfer, single), peers * single)


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
        lines = [f'[model]\ncalibrated = {json.dumps(content["model"]["calibrated"])}']
        for name, params in content["model"].items():
            if isinstance(params, dict):
                lines.append(f"\n[model.{name}]")
                lines.extend(f"{k} = {v!r}" for k, v in params.items())
        p.write_text("\n".join(lines) + "\n")
    else:
        p.write_text(json.dumps(content, indent=2) + "\n")
    Config.from_file(p)
    return p
