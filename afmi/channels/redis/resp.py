"""A minimal pipelined RESP2 client for the Redis channel's hot path.

redis-py parses every reply into a fresh ``bytes`` object after feeding it
through 64 KiB reads, which caps large values at a few hundred MB/s. The
channel's data path needs only a handful of commands, so it speaks RESP
itself over an :class:`asyncio.BufferedProtocol`:

* any number of coroutines may issue commands on one connection at once;
  replies come back in command order, so each command only appends a *sink*
  to a queue in the same synchronous step that writes it (free pipelining);
* a bulk reply can be received straight into a caller's buffer
  (:meth:`RespConnection.submit_get_into`), so a chunk lands in the final
  message buffer with no intermediate copy (only its header is read into the
  connection's own buffer first);
* values are written as lists of buffers, array data not copied
  (:class:`~afmi.channels.vectored.VectoredWriter`).

Everything else (URL parsing, authentication errors, counters) goes
through redis-py; see :mod:`afmi.channels.redis.channel`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from afmi.channels.vectored import VectoredWriter

__all__ = ["Arg", "Parts", "RespConnection", "RespError", "encode_command"]

_CRLF = b"\r\n"
_SCRATCH = 64 * 1024
#: Bytes read at once when the next reply goes into a caller's buffer: its header
#: ("$1048576\r\n") and the end of the reply before it, and little of the value.
_HEADER_WINDOW = 64


class RespError(Exception):
    """An error reply from the server (``-ERR ...``)."""


@dataclass(slots=True)
class _Sink:
    future: asyncio.Future[Any]
    #: Receive a bulk reply straight into this buffer (its size must match).
    target: memoryview | None = None


#: An argument given as a tuple of parts: one bulk string, the parts back to back.
Parts = tuple[bytes | memoryview, ...]
Arg = bytes | str | int | memoryview | Parts


def encode_command(args: Sequence[Arg]) -> list[Any]:
    """RESP array of bulk strings; large values are kept as separate, uncopied buffers.

    An argument that is a tuple of byte buffers is one bulk string made of them in
    order (a chunk that spans several of a message's buffers), none of them joined.
    """
    out: list[Any] = []
    head = bytearray(b"*%d\r\n" % len(args))
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts = arg if isinstance(arg, tuple) else (arg,)
        head += b"$%d\r\n" % sum(memoryview(part).nbytes for part in parts)
        for part in parts:
            if memoryview(part).nbytes > 4096:
                out.append(bytes(head))
                out.append(part)
                head = bytearray()
            else:
                head += part
        head += _CRLF
    out.append(bytes(head))
    return out


class RespConnection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection to Redis; see the module docstring."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._writer: VectoredWriter | None = None
        self._sinks: collections.deque[_Sink] = collections.deque()
        self._buf = bytearray(_SCRATCH)
        self._start = 0
        self._end = 0
        self._skip = 0
        #: Sink whose bulk reply is being received straight into its target.
        self._filling: _Sink | None = None
        self._pos = 0
        self._closed: Exception | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()

    # -- opening --
    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
    ) -> RespConnection:
        """Connect, authenticate and select ``db`` (bound the call with a timeout)."""
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            cls, host, port, ssl=ssl, server_hostname=host if ssl else None
        )
        try:
            if password is not None:
                auth: list[bytes | str] = ["AUTH", password]
                if username:
                    auth.insert(1, username)
                await proto.command(*auth)
            if db:
                await proto.command("SELECT", db)
        except BaseException:
            proto.close()
            raise
        return proto

    # -- commands --
    def _send(self, args: Sequence[Any], target: memoryview | None = None) -> asyncio.Future[Any]:
        return self.submit_many([args], [target])[0]

    def submit_many(
        self, commands: Sequence[Sequence[Any]], targets: Sequence[memoryview | None] | None = None
    ) -> list[asyncio.Future[Any]]:
        """Write several commands with one system call; return their reply futures.

        ``targets[i]``, when given, receives the bulk reply of command ``i``
        (as in :meth:`submit_get_into`).
        """
        if self._closed is not None:
            raise ConnectionError(f"connection to Redis closed: {self._closed}")
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = []
        buffers: list[Any] = []
        for i, args in enumerate(commands):
            fut: asyncio.Future[Any] = loop.create_future()
            self._sinks.append(_Sink(fut, targets[i] if targets else None))
            futs.append(fut)
            buffers += encode_command(args)
        assert self._writer is not None
        self._writer.writelines(buffers)
        return futs

    async def _wait_writable(self) -> None:
        if not self._can_write.is_set():
            await self._can_write.wait()
            if self._closed is not None:
                raise ConnectionError(f"connection to Redis closed: {self._closed}")

    async def command(self, *args: Arg) -> Any:
        """Run one command and return its reply (bytes, int, list or None)."""
        fut = self._send(args)
        await self._wait_writable()
        return await fut

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run several commands in one write; return their replies in order.

        Replies arrive in command order, so awaiting the last one is enough;
        the first error reply among them is raised.
        """
        futs = self.submit_many(commands)
        await self._wait_writable()
        try:
            await futs[-1]
        except RespError:
            pass  # raised below if it is the first error
        return [f.result() for f in futs]

    def submit(self, *args: Arg) -> asyncio.Future[Any]:
        """Write one command now and return the future of its reply (for pipelining)."""
        return self._send(args)

    def submit_get_into(self, key: bytes | str, target: memoryview, command: str = "GET") -> Any:
        """Write ``GET key`` (or ``GETDEL``) whose value is received straight into ``target``.

        The future resolves to True, or to False if the key does not exist.
        """
        return self._send((command, key), target)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        await self._wait_writable()

    def close(self) -> None:
        """Close the connection; pending commands fail with ConnectionError."""
        if self._transport is not None:
            self._transport.close()
        self._fail(ConnectionError("connection closed by afmi"))

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._closed is not None

    # -- protocol callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._writer = VectoredWriter(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("server closed the connection"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _fail(self, exc: Exception) -> None:
        if self._closed is None:
            self._closed = exc
        self._can_write.set()
        while self._sinks:
            fut = self._sinks.popleft().future
            if not fut.done():
                fut.set_exception(ConnectionError(str(exc) or type(exc).__name__))
        self._filling = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filling is not None:
            assert self._filling.target is not None
            return self._filling.target[self._pos :]
        if self._end == self._start and self._sinks and self._sinks[0].target is not None:
            # Next comes a value for a caller's buffer: read little more than its
            # header, so that the value itself lands in that buffer, not here.
            self._start = self._end = 0
            return memoryview(self._buf)[:_HEADER_WINDOW]
        if self._end == len(self._buf):
            if self._start > 0:
                n = self._end - self._start
                self._buf[:n] = self._buf[self._start : self._end]
                self._start, self._end = 0, n
            else:
                self._buf.extend(bytes(len(self._buf)))
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._filling is not None:
            self._pos += nbytes
            sink = self._filling
            assert sink.target is not None
            if self._pos == sink.target.nbytes:
                self._filling = None
                self._skip = 2
                self._finish(sink, True)
            return
        self._end += nbytes
        try:
            self._parse()
        except ValueError as exc:  # garbage from the server
            self._fail(ConnectionError(f"bad reply from Redis: {exc}"))
            if self._transport is not None:
                self._transport.close()
            return
        if self._start == self._end:
            self._start = self._end = 0

    # -- parsing --
    def _finish(self, sink: _Sink, value: Any) -> None:
        if not sink.future.done():
            if isinstance(value, RespError):
                sink.future.set_exception(value)
            else:
                sink.future.set_result(value)

    def _parse(self) -> None:
        while self._start < self._end:
            if self._skip:
                n = min(self._skip, self._end - self._start)
                self._start += n
                self._skip -= n
                continue
            if not self._sinks:
                raise ValueError("reply without a command")
            sink = self._sinks[0]
            if sink.target is not None:
                if not self._parse_into(sink):
                    return
                continue
            parsed = self._parse_value(self._start)
            if parsed is None:
                return
            value, self._start = parsed
            self._sinks.popleft()
            self._finish(sink, value)

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        idx = self._buf.find(_CRLF, pos, self._end)
        if idx < 0:
            return None
        return bytes(self._buf[pos:idx]), idx + 2

    def _parse_into(self, sink: _Sink) -> bool:
        got = self._line(self._start)
        if got is None:
            return False
        line, pos = got
        assert sink.target is not None
        kind = line[:1]
        if kind == b"-":
            self._start = pos
            self._sinks.popleft()
            self._finish(sink, RespError(line[1:].decode(errors="replace")))
            return True
        if kind != b"$":
            raise ValueError(f"expected a bulk string, got {line[:40]!r}")
        n = int(line[1:])
        self._start = pos
        self._sinks.popleft()
        if n < 0:
            self._finish(sink, False)
            return True
        target = sink.target
        if n != target.nbytes:
            raise ValueError(f"value of {n} bytes where {target.nbytes} were expected")
        avail = min(n, self._end - self._start)
        target[:avail] = memoryview(self._buf)[self._start : self._start + avail]
        self._start += avail
        if avail == n:
            self._skip = 2
            self._finish(sink, True)
        else:
            self._filling = sink
            self._pos = avail
        return True

    def _parse_value(self, pos: int) -> tuple[Any, int] | None:
        got = self._line(pos)
        if got is None:
            return None
        line, pos = got
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest, pos
        if kind == b"-":
            return RespError(rest.decode(errors="replace")), pos
        if kind == b":":
            return int(rest), pos
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None, pos
            if self._end - pos < n + 2:
                return None
            return bytes(self._buf[pos : pos + n]), pos + n + 2
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                parsed = self._parse_value(pos)
                if parsed is None:
                    return None
                item, pos = parsed
                items.append(item)
            return items, pos
        raise ValueError(f"unknown reply type {line[:40]!r}")
