"""Starting ranks: :func:`run_local`, :func:`launch_local` and :func:`connect`."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from afmi.channels.base import get_driver
from afmi.comm import Communicator
from afmi.config import Config
from afmi.endpoint import Endpoint
from afmi.errors import ArgumentError, OperationTimeoutError, RankFailedError

__all__ = ["connect", "launch_local", "run_local", "new_event_loop"]

Main = Callable[..., Awaitable[Any]]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (faster sockets), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def _check_size(size: Any) -> int:
    if type(size) is not int or size < 1:
        raise ArgumentError(f"size must be a positive int (number of ranks), got {size!r}")
    return size


async def launch_local(
    main: Main,
    size: int,
    *args: Any,
    channel: str = "local",
    config: Config | dict[str, Any] | None = None,
    timeout: float | None = None,
    job: str | None = None,
) -> list[Any]:
    """Run ``await main(comm, *args)`` for ranks ``0..size-1`` as tasks of the running loop.

    Returns the ranks' results in rank order. If a rank raises, the other ranks
    are cancelled and :class:`~afmi.errors.RankFailedError` naming the first
    failing rank is raised (the rank's own exception is its ``__cause__``).
    ``timeout`` bounds the whole job (seconds; None: no bound).
    """
    size = _check_size(size)
    if not callable(main):
        raise ArgumentError(f"main must be an async function main(comm, ...), got {main!r}")
    cfg = Config.load(config)
    driver = get_driver(channel)
    job = job or f"local-{uuid.uuid4().hex[:12]}"
    results: list[Any] = [None] * size
    failures: list[RankFailedError] = []

    async def run_rank(comm: Communicator) -> None:
        try:
            results[comm.rank] = await main(comm, *args)
        except Exception as exc:  # noqa: BLE001 - reported with the rank
            err = RankFailedError(comm.rank, exc)
            err.__cause__ = exc
            failures.append(err)
            raise err from exc

    async with driver.group(size, job, cfg) as channels:
        endpoints = [
            Endpoint(r, size, {driver.name: ch}, cfg, job=job) for r, ch in enumerate(channels)
        ]
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                async with asyncio.TaskGroup() as tg:
                    for ep in endpoints:
                        tg.create_task(run_rank(ep.world()))
        except* RankFailedError:
            raise failures[0] from failures[0].error
        except* TimeoutError:
            if scope.expired():
                raise OperationTimeoutError(
                    f"job {job} with {size} ranks did not finish within {timeout} s"
                ) from None
            raise
        finally:
            for ep in endpoints:
                await ep.aclose()
    return results


def run_local(
    main: Main,
    size: int,
    *args: Any,
    channel: str = "local",
    config: Config | dict[str, Any] | None = None,
    timeout: float | None = None,
) -> list[Any]:
    """Run ``main(comm, *args)`` on ``size`` ranks in a new event loop; see :func:`launch_local`.

    Example::

        async def main(comm):
            return await comm.allreduce(comm.rank)

        afmi.run_local(main, 4)   # [6, 6, 6, 6]
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(
            launch_local(main, size, *args, channel=channel, config=config, timeout=timeout)
        )


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ArgumentError(f"environment variable {key}={value!r} is not an integer") from None


@asynccontextmanager
async def connect(
    *,
    rank: int | None = None,
    size: int | None = None,
    job: str | None = None,
    channel: str | None = None,
    config: Config | dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Communicator]:
    """Join a job spread over processes or functions; yields the world communicator.

    Arguments override the environment set by ``afmi run`` (``AFMI_RANK``,
    ``AFMI_SIZE``, ``AFMI_JOB``, ``AFMI_CHANNEL``, ``AFMI_CONFIG`` and the
    channel's own variables). On exit every channel is closed and every
    background task ended.

    Example::

        async with afmi.connect() as comm:
            total = await comm.allreduce(comm.rank)
    """
    env = os.environ if env is None else env
    rank = rank if rank is not None else _env_int(env, "AFMI_RANK")
    size = size if size is not None else _env_int(env, "AFMI_SIZE")
    if rank is None or size is None:
        raise ArgumentError(
            "connect() needs rank and size: pass rank=, size= or start the script with "
            "`afmi run -n N script.py`, which sets AFMI_RANK and AFMI_SIZE"
        )
    size = _check_size(size)
    if type(rank) is not int or not 0 <= rank < size:
        raise ArgumentError(f"rank={rank!r} is out of range for size {size}")
    job = job or env.get("AFMI_JOB")
    if not job:
        raise ArgumentError("connect() needs a job name: pass job= or set AFMI_JOB")
    cfg = Config.load(config) if config is not None else Config.load(env.get("AFMI_CONFIG") or None)
    name = channel or env.get("AFMI_CHANNEL") or cfg.channel or "direct"
    driver = get_driver(name)
    ch = await driver.connect(rank, size, job, cfg, env)
    endpoint = Endpoint(rank, size, {driver.name: ch}, cfg, job=job)
    try:
        yield endpoint.world()
    finally:
        await endpoint.aclose()
