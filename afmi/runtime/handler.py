"""Function handlers: from an invocation payload to a communicator, and back.

A function of an afmi job receives one JSON *invocation payload* per rank::

    {"rank": 3, "size": 8, "job": "job-1f2e", "channel": "direct",
     "config": {"timeout": 60},                      # afmi.Config as a dict (optional)
     "rendezvous": "10.0.0.5:7077", "token": "...",  # direct channel only
     "timeout": 30,                                  # seconds for this invocation (optional)
     "input": {...}}                                 # anything else is the user's

:func:`parse_invocation` validates it (a bad payload raises
:class:`InvocationError` naming the key and what to change), :func:`open_communicator`
turns it into a world communicator, and the wrappers turn
``async def handler(comm, event)`` into an AWS Lambda handler
(:func:`lambda_handler`) or an aiohttp request handler (:func:`aiohttp_handler`).
The user's handler receives the whole payload as ``event``.

The value a wrapped handler returns is an *envelope* the invoker reads::

    {"afmi": {"rank": 3, "job": "job-1f2e", "duration_s": 0.012, "stats": {...}},
     "result": <what the handler returned>}
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from afmi.channels.base import available_drivers
from afmi.comm import Communicator
from afmi.config import Config
from afmi.errors import ArgumentError, ConfigError, OperationTimeoutError
from afmi.launch import connect, new_event_loop

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "Handler",
    "Invocation",
    "InvocationError",
    "aiohttp_handler",
    "envelope",
    "lambda_handler",
    "open_communicator",
    "parse_invocation",
    "run_invocation",
    "to_json",
]

#: ``async def handler(comm, event) -> result``; the result must be JSON-serializable
#: (numpy arrays and scalars are converted to lists and numbers).
Handler = Callable[[Communicator, dict[str, Any]], Awaitable[Any]]

#: Keys of the payload that afmi reads; every other key belongs to the user.
RESERVED_KEYS = ("rank", "size", "job", "channel", "config", "rendezvous", "token", "timeout")


#: Largest job accepted in a payload (ranks).
MAX_SIZE = 65536
#: Longest job name accepted in a payload.
MAX_JOB_CHARS = 200


class InvocationError(ArgumentError):
    """The invocation payload is malformed; the message names the key and what to change."""


@dataclass(frozen=True)
class Invocation:
    """A validated invocation payload (see the module docstring)."""

    rank: int
    size: int
    job: str
    channel: str
    config: Config
    rendezvous: str | None = None
    token: str | None = field(default=None, repr=False)
    #: Seconds this invocation may run (None: no bound beyond the runtime's own).
    timeout: float | None = None

    def env(self) -> dict[str, str]:
        """The environment :func:`afmi.connect` reads for this rank's channel."""
        env: dict[str, str] = {}
        if self.rendezvous:
            env["AFMI_RENDEZVOUS"] = self.rendezvous
        if self.token:
            env["AFMI_TOKEN"] = self.token
        return env


def _fail(message: str) -> InvocationError:
    return InvocationError(f"bad invocation payload: {message}")


def _int_key(event: Mapping[str, Any], key: str) -> int:
    if key not in event:
        raise _fail(f"missing key {key!r} (an int)")
    value = event[key]
    if type(value) is not int:
        raise _fail(f"{key!r} must be an int, got {type(value).__name__} {value!r}")
    return value


def _str_key(event: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = event.get(key)
    if value is None:
        if required:
            raise _fail(f"missing key {key!r} (a non-empty string)")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def parse_invocation(event: Any) -> Invocation:
    """Validate an invocation payload (a dict, or JSON text/bytes of one).

    Raises:
        InvocationError: the payload is not a JSON object, a key is missing or
            has a bad value; the message says which key and what is expected.
    """
    if isinstance(event, (bytes, bytearray, str)):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise _fail(f"not valid JSON ({exc})") from None
    if not isinstance(event, Mapping):
        raise _fail(f"must be a JSON object, got {type(event).__name__}")
    size = _int_key(event, "size")
    if not 1 <= size <= MAX_SIZE:
        raise _fail(f"'size' must be in 1..{MAX_SIZE} (the number of ranks), got {size}")
    rank = _int_key(event, "rank")
    if not 0 <= rank < size:
        raise _fail(f"'rank' must be in 0..{size - 1} for size {size}, got {rank}")
    job = _str_key(event, "job", required=True)
    assert job is not None
    if len(job) > MAX_JOB_CHARS or not job.isprintable() or any(c.isspace() for c in job):
        raise _fail(
            f"'job' must be at most {MAX_JOB_CHARS} printable characters without spaces, "
            f"got {job[:40]!r}{'...' if len(job) > 40 else ''}"
        )
    raw_config = event.get("config")
    if raw_config is not None and not isinstance(raw_config, Mapping):
        raise _fail(f"'config' must be an object (afmi.Config as a dict), got {raw_config!r}")
    try:
        config = Config.from_dict(dict(raw_config or {}))
    except ConfigError as exc:
        raise _fail(f"'config': {exc}") from None
    channel = _str_key(event, "channel", required=False) or config.channel or "local"
    if channel not in available_drivers():
        raise _fail(f"'channel' must be one of {', '.join(available_drivers())}, got {channel!r}")
    rendezvous = _str_key(event, "rendezvous", required=False)
    token = _str_key(event, "token", required=False)
    if channel == "direct":
        if rendezvous is None and not config.channels.direct.rendezvous:
            raise _fail(
                "the direct channel needs 'rendezvous' (host:port of the rendezvous service; "
                "`afmi invoke` fills it in)"
            )
        if token is None:
            raise _fail(
                "the direct channel needs 'token' (the job's secret; `afmi invoke` sets it)"
            )
    timeout = event.get("timeout")
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise _fail(f"'timeout' must be a positive number of seconds, got {timeout!r}")
        timeout = float(timeout)
    return Invocation(rank, size, job, channel, config, rendezvous, token, timeout)


@asynccontextmanager
async def open_communicator(event: Any) -> AsyncIterator[Communicator]:
    """Validate ``event`` and join its job; yields the world communicator.

    Example::

        async with afmi.runtime.open_communicator(event) as comm:
            total = await comm.allreduce(comm.rank)

    On exit (normal, error or cancellation) the channel is closed.
    """
    inv = event if isinstance(event, Invocation) else parse_invocation(event)
    async with connect(
        rank=inv.rank,
        size=inv.size,
        job=inv.job,
        channel=inv.channel,
        config=inv.config,
        env=inv.env(),
    ) as comm:
        yield comm


def _json_default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("latin-1")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"handler result holds a {type(obj).__name__}, which is not JSON-serializable")


