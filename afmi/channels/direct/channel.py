"""The direct channel: a full mesh of authenticated TCP links between the ranks.

:meth:`DirectChannel.open` registers with the rendezvous service, learns the
peers' endpoints and forms one link per peer pair, in one of three modes
(``channels.direct.mode``):

* ``listen``: every rank listens; the *lower* rank of each pair dials the
  higher one, so there is exactly one connection per pair and nobody waits
  for a connection that the other side is also waiting for.
* ``punch``: for ranks behind NAT. Each rank binds one port (with
  ``SO_REUSEADDR``/``SO_REUSEPORT``) and reaches the service from it; the
  service records the address it sees and orders both sides of every pair to
  connect to each other at the same moment from that port (TCP simultaneous
  open: both connect, neither accepts). A pair without a link after
  ``punch_timeout`` falls back to the relay (when ``relay`` is true).
* ``relay``: every pair talks through the service, which splices the two
  connections byte for byte.

Whatever the mode, a link runs the same HMAC handshake and framing
(:mod:`afmi.channels.direct.link`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from afmi.channels.base import Channel, FailureCallback, MessageCallback
from afmi.channels.direct.link import Link
from afmi.config import DirectConfig
from afmi.errors import ChannelError
from afmi.rendezvous.client import RendezvousSession, open_relay
from afmi.rendezvous.protocol import RendezvousError
from afmi.wire.frame import encode_frame
from afmi.wire.message import Message

__all__ = ["DirectChannel"]


def _reusable_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def punch(local: tuple[str, int], remote: tuple[str, int], deadline: float) -> socket.socket:
    """Connect from ``local`` to ``remote`` again and again until it works (blocking).

    Both peers run this at once, so their SYNs cross and TCP's simultaneous
    open joins them without either side listening. A refused attempt (the
    peer's SYN was not out yet) is retried at once with a fresh socket bound
    to the same port.

    Raises:
        TimeoutError: no connection before ``deadline`` (``time.monotonic()``).
    """
    last: OSError | None = None
    while time.monotonic() < deadline:
        sock = _reusable_socket(*local)
        sock.settimeout(max(0.001, min(0.5, deadline - time.monotonic())))
        try:
            sock.connect(remote)
        except OSError as exc:
            sock.close()
            last = exc
            time.sleep(0)
            continue
        sock.setblocking(False)
        return sock
    raise TimeoutError(f"no simultaneous open with {remote} ({last})")


class DirectChannel(Channel):
    """One rank's end of the direct TCP channel; open it with :meth:`open`."""

    name = "direct"

    def __init__(self, rank: int, size: int, job: str, token: str, config: DirectConfig) -> None:
        super().__init__(rank, size)
        self.job = job
        self.token = token
        self.config = config
        self._links: dict[int, Link] = {}
        self._accepting: dict[int, asyncio.Future[Link]] = {}
        self._handshaking: set[Link] = set()
        self._backlog: list[Message] = []
        self._failure: ChannelError | None = None
        self._reported = False
        self._closing = False
        self._closed = False
        self._server: asyncio.Server | None = None
        self._session: RendezvousSession | None = None
        self._punch_sock: socket.socket | None = None
        self._punch_port = 0
        self.messages_sent = 0
        self.bytes_sent = 0
        #: Large messages received straight into a posted receive's own buffers.
        self.received_in_place = 0

    # -- opening --
    @classmethod
    async def open(
        cls, rank: int, size: int, job: str, token: str, address: str, config: DirectConfig
    ) -> DirectChannel:
        """Register with the service at ``address`` and link to every other rank.

        Raises:
            ChannelError: the service refused or is unreachable, or the links did not
                all form within ``config.connect_timeout``.
        """
        ch = cls(rank, size, job, token, config)
        try:
            async with asyncio.timeout(config.connect_timeout):
                await ch._establish(address)
        except TimeoutError:
            missing = sorted(set(range(size)) - set(ch._links) - {rank})
            await ch.aclose()
            raise ChannelError(
                f"rank {rank} of job {job!r}: no link to ranks {missing} within "
                f"{config.connect_timeout} s (are all {size} ranks started with the same "
                f"rendezvous address and token?)"
            ) from None
        except RendezvousError as exc:
            await ch.aclose()
            raise ChannelError(f"rank {rank} of job {job!r}: {exc}") from None
        except BaseException:
            await ch.aclose()
            raise
        return ch

    async def _establish(self, address: str) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        sock = None
        host, port = cfg.advertise_host or cfg.listen_host, 0
        if cfg.mode == "listen":
            for r in range(self.rank):
                self._accepting[r] = loop.create_future()
            self._server = await loop.create_server(
                self._accept, cfg.listen_host, 0, reuse_address=True
            )
            port = self._server.sockets[0].getsockname()[1]
        elif cfg.mode == "punch":
            sock = self._punch_sock = _reusable_socket(cfg.listen_host, 0)
            sock.setblocking(False)
            self._punch_port = sock.getsockname()[1]
        self._session = await RendezvousSession.open(
            address,
            job=self.job,
            token=self.token,
            rank=self.rank,
            size=self.size,
            host=host,
            port=port,
            mode=cfg.mode,
            timeout=cfg.connect_timeout,
            sock=sock,
        )
        if cfg.mode == "punch":
            # The session now owns the socket; keep only the port number.
            self._punch_sock = None
        endpoints = await self._session.peers(None)
        if cfg.mode == "listen":
            dials = [self._dial(j, endpoints[j]) for j in range(self.rank + 1, self.size)]
            await asyncio.gather(*dials, *self._accepting.values())
        elif cfg.mode == "punch":
            await self._punch_all(endpoints, address)
        else:
            await asyncio.gather(
                *(self._relay(j, address) for j in range(self.size) if j != self.rank)
            )
        await self._finish_opening()

    async def _finish_opening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._session is not None:
            await self._session.aclose()
            self._session = None

    def _accept(self) -> Link:
        link = Link(self, None, "listen")
        self._handshaking.add(link)
        link.ready.add_done_callback(lambda fut: self._accepted(link, fut))
        return link

    def _accepted(self, link: Link, fut: asyncio.Future[Link]) -> None:
        self._handshaking.discard(link)
        if fut.cancelled() or fut.exception() is not None:
            return  # a stranger or a failed handshake: ignore it
        waiter = self._accepting.get(link.peer) if link.peer is not None else None
        if waiter is None or waiter.done() or self._closing:
            link.abort()  # not a lower rank, or a duplicate link
            return
        assert link.peer is not None
        self._links[link.peer] = link
        waiter.set_result(link)

    async def _connect(self, peer: int, via: str, **kwargs: Any) -> Link:
        loop = asyncio.get_running_loop()
        link = Link(self, peer, via)
        self._handshaking.add(link)
        try:
            await loop.create_connection(lambda: link, **kwargs)
            await link.ready
        except BaseException:
            link.abort()
            raise
        finally:
            self._handshaking.discard(link)
        self._links[peer] = link
        return link

    async def _dial(self, peer: int, endpoint: tuple[str, int]) -> Link:
        try:
            return await self._connect(peer, "listen", host=endpoint[0], port=endpoint[1])
        except OSError as exc:
            raise ChannelError(
                f"rank {self.rank}: cannot connect to rank {peer} at {endpoint[0]}:{endpoint[1]}: "
                f"{exc.strerror or exc}",
                peer=peer,
            ) from None

    async def _relay(self, peer: int, address: str) -> Link:
        sock = await open_relay(
            address,
            job=self.job,
            token=self.token,
            rank=self.rank,
            peer=peer,
            timeout=self.config.connect_timeout,
        )
        try:
            return await self._connect(peer, "relay", sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _punch_all(self, endpoints: list[tuple[str, int]], address: str) -> None:
        assert self._session is not None
        local = (self.config.listen_host, self._punch_port)
        orders = [await self._session.next_punch(None) for _ in range(self.size - 1)]
        deadline = time.monotonic() + self.config.punch_timeout
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=len(orders) or 1) as pool:

            async def one(peer: int, host: str, port: int) -> None:
                try:
                    sock = await loop.run_in_executor(pool, punch, local, (host, port), deadline)
                    try:
                        async with asyncio.timeout(self.config.punch_timeout):
                            await self._connect(peer, "punch", sock=sock)
                        return
                    except BaseException:
                        sock.close()
                        raise
                except (TimeoutError, OSError, ChannelError):
                    if not self.config.relay:
                        raise ChannelError(
                            f"rank {self.rank}: no simultaneous open with rank {peer} within "
                            f"{self.config.punch_timeout} s and channels.direct.relay is off",
                            peer=peer,
                        ) from None
                await self._relay(peer, address)

            await asyncio.gather(*(one(*order) for order in orders))

    # -- Channel API --
    def start(self, on_message: MessageCallback, on_failure: FailureCallback) -> None:
        super().start(on_message, on_failure)
        backlog, self._backlog = self._backlog, []
        for msg in backlog:
            on_message(msg)
        if self._failure is not None:
            self._report()

    def _deliver(self, msg: Message) -> None:
        if self._on_message is None:
            self._backlog.append(msg)
        else:
            self._on_message(msg)

    def _link_lost(self, link: Link, error: ChannelError) -> None:
        if link.bye_received or self._closing or link.peer is None:
            return
        if self._links.get(link.peer) is not link:
            return
        if self._failure is None:
            self._failure = error
            self._report()

    def _report(self) -> None:
        if self._on_failure is not None and not self._reported and self._failure is not None:
            self._reported = True
            self._on_failure(self._failure)

    async def send(self, dest: int, msg: Message) -> None:
        link = self._links.get(dest)
        if link is None or self._closing:
            raise ChannelError(
                f"rank {self.rank}: no direct link to rank {dest}"
                + (" (channel closed)" if self._closing else ""),
                peer=dest,
            )
        if link.bye_received:
            raise ChannelError(f"rank {dest} has closed its channel", peer=dest)
        buffers = msg.buffers
        # Cheaper than Message.nbytes (no memoryview per buffer) on this hot path.
        data = 0
        for b in buffers:
            data += b.nbytes if hasattr(b, "nbytes") else len(b)
        # encoded at the link's current stream offset and written before any await
        frames = encode_frame(msg, link.bytes_sent)
        await link.send(frames, bool(buffers), len(frames[0]) + data)
        self.messages_sent += 1
        self.bytes_sent += len(msg.header) + data

    async def aclose(self) -> None:
        """Say goodbye on every link, wait briefly for the peers, close everything."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        for fut in self._accepting.values():
            if not fut.done():
                fut.cancel()
        links = list(self._links.values()) + list(self._handshaking)
        for link in links:
            link.say_goodbye()
        pending = [link.closed for link in links if not link.closed.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.close_timeout)
            for link in links:
                if not link.closed.done():
                    link.abort()
            if late:
                await asyncio.wait(late, timeout=1.0)
        await self._finish_opening()
        if self._punch_sock is not None:
            self._punch_sock.close()
            self._punch_sock = None
        self._backlog.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
            "received_in_place": self.received_in_place,
            "links": {peer: link.via for peer, link in sorted(self._links.items())},
        }
