"""One rank's connection to its job: channels in, matching engine, channels out.

An :class:`Endpoint` exists once per rank (per process or per simulated
rank). Every :class:`~afmi.comm.Communicator` of that rank shares it. It
serializes outgoing payloads, stamps sequence numbers, picks a channel,
feeds arriving messages to the :class:`~afmi.wire.matching.MatchingEngine`
and completes the futures of matched receives.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from afmi.channels.base import Channel
from afmi.config import Config
from afmi.errors import ChannelError
from afmi.wire.matching import MatchingEngine, Ticket
from afmi.wire.message import Message, copy_buffers
from afmi.wire.pool import shared_pool
from afmi.wire.serialize import decode, encode

if TYPE_CHECKING:
    from afmi.comm import Communicator

__all__ = ["Endpoint", "WORLD_CONTEXT", "on_channel", "pinned_channel", "spin_until"]

T = TypeVar("T")

_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)

#: Context id of the world communicator (its collectives use ``WORLD_CONTEXT + 1``).
WORLD_CONTEXT = 0

#: Chooses the channel for a message: ``(dest, nbytes) -> channel name``.
ChannelSelector = Callable[[int, int], str]

#: Channel pinned for the running operation (a collective runs under its chosen channel).
_PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("afmi_channel", default=None)


def pinned_channel() -> str | None:
    """The channel pinned for the operation running in this task, if any."""
    return _PINNED.get()


async def on_channel(channel: str | None, start: Callable[[], Awaitable[T]]) -> T:
    """Await ``start()`` with every message it sends pinned to ``channel`` (None: no pin).

    ``start`` is called only once the pin is set (so nothing is created if this
    coroutine is closed unstarted). Tasks it starts inherit the pin (asyncio
    copies the context into new tasks).
    """
    if channel is None:
        return await start()
    token = _PINNED.set(channel)
    try:
        return await start()
    finally:
        _PINNED.reset(token)


async def spin_until(fut: asyncio.Future[Any], seconds: float) -> None:
    """Keep the event loop turning (``sleep(0)``) until ``fut`` is done or ``seconds`` pass.

    The progress loop of a waiting receive (see :meth:`Endpoint.spin`): the
    loop polls its sockets on every turn instead of blocking in the kernel, and
    each turn ends with ``os.sched_yield()`` so that a busy machine's other
    processes (perhaps the peer being waited for) still get the core.
    """
    if not seconds or fut.done():
        return
    deadline = time.perf_counter() + seconds
    while not fut.done() and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0)  # polling on purpose
        # Let any other runnable process have the core first: when the machine is
        # oversubscribed, a spinner that keeps its core can hold off the very peer
        # it waits for until the scheduler's next tick (Open MPI yields the same way).
        _sched_yield()


def _own_buffers(msg: Message) -> Message:
    """Give a message received into a receive's own buffers (``landed``) a private copy.

    Called when that receive went away: the message goes back to the queue for
    another receive, and must not keep pointing at memory its caller reuses.
    """
    if msg.landed is not None:
        msg.buffers = copy_buffers(msg.buffers)
        msg.landed = None
    return msg


class Endpoint:
    """A rank's messaging core; see the module docstring."""

    def __init__(
        self,
        rank: int,
        size: int,
        channels: dict[str, Channel],
        config: Config,
        job: str = "job",
        default_channel: str | None = None,
    ) -> None:
        if not channels:
            raise ValueError("an endpoint needs at least one channel")
        self.rank = rank
        self.size = size
        self.job = job
        self.config = config
        self.channels = channels
        spins = any(getattr(ch, "spin", True) for ch in channels.values())
        #: Seconds a waiting receive polls: Config.spin, unless every channel says
        #: polling for its messages does not pay (storage channels).
        self.spin_seconds = config.spin if spins else 0.0
        self._default_channel = default_channel or next(iter(channels))
        self.engine = MatchingEngine()
        #: Next free context id; communicators agree on new ids with a MAX allreduce.
        self.next_context = WORLD_CONTEXT + 2
        self._send_seq: dict[tuple[int, int], int] = {}
        self._failure: ChannelError | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.selector: ChannelSelector | None = None
        if len(channels) > 1:
            from afmi.model.runtime import MessageSelector

            self.selector = MessageSelector(sorted(channels), config)
        #: Receives with buffers of their own that may still be pending; while there
        #: are none, channels are not asked for a destination (no cost per message).
        self._into_pending = 0
        #: Channels told when a receive begins to wait (those that override ``awaited``).
        self._pollers = [ch for ch in channels.values() if type(ch).awaited is not Channel.awaited]
        #: Memory for large received payloads, shared by the process (afmi.wire.pool).
        self.pool = pool = shared_pool(config.recv_pool_bytes)
        for ch in channels.values():
            ch.pool = pool
            ch.start(self._on_message, self._on_failure)

    @property
    def default_channel(self) -> str:
        """The channel pinned for the running operation, else this rank's first channel."""
        return _PINNED.get() or self._default_channel

    @default_channel.setter
    def default_channel(self, name: str) -> None:
        self.check_channel(name)
        self._default_channel = name

    def check_channel(self, name: Any) -> str:
        """Return ``name`` if this endpoint has that channel, else raise ArgumentError."""
        if name not in self.channels:
            from afmi.errors import ArgumentError

            raise ArgumentError(
                f"channel {name!r} is not open on rank {self.rank}; open channels: "
                f"{', '.join(sorted(self.channels))} (open more with channel=[...] or 'auto')"
            )
        return str(name)

    # -- communicators --
    def world(self, name: str = "world") -> Communicator:
        """The communicator of all ranks of the job."""
        from afmi.comm import Communicator

        return Communicator(self, list(range(self.size)), WORLD_CONTEXT, name=name)

    # -- sending --
    def prepare(self, dest: int, context: int, tag: int, obj: Any) -> Message:
        """Serialize ``obj`` and stamp the next sequence number for ``(context, dest)``.

        Raises :class:`~afmi.errors.PayloadTypeError` at once for unsupported payloads.
        """
        header, buffers = encode(obj, allow_pickle=self.config.pickle)
        return self.stamp(dest, context, tag, header, buffers)

    def stamp(
        self, dest: int, context: int, tag: int, header: bytes, buffers: list[Any]
    ) -> Message:
        """Build a message from an encoded payload, with the next sequence number."""
        key = (context, dest)
        seq = self._send_seq.get(key, 0)
        self._send_seq[key] = seq + 1
        return Message(context, self.rank, tag, seq, header, buffers)

    async def transmit(self, dest: int, msg: Message, channel: str | None = None) -> None:
        """Hand ``msg`` to a channel (or to this rank's own engine when ``dest`` is self)."""
        self.check_alive()
        if dest == self.rank:
            self._on_message(msg.detached(self.pool.take if self.pool is not None else None))
            await asyncio.sleep(0)
            return
        name = channel or _PINNED.get()
        if name is None:
            if self.selector is not None:
                name = self.selector(dest, msg.nbytes)
            else:
                name = self._default_channel
        ch = self.channels.get(name)
        if ch is None:
            self.check_channel(name)
        assert ch is not None
        await ch.send(dest, msg)

    # -- receiving --
    def post(
        self, context: int, source: int, tag: int, into: list[memoryview] | None = None
    ) -> Ticket:
        """Post a receive; its ``waiter`` is a future resolved with the matched Message.

        ``into``: writable byte views a channel may receive the payload's buffers
        straight into (``message.landed is ticket`` tells that it did).
        """
        self.check_alive()
        loop = asyncio.get_running_loop()
        ticket = self.engine.post(context, source, tag, into)
        fut: asyncio.Future[Message] = loop.create_future()
        ticket.waiter = fut
        if ticket.message is not None:
            fut.set_result(ticket.message)
        else:
            fut.add_done_callback(functools.partial(self._waiter_done, ticket=ticket))
            for ch in self._pollers:
                ch.awaited()
            if into is not None:
                self._into_pending += 1
                if self._into_pending == 1:
                    for ch in self.channels.values():
                        ch.destination = self._destination
                fut.add_done_callback(self._into_done)
        return ticket

    def _into_done(self, fut: asyncio.Future[Message]) -> None:
        self._into_pending -= 1
        if not self._into_pending:
            for ch in self.channels.values():
                ch.destination = None

    async def arrival(self, ticket: Ticket) -> Message:
        """Wait for a posted receive's message: :meth:`spin`, then block on its future."""
        await self.spin(ticket)
        fut = ticket.waiter
        assert isinstance(fut, asyncio.Future)
        msg: Message = await fut
        return msg

    async def spin(self, ticket: Ticket) -> None:
        """Keep the event loop polling until ``ticket`` matches or ``Config.spin`` passes.

        For up to ``Config.spin`` seconds the loop keeps polling (``sleep(0)``)
        instead of blocking in the kernel, as MPI libraries poll for progress: on
        virtual machines a thread that blocks pays tens of microseconds to be woken.
        Not when every channel is a storage channel (:attr:`Channel.spin` false).
        Other tasks keep running meanwhile. Returns early once the ticket's future is
        done. Cancellation withdraws the receive at once (a message that had already
        matched stays in the ticket's future).
        """
        fut = ticket.waiter
        assert isinstance(fut, asyncio.Future)
        try:
            await spin_until(fut, self.spin_seconds)
        except BaseException:
            if not fut.done():
                self.engine.cancel(ticket)  # withdraw now, not one loop turn later
                fut.cancel()
            raise

    def _waiter_done(self, fut: asyncio.Future[Message], *, ticket: Ticket) -> None:
        if fut.cancelled():
            self.engine.cancel(ticket)

    def give_back(self, msg: Message) -> None:
        """Return a matched message whose receiver went away (cancellation)."""
        self._complete(self.engine.requeue(_own_buffers(msg)))

    def decode(self, msg: Message) -> Any:
        """Rebuild the payload of a received message."""
        return decode(msg.header, msg.buffers, allow_pickle=self.config.pickle)

    def _destination(
        self, context: int, source: int, tag: int, seq: int, lens: list[int]
    ) -> Ticket | None:
        """The posted receive whose buffers an arriving message can be received into."""
        ticket = self.engine.destination(context, source, tag, seq)
        if ticket is None or ticket.into is None or len(ticket.into) != len(lens):
            return None
        for view, n in zip(ticket.into, lens):
            if view.nbytes != n:
                return None
        return ticket

    def _on_message(self, msg: Message) -> None:
        landed = msg.landed
        if landed is not None and (landed.cancelled or landed.message is not None):
            _own_buffers(msg)  # its receive went away while the data was landing
        self._complete(self.engine.deliver(msg))

    def _complete(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            fut = ticket.waiter
            assert isinstance(fut, asyncio.Future) and ticket.message is not None
            if fut.done():  # cancelled between match and delivery: keep the message
                self._complete(self.engine.requeue(_own_buffers(ticket.message)))
            else:
                fut.set_result(ticket.message)

    # -- failure --
    def _on_failure(self, error: ChannelError) -> None:
        if self._failure is not None or self._closed:
            return
        self._failure = error
        for ticket in self.engine.all_posted():
            self.engine.cancel(ticket)
            fut = ticket.waiter
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(error)
        for task in list(self._tasks):
            task.cancel(f"channel failure: {error}")

    @property
    def failure(self) -> ChannelError | None:
        """The channel error that broke this endpoint, if any."""
        return self._failure

    def check_alive(self) -> None:
        """Raise the recorded channel failure, or an error if the endpoint is closed."""
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ChannelError(f"rank {self.rank}: the communicator is closed")

    # -- background work --
    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task owned by this endpoint (cancelled on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is not None:
            task.exception()  # mark retrieved: the failure is reported elsewhere

    async def aclose(self) -> None:
        """Cancel background work and close every channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for ticket in self.engine.all_posted():
            self.engine.cancel(ticket)
            fut = ticket.waiter
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.cancel()
        for ch in self.channels.values():
            await ch.aclose()
