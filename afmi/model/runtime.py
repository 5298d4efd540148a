"""The model at run time: per-message and per-collective channel choices.

:class:`MessageSelector` is the endpoint's ``selector`` for point-to-point
messages when a rank has several channels. :func:`plan` picks the channel
and algorithm of a collective call from arguments every rank has in common,
so all ranks of the call agree without messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from afmi.config import Config
from afmi.model.select import Explanation, as_hint, candidates, choose, explain

if TYPE_CHECKING:
    from afmi.collectives.base import Algorithm, CollectiveContext

__all__ = [
    "MessageSelector",
    "Plan",
    "common_nbytes",
    "plan",
    "plan_explanation",
    "sample_args",
]


class MessageSelector:
    """``(dest, nbytes) -> channel`` for point-to-point messages, by the config's hint.

    Only the sender decides (receivers accept from every channel and the
    matching engine restores the order), so no agreement is needed; choices
    are cached per message size.
    """

    def __init__(self, channels: Sequence[str], config: Config) -> None:
        self.channels = list(channels)
        self.config = config
        self.hint = as_hint(None, config)
        self._cache: dict[int, str] = {}

    def __call__(self, dest: int, nbytes: int) -> str:
        name = self._cache.get(nbytes)
        if name is None:
            name = choose("send", nbytes, 2, self.channels, self.config, self.hint).channel
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[nbytes] = name
        return name


@dataclass(frozen=True)
class Plan:
    """How one collective call runs: on which channel, with which algorithm."""

    channel: str
    algorithm: Algorithm


def common_nbytes(collective: str, args: dict[str, Any]) -> int:
    """Payload size every rank knows alike (0 where only the root knows it)."""
    from afmi.collectives.registry import SIZE_STEERED, payload_nbytes

    if collective in SIZE_STEERED:
        return payload_nbytes(args.get("x", args.get("obj")))
    return 0


def sample_args(collective: str, nbytes: int) -> dict[str, Any]:
    """Stand-in arguments of a ``collective`` call moving ``nbytes`` per rank.

    The payload is a zero-stride numpy view: its ``nbytes`` is right, its memory is one byte.
    """
    import numpy as np

    from afmi.ops import SUM

    payload = np.broadcast_to(np.zeros(1, dtype=np.uint8), (max(int(nbytes), 0),))
    if collective in ("allreduce", "reduce", "reduce_scatter", "scan", "exscan"):
        return (
            {"x": payload, "op": SUM, "root": 0}
            if collective == "reduce"
            else {
                "x": payload,
                "op": SUM,
            }
        )
    if collective in ("bcast", "gather"):
        return {"obj": payload, "root": 0}
    if collective == "allgather":
        return {"obj": payload}
    if collective == "scatter":
        return {"seq": None, "root": 0}
    if collective == "alltoall":
        return {"seq": None}
    return {}


def _registry_pick(
    collective: str, ctx: CollectiveContext, channel: str, args: dict[str, Any]
) -> Algorithm:
    from afmi.collectives.registry import select
    from afmi.endpoint import _PINNED

    token = _PINNED.set(channel)
    try:
        return select(collective, ctx, args)
    finally:
        _PINNED.reset(token)


def _options(
    collective: str,
    ctx: CollectiveContext,
    channels: Sequence[str],
    nbytes: int,
    args: dict[str, Any],
    config: Config,
) -> dict[str, list[Any]]:
    if config.model.choose_algorithm:
        return {c: candidates(collective, c, ctx.size, nbytes, args) for c in channels}
    return {c: [_registry_pick(collective, ctx, c, args)] for c in channels}


def plan(
    collective: str,
    ctx: CollectiveContext,
    channels: Sequence[str],
    args: dict[str, Any],
    config: Config,
    hint: str | float | None = None,
) -> Plan:
    """Choose the channel and algorithm of one collective call (deterministic).

    With one channel and ``model.choose_algorithm`` off, this is exactly the
    registry's choice.
    """
    if len(channels) == 1 and not config.model.choose_algorithm:
        return Plan(channels[0], _registry_pick(collective, ctx, channels[0], args))
    nbytes = common_nbytes(collective, args)
    options = _options(collective, ctx, channels, nbytes, args, config)
    best = choose(collective, nbytes, ctx.size, options, config, hint, args)
    for alg in options[best.channel]:
        if alg.name == best.algorithm:
            return Plan(best.channel, alg)
    raise AssertionError("chosen algorithm vanished")  # pragma: no cover


def plan_explanation(
    collective: str,
    ctx: CollectiveContext,
    channels: Sequence[str],
    nbytes: int,
    config: Config,
    hint: str | float | None = None,
    pinned: str | None = None,
    args: dict[str, Any] | None = None,
) -> Explanation:
    """The table behind :func:`plan`: every channel and algorithm, the one that runs marked."""
    args = args if args is not None else sample_args(collective, nbytes)
    if collective == "send":
        return explain("send", nbytes, 2, channels, config, hint, pinned=pinned)
    every = {c: candidates(collective, c, ctx.size, nbytes, args) for c in channels}
    if config.model.choose_algorithm:
        return explain(collective, nbytes, ctx.size, every, config, hint, args, pinned)
    options = _options(collective, ctx, channels, nbytes, args, config)
    picks = _options(collective, ctx, [pinned], nbytes, args, config) if pinned else options
    best = choose(collective, nbytes, ctx.size, picks, config, hint, args)
    full = explain(collective, nbytes, ctx.size, every, config, hint, args, pinned)
    winner = next(
        r for r in full.rows if (r.channel, r.algorithm) == (best.channel, best.algorithm)
    )
    # every channel's registry pick is an option (a pinned call chose among its own)
    runs = frozenset((c, alg.name) for c, algs in {**options, **picks}.items() for alg in algs)
    return Explanation(full.op, full.nbytes, full.size, full.hint, full.rows, winner, pinned, runs)