def to_json(obj: Any) -> str:
    """JSON text of ``obj``; numpy arrays and scalars become lists and numbers."""
    return json.dumps(obj, default=_json_default)


def envelope(inv: Invocation, result: Any, duration_s: float, stats: dict[str, Any]) -> Any:
    """The JSON-ready value a wrapped handler returns (see the module docstring)."""
    meta = {
        "rank": inv.rank,
        "size": inv.size,
        "job": inv.job,
        "channel": inv.channel,
        "duration_s": duration_s,
        "stats": stats,
    }
    return json.loads(to_json({"afmi": meta, "result": result}))


def _channel_stats(comm: Communicator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ch in comm.endpoint.channels.items():
        try:
            out[name] = dict(ch.stats())
        except Exception as exc:  # noqa: BLE001 - stats are best effort
            out[name] = {"error": str(exc)}
    return out


async def run_invocation(
    handler: Handler, event: Any, *, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``await handler(comm, event)`` for one invocation; returns its envelope.

    ``timeout`` (seconds) bounds the invocation together with the payload's own
    ``timeout`` (the smaller wins). When it expires the handler is cancelled, the
    channel closed and :class:`~afmi.errors.OperationTimeoutError` raised naming
    the rank and job. Errors of the handler propagate unchanged.
    """
    inv = parse_invocation(event)
    payload = dict(event) if isinstance(event, Mapping) else json.loads(event)
    limits = [t for t in (timeout, inv.timeout) if t is not None]
    limit = min(limits) if limits else None
    start = time.perf_counter()
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            async with open_communicator(inv) as comm:
                result = await handler(comm, payload)
                stats = _channel_stats(comm)
    except TimeoutError:
        if scope.expired():
            raise OperationTimeoutError(
                f"rank {inv.rank} of job {inv.job!r} did not finish within {limit} s"
            ) from None
        raise
    return envelope(inv, result, time.perf_counter() - start, stats)  # type: ignore[no-any-return]


def lambda_handler(handler: Handler) -> Callable[[Any, Any], dict[str, Any]]:
    """Wrap ``async def handler(comm, event)`` as an AWS Lambda handler.

    The returned function is synchronous (``def entry(event, context)``, as the
    Lambda Python runtime calls it): it runs the invocation in a fresh event
    loop (uvloop when installed) and returns the envelope. The invocation is
    bounded by the time Lambda has left (``context.get_remaining_time_in_millis()``)
    minus a 0.5 s margin, so a stuck rank fails with a clear message instead of
    being killed silently. Errors propagate, so Lambda reports them as a
    function error (``errorType``/``errorMessage``), which ``afmi invoke`` reads.

    Example (``app.py``, handler setting ``app.entry``)::

        async def handler(comm, event):
            return await comm.allreduce(event["input"])

        entry = afmi.runtime.lambda_handler(handler)
    """

    def entry(event: Any, context: Any = None) -> dict[str, Any]:
        timeout: float | None = None
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            timeout = max(remaining() / 1000.0 - 0.5, 0.001)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(run_invocation(handler, event, timeout=timeout))

    entry.__name__ = getattr(handler, "__name__", "entry")
    entry.__doc__ = handler.__doc__
    return entry


def aiohttp_handler(
    handler: Handler, *, timeout: float | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap ``async def handler(comm, event)`` as an aiohttp request handler.

    The request body is the invocation payload. Answers: 200 with the envelope;
    400 with ``{"errorType": "InvocationError", "errorMessage": ...}`` for a bad
    payload; 500 (handler raised) or 504 (timeout) with ``errorType`` and
    ``errorMessage``. ``afmi serve`` uses a fuller version of this with logs,
    Lambda's Invoke API path and job cancellation.
    """
    from aiohttp import web

    async def respond(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parse_invocation(body)
        except InvocationError as exc:
            return _error_response(400, exc)
        try:
            out = await run_invocation(handler, body, timeout=timeout)
        except OperationTimeoutError as exc:
            return _error_response(504, exc)
        except Exception as exc:  # noqa: BLE001 - reported to the invoker
            return _error_response(500, exc)
        return web.Response(text=to_json(out), content_type="application/json")

    return respond


def _error_response(status: int, exc: BaseException) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=status,
        text=to_json(error_body(exc)),
        content_type="application/json",
    )


def error_body(exc: BaseException) -> dict[str, Any]:
    """Lambda-style error document: ``errorType`` and ``errorMessage``."""
    return {"errorType": type(exc).__name__, "errorMessage": str(exc) or type(exc).__name__}
