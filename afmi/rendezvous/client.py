"""Client side of the rendezvous protocol: a rank's session and relay requests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from afmi.errors import ArgumentError
from afmi.rendezvous.protocol import (
    RendezvousError,
    field,
    pack,
    parse_prelude,
    read_message,
    unpack,
)

__all__ = ["RendezvousSession", "open_relay", "parse_address"]


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into its parts.

    Raises:
        ArgumentError: the address has no valid port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ArgumentError(
            f"rendezvous address {address!r} must look like host:port, e.g. 127.0.0.1:7077"
        )
    return host.strip("[]"), int(port)


def _reply(msg: dict[str, Any], expected: str) -> dict[str, Any]:
    if msg["op"] == "error":
        raise RendezvousError(f"rendezvous service: {msg.get('message')}")
    if msg["op"] != expected:
        raise RendezvousError(f"rendezvous service sent {msg['op']!r}, expected {expected!r}")
    return msg


class RendezvousSession:
    """A rank's registration with the rendezvous service.

    Open it with :meth:`open`; read the job's endpoints with :meth:`peers`
    and, in ``punch`` mode, the service's connect orders with
    :meth:`next_punch`. Close it with :meth:`aclose` once the links are up.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: tuple[str, int]
    ) -> None:
        self._reader = reader
        self._writer = writer
        #: The endpoint the service recorded for this rank.
        self.endpoint = endpoint

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        job: str,
        token: str,
        rank: int,
        size: int,
        host: str,
        port: int,
        mode: str,
        timeout: float,
        sock: socket.socket | None = None,
    ) -> RendezvousSession:
        """Connect (from ``sock`` if given: punch mode), register, and wait for the reply.

        Raises:
            RendezvousError: refused, unreachable or no answer within ``timeout``.
        """
        rhost, rport = parse_address(address)
        try:
            async with asyncio.timeout(timeout):
                if sock is not None:
                    await asyncio.get_running_loop().sock_connect(sock, (rhost, rport))
                    reader, writer = await asyncio.open_connection(sock=sock)
                else:
                    reader, writer = await asyncio.open_connection(rhost, rport)
        except (OSError, TimeoutError) as exc:
            raise RendezvousError(
                f"cannot reach the rendezvous service at {address}: {exc or 'timed out'}"
            ) from None
        try:
            writer.write(
                pack(
                    "register",
                    job=job,
                    token=token,
                    rank=rank,
                    size=size,
                    host=host,
                    port=port,
                    mode=mode,
                )
            )
            msg = _reply(await read_message(reader, timeout), "registered")
            endpoint = field(msg, "endpoint", list)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, (str(endpoint[0]), int(endpoint[1])))

    async def _next(self, expected: str, timeout: float | None) -> dict[str, Any]:
        return _reply(await read_message(self._reader, timeout), expected)

    async def peers(self, timeout: float | None) -> list[tuple[str, int]]:
        """Wait until every rank registered; return all ranks' endpoints in rank order."""
        msg = await self._next("peers", timeout)
        return [(str(h), int(p)) for h, p in field(msg, "endpoints", list)]

    async def next_punch(self, timeout: float | None) -> tuple[int, str, int]:
        """Wait for the next ``punch`` order: ``(peer, host, port)`` to connect to now."""
        msg = await self._next("punch", timeout)
        return field(msg, "peer", int), field(msg, "host", str), field(msg, "port", int)

    async def aclose(self) -> None:
        """Leave the service. Idempotent."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise RendezvousError("the rendezvous service closed the relay connection")
        data += chunk
    return bytes(data)


async def open_relay(
    address: str, *, job: str, token: str, rank: int, peer: int, timeout: float
) -> socket.socket:
    """Ask the service to splice a connection with ``peer``'s; return the spliced socket.

    The returned non-blocking socket carries the peer's bytes and nothing
    else (reads are exact, so no byte after the reply is consumed here).
    """
    rhost, rport = parse_address(address)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in rhost else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (rhost, rport))
            await loop.sock_sendall(sock, pack("relay", job=job, token=token, rank=rank, peer=peer))
            length = parse_prelude(await _recv_exactly(loop, sock, 8))
            _reply(unpack(await _recv_exactly(loop, sock, length)), "relayed")
    except TimeoutError:
        sock.close()
        raise RendezvousError(f"relay to rank {peer} not ready within {timeout} s") from None
    except OSError as exc:
        sock.close()
        raise RendezvousError(f"relay through {address} failed: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock
