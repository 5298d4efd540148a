"""``afmi explain OP NBYTES``: the model's table for one operation, without running it."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from afmi.config import Config
from afmi.errors import AfmiError, ArgumentError

__all__ = ["HELP", "add_arguments", "algorithm_for", "explain_offline", "main", "parse_nbytes"]

HELP = "predict time and dollars of an operation on each channel and algorithm"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
}


def parse_nbytes(text: str) -> int:
    """``"4096"``, ``"4KiB"``, ``"1M"`` (binary), ``"1MB"`` (decimal) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ArgumentError(f"NBYTES must be a byte count like 4096, 64KiB or 1MB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi explain``."""
    parser.add_argument("op", help="collective name (allreduce, bcast, ...) or 'send'")
    parser.add_argument("nbytes", help="bytes per rank, e.g. 8, 64KiB, 1MB")
    parser.add_argument("--size", "-n", type=int, default=2, help="ranks (default 2)")
    parser.add_argument(
        "--hint", default=None, help="fast, cheap, weighted or dollars per second (default: config)"
    )
    parser.add_argument(
        "--channels",
        default="local,direct,redis,s3",
        help="comma-separated channels to compare (default: local,direct,redis,s3)",
    )
    parser.add_argument("--config", default=None, help="config or model file (.json/.toml)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


class _PlanningContext:
    """What the collectives registry looks at when it picks an algorithm, without a job."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.rank = 0
        self.name = name

    @property
    def channel(self) -> str:
        from afmi.endpoint import pinned_channel

        return pinned_channel() or "local"


def explain_offline(
    op: str, nbytes: int, size: int, channels: list[str], config: Config, hint: Any = None
) -> Any:
    """An :class:`~afmi.model.Explanation` for a hypothetical job (no channels opened)."""
    from afmi.model.runtime import plan_explanation

    if type(size) is not int or size < 1:
        raise ArgumentError(f"--size must be a positive number of ranks, got {size!r}")
    ctx: Any = _PlanningContext(size, op)
    return plan_explanation(op, ctx, channels, nbytes, config, hint)


def algorithm_for(op: str, channel: str, size: int, nbytes: int) -> Any:
    """The algorithm the collectives registry runs for ``op`` on ``channel`` (no job needed)."""
    from afmi.model.predict import P2P
    from afmi.model.runtime import _registry_pick, sample_args

    if op == "send":
        return P2P
    ctx: Any = _PlanningContext(size, op)
    return _registry_pick(op, ctx, channel, sample_args(op, nbytes))


def _hint(text: str | None) -> str | float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def main(args: argparse.Namespace) -> int:
    """Run ``afmi explain``."""
    try:
        config = Config.load(args.config)
        channels = [c.strip() for c in args.channels.split(",") if c.strip()]
        if not channels:
            raise ArgumentError("--channels needs at least one channel name")
        from afmi.channels import available_drivers

        unknown = [c for c in channels if c not in available_drivers()]
        if unknown:
            raise ArgumentError(
                f"unknown channel {unknown[0]!r} in --channels; known: "
                + ", ".join(available_drivers())
            )
        exp = explain_offline(
            args.op, parse_nbytes(args.nbytes), args.size, channels, config, _hint(args.hint)
        )
    except AfmiError as exc:
        print(f"afmi explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(exp.to_dict(), indent=2))
    else:
        print(exp)
    return 0
