"""``afmi bench``: measure channels, calibrate the model, report its accuracy.

``afmi bench loader ...`` runs the data loader benchmark (:mod:`afmi.bench.loader`)
when that module is part of this build.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from afmi.config import Config
from afmi.errors import AfmiError, ArgumentError

__all__ = ["HELP", "add_arguments", "main"]

HELP = "benchmark channels (ping-pong, collectives, anchors), calibrate the model"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _nbytes(text: str) -> int:
    from afmi.model.cli import parse_nbytes

    try:
        return parse_nbytes(text)
    except AfmiError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loader() -> Any:
    try:
        return importlib.import_module("afmi.bench.loader")
    except ModuleNotFoundError as exc:
        if exc.name in ("afmi.bench.loader",):
            return None
        raise


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi bench``."""
    parser.add_argument("--quick", action="store_true", help="few sizes and iterations (smoke run)")
    parser.add_argument(
        "--channels",
        type=_names,
        default=None,
        help="comma-separated channels (default: every available one of local,direct,redis,s3)",
    )
    parser.add_argument(
        "--max-size",
        type=_nbytes,
        default=None,
        help="largest ping-pong message (default 16MiB; --processes: 64MiB)",
    )
    parser.add_argument(
        "--collective-max-size",
        type=_nbytes,
        default=None,
        help="largest collective payload per rank (default 1MiB; --processes: 16MiB)",
    )
    parser.add_argument(
        "--ranks",
        type=_ints,
        default=None,
        help="rank counts for collectives (default 2,4,8; quick: 2,4)",
    )
    parser.add_argument(
        "--ops",
        type=_names,
        default=["barrier", "bcast", "allreduce", "gather"],
        help="collectives to time (default barrier,bcast,allreduce,gather)",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="one process per rank (afmi run): ping-pong and the --ops collectives over "
        "direct/redis beside a blocking socket and mpi4py over TCP (default channels "
        "direct,redis; ranks 2,4)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="--processes: run every job N times, keep each point's fastest (best of N)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=None,
        help="in process: measure the sweep in N passes, each point keeping its fastest "
        "pass (the median when a pass timed fewer than 3 calls; default 3; quick: 1)",
    )
    parser.add_argument(
        "--slow-retries",
        type=int,
        default=None,
        metavar="N",
        help="measure a point again, up to N times, when the CPU ran more than 1.25x slower "
        "than its fastest in the run while it was measured (default 0: only report it)",
    )
    parser.add_argument(
        "--no-pingpong",
        action="store_true",
        help="skip the ping-pong sweep (unless --calibrate, whose fit needs it)",
    )
    parser.add_argument("--no-collectives", action="store_true", help="skip collectives")
    parser.add_argument("--no-anchors", action="store_true", help="skip socket/mpi4py anchors")
    parser.add_argument(
        "--no-servers",
        action="store_true",
        help="do not start private Redis/S3 servers for unconfigured channels",
    )
    parser.add_argument(
        "--calibrate",
        nargs="?",
        const="afmi-model.json",
        default=None,
        metavar="FILE",
        help="fit the model and write it (default afmi-model.json)",
    )
    parser.add_argument("--config", default=None, help="config file (.json/.toml)")
    parser.add_argument(
        "--seconds-per-point", type=float, default=None, help="time budget per measured point"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write results as JSON")
    parser.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="bench_command", metavar="{loader}")
    loader_parser = sub.add_parser("loader", help="data loader benchmark (afmi.bench.loader)")
    module = _loader()
    if module is not None and hasattr(module, "add_arguments"):
        module.add_arguments(loader_parser)


