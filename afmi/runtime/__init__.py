"""Runtimes that start ranks: local processes (``afmi run``), function runtimes."""

from afmi.runtime.handler import (
    Handler,
    Invocation,
    InvocationError,
    aiohttp_handler,
    lambda_handler,
    open_communicator,
    parse_invocation,
    run_invocation,
)

__all__ = [
    "Handler",
    "Invocation",
    "InvocationError",
    "aiohttp_handler",
    "lambda_handler",
    "open_communicator",
    "parse_invocation",
    "run_invocation",
]
