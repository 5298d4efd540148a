"""Fetching samples from the peer that holds them, over an afmi communicator.

Every rank runs a :class:`PeerService` on its own duplicate of the user's
communicator (``comm.dup()``), so loader traffic never matches the user's
messages. The service has two halves:

* a background server task that receives requests (tag :data:`REQUEST_TAG`,
  payload ``[reply_tag, [sample ids]]``), looks every sample up locally and
  answers with one message holding, per sample, its bytes (a uint8 array,
  sent out of band) or None ("not there yet");
* a client: :meth:`PeerService.fetch` queues a sample for its holder; all
  fetches for the same holder made in the same event-loop turn travel in one
  request (at most ``batch_limit`` ids each).

A holder that does not have a sample yet but is fetching it right now waits
for that fetch up to ``wait`` seconds before answering None.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from afmi.comm import TAG_UB, Communicator
from afmi.errors import AfmiError
from afmi.request import Status
from afmi.wire.matching import ANY_SOURCE

__all__ = ["PeerService", "REQUEST_TAG"]

#: Tag of requests on the loader's communicator; replies use tags above it.
REQUEST_TAG = 1

Lookup = Callable[[int], Awaitable[bytes | None]]
Peek = Callable[[int], bytes | None]


class PeerService:
    """Serve local samples to peers and fetch remote ones; see the module docstring.

    Args:
        comm: the loader's private communicator (a ``dup()`` of the user's).
        lookup: coroutine returning this rank's bytes of a sample, or None.
        peek: optional fast path: the bytes if at hand without awaiting, else None.
        batch_limit: most sample ids per request message.
        timeout: seconds to wait for a reply before treating every sample of
            the request as a miss.
    """

    def __init__(
        self,
        comm: Communicator,
        lookup: Lookup,
        batch_limit: int = 64,
        timeout: float = 30.0,
        peek: Peek | None = None,
    ) -> None:
        self.comm = comm
        self._lookup = lookup
        self._peek = peek
        self.batch_limit = batch_limit
        self.timeout = timeout
        self._server: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flushes: set[asyncio.Task[Any]] = set()
        self._pending: dict[int, list[tuple[int, asyncio.Future[bytes | None]]]] = {}
        self._next_tag = REQUEST_TAG + 1
        #: Request messages sent.
        self.requests_sent = 0
        #: Samples served to peers, and their bytes.
        self.served_samples = 0
        self.served_bytes = 0
        #: Samples peers asked for that were not here.
        self.served_misses = 0

    def start(self) -> None:
        """Start the background server."""
        if self._server is None:
            self._server = asyncio.get_running_loop().create_task(self._serve())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- server --
    async def _serve(self) -> None:
        while True:
            status = Status()
            try:
                msg = await self.comm.recv(
                    source=ANY_SOURCE, tag=REQUEST_TAG, status=status, timeout=math.inf
                )
            except AfmiError:  # the communicator broke: the job reports it elsewhere
                return
            self._spawn(self._answer(status.source, msg))

    async def _answer(self, requester: int, msg: Any) -> None:
        reply_tag, ids = int(msg[0]), [int(s) for s in msg[1]]
        found: list[bytes | None] = [None] * len(ids)
        slow = []
        for i, s in enumerate(ids):  # samples in memory are answered without tasks
            data = self._peek(s) if self._peek is not None else None
            if data is None:
                slow.append(i)
            else:
                found[i] = data
        if slow:
            late = await asyncio.gather(*(self._lookup(ids[i]) for i in slow))
            for i, data in zip(slow, late):
                found[i] = data
        reply: list[Any] = []
        for data in found:
            if data is None:
                self.served_misses += 1
                reply.append(None)
            else:
                self.served_samples += 1
                self.served_bytes += len(data)
                reply.append(np.frombuffer(data, dtype=np.uint8))
        try:
            await self.comm.send(reply, dest=requester, tag=reply_tag, timeout=self.timeout)
        except (AfmiError, OSError):
            pass  # the requester is gone; it has fallen back to the origin

    # -- client --
    def fetch(self, holder: int, sample: int) -> asyncio.Future[bytes | None]:
        """Ask ``holder`` for ``sample``; the future gives its bytes or None (not there)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes | None] = loop.create_future()
        queue = self._pending.get(holder)
        if queue is None:
            queue = self._pending[holder] = []
            flush = self._spawn(self._flush(holder))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        queue.append((sample, fut))
        return fut

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag = tag + 1 if tag < TAG_UB else REQUEST_TAG + 1
        return tag

    async def _flush(self, holder: int) -> None:
        await asyncio.sleep(0)  # let fetches made in this turn join the batch
        batch = self._pending.pop(holder, [])
        chunks = [batch[i : i + self.batch_limit] for i in range(0, len(batch), self.batch_limit)]
        await asyncio.gather(*(self._request(holder, chunk) for chunk in chunks))

    async def _request(
        self, holder: int, chunk: list[tuple[int, asyncio.Future[bytes | None]]]
    ) -> None:
        reply: Any = None
        try:
            tag = self._tag()
            pending = self.comm.irecv(source=holder, tag=tag)
            try:
                self.requests_sent += 1
                await self.comm.send([tag, [s for s, _ in chunk]], holder, REQUEST_TAG)
                reply = await pending.wait(self.timeout)
            finally:
                if not pending.done():
                    pending.cancel()
        except (AfmiError, TimeoutError, OSError):
            reply = None  # the origin is the fallback
        for i, (_, fut) in enumerate(chunk):
            if fut.done():
                continue
            item = reply[i] if reply is not None and i < len(reply) else None
            fut.set_result(None if item is None else bytes(item))

    async def drain(self) -> None:
        """Wait for this rank's outstanding requests to finish."""
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the server and every request task. Idempotent."""
        tasks = list(self._tasks)
        if self._server is not None:
            tasks.append(self._server)
            self._server = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._pending.values():
            for _, fut in queue:
                if not fut.done():
                    fut.cancel()
        self._pending.clear()
