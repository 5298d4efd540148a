"""``afmi serve module:handler --port P``: a function runtime built on aiohttp.

One process hosts many concurrent invocations, each with its own
communicator (so the ranks of a job may all live in one runtime and use the
``local`` channel, or spread over runtimes and use ``direct`` or ``redis``).

Routes:

* ``GET /health``: ``{"status": "ok", "active": <running invocations>, ...}``.
* ``POST /invoke``: body is the invocation payload (see :mod:`afmi.runtime.handler`).
  200 with the envelope; 400 bad payload; 500 the handler raised; 504 timeout;
  409 the job was cancelled. Error bodies carry ``errorType`` and ``errorMessage``.
* ``POST /2015-03-31/functions/{name}/invocations``: AWS Lambda's Invoke API, so
  the same client (``aiobotocore``'s Lambda client with ``endpoint_url``) drives
  this runtime and AWS. As on AWS, a handler error is a 200 answer with the
  ``X-Amz-Function-Error: Unhandled`` header and the error document as body.
* ``POST /jobs/{job}/cancel``: cancel every running invocation of a job (the
  invoker calls it when one rank failed, so the others do not wait for their
  timeout).

Every invocation is bounded by ``--timeout`` and by the payload's own
``timeout``. Logs are JSON lines on stderr (one object per event).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from afmi.cli import port_number
from afmi.errors import ArgumentError, OperationTimeoutError
from afmi.launch import new_event_loop
from afmi.runtime.handler import (
    Handler,
    InvocationError,
    error_body,
    parse_invocation,
    run_invocation,
    to_json,
)

__all__ = ["HELP", "FunctionRuntime", "add_arguments", "load_handler", "main"]

HELP = "host async function handlers over HTTP (and Lambda's Invoke API) for afmi jobs"

log = logging.getLogger("afmi.serve")

LAMBDA_PATH = "/2015-03-31/functions/{name}/invocations"

#: Largest request body accepted (AWS Lambda's limit for synchronous invocations).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event and the record's extra fields."""

    _SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._SKIP:
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def load_handler(target: str) -> Handler:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the async handler.

    Raises:
        ArgumentError: the target is malformed, cannot be imported, has no such
            attribute, or the attribute is not an ``async def handler(comm, event)``.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ArgumentError(
            f"handler {target!r} must look like module:function or path/to/file.py:function"
        )
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ArgumentError(f"handler file {path} does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ArgumentError(f"cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ArgumentError(f"cannot import handler module {module_name!r}: {exc}") from exc
    handler = getattr(module, attr, None)
    if handler is None:
        raise ArgumentError(f"module {module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(handler):
        raise ArgumentError(
            f"{target} must be an async function `async def {attr}(comm, event)`, "
            f"got {type(handler).__name__}"
        )
    return handler  # type: ignore[no-any-return]


class JobCancelledError(Exception):
    """The invocation's job was cancelled through ``/jobs/{job}/cancel``."""


class FunctionRuntime:
    """The aiohttp application behind ``afmi serve``; see the module docstring.

    Args:
        handler: ``async def handler(comm, event)``.
        name: shown in ``/health`` and in logs.
        timeout: upper bound of every invocation, seconds (None: only the payload's).
    """

    def __init__(self, handler: Handler, *, name: str = "handler", timeout: float | None = 900.0):
        self.handler = handler
        self.name = name
        self.timeout = timeout
        #: job -> running invocation tasks
        self.active: dict[str, set[asyncio.Task[Any]]] = {}
        #: jobs with a failed invocation: their in-process (local channel) state is dropped
        #: once none of their invocations runs any more, even if some ranks never arrived.
        self._failed_jobs: set[str] = set()
        self.counters = {"invocations": 0, "ok": 0, "errors": 0, "timeouts": 0, "rejected": 0}
        # Lambda accepts synchronous payloads up to 6 MB; so does this runtime.
        self.app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
        self.app.add_routes(
            [
                web.get("/health", self._health),
                web.post("/invoke", self._invoke_plain),
                web.post(LAMBDA_PATH, self._invoke_lambda),
                web.post("/jobs/{job}/cancel", self._cancel_job),
            ]
        )
        self.app.on_shutdown.append(self._on_shutdown)

    # -- routes --
    async def _health(self, request: web.Request) -> web.Response:
        from afmi.channels import local

        body = {
            "status": "ok",
            "handler": self.name,
            "active": sum(len(t) for t in self.active.values()),
            "jobs": sorted(self.active),
            "local_jobs": len(local._JOINABLE),
            "tasks": len(asyncio.all_tasks()),
            **self.counters,
        }
        return web.json_response(body)

    async def _cancel_job(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        tasks = list(self.active.get(job, ()))
        for task in tasks:
            task.cancel(msg="job cancelled")
        log.info("job.cancel", extra={"job": job, "cancelled": len(tasks)})
        return web.json_response({"job": job, "cancelled": len(tasks)})

    async def _invoke_plain(self, request: web.Request) -> web.Response:
        status, body = await self._invoke(await request.read(), request.path)
        return _json_response(status, body)

    async def _invoke_lambda(self, request: web.Request) -> web.Response:
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind != "RequestResponse":
            return _lambda_client_error(
                f"X-Amz-Invocation-Type {kind!r} is not supported by afmi serve; "
                "use RequestResponse (the default)"
            )
        status, body = await self._invoke(await request.read(), request.path)
        if status == 400:
            return _lambda_client_error(body["errorMessage"])
        response = _json_response(200, body)
        response.headers["X-Amz-Executed-Version"] = "$LATEST"
        if status != 200:
            response.headers["X-Amz-Function-Error"] = "Unhandled"
        return response

    # -- invocations --
    async def _invoke(self, body: bytes, path: str) -> tuple[int, dict[str, Any]]:
        self.counters["invocations"] += 1
        try:
            inv = parse_invocation(body)
        except InvocationError as exc:
            self.counters["rejected"] += 1
            log.warning("invocation.rejected", extra={"path": path, "error": str(exc)})
            return 400, error_body(exc)
        where = {"job": inv.job, "rank": inv.rank, "size": inv.size, "channel": inv.channel}
        log.info("invocation.start", extra=where)
        start = time.perf_counter()
        task = asyncio.create_task(
            self._run(body), name=f"afmi invocation {inv.job} rank {inv.rank}"
        )
        tasks = self.active.setdefault(inv.job, set())
        tasks.add(task)
        status = 500
        try:
            status, out = await self._outcome(task, inv.job, inv.rank)
        finally:
            tasks.discard(task)
            if status != 200:
                self._failed_jobs.add(inv.job)
            if not tasks and self.active.get(inv.job) is tasks:
                del self.active[inv.job]
                if inv.job in self._failed_jobs:
                    self._failed_jobs.discard(inv.job)
                    _forget_local_job(inv.job)
        duration = time.perf_counter() - start
        if status == 200:
            self.counters["ok"] += 1
            log.info("invocation.end", extra={**where, "status": status, "duration_s": duration})
        else:
            self.counters["timeouts" if status == 504 else "errors"] += 1
            log.warning(
                "invocation.error",
                extra={**where, "status": status, "duration_s": duration, **out},
            )
        return status, out

    async def _run(self, body: bytes) -> dict[str, Any]:
        return await run_invocation(self.handler, body, timeout=self.timeout)

    async def _outcome(
        self, task: asyncio.Task[dict[str, Any]], job: str, rank: int
    ) -> tuple[int, dict[str, Any]]:
        try:
            return 200, await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise
            if not task.cancelled():
                raise
            return 409, error_body(
                JobCancelledError(f"rank {rank} of job {job!r} was cancelled with its job")
            )
        except OperationTimeoutError as exc:
            return 504, error_body(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the invoker
            return 500, error_body(exc)

    async def _on_shutdown(self, app: web.Application) -> None:
        tasks = [t for ts in self.active.values() for t in ts]
        for task in tasks:
            task.cancel(msg="runtime shutting down")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _forget_local_job(job: str) -> None:
    from afmi.channels import local

    local._JOINABLE.pop(job, None)


def _json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=to_json(body), content_type="application/json")


def _lambda_client_error(message: str) -> web.Response:
    body = {"Type": "User", "message": message, "errorType": "InvocationError"}
    body["errorMessage"] = message
    response = _json_response(400, body)
    response.headers["x-amzn-ErrorType"] = "InvalidRequestContentException"
    return response


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi serve``."""
    parser.add_argument(
        "handler", help="module:function or path/to/file.py:function (an async handler)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=8080, help="TCP port (0: any free port)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds each invocation may run at most (default 900, Lambda's limit)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("afmi")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


async def serve(
    runtime: FunctionRuntime,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``runtime`` on ``host:port`` until ``stop`` is set (or the task is cancelled)."""
    runner = web.AppRunner(runtime.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)  # a job connects all at once
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        url = f"http://{host}:{bound}"
        log.info("serve.start", extra={"url": url, "handler": runtime.name})
        if ready is not None:
            ready(url)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
        log.info("serve.stop", extra={"handler": runtime.name, **runtime.counters})


async def _main(args: argparse.Namespace, handler: Handler) -> None:
    runtime = FunctionRuntime(handler, name=args.handler, timeout=args.timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        print(f"afmi serve: {args.handler} listening on {url}", flush=True)

    await serve(runtime, args.host, args.port, ready=ready, stop=stop)


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit code 0, or 2 for a bad handler, 1 if the port is taken."""
    _setup_logging(args.log_level)
    try:
        handler = load_handler(args.handler)
    except ArgumentError as exc:
        print(f"afmi serve: {exc}", file=sys.stderr)
        return 2
    if args.timeout is not None and args.timeout <= 0:
        print("afmi serve: --timeout must be > 0 seconds", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_main(args, handler))
    except OSError as exc:
        print(f"afmi serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