def main(args: argparse.Namespace) -> int:
    """Run ``afmi bench``."""
    if getattr(args, "bench_command", None) == "loader":
        module = _loader()
        runner = getattr(module, "run", None) if module is not None else None
        if runner is None:
            print(
                "afmi bench loader: the loader benchmark (afmi.bench.loader) is not part of "
                "this build",
                file=sys.stderr,
            )
            return 2
        return int(runner(args))
    import signal

    from afmi.bench.report import Progress, format_report, write_json
    from afmi.bench.suite import Options, run_suite

    # SIGTERM unwinds like Ctrl-C, so servers the bench started are stopped.
    signal.signal(signal.SIGTERM, _terminate)
    if args.processes:
        return _processes(args)

    try:
        config = Config.load(args.config)
        opts = Options(
            channels=args.channels,
            quick=args.quick,
            max_bytes=args.max_size or (1 << 24),
            collective_max_bytes=args.collective_max_size or (1 << 20),
            ranks=args.ranks or ([2, 4] if args.quick else [2, 4, 8]),
            ops=args.ops,
            pingpong=not args.no_pingpong,
            collectives=not args.no_collectives,
            anchors=not args.no_anchors,
            calibrate=args.calibrate,
            start_servers=not args.no_servers,
            seconds_per_point=args.seconds_per_point,
            passes=args.passes,
            slow_retries=_slow_retries(args),
        )
        progress = Progress(enabled=not args.quiet)
        try:
            results = run_suite(opts, config, progress)
        finally:
            progress.done()
    except AfmiError as exc:
        print(f"afmi bench: {exc}", file=sys.stderr)
        return 2
    print(format_report(results))
    if args.json:
        write_json(results, args.json)
        print(f"\nresults written to {args.json}")
    return _plots(results, args.plots)


def _plots(results: dict[str, Any], directory: str | None) -> int:
    """Write ``--plots``, when asked for; 1 when they cannot be drawn (no matplotlib)."""
    from afmi.bench.report import write_plots

    if not directory:
        return 0
    try:
        for path in write_plots(results, directory):
            print(f"plot written to {path}")
    except RuntimeError as exc:
        print(f"afmi bench: {exc}", file=sys.stderr)
        return 1
    return 0


def _slow_retries(args: argparse.Namespace) -> int:
    """``--slow-retries``, or the bench's default (the options check the value)."""
    from afmi.bench.measure import SLOW_RETRIES

    return SLOW_RETRIES if args.slow_retries is None else int(args.slow_retries)


def _processes(args: argparse.Namespace) -> int:
    """``afmi bench --processes``: the cross-process run (:mod:`afmi.bench.procs`)."""
    import datetime
    import os
    import platform

    from afmi.bench.procs import ProcsOptions, model_accuracy, run_procs
    from afmi.bench.report import Progress, format_processes, write_json
    from afmi.launch import event_loop_name

    try:
        config = Config.load(args.config)
        opts = ProcsOptions(
            channels=args.channels or ["direct", "redis"],
            ranks=args.ranks or [2, 4],
            max_bytes=args.max_size or (64 << 20),
            allreduce_max_bytes=args.collective_max_size or (16 << 20),
            quick=args.quick,
            pingpong=not args.no_pingpong or bool(args.calibrate),  # the fit needs it
            anchors=not args.no_anchors,
            repeat=args.repeat,
            seconds_per_point=args.seconds_per_point,
            ops=[] if args.no_collectives else args.ops,
            slow_retries=_slow_retries(args),
        )
        if args.calibrate and 2 not in opts.ranks:
            raise ArgumentError(
                "--calibrate fits each channel's wire to the ping-pong, which runs on 2 "
                f"processes; --ranks {','.join(map(str, opts.ranks))} has no 2: add it"
            )
        progress = Progress(enabled=not args.quiet)
        try:
            proc = run_procs(opts, config, progress, start_servers=not args.no_servers)
            progress("comparing with the model")
            proc.update(model_accuracy(proc, config, args.calibrate))
        finally:
            progress.done()
    except AfmiError as exc:
        print(f"afmi bench: {exc}", file=sys.stderr)
        return 2
    print(format_processes(proc))
    if args.json:
        results = {
            "afmi_bench": 1,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "python": sys.version.split()[0],
            "event_loop": event_loop_name(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "processes": proc,
        }
        write_json(results, args.json)
        print(f"\nresults written to {args.json}")
    return _plots(proc, args.plots)
