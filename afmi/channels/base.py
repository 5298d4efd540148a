"""The channel protocol every driver implements, and the driver registry.

A *channel* moves :class:`~afmi.wire.message.Message` objects between the
ranks of one job. It knows nothing about matching, serialization or
collectives: it takes a message for a destination world rank and hands
arriving messages to the callback given to :meth:`Channel.start`.

A *driver* builds channels: :meth:`ChannelDriver.group` opens the channels of
all ranks of a job inside one process (``afmi.run_local``), and
:meth:`ChannelDriver.connect` opens one rank's channel in its own process
(``afmi.connect``). Drivers are found by name through :func:`get_driver`.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from afmi.errors import ArgumentError, ChannelError
from afmi.wire.message import Message

if TYPE_CHECKING:
    from afmi.config import Config
    from afmi.wire.pool import BufferPool

__all__ = [
    "Channel",
    "ChannelDriver",
    "MessageCallback",
    "DestinationCallback",
    "FailureCallback",
    "available_drivers",
    "get_driver",
    "open_group",
    "register_driver",
]

MessageCallback = Callable[[Message], None]
FailureCallback = Callable[[ChannelError], None]
#: ``(context, source, tag, seq, buffer lengths) -> ticket or None``; see
#: :attr:`Channel.destination`.
DestinationCallback = Callable[[int, int, int, int, list[int]], Any]


class Channel(abc.ABC):
    """One rank's end of a channel.

    Contract (checked by :mod:`afmi.testing.conformance`):

    * :meth:`send` completes once the channel has *taken* the message: after
      it returns, the caller may modify the arrays the message refers to.
      It never waits for the receiver to post a receive.
    * Messages from one sender to one receiver arrive in send order.
    * Arriving messages are passed to ``on_message`` from the event loop's
      thread, in arrival order; the channel never blocks on the callback.
    * A broken link or dead peer is reported once through ``on_failure``
      with a :class:`~afmi.errors.ChannelError` naming the peer.
    * :meth:`aclose` releases every socket, key, object and task; it is
      idempotent and safe to call after a failure.
    """

    #: Driver name ("local", "direct", "redis", "s3").
    name: ClassVar[str] = "?"
    #: Whether a waiting receive should poll the event loop for ``Config.spin`` first.
    #: Storage channels say no: their messages come a server round trip later at the
    #: earliest, and polling only takes CPU from the server or the peers that share it;
    #: so does ``local``, whose messages come from tasks of the same event loop.
    spin: ClassVar[bool] = True

    def __init__(self, rank: int, size: int) -> None:
        self.rank = rank
        self.size = size
        self._on_message: MessageCallback | None = None
        self._on_failure: FailureCallback | None = None
        #: Set by the endpoint while it has receives with buffers of their own pending
        #: (None otherwise): asked with a large message's header fields, it returns
        #: the posted receive (a :class:`~afmi.wire.matching.Ticket`) whose ``into``
        #: buffers the payload may be received straight into, or None. A channel that
        #: uses it sets ``message.landed`` to that ticket. Optional for channels.
        self.destination: DestinationCallback | None = None
        #: Set by the endpoint: memory for large received payloads, reused once nothing
        #: refers to a message's arrays (:mod:`afmi.wire.pool`); None: fresh memory.
        self.pool: BufferPool | None = None

    def new_buffer(self, nbytes: int) -> Any:
        """A writable ``uint8`` array of ``nbytes`` for a received payload: from
        :attr:`pool` when there is one, else fresh (``numpy.empty``: no zero-filling)."""
        pool = self.pool
        return pool.take(nbytes) if pool is not None else np.empty(nbytes, np.uint8)

    def start(self, on_message: MessageCallback, on_failure: FailureCallback) -> None:
        """Begin delivering arriving messages to ``on_message``."""
        self._on_message = on_message
        self._on_failure = on_failure

    def awaited(self) -> None:  # noqa: B027 - optional hook, a no-op unless overridden
        """A receive of this rank has begun to wait for a message not yet arrived.

        Optional, for channels that poll: the S3 channel cuts a backed-off poll
        interval short. Called from the event loop's thread; must not block.
        The endpoint calls it only on channels that override it.
        """

    @abc.abstractmethod
    async def send(self, dest: int, msg: Message) -> None:
        """Send ``msg`` to world rank ``dest`` (never to self)."""

    async def publish(self, dests: Sequence[int], msgs: Sequence[Message]) -> None:
        """Send ``msgs[i]`` to ``dests[i]``; the messages share one payload.

        Optional: storage channels override it to store the payload once and
        let every destination read it (one upload read by many). The default
        sends the messages one by one, concurrently.
        """
        await asyncio.gather(*(self.send(d, m) for d, m in zip(dests, msgs)))

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release every resource held by this channel."""

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks and cost reports (messages, bytes, requests)."""
        return {}


class ChannelDriver(Protocol):
    """Builds channels of one kind; see the module docstring."""

    name: str

    def group(
        self, size: int, job: str, config: Config
    ) -> AbstractAsyncContextManager[list[Channel]]:
        """Open the channels of ranks 0..size-1 in this process; close them on exit."""
        ...

    async def connect(
        self, rank: int, size: int, job: str, config: Config, env: Mapping[str, str]
    ) -> Channel:
        """Open the channel of one rank of a job spread over processes or functions."""
        ...


@asynccontextmanager
async def open_group(
    size: int, open_rank: Callable[[int], Awaitable[Channel]]
) -> AsyncIterator[list[Channel]]:
    """Open the channels of ranks ``0..size-1`` concurrently; close them all on exit.

    If any rank fails to open, the ones that did open are closed and the first
    error is raised. Drivers use this to implement :meth:`ChannelDriver.group`.
    """
    opened = await asyncio.gather(*(open_rank(r) for r in range(size)), return_exceptions=True)
    channels = [c for c in opened if isinstance(c, Channel)]
    errors = [e for e in opened if isinstance(e, BaseException)]
    try:
        if errors:
            raise errors[0]
        yield channels
    finally:
        for ch in channels:
            await ch.aclose()


_BUILTIN: dict[str, str] = {
    "local": "afmi.channels.local:LocalDriver",
    "direct": "afmi.channels.direct:DirectDriver",
    "redis": "afmi.channels.redis:RedisDriver",
    "s3": "afmi.channels.s3:S3Driver",
}
_REGISTERED: dict[str, ChannelDriver] = {}


def register_driver(driver: ChannelDriver) -> None:
    """Make ``driver`` available under ``driver.name`` (for third-party channels)."""
    _REGISTERED[driver.name] = driver


def available_drivers() -> list[str]:
    """Names accepted by :func:`get_driver`."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_driver(name: str) -> ChannelDriver:
    """Return the driver called ``name``.

    Raises:
        ArgumentError: no such driver; the message lists the available ones.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None:
        raise ArgumentError(
            f"unknown channel {name!r}; choose one of {', '.join(available_drivers())}"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ArgumentError(
            f"channel {name!r} is not available: {exc}. Install afmi[{name}] for its dependencies"
        ) from exc
    driver: ChannelDriver = getattr(module, attr)()
    _REGISTERED[name] = driver
    return driver
