"""The in-memory channel: ranks are tasks of one event loop.

This is afmi's embedded default: no server, no sockets. A send copies the
message's buffers once (so the sender may reuse its arrays at once) and hands
the copy to the receiver's matching engine directly.
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


class LocalHub:
    """Connects the :class:`LocalChannel` objects of one job."""

    def __init__(self, size: int) -> None:
        self.channels: list[LocalChannel] = [LocalChannel(self, r, size) for r in range(size)]


class LocalChannel(Channel):
    """One rank's end of an in-process channel."""

    name = "local"

    def __init__(self, hub: LocalHub, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self._hub = hub
        self._closed = False
        self._backlog: list[Message] = []
        self.messages_sent = 0
        self.bytes_sent = 0

    def start(self, on_message: Any, on_failure: Any) -> None:
        super().start(on_message, on_failure)
        backlog, self._backlog = self._backlog, []
        for msg in backlog:
            on_message(msg)

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
        copy = msg.detached()
        self._hub.channels[dest]._arrive(copy)
        self.messages_sent += 1
        self.bytes_sent += copy.nbytes
        # Yield so a rank that sends in a tight loop does not starve the others.
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self._closed = True
        self._backlog.clear()

    def stats(self) -> dict[str, Any]:
        return {"messages_sent": self.messages_sent, "bytes_sent": self.bytes_sent}


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
        raise ArgumentError(
            "the local channel only links ranks inside one process: use afmi.run_local(...) "
            "or choose channel='direct', 'redis' or 's3' for afmi.connect()"
        )
