"""``afmi rendezvous --host H --port P``: run the rendezvous service."""

from __future__ import annotations

import argparse
import asyncio
import sys

from afmi.cli import port_number
from afmi.errors import ConfigError
from afmi.launch import new_event_loop
from afmi.rendezvous.server import RendezvousServer

__all__ = ["HELP", "add_arguments", "main"]

HELP = "run the rendezvous service where ranks of direct-channel jobs find each other"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi rendezvous``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=7077, help="TCP port (0: any free port)"
    )
    parser.add_argument("--step-timeout", type=float, default=10.0, help="seconds per message")
    parser.add_argument(
        "--job-timeout", type=float, default=60.0, help="seconds for all ranks of a job to join"
    )
    parser.add_argument(
        "--relay-timeout", type=float, default=30.0, help="seconds a relay waits for its peer"
    )
    parser.add_argument(
        "--tcp-congestion",
        default="reno",
        help="TCP congestion control of relayed connections ('system': the machine's)",
    )


async def _serve(args: argparse.Namespace) -> None:
    server = RendezvousServer(
        args.host,
        args.port,
        step_timeout=args.step_timeout,
        job_timeout=args.job_timeout,
        relay_timeout=args.relay_timeout,
        tcp_congestion=args.tcp_congestion,
    )
    await server.start()
    print(f"afmi rendezvous listening on {server.address}", flush=True)
    try:
        await server.serve_forever()
    finally:
        await server.aclose()


def main(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:  # the server checks its options before it listens
        print(f"afmi rendezvous: --tcp-congestion: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"afmi rendezvous: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
