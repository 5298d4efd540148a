"""The in-memory channel: ranks are tasks of one event loop.

This is afmi's embedded default: no server, no sockets. A send copies the
message's buffers once (so the sender may reuse its arrays at once) and hands
the copy to the receiver's matching engine directly. When the receiver has
already posted a receive with buffers of its own for the message (see
:meth:`afmi.wire.matching.MatchingEngine.destination`), that one copy goes
straight into them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from afmi.channels.base import Channel
from afmi.errors import ArgumentError, ChannelError
from afmi.wire.message import Message

if TYPE_CHECKING:
    from afmi.config import Config

__all__ = ["LocalChannel", "LocalDriver", "LocalHub"]


#: Messages smaller than this are never copied into a posted receive's buffers.
_LAND_MIN_BYTES = 64 * 1024


def _bytes_view(b: Any) -> memoryview:
    mv = memoryview(b)
    return mv if mv.ndim == 1 and mv.format == "B" else mv.cast("B")


class LocalHub:
    """Connects the :class:`LocalChannel` objects of one job."""

    def __init__(self, size: int, job: str = "") -> None:
        self.job = job
        self.size = size
        self.channels: list[LocalChannel] = [LocalChannel(self, r, size) for r in range(size)]
        self.claimed: set[int] = set()

    def all_closed(self) -> bool:
        """True once every rank's channel is closed."""
        return all(ch._closed for ch in self.channels)


#: Hubs of jobs whose ranks join one by one with ``afmi.connect(channel="local")``.
_JOINABLE: dict[str, LocalHub] = {}


class LocalChannel(Channel):
    """One rank's end of an in-process channel."""

    name = "local"
    #: A message comes from another task of the same event loop: the loop cannot block
    #: in the kernel while that task has work, so polling would only add turns (in one
    #: loop, 8-rank allreduces of 8 B took 12-25 % less time without it).
    spin = False

    def __init__(self, hub: LocalHub, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self._hub = hub
        self._closed = False
        self._backlog: list[Message] = []
        self.messages_sent = 0
        self.bytes_sent = 0
        #: Messages copied straight into a posted receive's own buffers.
        self.received_in_place = 0

    def start(self, on_message: Any, on_failure: Any) -> None:
        super().start(on_message, on_failure)
        backlog, self._backlog = self._backlog, []
        for msg in backlog:
            on_message(msg)

    def _land(self, msg: Message) -> Message | None:
        """Copy ``msg`` straight into the buffers of the receive it will match, if posted."""
        claim = self.destination
        if claim is None or self._on_message is None or not msg.buffers:
            return None
        lens = [b.nbytes if hasattr(b, "nbytes") else len(b) for b in msg.buffers]
        if sum(lens) < _LAND_MIN_BYTES:
            return None  # small: the plain copy costs less than looking for a place
        ticket = claim(msg.context, msg.source, msg.tag, msg.seq, lens)
        if ticket is None:
            return None
        for dst, src in zip(ticket.into, msg.buffers):
            dst[:] = _bytes_view(src)
        self.received_in_place += 1
        landed = Message(msg.context, msg.source, msg.tag, msg.seq, msg.header, list(ticket.into))
        landed.landed = ticket
        return landed

    def _arrive(self, msg: Message) -> None:
        if self._closed:
            raise ChannelError(f"rank {self.rank} has closed its local channel", peer=self.rank)
        if self._on_message is None:
            self._backlog.append(msg)
        else:
            self._on_message(msg)

    async def send(self, dest: int, msg: Message) -> None:
        if self._closed:
            raise ChannelError("send on a closed local channel", peer=dest)
        target = self._hub.channels[dest]
        copy = target._land(msg) or msg.detached(target.new_buffer)
        target._arrive(copy)
        self.messages_sent += 1
        self.bytes_sent += copy.nbytes
        # Yield so a rank that sends in a tight loop does not starve the others.
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self._closed = True
        self._backlog.clear()
        hub = self._hub
        if _JOINABLE.get(hub.job) is hub and hub.all_closed():
            del _JOINABLE[hub.job]

    def stats(self) -> dict[str, Any]:
        return {
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
            "received_in_place": self.received_in_place,
        }


class LocalDriver:
    """Driver for ``channel="local"``."""

    name = "local"

    @asynccontextmanager
    async def group(self, size: int, job: str, config: Config) -> AsyncIterator[list[Channel]]:
        hub = LocalHub(size)
        try:
            yield list(hub.channels)
        finally:
            for ch in hub.channels:
                await ch.aclose()

    async def connect(
        self, rank: int, size: int, job: str, config: Config, env: Mapping[str, str]
    ) -> Channel:
        """Join rank ``rank`` of ``job`` to the other ranks of that job *in this process*.

        This lets independent tasks of one process (for example concurrent
        invocations hosted by one function runtime) form a job without any
        server. Ranks in other processes cannot be reached this way.
        """
        hub = _JOINABLE.get(job)
        if hub is None or hub.all_closed():
            hub = _JOINABLE[job] = LocalHub(size, job)
        if hub.size != size:
            raise ArgumentError(
                f"job {job!r} already has size {hub.size} in this process, not {size}; the "
                "local channel only links ranks inside one process"
            )
        if rank in hub.claimed:
            raise ArgumentError(f"rank {rank} of job {job!r} is already connected in this process")
        hub.claimed.add(rank)
        return hub.channels[rank]
