"""``afmi invoke``: run a job of N functions and gather their results.

The invoker sends one invocation payload per rank (see
:mod:`afmi.runtime.handler`), all at once, to

* function runtimes over plain HTTP (:class:`HttpTarget`: ``afmi serve`` or any
  aiohttp runtime built with :func:`~afmi.runtime.handler.aiohttp_handler`), or
* AWS Lambda, or anything that speaks Lambda's Invoke API, through aiobotocore
  (:class:`LambdaTarget`, ``endpoint_url`` for non-AWS endpoints such as
  ``afmi serve`` itself).

It gathers each rank's result, error and duration. When one rank fails or
does not answer in time, the job fails at once with :class:`JobFailedError`
naming that rank; the other invocations are abandoned (and, on ``afmi serve``,
cancelled). For the ``direct`` channel the invoker starts a rendezvous service
for the job (or uses the one given) and hands its address and a fresh token
to every rank.

Example::

    result = await invoke_job(HttpTarget("http://127.0.0.1:8080"), 8,
                              {"input": 1}, channel="local")
    print(result.results, result.cost.format())
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from afmi.config import Config
from afmi.errors import AfmiError, ArgumentError, ConfigError
from afmi.launch import new_event_loop
from afmi.runtime.cost import CostReport, cost_report
from afmi.runtime.handler import parse_invocation, to_json

__all__ = [
    "HELP",
    "HttpTarget",
    "JobFailedError",
    "JobResult",
    "LambdaTarget",
    "RankResult",
    "Target",
    "add_arguments",
    "invoke_job",
    "main",
]

HELP = "run a job of N functions (afmi serve runtimes or AWS Lambda) and report results and cost"

#: Seconds the invoker waits beyond the invocation timeout for the answer to arrive.
GRACE_S = 5.0
#: Errors that are usually a consequence of another rank's failure (its peer went away).
SECONDARY_ERRORS = frozenset({"ChannelError", "JobCancelledError"})
#: Seconds to wait for the root cause when the first failure is a secondary error.
ROOT_CAUSE_WAIT_S = 2.0


@dataclass
class Reply:
    """One function's raw answer: was it a function error, and the decoded JSON body."""

    ok: bool
    body: Any


class Target(Protocol):
    """Where invocations go. Used as an async context manager around a job."""

    def describe(self) -> str:
        """Short description for messages."""
        ...

    async def invoke(self, rank: int, payload: dict[str, Any], timeout: float | None) -> Reply:
        """Invoke one function with ``payload``; raise on transport errors."""
        ...

    async def cancel(self, job: str) -> None:
        """Best effort: stop the job's other invocations."""
        ...

    async def __aenter__(self) -> Target: ...

    async def __aexit__(self, *exc: object) -> None: ...


def _decode(data: bytes, where: str) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise AfmiError(f"{where} answered with a body that is not JSON: {data[:200]!r}") from None


class HttpTarget:
    """Function runtimes reached over HTTP; ranks are spread round-robin over ``urls``.

    A URL without a path (``http://host:8080``) means ``afmi serve``: payloads go to
    ``/invoke`` and a failed job is cancelled with ``/jobs/{job}/cancel``. A URL
    with a path is used as is (any runtime built with ``aiohttp_handler``).
    """

    def __init__(self, *urls: str) -> None:
        if not urls:
            raise ArgumentError("HttpTarget needs at least one URL")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ArgumentError(f"--url must look like http://host:port, got {url!r}")
        self.urls = list(urls)
        self._session: Any = None
        self._users = 0

    def describe(self) -> str:
        """The URLs."""
        return ", ".join(self.urls)

    def _endpoint(self, rank: int) -> str:
        url = self.urls[rank % len(self.urls)]
        return url.rstrip("/") + "/invoke" if urlsplit(url).path in ("", "/") else url

    async def __aenter__(self) -> HttpTarget:
        import aiohttp

        if self._users == 0:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            )
        self._users += 1  # several jobs may share one target at once
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._users -= 1
        if self._users == 0:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def invoke(self, rank: int, payload: dict[str, Any], timeout: float | None) -> Reply:
        """POST the payload; 200 is success, an error document otherwise."""
        url = self._endpoint(rank)
        async with self._session.post(
            url, data=to_json(payload), headers={"Content-Type": "application/json"}
        ) as resp:
            body = _decode(await resp.read(), url)
            if resp.status == 200:
                return Reply(True, body)
            if isinstance(body, dict) and "errorMessage" in body:
                return Reply(False, body)
            return Reply(False, {"errorType": f"HTTP {resp.status}", "errorMessage": str(body)})

    async def cancel(self, job: str) -> None:
        """POST ``/jobs/{job}/cancel`` to every ``afmi serve`` URL; errors are ignored."""
        for url in self.urls:
            if urlsplit(url).path not in ("", "/"):
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    async with self._session.post(f"{url.rstrip('/')}/jobs/{job}/cancel") as r:
                        await r.read()


