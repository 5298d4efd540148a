"""Starting ranks: :func:`run_local`, :func:`launch_local` and :func:`connect`."""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from afmi.channels.base import Channel, get_driver
from afmi.comm import Communicator
from afmi.config import Config
from afmi.endpoint import Endpoint
from afmi.errors import ArgumentError, OperationTimeoutError, RankFailedError

__all__ = [
    "channel_names",
    "connect",
    "event_loop_name",
    "launch_local",
    "run_local",
    "new_event_loop",
]

Main = Callable[..., Awaitable[Any]]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (faster sockets), else asyncio's."""
    if event_loop_name() == "asyncio":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def event_loop_name() -> str:
    """Which event loop :func:`new_event_loop` makes: ``"uvloop"`` or ``"asyncio"``.

    The bench records it beside its figures: the two move large messages at
    different speeds (docs/direct.md), so a model calibrated on one describes
    jobs run on that one.
    """
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _auto_channels(config: Config, in_process: bool, env: Mapping[str, str]) -> list[str]:
    names = ["local"] if in_process else []
    for name in ("direct", "redis", "s3"):
        section = getattr(config.channels, name)
        if not section.enabled:
            continue
        if name == "s3" and not section.bucket:
            continue
        if (
            name == "direct"
            and not in_process
            and not (section.rendezvous or env.get("AFMI_RENDEZVOUS"))
        ):
            continue
        try:
            get_driver(name)
        except ArgumentError:
            continue  # driver not built or its dependencies not installed
        names.append(name)
    return names


def channel_names(
    channel: str | Sequence[str] | None,
    config: Config,
    *,
    in_process: bool,
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], bool]:
    """The channels to open for ``channel`` and whether they were chosen automatically.

    ``channel`` is a driver name, several names (a list or a comma-separated
    string) or ``"auto"``: every channel whose driver is installed, that is
    enabled in ``config.channels`` and configured (``s3`` needs a bucket; for
    processes ``direct`` needs a rendezvous address), plus ``local`` in-process.
    The first name is the rank's default channel.
    """
    if channel is None:
        channel = "local" if in_process else "direct"
    if isinstance(channel, str):
        parts = [p.strip() for p in channel.split(",") if p.strip()]
    else:
        parts = list(channel)
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ArgumentError(
            f"channel must be a channel name, a list of names or 'auto', got {channel!r}"
        )
    if parts == ["auto"]:
        return _auto_channels(config, in_process, os.environ if env is None else env), True
    if len(set(parts)) != len(parts):
        raise ArgumentError(f"channel names repeat in {channel!r}")
    return parts, False


async def _open_groups(
    stack: AsyncExitStack, names: list[str], auto: bool, size: int, job: str, cfg: Config
) -> list[dict[str, Channel]]:
    per_rank: list[dict[str, Channel]] = [{} for _ in range(size)]
    for name in names:
        driver = get_driver(name)
        try:
            channels = await stack.enter_async_context(driver.group(size, job, cfg))
        except Exception as exc:
            if not auto or name == "local":
                raise
            warnings.warn(
                f"channel {name!r} skipped by channel='auto': it failed to open ({exc})",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        for rank, ch in enumerate(channels):
            per_rank[rank][driver.name] = ch
    return per_rank


def _check_size(size: Any) -> int:
    if type(size) is not int or size < 1:
        raise ArgumentError(f"size must be a positive int (number of ranks), got {size!r}")
    return size


async def launch_local(
    main: Main,
    size: int,
    *args: Any,
    channel: str | Sequence[str] = "local",
    config: Config | dict[str, Any] | None = None,
    timeout: float | None = None,
    job: str | None = None,
) -> list[Any]:
    """Run ``await main(comm, *args)`` for ranks ``0..size-1`` as tasks of the running loop.

    ``channel`` names one channel, several (a list or ``"local,redis"``) or
    ``"auto"`` (see :func:`channel_names`; channels that fail to open are then
    skipped with a warning). With several channels the model picks one per
    message and per collective call.

    Returns the ranks' results in rank order. If a rank raises, the other ranks
    are cancelled and :class:`~afmi.errors.RankFailedError` naming the first
    failing rank is raised (the rank's own exception is its ``__cause__``).
    ``timeout`` bounds the whole job (seconds; None: no bound).
    """
    size = _check_size(size)
    if not callable(main):
        raise ArgumentError(f"main must be an async function main(comm, ...), got {main!r}")
    cfg = Config.load(config)
    names, auto = channel_names(channel, cfg, in_process=True)
    for name in names:
        get_driver(name)  # unknown or unavailable: a clear error before anything opens
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

    async with AsyncExitStack() as stack:
        per_rank = await _open_groups(stack, names, auto, size, job, cfg)
        endpoints = [Endpoint(r, size, chans, cfg, job=job) for r, chans in enumerate(per_rank)]
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
    channel: str | Sequence[str] = "local",
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
    channel: str | Sequence[str] | None = None,
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
    names, _ = channel_names(
        channel or env.get("AFMI_CHANNEL") or cfg.channel or "direct",
        cfg,
        in_process=False,
        env=env,
    )
    if not names:
        raise ArgumentError(
            "channel='auto' found no configured channel: install and configure direct, "
            "redis or s3 (see docs/model.md)"
        )
    opened: dict[str, Channel] = {}
    try:
        for name in names:
            driver = get_driver(name)
            opened[driver.name] = await driver.connect(rank, size, job, cfg, env)
    except BaseException:
        for ch in opened.values():
            await ch.aclose()
        raise
    endpoint = Endpoint(rank, size, opened, cfg, job=job)
    try:
        yield endpoint.world()
    finally:
        await endpoint.aclose()
