"""The ``afmi`` command. Each subcommand lives in its own module.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)``
and ``main(args) -> int``. Modules are imported only when their command runs,
so a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main", "port_number"]

#: command name -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "afmi.cli.demo",
    "run": "afmi.runtime.process",
    "rendezvous": "afmi.rendezvous.cli",
    "bench": "afmi.bench.cli",
    "explain": "afmi.model.cli",
    "serve": "afmi.runtime.serve",
    "invoke": "afmi.runtime.invoke",
}


def port_number(text: str) -> int:
    """An argparse ``type`` for a TCP port: 0 (any free port) to 65535.

    ``int`` alone let ``--port 99999`` through, and the socket layer then listened
    on 99999 - 65536 = 34463 without a word.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a port is a number from 0 to 65535, got {text!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"a port is a number from 0 (any free port) to 65535, got {port}"
        )
    return port


def _available() -> dict[str, object]:
    found: dict[str, object] = {}
    for name, module in COMMANDS.items():
        try:
            found[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue  # command not built (yet)
            found[name] = exc
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``afmi`` command."""
    parser = argparse.ArgumentParser(
        prog="afmi", description="asyncio-native MPI-style message passing for serverless functions"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _available()
    for name, module in modules.items():
        if isinstance(module, Exception):
            p = sub.add_parser(name, help=f"(unavailable: {module}; pip install 'afmi[all]')")
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        p = sub.add_parser(
            name, help=getattr(module, "HELP", ""), description=getattr(module, "HELP", "")
        )
        module.add_arguments(p)  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = modules[args.command]
    if isinstance(module, Exception):
        print(
            f"afmi {args.command}: {module}. Install its dependencies: pip install 'afmi[all]'",
            file=sys.stderr,
        )
        return 2
    return int(module.main(args))  # type: ignore[attr-defined]
