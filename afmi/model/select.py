"""Choosing a channel (and algorithm) for an operation from the model.

The choice is a pure function of ``(op, nbytes, size, channels, config,
hint)``: no clocks, no randomness, no messages, and ties are broken by channel
then algorithm name. Every rank that calls it with the same inputs gets the
same answer, which is what lets the ranks of a collective agree on a channel
and an algorithm without talking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from afmi.config import Config
from afmi.errors import ArgumentError
from afmi.model.params import function_price, model_for
from afmi.model.predict import P2P, Prediction, StepModel, predict

__all__ = [
    "Explanation",
    "Hint",
    "as_hint",
    "candidates",
    "choose",
    "explain",
    "predict_all",
]

HintKind = Literal["fast", "cheap", "weighted"]


@dataclass(frozen=True)
class Hint:
    """How to rank predictions.

    ``fast`` minimises seconds, ``cheap`` minimises dollars, ``weighted``
    minimises ``dollars + usd_per_s * seconds`` (what a second is worth).
    """

    kind: HintKind = "fast"
    usd_per_s: float = 0.0

    def key(self, p: Prediction) -> tuple[float, float, str, str]:
        """Sort key: smaller is better; ties go to the channel, then algorithm, name."""
        if self.kind == "fast":
            return (p.time_s, p.usd, p.channel, p.algorithm)
        if self.kind == "cheap":
            return (p.usd, p.time_s, p.channel, p.algorithm)
        return (p.usd + self.usd_per_s * p.time_s, p.time_s, p.channel, p.algorithm)

    def __str__(self) -> str:
        return f"weighted({self.usd_per_s:g} $/s)" if self.kind == "weighted" else self.kind


def as_hint(hint: str | float | Hint | None, config: Config | None = None) -> Hint:
    """Normalise a hint: ``"fast"``, ``"cheap"``, ``"weighted"``, a number (dollars per
    second, the weighted form), a :class:`Hint`, or None for ``config.hint``."""
    config = config or Config()
    if hint is None:
        hint = config.hint
    if isinstance(hint, Hint):
        return hint
    if isinstance(hint, (int, float)) and not isinstance(hint, bool):
        if not math.isfinite(hint) or hint < 0:
            raise ArgumentError(f"a weighted hint is dollars per second >= 0, got {hint!r}")
        return Hint("weighted", float(hint))
    if hint == "fast":
        return Hint("fast")
    if hint == "cheap":
        return Hint("cheap")
    if hint == "weighted":
        return Hint("weighted", config.model.usd_per_s)
    raise ArgumentError(
        f"hint must be 'fast', 'cheap', 'weighted' or dollars per second (a number), got {hint!r}"
    )


def candidates(
    op: str, channel: str, size: int, nbytes: int = 0, args: dict[str, Any] | None = None
) -> list[StepModel]:
    """Algorithms that may run ``op`` on ``channel`` (the registry's own filter).

    Channel-specific algorithms win over generic ones on their channel, as in
    :func:`afmi.collectives.registry.select`. ``op="send"`` is point-to-point.
    """
    if op == "send":
        return [P2P]
    from afmi.collectives.registry import algorithms, usable_on

    registered = algorithms(op)
    if not registered:
        known = sorted({a.collective for a in algorithms()} | {"send"})
        raise ArgumentError(f"unknown operation {op!r}; choose one of {', '.join(known)}")
    return list(usable_on(registered, channel, size, nbytes, args or {}, lenient=True))


def predict_all(
    op: str,
    nbytes: int,
    size: int,
    channels: Iterable[str] | Mapping[str, Sequence[StepModel]],
    config: Config | None = None,
    args: dict[str, Any] | None = None,
) -> list[Prediction]:
    """Predictions for every (channel, algorithm) pair.

    ``channels`` is a list of names (every candidate algorithm of each), or a
    mapping from channel name to the algorithms to consider on it.
    """
    config = config or Config()
    price = function_price(config.faas)
    functions = 2 if op == "send" else size
    options: dict[str, Sequence[StepModel]]
    if isinstance(channels, Mapping):
        options = dict(channels)
    else:
        options = {c: candidates(op, c, size, nbytes, args) for c in channels}
    out = []
    for name in sorted(options):
        model = model_for(name, config)
        for alg in options[name]:
            out.append(predict(op, nbytes, functions, alg, model, price))
    return out


def choose(
    op: str,
    nbytes: int,
    size: int,
    channels: Iterable[str] | Mapping[str, Sequence[StepModel]],
    config: Config | None = None,
    hint: str | float | Hint | None = None,
    args: dict[str, Any] | None = None,
) -> Prediction:
    """The best (channel, algorithm) for ``op`` under ``hint``; deterministic.

    Raises:
        ArgumentError: no channel is given or no algorithm can run ``op``.
    """
    h = as_hint(hint, config)
    preds = predict_all(op, nbytes, size, channels, config, args)
    if not preds:
        raise ArgumentError(f"no channel and algorithm can run {op} on {size} ranks")
    return min(preds, key=h.key)


@dataclass(frozen=True)
class Explanation:
    """The table behind a choice: every (channel, algorithm) with its prediction."""

    op: str
    nbytes: int
    size: int
    hint: Hint
    rows: list[Prediction]
    winner: Prediction
    #: A channel pinned by the user overrides the model (shown in the table).
    pinned: str | None = None
    #: The ``(channel, algorithm)`` pairs the choice was made among (None: every row).
    #: By default the collectives registry picks one algorithm per channel and the
    #: model only the channel; the other rows are shown for comparison.
    runs: frozenset[tuple[str, str]] | None = None

    def could_run(self, row: Prediction) -> bool:
        """Whether ``row`` was one of the options the choice was made among."""
        return self.runs is None or (row.channel, row.algorithm) in self.runs

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output (each row's ``option``: whether it was chosen among)."""
        return {
            "op": self.op,
            "nbytes": self.nbytes,
            "size": self.size,
            "hint": str(self.hint),
            "pinned": self.pinned,
            "winner": {"channel": self.winner.channel, "algorithm": self.winner.algorithm},
            "rows": [{**r.to_dict(), "option": self.could_run(r)} for r in self.rows],
        }

    def __str__(self) -> str:
        head = f"{self.op} of {_fmt_bytes(self.nbytes)} on {self.size} ranks, hint {self.hint}"
        if self.pinned:
            head += f", pinned to channel {self.pinned!r}"
        lines = [head]
        cols = ("", "channel", "algorithm", "time", "dollars", "messages", "functions $")
        table = [
            (
                "*" if r is self.winner else "" if self.could_run(r) else "-",
                r.channel,
                r.algorithm,
                _fmt_time(r.time_s),
                f"{r.usd:.3e}",
                str(r.messages),
                f"{r.function_usd:.3e}",
            )
            for r in self.rows
        ]
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
        lines.append(fmt.format(*cols))
        lines.extend(fmt.format(*row) for row in table)
        lines.append(f"* chosen: {self.winner.channel} / {self.winner.algorithm}")
        if any(not self.could_run(r) for r in self.rows):
            lines.append("- not an option: the registry runs another algorithm on that channel")
            lines.append("  (model.choose_algorithm = true lets the model choose algorithms too)")
        return "\n".join(lines)


def explain(
    op: str,
    nbytes: int,
    size: int,
    channels: Iterable[str] | Mapping[str, Sequence[StepModel]],
    config: Config | None = None,
    hint: str | float | Hint | None = None,
    args: dict[str, Any] | None = None,
    pinned: str | None = None,
) -> Explanation:
    """Predict every (channel, algorithm) and mark the one :func:`choose` picks."""
    h = as_hint(hint, config)
    rows = sorted(predict_all(op, nbytes, size, channels, config, args), key=h.key)
    if not rows:
        raise ArgumentError(f"no channel and algorithm can run {op} on {size} ranks")
    pool = [r for r in rows if r.channel == pinned] if pinned else rows
    if not pool:
        raise ArgumentError(f"channel {pinned!r} cannot run {op}")
    return Explanation(op, int(nbytes), size, h, rows, pool[0], pinned)


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n / scale:g} {unit}"
    return f"{n} B"