class LambdaTarget:
    """AWS Lambda (or any Invoke API endpoint) through aiobotocore's Lambda client.

    Credentials and region come from the usual AWS sources (environment,
    config files, instance role). Retries are off: a retried invocation would
    start a rank twice.
    """

    def __init__(
        self, function: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        if not function:
            raise ArgumentError("--lambda needs a function name or ARN")
        self.function = function
        self.endpoint_url = endpoint_url
        self.region = region
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._users = 0
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        """The function name (and endpoint)."""
        return self.function + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    async def __aenter__(self) -> LambdaTarget:
        async with self._lock:  # several jobs may share one target at once
            if self._client is None:
                self._stack, self._client = await self._open()
            self._users += 1
        return self

    async def _open(self) -> tuple[contextlib.AsyncExitStack, Any]:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise ArgumentError(
                f"invoking AWS Lambda needs aiobotocore: pip install 'afmi[s3]' ({exc})"
            ) from exc
        config = AioConfig(
            read_timeout=900 + GRACE_S,
            connect_timeout=30,
            retries={"max_attempts": 0},
            max_pool_connections=1024,
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        client = await stack.enter_async_context(
            session.create_client(
                "lambda",
                endpoint_url=self.endpoint_url,
                region_name=self.region or session.get_config_variable("region") or "us-east-1",
                config=config,
            )
        )
        return stack, client

    async def __aexit__(self, *exc: object) -> None:
        self._users -= 1
        if self._users > 0:
            return
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def invoke(self, rank: int, payload: dict[str, Any], timeout: float | None) -> Reply:
        """Invoke synchronously (RequestResponse); ``FunctionError`` marks a failed rank."""
        resp = await self._client.invoke(
            FunctionName=self.function,
            InvocationType="RequestResponse",
            Payload=to_json(payload).encode(),
        )
        async with resp["Payload"] as stream:
            body = _decode(await stream.read(), self.describe())
        if resp.get("FunctionError"):
            if not isinstance(body, dict):
                body = {"errorType": "FunctionError", "errorMessage": str(body)}
            return Reply(False, body)
        return Reply(True, body)

    async def cancel(self, job: str) -> None:
        """Lambda cannot cancel a running invocation; the ranks end at their own timeout."""


@dataclass
class RankResult:
    """One rank's outcome."""

    rank: int
    ok: bool
    #: What the handler returned (None on error).
    result: Any = None
    #: ``errorType`` and ``errorMessage`` when the rank failed.
    error_type: str | None = None
    error: str | None = None
    #: Seconds from sending the invocation to receiving the answer (invoker's clock).
    duration_s: float = 0.0
    #: Seconds the handler ran (the function's own clock; None if it did not say).
    handler_duration_s: float | None = None
    #: The rank's channel counters, ``{channel: stats}``.
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def billed_duration_s(self) -> float:
        """Duration used for billing: the handler's own, else the invoker's."""
        return self.handler_duration_s if self.handler_duration_s is not None else self.duration_s


@dataclass
class JobResult:
    """A finished job: every rank's outcome, wall time and cost."""

    job: str
    size: int
    channel: str
    ranks: list[RankResult]
    wall_s: float
    cost: CostReport

    @property
    def results(self) -> list[Any]:
        """The handlers' return values in rank order."""
        return [r.result for r in self.ranks]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "job": self.job,
            "size": self.size,
            "channel": self.channel,
            "wall_s": self.wall_s,
            "ranks": [
                {
                    "rank": r.rank,
                    "ok": r.ok,
                    "result": r.result,
                    "duration_s": r.duration_s,
                    "handler_duration_s": r.handler_duration_s,
                    "stats": r.stats,
                }
                for r in self.ranks
            ],
            "cost": self.cost.to_dict(),
        }


class JobFailedError(AfmiError):
    """A rank of an invoked job failed or did not answer in time.

    ``rank`` names it; ``ranks`` holds what is known about every rank
    (ranks that had not answered are absent).
    """

    def __init__(
        self, job: str, failed: RankResult, ranks: list[RankResult], size: int | None = None
    ) -> None:
        message = f"job {job} failed: rank {failed.rank}: {failed.error_type}: {failed.error}"
        answered = {r.rank for r in ranks}
        waiting = [r for r in range(size or 0) if r not in answered]
        if waiting:
            shown = ", ".join(map(str, waiting[:8])) + (", ..." if len(waiting) > 8 else "")
            message += f" (no answer yet from rank{'s' if len(waiting) > 1 else ''} {shown})"
        super().__init__(message)
        self.job = job
        self.rank = failed.rank
        self.failed = failed
        self.ranks = ranks


def _rank_result(rank: int, reply: Reply, duration_s: float) -> RankResult:
    body = reply.body
    if not reply.ok:
        doc = body if isinstance(body, dict) else {}
        return RankResult(
            rank,
            False,
            error_type=str(doc.get("errorType", "Error")),
            error=str(doc.get("errorMessage", body)),
            duration_s=duration_s,
        )
    if isinstance(body, dict) and isinstance(body.get("afmi"), dict) and "result" in body:
        meta = body["afmi"]
        handler_s = meta.get("duration_s")
        return RankResult(
            rank,
            True,
            result=body["result"],
            duration_s=duration_s,
            handler_duration_s=float(handler_s) if isinstance(handler_s, (int, float)) else None,
            stats=meta.get("stats") if isinstance(meta.get("stats"), dict) else {},
        )
    return RankResult(rank, True, result=body, duration_s=duration_s)


@contextlib.asynccontextmanager
async def _rendezvous(
    channel: str, given: str | None, host: str
) -> AsyncIterator[tuple[str | None, str | None]]:
    """Yield (rendezvous address, token) for the job; start a service when needed."""
    if channel != "direct":
        yield None, None
        return
    token = secrets.token_urlsafe(24)
    if given:
        yield given, token
        return
    try:
        from afmi.rendezvous.server import RendezvousServer
    except ImportError as exc:
        raise ArgumentError(
            f"the direct channel needs the rendezvous service, which is not available: {exc}"
        ) from exc
    async with RendezvousServer(host, 0) as server:
        yield server.address, token


def build_payloads(
    size: int,
    payload: dict[str, Any],
    *,
    job: str,
    channel: str,
    config: dict[str, Any],
    rendezvous: str | None,
    token: str | None,
    timeout: float | None,
) -> list[dict[str, Any]]:
    """One validated payload per rank: the user's keys plus afmi's."""
    out = []
    for rank in range(size):
        p = dict(payload)
        p.update(rank=rank, size=size, job=job, channel=channel, config=config)
        if rendezvous:
            p["rendezvous"] = rendezvous
        if token:
            p["token"] = token
        if timeout is not None:
            p["timeout"] = timeout
        parse_invocation(p)
        out.append(p)
    return out


async def invoke_job(
    target: Target,
    size: int,
    payload: dict[str, Any] | None = None,
    *,
    job: str | None = None,
    channel: str | None = None,
    config: Config | dict[str, Any] | None = None,
    timeout: float | None = 300.0,
    rendezvous: str | None = None,
    rendezvous_host: str = "127.0.0.1",
) -> JobResult:
    """Invoke ``size`` functions of one job concurrently and gather their results.

    Args:
        target: an :class:`HttpTarget` or :class:`LambdaTarget` (entered here).
        size: number of ranks (functions).
        payload: the user's keys, sent to every rank (``channel``/``config`` in it are
            used unless the arguments below override them).
        job: job name (default: a fresh unique name).
        channel: ``local``, ``direct``, ``redis`` or ``s3``.
        config: :class:`afmi.Config` (or dict) sent to every rank.
        timeout: seconds each invocation may run (sent in the payload, enforced by the
            runtime; the invoker gives up ``GRACE_S`` later). None: no bound.
        rendezvous: ``host:port`` of a rendezvous service reachable from the functions
            (direct channel); by default one is started on ``rendezvous_host`` for the job.

    Raises:
        JobFailedError: a rank failed or timed out (its rank is named); the other
            ranks are cancelled where the runtime allows.
        ArgumentError: bad arguments or payload (nothing was invoked).
    """
    if type(size) is not int or size < 1:
        raise ArgumentError(f"size (-n) must be a positive int, got {size!r}")
    base = dict(payload or {})
    channel = channel or base.get("channel")
    if config is None:
        config = base.get("config")
    try:
        cfg = Config.load(config) if config is not None else Config()
    except ConfigError as exc:
        raise ArgumentError(f"bad config for the job: {exc}") from None
    channel = channel or cfg.channel or "local"
    job = job or f"job-{uuid.uuid4().hex[:12]}"
    # Send what the caller wrote (not every default), so runtimes with an older afmi accept it.
    config_dict: dict[str, Any] = (
        dict(config) if isinstance(config, dict) else cfg.to_dict() if config is not None else {}
    )
    for key in ("rank", "size", "job", "rendezvous", "token"):
        base.pop(key, None)
    if timeout is not None and timeout <= 0:
        raise ArgumentError(f"timeout must be > 0 seconds, got {timeout!r}")
    async with _rendezvous(channel, rendezvous, rendezvous_host) as (address, token):
        payloads = build_payloads(
            size,
            base,
            job=job,
            channel=channel,
            config=config_dict,
            rendezvous=address,
            token=token,
            timeout=timeout,
        )
        async with target:
            ranks, wall = await _fan_out(target, job, payloads, timeout)
    cost = cost_report(
        job,
        channel,
        [r.billed_duration_s for r in ranks],
        wall_s=wall,
        config=cfg,
        stats=[r.stats for r in ranks],
    )
    return JobResult(job, size, channel, ranks, wall, cost)


async def _fan_out(
    target: Target, job: str, payloads: list[dict[str, Any]], timeout: float | None
) -> tuple[list[RankResult], float]:
    limit = None if timeout is None else timeout + GRACE_S
    done: dict[int, RankResult] = {}

    async def one(rank: int, payload: dict[str, Any]) -> RankResult:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                reply = await target.invoke(rank, payload, timeout)
        except TimeoutError:
            result = RankResult(
                rank,
                False,
                error_type="TimeoutError",
                error=f"no answer within {limit} s from {target.describe()}",
                duration_s=time.perf_counter() - start,
            )
        except (OSError, AfmiError) as exc:
            result = RankResult(
                rank,
                False,
                error_type=type(exc).__name__,
                error=f"invoking {target.describe()} failed: {exc}",
                duration_s=time.perf_counter() - start,
            )
        else:
            result = _rank_result(rank, reply, time.perf_counter() - start)
        done[rank] = result
        return result

    start = time.perf_counter()
    tasks = [
        asyncio.create_task(one(r, p), name=f"invoke rank {r}") for r, p in enumerate(payloads)
    ]
    failed: RankResult | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            result = await next_done
            if not result.ok:
                failed = await _root_cause(result, tasks, done)
                break
    except asyncio.CancelledError:
        # The caller gave up on the job: stop its invocations where the runtime can.
        with contextlib.suppress(Exception):
            await target.cancel(job)
        raise
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - start
    if failed is not None:
        await target.cancel(job)
        raise JobFailedError(job, failed, [done[r] for r in sorted(done)], len(payloads))
    return [done[r] for r in range(len(payloads))], wall


async def _root_cause(
    first: RankResult, tasks: list[asyncio.Task[RankResult]], done: dict[int, RankResult]
) -> RankResult:
    """The failure to name: ``first``, unless it is only a consequence of another rank's.

    A rank whose peer died fails with a ``ChannelError`` (or is cancelled with its job),
    and its answer may overtake the answer of the rank that really failed. Then wait up to
    ``ROOT_CAUSE_WAIT_S`` for a failure of another kind and name that one instead.
    """

    def primary() -> RankResult | None:
        for r in sorted(done.values(), key=lambda r: r.rank):
            if not r.ok and r.error_type not in SECONDARY_ERRORS:
                return r
        return None

    if first.error_type not in SECONDARY_ERRORS:
        return first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ROOT_CAUSE_WAIT_S
    pending = {t for t in tasks if not t.done()}
    while (found := primary()) is None and pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
    return found or first


# -- command line --
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi invoke``."""
    parser.add_argument("-n", "--size", type=int, required=True, help="number of functions")
    parser.add_argument(
        "--payload",
        help="JSON file with the user's payload sent to every rank ('-' reads stdin)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--url",
        action="append",
        help="function runtime URL (afmi serve: http://host:port); repeat to spread ranks",
    )
    where.add_argument("--lambda", dest="function", help="AWS Lambda function name or ARN")
    parser.add_argument(
        "--endpoint-url", help="Lambda Invoke API endpoint (default: AWS); with --lambda"
    )
    parser.add_argument("--region", help="AWS region; with --lambda")
    parser.add_argument("--channel", help="local, direct, redis or s3 (default: payload/config)")
    parser.add_argument("--config", help="afmi config file (.json/.toml) sent to every rank")
    parser.add_argument("--job", help="job name (default: a fresh unique name)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each invocation may run"
    )
    parser.add_argument(
        "--rendezvous",
        help="host:port of a rendezvous service reachable from the functions (direct channel)",
    )
    parser.add_argument(
        "--rendezvous-host",
        default="127.0.0.1",
        help="address of the rendezvous service the invoker starts when --rendezvous is unset",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _read_payload(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ArgumentError(f"cannot read payload file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ArgumentError(f"payload file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"payload file {path} must hold a JSON object")
    return data


def _target(args: argparse.Namespace) -> Target:
    if args.function:
        return LambdaTarget(args.function, endpoint_url=args.endpoint_url, region=args.region)
    if args.endpoint_url or args.region:
        raise ArgumentError("--endpoint-url and --region go with --lambda, not --url")
    return HttpTarget(*args.url)


def _print_result(result: JobResult, out: Any) -> None:
    print(f"job {result.job}: {result.size} ranks over {result.channel}, all ok", file=out)
    for r in result.ranks:
        text = to_json(r.result)
        if len(text) > 120:
            text = text[:117] + "..."
        ran = f"{r.handler_duration_s:.4f}" if r.handler_duration_s is not None else "?"
        print(
            f"  rank {r.rank}: {ran} s in handler, {r.duration_s:.4f} s round trip: {text}",
            file=out,
        )
    print(result.cost.format(), file=out)


def main(args: argparse.Namespace) -> int:
    """Run the job; exit 0 when every rank succeeded, 1 when one failed, 2 for bad input."""
    try:
        payload = _read_payload(args.payload)
        config: Any = args.config
        target = _target(args)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            result = runner.run(
                invoke_job(
                    target,
                    args.size,
                    payload,
                    job=args.job,
                    channel=args.channel,
                    config=config,
                    timeout=args.timeout,
                    rendezvous=args.rendezvous,
                    rendezvous_host=args.rendezvous_host,
                )
            )
    except JobFailedError as exc:
        print(f"afmi invoke: {exc}", file=sys.stderr)
        return 1
    except ArgumentError as exc:
        print(f"afmi invoke: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(to_json(result.to_dict()))
    else:
        _print_result(result, sys.stdout)
    return 0
