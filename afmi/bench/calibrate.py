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

import dataclasses
import datetime
import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afmi.launch import event_loop_name

if TYPE_CHECKING:
    from afmi.config import Config
    from afmi.model.params import ChannelModel

__all__ = [
    "fastest_reduction",
    "fit_aggregate",
    "fit_fetch",
    "fit_rounds",
    "fit_steps",
    "fit_latency_bandwidth",
    "fit_parallel",
    "fit_per_message",
    "fit_poll_request",
    "poll_params",
    "fit_wire",
    "measure_reduce_rate",
    "measure_reduce_rates",
    "model_file",
    "reduction_regimes",
    "split_fitted",
    "split_params",
    "write_model_file",
]


def split_fitted(rows: list[dict[str, Any]], steps: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Mark every other row by size ``fitted`` and return those; the rest are held out.

    The alternation is counted from the largest size, which is always fitted, so
    the held-out sizes lie inside the fitted range (the smallest may be held out:
    small messages cost their latency, which the next size up fixes). With fewer
    than 4 rows all are fitted.

    ``steps`` are sizes past which the model charges a cost of its own (see
    :func:`fit_steps`): the smallest row above each is fitted too. Without it the
    fit sees such a cost only in larger rows, where the per-byte terms can take it
    up, and a held-out row just past the step checks a cost the fit never saw.
    """
    ordered = sorted(rows, key=lambda r: r["nbytes"], reverse=True)
    for i, r in enumerate(ordered):
        r["fitted"] = i % 2 == 0 or len(ordered) < 4
    for step in steps:
        above = [r for r in ordered if r["nbytes"] > step]
        if above:
            above[-1]["fitted"] = True
    return sorted((r for r in ordered if r["fitted"]), key=lambda r: r["nbytes"])


def fit_steps(params: Mapping[str, float], ranks: int) -> list[float]:
    """The sizes past which a call of ``ranks`` ranks costs more per message, for
    :func:`split_fitted`: ``split_message_bytes`` of ``params`` (from
    :func:`split_params`), in calls of more than two ranks, the only ones
    :meth:`afmi.model.params.ChannelModel.split_deliveries` charges; else none."""
    limit = params.get("split_message_bytes", 0.0)
    return [limit] if limit > 0 and ranks > 2 else []


#: Bytes of a direct frame besides its payload that the split limit allows for (the
#: prelude and header of an array's frame took 40 bytes here; 64 leaves room).
FRAME_OVERHEAD_BYTES = 64


def split_params(channel: str) -> dict[str, float]:
    """``{"split_message_bytes": ...}`` for ``channel`` where its messages travel as TCP
    frames (``direct``): the payload that still fits in one segment of a loopback
    connection (:func:`afmi.channels.direct.tcp.segment_bytes` less
    :data:`FRAME_OVERHEAD_BYTES`); else, or where the platform does not say, ``{}``.
    The fit then decides whether longer messages cost more (``cpu_per_split_message_s``).
    """
    if channel != "direct":
        return {}
    from afmi.channels.direct.tcp import segment_bytes

    mss = segment_bytes()
    if mss is None or mss <= FRAME_OVERHEAD_BYTES:
        return {}
    return {"split_message_bytes": float(mss - FRAME_OVERHEAD_BYTES)}


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
    """A message's time under wire ``params``, as :class:`~afmi.model.params.ChannelModel`
    puts it (latency, the fetch above the inline size, the bytes at their rates)."""
    from afmi.model.params import _rates

    t = params["latency_s"] + _rates(
        n,
        params["bandwidth_single_bytes_per_s"],
        (params["large_message_bytes"], params["bandwidth_large_bytes_per_s"]),
        (params.get("huge_message_bytes", 0.0), params.get("bandwidth_huge_bytes_per_s", 0.0)),
    )
    inline = params.get("inline_max_bytes", 0.0)
    if inline <= 0 or n > inline:
        t += params.get("fetch_s", 0.0)
    if 0 < params.get("split_message_bytes", 0.0) < n:
        t += params.get("split_latency_s", 0.0)
    return t


def _score(params: dict[str, float], pts: list[tuple[float, float]]) -> tuple[float, float]:
    """``(worst relative error but one, squared relative error)`` of ``params`` over ``pts``."""
    errs = [abs(_wire(params, n) / t - 1) for n, t in pts]
    return _worst_but_one(params, pts), sum(e * e for e in errs)


def _worst_but_one(params: dict[str, float], pts: list[tuple[float, float]]) -> float:
    """The second-largest relative error of ``params`` over ``pts`` below their largest
    size (the largest when there are fewer than 4 such points), or the largest size's
    error when that is more: how :func:`fit_wire` and :func:`fit_fetch` compare their
    fits, so that one noisy size does not decide where the knee or the step goes. The
    largest size always counts: it alone may show the slowest regime, and leaving it
    out as the one noisy size would leave that regime out of every fit (across
    processes, session 15, the 64 MiB ping-pong moved its bytes beyond 16 MiB at
    2.9 GB/s against 4.5 GB/s below; left out, it was predicted 30 % short of its
    measured time, and so was the held-out 32 MiB)."""
    top = max(n for n, _ in pts)
    errs = sorted((abs(_wire(params, n) / t - 1) for n, t in pts if n < top), reverse=True)
    top_error = max(abs(_wire(params, n) / t - 1) for n, t in pts if n == top)
    rest = errs[1] if len(errs) >= 4 else (errs[0] if errs else 0.0)
    return max(rest, top_error)


def _one_rate(pts: list[tuple[float, float]]) -> dict[str, float]:
    """The wire parameters of :func:`fit_latency_bandwidth`: one rate for all sizes."""
    latency, single = fit_latency_bandwidth(pts)
    return {
        "latency_s": latency,
        "bandwidth_single_bytes_per_s": single,
        "large_message_bytes": 0.0,
        "bandwidth_large_bytes_per_s": single,
        "huge_message_bytes": 0.0,
        "bandwidth_huge_bytes_per_s": 0.0,
    }


def fit_wire(
    points: Sequence[tuple[float, float]],
    fetch: bool = False,
    inline: float | None = None,
    split: float | None = None,
) -> dict[str, float]:
    """Latency, bandwidth and (when it helps) a second and a third bandwidth for larger
    messages.

    With ``fetch`` or an ``inline`` size (a channel whose small messages travel
    inline and larger ones need a fetch of their own, as S3's and Redis's), the
    fit is :func:`fit_fetch` instead, at the channel's configured ``inline`` size
    when it is known.

    Tries one bandwidth for all sizes, then every split of the measured sizes
    into small and large ones as a continuous two-piece line (small messages
    fit as in :func:`fit_latency_bandwidth`, the bytes beyond the threshold get
    their own bandwidth), then every pair of splits as a continuous three-piece
    line, each rate slower than the one before it (a message outgrows one
    cache, then the next: across processes the loopback moved 256-512 KiB at
    6 GB/s, 1-16 MiB at 3.5 GB/s and 32-64 MiB at 2.4 GB/s). Fits are compared
    by their worst relative error but one (:func:`_worst_but_one`): a single
    noisy size, often a small one that every split fits alike, would otherwise
    make them all look equal. A second regime is kept only if its best fit
    lowers that error by :data:`WIRE_MIN_GAIN`, and a third only if its best
    fit lowers the error of the two-piece line that would be kept by as much
    again (in one cross-process run the two-piece line kept had its knee at
    32 MiB and a worst error but one of 18 %, the best had 15 %, and the best
    three-piece line 11 %: measured against the best, the third regime was
    refused, and 256 KiB, 512 KiB and 32 MiB came out 37-44 % off).

    The threshold of a split lies somewhere between its largest small size and
    its smallest large one; both the largest small size and the midpoint (in
    log scale) of the two are tried. Of the fits whose error lies within
    :data:`WIRE_MIN_GAIN` of the best one, the one whose first threshold is
    largest is kept, and of those the one whose second is smallest: the fastest
    and the slowest regime each reach as far as the measured sizes allow, and a
    slow point below the knee (one noisy size) does not pull the knee down to
    it. Where one size lies above the knee, the sizes between it and the
    largest small one (held out of the calibration, or a user's) are then never
    more than half a step on the wrong side of the knee. (Across processes the
    held-out 32 MiB ping-pong ran as slowly as 64 MiB, and the 512 KiB one as
    fast as 256 KiB.)
    """
    if fetch or (inline or 0.0) > 0:
        return fit_fetch(points, inline)
    pts = sorted((float(n), float(t)) for n, t in points if t > 0)
    if split:
        return _with_split_step(pts, float(split))
    return _fit_pieces(pts)


#: The steps :func:`fit_wire` tries at the split limit, as fractions of the time of the
#: fastest message above it: 1/64, 2/64, ... 32/64.
SPLIT_STEPS = 32


def _with_split_step(pts: list[tuple[float, float]], limit: float) -> dict[str, float]:
    """:func:`_fit_pieces` with a step of its own for messages above ``limit`` (the
    split limit: ``split_latency_s``), where one lowers the worst relative error but
    one (:func:`_worst_but_one`) by :data:`WIRE_MIN_GAIN`. Each step tried (up to half
    the time of the fastest message above the limit) is taken off the times above it
    before the line is fitted; the fit with the lowest such error wins."""
    plain = {**_fit_pieces(pts), "split_message_bytes": limit, "split_latency_s": 0.0}
    above = [t for n, t in pts if n > limit]
    if not above or len(above) == len(pts):
        return plain
    plain_score = _worst_but_one(plain, pts)
    best, score = plain, plain_score
    least = min(above)
    for k in range(1, SPLIT_STEPS + 1):
        step = least * k / (2 * SPLIT_STEPS)
        cut = [(n, t - step if n > limit else t) for n, t in pts]
        cand = {**_fit_pieces(cut), "split_message_bytes": limit, "split_latency_s": step}
        worst = _worst_but_one(cand, pts)
        if worst < score:
            best, score = cand, worst
    if score > plain_score - WIRE_MIN_GAIN:
        return plain
    return best


def _fit_pieces(pts: list[tuple[float, float]]) -> dict[str, float]:
    """:func:`fit_wire`'s one-, two- and three-piece lines over sorted ``pts``."""
    one = _one_rate(pts)
    sizes = sorted({n for n, _ in pts})
    twos: list[tuple[float, dict[str, float]]] = []
    threes: list[tuple[float, dict[str, float]]] = []
    for i in range(2, len(sizes) - 1):
        split = sizes[i]
        small = [(n, t) for n, t in pts if n <= split]
        large = [(n, t) for n, t in pts if n > split]
        lat, bw = fit_latency_bandwidth(small)
        for k in _knees(split, sizes[i + 1]):
            f = _knee(lat, bw, large, k)
            if f:
                twos.append((_worst_but_one(f, pts), f))
            for j in range(i + 1, len(sizes) - 1):
                middle = _middle(lat, bw, pts, k, sizes[j])
                if middle is None:
                    continue
                for k2 in _knees(sizes[j], sizes[j + 1]):
                    f = _second_knee(middle, pts, sizes[j], k2)
                    if f:
                        threes.append((_worst_but_one(f, pts), f))
    best, score = one, _worst_but_one(one, pts)
    for fits in (twos, threes):
        lowest = min((worst for worst, _ in fits), default=math.inf)
        if lowest < score - WIRE_MIN_GAIN:
            near = [(worst, f) for worst, f in fits if worst <= lowest + WIRE_MIN_GAIN]
            score, best = max(
                near, key=lambda wf: (wf[1]["large_message_bytes"], -wf[1]["huge_message_bytes"])
            )
    return best


#: A wire fit keeps a second regime (:func:`fit_wire`) or a fetch step
#: (:func:`fit_fetch`) only when it lowers the worst relative error by this much,
#: and a third regime only when it lowers it by as much again; :func:`fit_wire`
#: moves a knee to a smaller size only for as much.
WIRE_MIN_GAIN = 0.05


#: A three-piece wire fit (:func:`fit_wire`) fits its middle rate to at least this many
#: measured sizes.
MIDDLE_MIN_SIZES = 3


def _knees(small: float, large: float) -> list[float]:
    """Thresholds tried between two neighbouring measured sizes: the smaller, the midpoint."""
    mid = float(round(math.sqrt(small * large)))
    return [small] if mid <= small or mid >= large else [small, mid]


def _rate_beyond(base: float, limit: float, large: list[tuple[float, float]]) -> float:
    """The rate of the bytes past ``limit`` of a line through ``(limit, base)`` that fits
    ``large`` best in relative error; 0 where those sizes take no longer than ``base``."""
    num = den = 0.0
    for n, t in large:
        w = 1.0 / (t * t)
        num += w * (n - limit) * (t - base)
        den += w * (n - limit) ** 2
    return den / num if num > 0 and den > 0 else 0.0


def _knee(
    lat: float, bw: float, large: list[tuple[float, float]], limit: float
) -> dict[str, float] | None:
    """The two-piece line with its threshold at ``limit``, or None where the sizes above
    it do not make a slower regime."""
    rate = _rate_beyond(lat + limit / bw, limit, large)
    if rate <= 0 or bw < rate / 10:
        return None  # latency noise posing as a slow small-message bandwidth
    return {
        "latency_s": lat,
        "bandwidth_single_bytes_per_s": bw,
        "large_message_bytes": float(limit),
        "bandwidth_large_bytes_per_s": rate,
        "huge_message_bytes": 0.0,
        "bandwidth_huge_bytes_per_s": 0.0,
    }


def _middle(
    lat: float, bw: float, pts: list[tuple[float, float]], limit: float, split: float
) -> dict[str, float] | None:
    """The first two pieces of a three-piece line: its knee at ``limit``, the middle rate
    fitted to the sizes above it up to ``split``; None unless that rate is slower than
    ``bw`` and fitted to :data:`MIDDLE_MIN_SIZES` sizes or more. With fewer, one noisy
    size makes a regime of its own (a ping-pong measured a quarter slow, between two
    sizes at speed, made a middle regime that fitted the sizes but one better than the
    true two-piece line did)."""
    mid = [(n, t) for n, t in pts if limit < n <= split]
    if len({n for n, _ in mid}) < MIDDLE_MIN_SIZES:
        return None
    f = _knee(lat, bw, mid, limit)
    return f if f is not None and f["bandwidth_large_bytes_per_s"] < bw else None


def _second_knee(
    middle: dict[str, float], pts: list[tuple[float, float]], split: float, huge: float
) -> dict[str, float] | None:
    """The three-piece line of :func:`_middle`'s ``middle`` with its second threshold at
    ``huge`` and the last rate fitted to the sizes above ``split``; None unless that
    rate is slower than the middle one."""
    limit = middle["large_message_bytes"]
    if huge <= limit:
        return None
    rate = middle["bandwidth_large_bytes_per_s"]
    base = _wire(middle, huge)
    last = _rate_beyond(base, huge, [(n, t) for n, t in pts if n > split])
    if last <= 0 or last >= rate:
        return None
    return {**middle, "huge_message_bytes": float(huge), "bandwidth_huge_bytes_per_s": last}


def fit_fetch(
    points: Sequence[tuple[float, float]], inline: float | None = None
) -> dict[str, float]:
    """Latency, one bandwidth, and the step a fetch adds above the inline size.

    Fits ``t = latency_s + [n > inline_max_bytes] * fetch_s + n / bandwidth`` by
    the relative least squares of :func:`fit_latency_bandwidth`, with every
    measured size tried as ``inline_max_bytes``, or only ``inline`` when the
    channel's configuration gives it (Redis: ``channels.redis.inline_bytes``;
    S3: what fits in ``channels.s3.key_payload_bytes``);
    the fit with the smallest worst relative error but one wins
    (:func:`_worst_but_one`; no step, ``fetch_s``
    0, when none improves on it by :data:`WIRE_MIN_GAIN`; ``inline_max_bytes``
    stays ``inline`` then). With ``inline`` the step is also fitted with a rate
    of its own for the bytes beyond it (``large_message_bytes`` at ``inline``),
    kept when its squared relative error is the smaller (given
    :data:`OWN_RATE_MIN_SIZES` measured sizes above ``inline``): the step is known to
    be there, and Redis moves the bytes of its mailbox entries more slowly than
    those of its chunks (five runs of session 10: 0.7-1.0 GB/s up to 64 KiB,
    1.8-2.1 GB/s beyond, a step of 46-86 us).
    """
    import numpy as np

    pts = sorted((float(n), float(t)) for n, t in points if t > 0)
    known = float(inline or 0.0)  # 0: not known, every measured size is tried
    best = {**_one_rate(pts), "inline_max_bytes": known, "fetch_s": 0.0}
    best_score = _score(best, pts)
    ns = np.array([n for n, _ in pts])
    ts = np.array([t for _, t in pts])
    sizes = sorted({n for n, _ in pts})
    for limit in [known] if known > 0 else sizes[1:-1]:
        a = np.stack([np.ones_like(ns), (ns > limit).astype(float), ns], axis=1) / ts[:, None]
        lat, step, inverse = (float(v) for v in _nnls(a, np.ones_like(ts)))
        if lat <= 0 or step <= 0:
            continue
        cand = dict(best, latency_s=lat, inline_max_bytes=float(limit), fetch_s=step)
        bandwidth = 1.0 / inverse if inverse > 0 else 1e15
        cand["bandwidth_single_bytes_per_s"] = cand["bandwidth_large_bytes_per_s"] = bandwidth
        score = _score(cand, pts)
        if score[0] < best_score[0] - WIRE_MIN_GAIN or (best["fetch_s"] > 0 and score < best_score):
            best, best_score = cand, score
    if known > 0 and len({n for n in sizes if n > known}) >= OWN_RATE_MIN_SIZES:
        # The step is where the channel is configured to put it: the bytes beyond it may
        # move at a rate of their own (Redis: chunks SET and GET, not a mailbox entry).
        cand2 = _fetch_with_own_rate(ns, ts, known)
        if cand2 is not None and _score(cand2, pts)[1] < best_score[1]:
            best = cand2
            best = _fetch_with_huge_rate(ns, ts, pts, best) or best
    return best


def _fetch_with_huge_rate(
    ns: Any, ts: Any, pts: list[tuple[float, float]], own: dict[str, float]
) -> dict[str, float] | None:
    """:func:`_fetch_with_own_rate`'s line with a third, slower rate for the bytes beyond
    a second threshold, where that lowers the worst relative error but one
    (:func:`_worst_but_one`) by :data:`WIRE_MIN_GAIN`; None where none does.

    The thresholds tried lie between measured sizes with :data:`MIDDLE_MIN_SIZES` or
    more above the inline size below them and one or more above (as in
    :func:`fit_wire`: the smaller size and the midpoint); of the fits within
    :data:`WIRE_MIN_GAIN` of the best, the one with the smallest threshold is kept,
    as :func:`fit_wire` keeps its third regime reaching as far down as it fits.
    Redis across processes, session 23: cut into 512 KiB chunks up to 4 MiB, a
    message moved its bytes beyond 64 KiB at 2.4 GB/s up to 4 MiB and at 1.4-1.8 GB/s
    beyond; one rate for both predicted the 128 KiB and 64 MiB ping-pongs 32 % short.
    """
    limit = own["inline_max_bytes"]
    above = sorted({float(n) for n in ns if n > limit})
    base = _worst_but_one(own, pts)
    fits: list[tuple[float, dict[str, float]]] = []
    for j in range(MIDDLE_MIN_SIZES - 1, len(above) - 1):
        for huge in _knees(above[j], above[j + 1]):
            f = _fetch_with_own_rate(ns, ts, limit, huge)
            if f is not None:
                fits.append((_worst_but_one(f, pts), f))
    lowest = min((worst for worst, _ in fits), default=math.inf)
    if lowest >= base - WIRE_MIN_GAIN:
        return None
    near = [f for worst, f in fits if worst <= lowest + WIRE_MIN_GAIN]
    return min(near, key=lambda f: f["huge_message_bytes"])


#: Measured sizes above the inline size that :func:`fit_fetch` needs before it fits
#: the bytes beyond it a rate of their own: with two, step and rate are fitted to two
#: noisy points exactly (a bench run to 1 MiB predicted a Redis ping-pong of 512 KiB
#: 67 % high).
OWN_RATE_MIN_SIZES = 3


def _fetch_with_own_rate(
    ns: Any, ts: Any, limit: float, huge: float = 0.0
) -> dict[str, float] | None:
    """``t = latency_s + [n > limit] * fetch_s + min(n, limit) / single + max(n - limit, 0)
    / large`` fitted to the sizes ``ns`` and times ``ts`` (relative least squares), or
    None where a term comes out at zero or the inline bytes at a tenth of the other rate.
    With ``huge``, the bytes beyond it take ``extra`` seconds more each (the fit keeps
    it at zero or more: a third rate no faster than the second), and None where
    ``extra`` comes out at zero."""
    import numpy as np

    columns = [np.ones_like(ns), (ns > limit).astype(float), np.minimum(ns, limit)]
    columns.append(np.maximum(ns - limit, 0.0))
    if huge > 0:
        columns.append(np.maximum(ns - huge, 0.0))
    a = np.stack(columns, axis=1) / ts[:, None]
    solved = [float(v) for v in _nnls(a, np.ones_like(ts))]
    lat, step, inverse_small, inverse_large = solved[:4]
    extra = solved[4] if huge > 0 else 0.0
    if lat <= 0 or inverse_small <= 0 or inverse_large <= 0 or (huge > 0 and extra <= 0):
        return None
    if inverse_small > 10 * inverse_large:
        return None  # latency noise posing as a slow rate of the inline bytes (as in _knee)
    out = {
        "latency_s": lat,
        "bandwidth_single_bytes_per_s": 1.0 / inverse_small,
        "large_message_bytes": float(limit),
        "bandwidth_large_bytes_per_s": 1.0 / inverse_large,
        "inline_max_bytes": float(limit),
        "fetch_s": step,
    }
    if huge > 0:
        out["huge_message_bytes"] = float(huge)
        out["bandwidth_huge_bytes_per_s"] = 1.0 / (inverse_large + extra)
    return out


def poll_params(
    channel: str, params: dict[str, float], config: Config, rows: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """``{"poll_request_s": ..., "finds_per_further_message": ...}`` for a channel whose
    receivers poll (S3), fitted by :func:`fit_polls` to the fitted ``rows`` that counted
    their requests, with the channel's other fitted ``params``; ``{}`` for other
    channels or without counts."""
    from afmi.model.params import model_for

    configured = model_for(channel, config)
    counted = [r for r in rows if r.get("requests_per_call")]
    if configured.poll_backoff_s <= 0 or not counted:
        return {}
    fitted = dataclasses.replace(configured, **dict[str, Any](params))
    return fit_polls(fitted, counted)


#: Longest time of one poll :func:`fit_poll_request` considers, seconds, and its step.
POLL_REQUEST_MAX_S = 0.1
POLL_REQUEST_STEP_S = 0.0005


def fit_poll_request(model: ChannelModel, rows: Sequence[dict[str, Any]]) -> float:
    """``poll_request_s``: how long one poll takes, fitted to the polls the bench counted.

    ``model`` is the channel's fitted :class:`~afmi.model.params.ChannelModel`;
    ``rows`` are bench rows whose storage requests were counted
    (``requests_per_call``, an S3 LIST is ``list``). The poller's next interval
    starts when its poll returns (:meth:`ChannelModel.idle_polls`), so the time a
    poll takes decides how many idle polls fit in a wait. Of the durations from 0
    to :data:`POLL_REQUEST_MAX_S` in steps of :data:`POLL_REQUEST_STEP_S`, the one
    whose predicted polls have the least squared log ratio to the counted ones
    wins (0 where the channel has no poller or no row counted a poll). Session
    19, in one process on moto: priced as instant, the polls of bcasts came out
    1.4-1.7 times the LISTs counted and 32 of 116 points' request dollars more
    than 30 % off.
    """
    if model.poll_backoff_s <= 0:
        return 0.0
    return _fit_poll_seconds(model, _poll_points(model, rows))


def _fit_poll_seconds(model: ChannelModel, points: list[tuple[str, int, int, Any, float]]) -> float:
    """:func:`fit_poll_request` on the points of :func:`_poll_points` (0 without any)."""
    if not points:
        return 0.0

    def error(seconds: float) -> float:
        return _poll_error(dataclasses.replace(model, poll_request_s=seconds), points)

    steps = round(POLL_REQUEST_MAX_S / POLL_REQUEST_STEP_S)
    return min((round(i * POLL_REQUEST_STEP_S, 6) for i in range(steps + 1)), key=error)


def _poll_error(model: ChannelModel, points: list[tuple[str, int, int, Any, float]]) -> float:
    """The squared log ratios of ``model``'s predicted polls to the counted ones."""
    from afmi.model.params import FunctionPrice
    from afmi.model.predict import predict

    free = FunctionPrice(0.0, 0.0)
    return sum(
        math.log(max(predict(op, nbytes, size, alg, model, free).polls, 1e-9) / counted) ** 2
        for op, nbytes, size, alg, counted in points
    )


#: The shares :func:`fit_polls` tries as ``finds_per_further_message``.
FIND_SHARES = tuple(i / 10 for i in range(11))


def fit_polls(model: ChannelModel, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``poll_request_s`` and ``finds_per_further_message``, fitted together to the
    polls the bench counted (``rows`` as in :func:`fit_poll_request`).

    For every share in :data:`FIND_SHARES`, :func:`fit_poll_request` fits the time of
    a poll; the pair whose predicted polls have the least squared log ratio to the
    counted ones wins (ties: the smaller share). A linear gather's root waits once for
    all its messages, but they arrive one after another, and each poll that finds
    some starts the poller's backoff again. In one process on moto (session 23,
    three runs) a share of 0 predicted 4.1-5.1 LISTs for an 8-rank gather that
    counted 5.4-9.5; the fitted 0.1-0.2 brought the median request-dollar error
    of the 116 points from 8.6-9.0 % to 6.8-7.5 %.
    """
    points = _poll_points(model, rows)
    if model.poll_backoff_s <= 0 or not points:
        return {"poll_request_s": 0.0, "finds_per_further_message": 0.0}
    best: tuple[float, dict[str, float]] | None = None
    for share in FIND_SHARES:
        shared = dataclasses.replace(model, finds_per_further_message=share)
        seconds = _fit_poll_seconds(shared, points)
        error = _poll_error(dataclasses.replace(shared, poll_request_s=seconds), points)
        if best is None or error < best[0] - 1e-12:
            best = (error, {"poll_request_s": seconds, "finds_per_further_message": share})
    assert best is not None
    return best[1]


def _poll_points(
    model: ChannelModel, rows: Sequence[dict[str, Any]]
) -> list[tuple[str, int, int, Any, float]]:
    """``(op, nbytes, size, algorithm, polls counted)`` of the ``rows`` that counted polls."""
    from afmi.model.cli import algorithm_for

    points = []
    for r in rows:
        counted = float((r.get("requests_per_call") or {}).get("list", 0.0))
        if counted <= 0:
            continue
        op = r.get("op", "send")
        size = 2 if op == "send" else int(r["ranks"])
        nbytes = int(r["nbytes"])
        points.append((op, nbytes, size, algorithm_for(op, model.name, size, nbytes), counted))
    return points


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


def _nnls(a: Any, b: Any) -> Any:
    """Least squares with every unknown >= 0 (drop the most negative, solve again)."""
    import numpy as np

    n = a.shape[1]
    norms = np.linalg.norm(a, axis=0)
    active = [j for j in range(n) if norms[j] > 0]
    x = np.zeros(n)
    while active:
        scaled = a[:, active] / norms[active]
        sol, *_ = np.linalg.lstsq(scaled, b, rcond=None)
        sol = sol / norms[active]
        if (sol >= 0).all():
            x[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return x


def measure_reduce_rate(dtype: str = "float64", nbytes: int = 1 << 23) -> float:
    """Bytes of one input per second that ``afmi.SUM`` combines (median of 15 runs).

    The default 8 MiB arrays do not fit in a cache: the rate large reductions see.
    """
    import statistics
    import time

    import numpy as np

    from afmi.ops import SUM

    count = max(nbytes // np.dtype(dtype).itemsize, 1)
    a, b = np.ones(count, dtype=dtype), np.ones(count, dtype=dtype)
    times = []
    for _ in range(16):
        t0 = time.perf_counter()
        SUM(a, b)
        times.append(time.perf_counter() - t0)
    return a.nbytes / max(statistics.median(times[1:]), 1e-9)


def measure_reduce_rates(dtype: str, top: int) -> dict[int, float]:
    """:func:`measure_reduce_rate` on inputs from 64 KiB (or ``top``, if smaller) up to
    ``top`` bytes, doubling: ``{bytes of one input: bytes per second}``."""
    sizes, n = [], min(REDUCE_LADDER_MIN_BYTES, top)
    while n < top:
        sizes.append(n)
        n *= 2
    sizes.append(max(top, 1))
    return {n: measure_reduce_rate(dtype, n) for n in sizes}


def reduction_regimes(rates: dict[int, float]) -> dict[str, float]:
    """The reduction's model parameters from :func:`measure_reduce_rates` (the fastest of
    several runs, per size): ``reduce_bytes_per_s`` and, where the largest input combines
    at under :data:`REDUCE_CACHE_DROP` of the fastest rate, ``reduce_cache_bytes`` (the
    largest input that still reaches that share) and ``reduce_bytes_large_per_s`` (the
    largest input's rate). Otherwise one rate, the largest input's, as measured until
    session 13.

    Here numpy's ``SUM`` of uint8 inputs ran at 20-25 GB/s up to 512 KiB and at 7-9 GB/s
    from 1 MiB (its two inputs and its output no longer fit in a core's 4 MiB cache);
    across processes the bench measured the rate on the largest allreduce's 16 MiB, and
    charged every 2-rank allreduce of 512 KiB three times the time its reduction took.
    """
    if not rates:
        raise ValueError("no reduction rates measured")
    top = max(rates)
    fastest = max(rates.values())
    slow = rates[top]
    if slow >= REDUCE_CACHE_DROP * fastest:
        return {"reduce_bytes_per_s": slow}
    cached = max(n for n, r in rates.items() if n < top and r >= REDUCE_CACHE_DROP * fastest)
    return {
        "reduce_bytes_per_s": fastest,
        "reduce_cache_bytes": float(cached),
        "reduce_bytes_large_per_s": slow,
    }


def fastest_reduction(ladders: Sequence[dict[int, float]]) -> dict[str, float]:
    """:func:`reduction_regimes` of several runs of :func:`measure_reduce_rates` over the
    same sizes, every size at its fastest run."""
    return reduction_regimes({n: max(ladder[n] for ladder in ladders) for n in ladders[0]})


#: Smallest input :func:`measure_reduce_rates` times.
REDUCE_LADDER_MIN_BYTES = 64 * 1024
#: The reduction gets a second rate (:func:`reduction_regimes`) where its largest input
#: combines at under this share of its fastest rate.
REDUCE_CACHE_DROP = 2 / 3


def fit_rounds(
    channel: str,
    wire: dict[str, float],
    points: Sequence[tuple[str, int, int, float]],
    *,
    reduce_bytes_per_s: float = 0.0,
    reduce_cache_bytes: float = 0.0,
    reduce_bytes_large_per_s: float = 0.0,
    parallel_ranks: float = 0.0,
    config: Config | None = None,
) -> dict[str, float]:
    """Fit the collective-call parameters; see :func:`_fit_rounds` (this drops the score)."""
    return _fit_rounds(
        channel,
        wire,
        points,
        reduce_bytes_per_s=reduce_bytes_per_s,
        reduce_cache_bytes=reduce_cache_bytes,
        reduce_bytes_large_per_s=reduce_bytes_large_per_s,
        parallel_ranks=parallel_ranks,
        config=config,
    )[1]


def fit_parallel(
    channel: str,
    wire: dict[str, float],
    points: Sequence[tuple[str, int, int, float]],
    *,
    reduce_bytes_per_s: float,
    cpus: int,
    reduce_cache_bytes: float = 0.0,
    reduce_bytes_large_per_s: float = 0.0,
    config: Config | None = None,
) -> dict[str, float]:
    """:func:`fit_rounds` with ``parallel_ranks`` fitted too, from 1 to ``cpus`` in quarters,
    and, where some point has more ranks than ``cpus``, ``crowding`` (0 to 1 in quarters,
    with ``shared_cpus`` = ``cpus``), kept only where it lowers the squared error to
    :data:`CROWDING_MIN_GAIN` of the fit without.

    For ranks that are processes on one machine: other work on the machine
    leaves them fewer cores than it has, and the fit finds how many. Session 20,
    across processes on 2 cores: refitted on their own, the 4-rank calls' copy
    rate times ``parallel_ranks`` came to 4.1-4.2 GB/s and the 2-rank calls'
    7.5-7.7 GB/s, and one rate for both left the 4-rank calls of 128 KiB-8 MiB
    1.3-1.8 times the model.
    """

    rates = {
        "reduce_bytes_per_s": reduce_bytes_per_s,
        "reduce_cache_bytes": reduce_cache_bytes,
        "reduce_bytes_large_per_s": reduce_bytes_large_per_s,
    }

    def fit(crowding: float) -> tuple[float, dict[str, float]]:
        best: tuple[float, dict[str, float]] | None = None
        shared = float(cpus) if crowding > 0 else 0.0
        for quarter in range(4, 4 * max(cpus, 1) + 1):
            scored = _fit_rounds(
                channel,
                wire,
                points,
                **rates,
                parallel_ranks=quarter / 4,
                shared_cpus=shared,
                crowding=crowding,
                config=config,
            )
            if best is None or scored[0] < best[0] - 1e-12:
                best = scored
        assert best is not None
        return best

    best = fit(0.0)
    if any(ranks > cpus for _, ranks, _, _ in points):
        crowded = min((fit(q / 4) for q in range(1, 5)), key=lambda f: f[0])
        if crowded[0] < CROWDING_MIN_GAIN * best[0] - 1e-12:
            best = crowded
    return best[1]


#: The fit keeps ``crowding`` only when it lowers the squared relative error to this
#: fraction of the fit without or less (as :data:`CACHE_MIN_GAIN`).
CROWDING_MIN_GAIN = 0.9


def _fit_rounds(
    channel: str,
    wire: dict[str, float],
    points: Sequence[tuple[str, int, int, float]],
    *,
    reduce_bytes_per_s: float = 0.0,
    reduce_cache_bytes: float = 0.0,
    reduce_bytes_large_per_s: float = 0.0,
    parallel_ranks: float = 0.0,
    shared_cpus: float = 0.0,
    crowding: float = 0.0,
    config: Config | None = None,
) -> tuple[float, dict[str, float]]:
    """Fit the collective-call parameters to ``(op, ranks, nbytes, seconds)`` measurements.

    The wire parameters, the reduction rate and ``parallel_ranks`` are fixed.
    The model of a call is the larger of two bounds (:func:`afmi.model.predict.timing`),
    each linear in its unknowns: the critical path in ``call_overhead_s``,
    ``payload_overhead_s`` (calls but barriers),
    ``per_message_s``, ``1 / aggregate`` bandwidth, ``later_round_s`` and
    ``first_round_saving_s`` (on a channel whose receivers poll, ``poll_interval_s``
    in ``config``'s model of it; elsewhere only where they lower the squared error
    to :data:`LATER_ROUNDS_MIN_GAIN` of the fit without), the shared CPU in
    ``call_overhead_s``, ``payload_overhead_s``, ``cpu_per_message_s``,
    ``cpu_per_message_rank_s``, ``cpu_per_shared_read_s``, ``cpu_per_fetch_s`` (where
    some call reads a message that needs a fetch), ``cpu_per_wait_s``
    (only where some call waits other than once per message, else it is part
    of ``cpu_per_message_s``), ``1 / cpu_bytes_per_s`` and ``wait_per_round_s``
    (the rounds on the critical path, not divided among the ranks). The fit
    assigns every point to the bound that predicts more, solves one non-negative
    least-squares problem of the relative error, and repeats until the assignment
    settles (from two starts: all points on the path, all on the CPU); the
    solution with the smallest squared relative error wins. The aggregate is
    kept at least the single-stream bandwidth: a rank's messages of one round
    together take at most as long as one after another (below it, a round of
    three Redis messages of 512 KiB into one root was priced at 12 times one
    message's wire time, more than the whole 4-rank allreduce measured, in every
    cross-process run of session 15). What the channel
    is configured to do (``publish_min_bytes``, ``publish_inline_once``) comes
    from ``config``'s model of it, as it will when the fitted model predicts.
    """
    import numpy as np

    from afmi.model.cli import algorithm_for
    from afmi.model.params import NO_PAYLOAD, ChannelModel, model_for
    from afmi.model.work import work

    single = wire["bandwidth_single_bytes_per_s"]
    configured = model_for(channel, config)
    values: dict[str, Any] = dict(wire)
    values.setdefault("publish_min_bytes", configured.publish_min_bytes)
    values.setdefault("publish_inline_once", configured.publish_inline_once)
    base = ChannelModel(
        name=channel,
        bandwidth_aggregate_bytes_per_s=single,
        reduce_bytes_per_s=reduce_bytes_per_s,
        reduce_cache_bytes=reduce_cache_bytes,
        reduce_bytes_large_per_s=reduce_bytes_large_per_s,
        parallel_ranks=parallel_ranks,
        shared_cpus=shared_cpus,
        crowding=crowding,
        **values,
    )
    # later_round_s, first_round_saving_s: free where receivers poll (S3), elsewhere
    # only where they fit better (LATER_ROUNDS_MIN_GAIN)
    polls = configured.poll_interval_s > 0
    path_rows, cpu_rows, path_fixed, cpu_fixed, times = [], [], [], [], []
    call_bytes: list[float] = []  # bytes of each call's messages
    cpu_scale: list[float] = []  # what the CPU bound divides them by (0: no CPU bound)
    for op, ranks, nbytes, seconds in points:
        if seconds <= 0 or ranks < 2:
            continue
        alg = algorithm_for(op, channel, ranks, nbytes)
        fixed = messages_term = bytes_term = 0.0
        rounds = 0
        for step in alg.steps(ranks, nbytes):
            if step.rounds <= 0 or step.messages <= 0:
                continue
            rounds += step.rounds
            fixed += step.rounds * base.message_latency_s(step.nbytes)
            messages_term += step.rounds * (step.messages - 1)
            wire_s = base.wire_time_s(step.nbytes)
            if step.messages == 1:
                fixed += step.rounds * wire_s
            else:
                bytes_term += step.rounds * wire_s * step.messages * single
        w = base.channel_work(work(op, alg, ranks, nbytes))
        share = base.parallelism(ranks)
        shared = 1.0 if share < ranks else 0.0  # no CPU bound with a CPU per rank
        path_reduce_s, reduce_s = base.reductions_s(w, nbytes)
        data = 0.0 if op in NO_PAYLOAD else 1.0  # a barrier carries no payload
        fetched = float(base.fetched_reads(w, nbytes))
        later = float(max(rounds - 1, 0))
        first = -1.0 if rounds > 0 else 0.0
        path_row = [1.0, messages_term, bytes_term, 0.0, 0.0, 0.0, data, 0.0, 0.0, later, first]
        path_rows.append([*path_row, 0.0, 0.0, 0.0, 0.0, 0.0])
        call_bytes.append((w.bytes_sent + w.bytes_received) / 2)
        cpu_scale.append(shared / share)
        path_fixed.append(fixed + path_reduce_s)
        cpu_rows.append(
            [
                shared * ranks / share,
                0.0,
                0.0,
                shared * (w.messages + w.deliveries) / 2 / share,
                shared * (w.bytes_sent + w.bytes_received) / 2 / share,
                shared * (w.messages + w.deliveries) / 2 * (ranks - 1) / share,
                shared * data * ranks / share,
                shared * w.shared_deliveries / share,
                shared * w.receive_waits / share,
                0.0,
                0.0,
                0.0,  # bytes beyond the cache, per candidate below
                shared * rounds,  # rounds all ranks wait through (not shared out)
                shared * fetched / share,  # reads that fetch their message
                shared * data * (w.messages + w.deliveries) / 2 / share,  # with the data
                shared * base.split_deliveries(w, nbytes, ranks) / share,  # over one TCP segment
            ]
        )
        cpu_fixed.append(shared * reduce_s / share)
        times.append(seconds)
    if len(times) < 3:
        raise ValueError("fitting the rounds needs at least 3 collective measurements")
    t = np.array(times)
    ap, ac = np.array(path_rows), np.array(cpu_rows)
    if ap[:, 6].all() or not ap[:, 6].any():
        # without both barriers and calls with data the two overheads are one unknown,
        # and a message with the data costs what any message costs
        ap[:, 6] = ac[:, 6] = ac[:, 14] = 0.0
    fp, fc = np.array(path_fixed), np.array(cpu_fixed)

    # Without the two round terms: where receivers do not poll, a round is a round
    # unless the calls say otherwise.
    ap_plain = ap.copy()
    ap_plain[:, 9:11] = 0.0
    # the most a first round can save: the latency of a message (fit_with_rounds)
    max_saving = base.message_latency_s(0)

    def fit(cpu_rows: Any) -> tuple[float, Any]:
        if polls:
            return fit_with_rounds(cpu_rows)
        best = fit_from(ap_plain, cpu_rows)
        if ap[:, 9].any():
            with_rounds = fit_with_rounds(cpu_rows)
            if with_rounds[0] < LATER_ROUNDS_MIN_GAIN * best[0] - 1e-12:
                best = with_rounds
        return best

    def fit_with_rounds(cpu_rows: Any) -> tuple[float, Any]:
        # A first round arrives sooner than a ping-pong message, but not before it is
        # sent: its saving is at most a message's latency. Above it the saving only
        # offsets later rounds priced too high, a cost that then grows with every
        # round (across processes, 4-rank calls of two rounds fitted a later round of
        # 714 us less a first round's 508 us, and the 6-round ring of 512 KiB came
        # out 2.4 times its 1.39 ms). Such a fit is solved again with the saving
        # fixed at the bound.
        score, x = fit_from(ap, cpu_rows)
        if x[10] <= max_saving:
            return score, x
        clamped = ap.copy()
        clamped[:, 10] = 0.0
        score, x = fit_from(clamped, cpu_rows, fp + ap[:, 10] * max_saving)
        x = np.array(x, dtype=float)
        x[10] = max_saving
        return score, x

    def fit_from(a_path: Any, cpu_rows: Any, fixed_path: Any = None) -> tuple[float, Any]:
        fpath = fp if fixed_path is None else fixed_path
        best: tuple[float, Any] | None = None
        for start in (np.ones(len(t), dtype=bool), np.zeros(len(t), dtype=bool)):
            on_path = start
            for _ in range(30):
                a = np.where(on_path[:, None], a_path, cpu_rows) / t[:, None]
                x = _nnls(a, (t - np.where(on_path, fpath, fc)) / t)
                path, cpu = fpath + a_path @ x, fc + cpu_rows @ x
                score = float(np.sum((np.maximum(path, cpu) / t - 1) ** 2))
                if best is None or score < best[0]:
                    best = (score, x)
                settled = path >= cpu
                if (settled == on_path).all():
                    break
                on_path = settled
        assert best is not None
        return best

    def solve_waits(ac: Any) -> tuple[float, Any]:
        # A wait is part of a message's cost unless counting waits apart fits better
        # (WAITS_MIN_GAIN): where every call waits once per message (no rank
        # collects several at once) the two are one unknown, and where few calls tell
        # them apart other parameters may explain the difference as well.
        no_waits = ac.copy()
        no_waits[:, 8] = 0.0
        best = fit(no_waits)
        if not np.allclose(ac[:, 8], ac[:, 3]):
            with_waits = fit(ac)
            if with_waits[0] < WAITS_MIN_GAIN * best[0] - 1e-12:
                best = with_waits
        return best

    def solve(ac: Any) -> tuple[float, Any]:
        # The rounds all ranks wait through (wait_per_round_s) count only where they fit
        # better (ROUND_WAITS_MIN_GAIN): where the calls' rounds grow with their messages
        # the two explain the same times.
        no_rounds = ac.copy()
        no_rounds[:, 12] = 0.0
        best = solve_waits(no_rounds)
        if ac[:, 12].any():
            with_rounds = solve_waits(ac)
            if with_rounds[0] < ROUND_WAITS_MIN_GAIN * best[0] - 1e-12:
                best = with_rounds
        return best

    b, scale = np.array(call_bytes), np.array(cpu_scale)

    def solve_cache(ac: Any) -> tuple[float, tuple[float, Any]]:
        # The CPUs copy a call's bytes more slowly once they outgrow the caches: every
        # call's size from CACHE_MIN_BYTES on is tried as the limit, and a limit is kept
        # only when the fit's error falls to CACHE_MIN_GAIN of the fit without one.
        best = solve(ac)
        knee: tuple[float, Any] | None = None
        for limit in sorted({float(v) for v, k in zip(b, scale) if k > 0 and v >= CACHE_MIN_BYTES}):
            with_cache = ac.copy()
            with_cache[:, 11] = scale * np.maximum(b - limit, 0.0)
            tried = solve(with_cache)
            if tried[1][11] > 0 and (knee is None or tried[0] < knee[1][0]):
                knee = (limit, tried)
        if knee is not None and knee[1][0] < CACHE_MIN_GAIN * best[0] - 1e-12:
            return knee
        return 0.0, best

    def solve_payload(ac: Any) -> tuple[float, tuple[float, Any]]:
        # A message with the call's data costs more than a barrier's only where that
        # fits better (PAYLOAD_MESSAGES_MIN_GAIN): the barriers alone tell the two apart.
        plain = ac.copy()
        plain[:, 14] = 0.0
        found = solve_cache(plain)
        if ac[:, 14].any():
            tried = solve_cache(ac)
            if tried[1][0] < PAYLOAD_MESSAGES_MIN_GAIN * found[1][0] - 1e-12:
                found = tried
        return found

    # A message longer than one TCP segment costs more only where that fits better
    # (SPLIT_MESSAGES_MIN_GAIN): docs/direct.md, "Messages longer than a TCP segment".
    whole = ac.copy()
    whole[:, 15] = 0.0
    cache, best = solve_payload(whole)
    if ac[:, 15].any():
        tried = solve_payload(ac)
        if tried[1][0] < SPLIT_MESSAGES_MIN_GAIN * best[0] - 1e-12:
            cache, best = tried
    (
        overhead,
        per_message,
        inverse_aggregate,
        cpu_message,
        inverse_cpu,
        cpu_rank,
        payload,
        cpu_shared,
        cpu_wait,
        later_round,
        first_round,
        inverse_large_extra,
        wait_round,
        cpu_fetch,
        cpu_payload_message,
        cpu_split_message,
    ) = (float(v) for v in best[1])
    aggregate = 1.0 / inverse_aggregate if inverse_aggregate > 0 else 64 * single
    large = 1.0 / (inverse_cpu + inverse_large_extra) if inverse_large_extra > 0 else 0.0
    return best[0], {
        "call_overhead_s": overhead,
        "payload_overhead_s": payload,
        "per_message_s": per_message,
        "bandwidth_aggregate_bytes_per_s": max(aggregate, single),
        "cpu_per_message_s": cpu_message,
        "cpu_per_message_rank_s": cpu_rank,
        "cpu_per_payload_message_s": cpu_payload_message,
        "cpu_per_shared_read_s": cpu_shared,
        "cpu_per_wait_s": cpu_wait,
        "wait_per_round_s": wait_round,
        "later_round_s": later_round,
        "first_round_saving_s": first_round,
        "cpu_bytes_per_s": 1.0 / inverse_cpu if inverse_cpu > 0 else 0.0,
        "cpu_cache_bytes": cache if large > 0 else 0.0,
        "cpu_bytes_large_per_s": large,
        "reduce_bytes_per_s": float(reduce_bytes_per_s),
        **(
            {
                "reduce_cache_bytes": float(reduce_cache_bytes),
                "reduce_bytes_large_per_s": float(reduce_bytes_large_per_s),
            }
            if reduce_cache_bytes > 0 and reduce_bytes_large_per_s > 0
            else {}
        ),
        "parallel_ranks": float(parallel_ranks),
        **({"shared_cpus": shared_cpus, "crowding": crowding} if crowding > 0 else {}),
        **({"cpu_per_fetch_s": cpu_fetch} if ac[:, 13].any() else {}),
        **(
            {
                "split_message_bytes": base.split_message_bytes,
                "cpu_per_split_message_s": cpu_split_message,
            }
            if cpu_split_message > 0
            else {}
        ),
    }


#: Where receivers do not poll, the fit counts a later round's extra time and a first
#: round's saving (``later_round_s``, ``first_round_saving_s``) only when that lowers its
#: squared relative error to this fraction or less.
LATER_ROUNDS_MIN_GAIN = 0.9

#: The fit counts the extra CPU of a message longer than one TCP segment
#: (``cpu_per_split_message_s``) only when that lowers its squared relative error to
#: this fraction or less (as :data:`CACHE_MIN_GAIN`).
SPLIT_MESSAGES_MIN_GAIN = 0.9

#: Smallest call size (bytes of its messages) tried as ``cpu_cache_bytes``.
CACHE_MIN_BYTES = 64 * 1024
#: The fit keeps a cache limit (``cpu_cache_bytes``, ``cpu_bytes_large_per_s``) only when
#: it lowers the squared relative error to this fraction of the fit without one.
CACHE_MIN_GAIN = 0.9

#: The fit counts the rounds that ranks sharing CPUs all wait through
#: (``wait_per_round_s``) only when that lowers its squared relative error to this
#: fraction or less (as :data:`WAITS_MIN_GAIN`).
ROUND_WAITS_MIN_GAIN = 0.99

#: The fit counts a message that carries a call's data apart from a barrier's
#: (``cpu_per_payload_message_s``) only when that lowers its squared relative error to
#: this fraction or less (as :data:`WAITS_MIN_GAIN`).
PAYLOAD_MESSAGES_MIN_GAIN = 0.99

#: The fit counts waits apart from messages (``cpu_per_wait_s``) only when that
#: lowers its squared relative error to this fraction or less (a tie, where the
#: rows cannot tell the two apart, keeps the simpler fit).
WAITS_MIN_GAIN = 0.99


def model_file(channels: dict[str, dict[str, float]], where: str | None = None) -> dict[str, Any]:
    """The content of a model file for calibrated ``channels`` (``name -> parameters``)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    table: dict[str, Any] = {
        "calibrated": where
        or f"afmi bench --calibrate on {platform.node()} at {stamp} "
        f"({event_loop_name()} event loop)"
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


def write_and_use(
    path: str | Path,
    channels: dict[str, dict[str, float]],
    reduce_bytes_per_s: float,
    config: Config,
    **extra: Any,
) -> tuple[dict[str, Any], Config]:
    """Write the fitted ``channels`` to ``path``; return the bench's JSON summary of
    the calibration and ``config`` switched to the new model file."""
    written = write_model_file(path, channels)
    summary = {
        "file": str(written),
        "channels": channels,
        "reduce_bytes_per_s": reduce_bytes_per_s,
        **extra,
    }
    model = dataclasses.replace(config.model, file=str(written))
    return summary, dataclasses.replace(config, model=model)
