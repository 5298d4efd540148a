"""One TCP link between two ranks: handshake, zero-copy framing, flow control.

A :class:`Link` is an ``asyncio.BufferedProtocol``. Arriving bytes go straight
into the memory :class:`~afmi.wire.frame.FrameDecoder` hands out, so array
data lands in the buffer the received message keeps (no per-message copy).
Outgoing messages go out as ``encode_frame(msg)``'s list of buffers, written
without joining them (:class:`~afmi.channels.vectored.VectoredWriter`).

Handshake (both sides at once, no ordering needed)::

    -> HELLO [job, my rank, my nonce]
    <- HELLO [job, peer rank, peer nonce]
    -> AUTH  HMAC-SHA256(token, "afmi-direct/1" | job | my rank | peer rank | peer nonce)
    <- AUTH  (the same from the peer, over my nonce)

Each side checks the peer's MAC before accepting a single message, so both
ends prove they hold the job token without sending it. A goodbye (``BYE``
followed by a half-close) ends a link gracefully; any other loss of the
connection is a failure of the peer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
from typing import TYPE_CHECKING, Any, cast

import msgpack

from afmi.channels.direct.tcp import tune
from afmi.channels.vectored import VectoredWriter
from afmi.errors import ChannelError
from afmi.wire.frame import (
    KIND_MESSAGE,
    MAGIC,
    PRELUDE_SIZE,
    VERSION,
    ControlFrame,
    FrameDecoder,
    ProtocolError,
    encode_control,
    message_fields,
)
from afmi.wire.message import Message

if TYPE_CHECKING:
    from afmi.channels.direct.channel import DirectChannel

__all__ = ["Link", "HELLO", "AUTH", "BYE"]

HELLO, AUTH, BYE = 1, 2, 3
_unpack_prelude = struct.Struct("<2sBBI").unpack_from
#: Bytes read at once between frames (whole small frames are parsed straight from here):
#: 64 KiB and room for a header, so that the frame of a 64 KiB array arrives in one read
#: and is copied out, not read again into a buffer of its own (in one process 65,536 B
#: took 56 us of CPU a message and 65,000 B 44 us with 64 KiB here; 47 and 41 with this).
_STAGING = 68 * 1024
#: Messages without array buffers skip waiting for the socket to drain until this much is queued.
_SMALL_BACKLOG = 1024 * 1024


def _mac(token: str, job: str, sender: int, receiver: int, nonce: bytes) -> bytes:
    data = b"afmi-direct/1|%s|%d|%d|" % (job.encode(), sender, receiver) + nonce
    return hmac.new(token.encode(), data, hashlib.sha256).digest()


class Link(asyncio.BufferedProtocol):
    """The protocol object of one peer connection; created by :class:`DirectChannel`.

    ``expected_peer`` is the rank this side dialled (None on the accepting
    side, where the HELLO names the peer). ``via`` records how the link
    formed: ``"listen"``, ``"punch"`` or ``"relay"``.
    """

    def __init__(self, owner: DirectChannel, expected_peer: int | None, via: str) -> None:
        loop = asyncio.get_running_loop()
        self.owner = owner
        self.peer = expected_peer
        self.via = via
        self.transport: asyncio.Transport | None = None
        #: Resolved with this link once the handshake succeeded.
        self.ready: asyncio.Future[Link] = loop.create_future()
        #: Resolved when the connection is gone.
        self.closed: asyncio.Future[None] = loop.create_future()
        self.bye_received = False
        self.paused = False
        self._decoder = FrameDecoder(new_buffer=owner.new_buffer)
        self._nonce = secrets.token_bytes(16)
        self._peer_nonce: bytes | None = None
        self._authenticated = False
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._lost: ChannelError | None = None
        self._aborted = False
        self._staging_view = memoryview(bytearray(_STAGING))
        self._staged = False
        self._fill: list[memoryview] | None = None
        self._fill_msg: Message | None = None
        self._fill_index = self._fill_offset = 0
        #: Writes a message's buffers without joining them (:mod:`afmi.channels.vectored`).
        self.writer: VectoredWriter | None = None
        #: Bytes handed to the transport and read from it: where in the byte stream
        #: the next frame starts (a large message's data starts on a 64-byte
        #: boundary of it, :func:`afmi.wire.frame.encode_frame`).
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- connection --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune(sock, self.owner.config.tcp_congestion)
        self.writer = VectoredWriter(transport)
        # Pause as soon as anything is queued: resume_writing then means "all handed
        # to the kernel", which is when a sender may reuse its arrays.
        transport.set_write_buffer_limits(high=0)
        hello = msgpack.packb([self.owner.job, self.owner.rank, self._nonce])
        self._write(encode_control(HELLO, hello))

    def connection_lost(self, exc: Exception | None) -> None:
        who = f"rank {self.peer}" if self.peer is not None else "an unidentified peer"
        reason = str(exc) if exc else "connection closed without a goodbye"
        self._lost = ChannelError(
            f"rank {self.owner.rank}: link to {who} broke ({reason})", peer=self.peer
        )
        self._wake(self._lost)
        if not self.ready.done():
            self.ready.set_exception(self._lost)
        if not self.closed.done():
            self.closed.set_result(None)
        if self._authenticated:
            self.owner._link_lost(self, self._lost)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # -- receiving --
    def get_buffer(self, sizehint: int) -> memoryview:
        # Inside a large message: the rest of its current buffer, so the kernel copies
        # the array data straight into the memory the received array will use. Between
        # frames: the staging area, where whole small frames are parsed in one go. In the
        # rare case of a read that ended inside a prelude or header: the frame decoder.
        if self._fill is not None:
            return self._fill[self._fill_index][self._fill_offset :]
        if self._decoder.at_frame_boundary:
            self._staged = True
            return self._staging_view
        self._staged = False
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if self._fill is not None:
            self._advance_fill(nbytes)
            return
        if self._staged:
            self._parse_staged(nbytes)
            return
        try:
            self._decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._abort(f"garbage from the peer: {exc}")
            return
        self._dispatch(self._decoder.events())

    def _parse_staged(self, end: int) -> None:
        """Parse the frames in the staging area; start filling a message that continues."""
        data = self._staging_view
        pos = 0
        while end - pos >= PRELUDE_SIZE and not self._aborted:
            magic, version, kind, hlen = _unpack_prelude(data, pos)
            body = pos + PRELUDE_SIZE + hlen
            if magic != MAGIC or version != VERSION or body > end:
                break  # not ours to judge, or incomplete: the decoder takes it from here
            if kind != KIND_MESSAGE:
                self._control(ControlFrame(kind, bytes(data[pos + PRELUDE_SIZE : body])))
                pos = body
                continue
            try:
                context, source, tag, seq, skeleton, lens = message_fields(
                    msgpack.unpackb(data[pos + PRELUDE_SIZE : body], raw=False, use_list=True)
                )
                total = 0
                for n in lens:
                    if type(n) is not int or n < 0:
                        raise ValueError(f"bad buffer length {n!r}")
                    total += n
            except Exception as exc:  # noqa: BLE001 - any malformed header is garbage
                self._abort(f"malformed message header: {exc}")
                return
            if not self._authenticated:
                self._abort("peer sent a message before the handshake")
                return
            msg = Message(context, source, tag, seq, skeleton, [])
            if body + total > end:
                self._start_fill(msg, lens, data[body:end])
                return
            for n in lens:
                msg.buffers.append(bytearray(data[body : body + n]))
                body += n
            pos = body
            self.owner._deliver(msg)
        if pos < end and not self._aborted:
            try:
                self._decoder.feed(data[pos:end])
            except ProtocolError as exc:
                self._abort(f"garbage from the peer: {exc}")
                return
            self._dispatch(self._decoder.events())

    def _start_fill(self, msg: Message, lens: list[int], head: memoryview) -> None:
        # new_buffer: memory of an earlier message that nothing refers to any more
        # (afmi.wire.pool), else np.empty; never a bytearray, whose zero-filling pass
        # over memory the kernel is about to overwrite costs about as much as the transfer.
        claim = self.owner.destination
        ticket = claim(msg.context, msg.source, msg.tag, msg.seq, lens) if claim else None
        arrays: list[Any]
        if ticket is not None:
            arrays = list(ticket.into)  # straight into the receiver's own buffers
            msg.landed = ticket
            self.owner.received_in_place += 1
        else:
            new = self.owner.new_buffer
            arrays = [new(n) if n else bytearray() for n in lens]
        msg.buffers = arrays
        self._fill_msg = msg
        self._fill = [memoryview(a) for a in arrays if len(a)]
        self._fill_index = self._fill_offset = 0
        have = len(head)
        pos = 0
        for view in self._fill:
            take = min(len(view), have - pos)
            view[:take] = head[pos : pos + take]
            pos += take
            if pos == have:
                break
        self._advance_fill(have)

    def _advance_fill(self, nbytes: int) -> None:
        fill = self._fill
        assert fill is not None
        self._fill_offset += nbytes
        while self._fill_index < len(fill) and self._fill_offset >= len(fill[self._fill_index]):
            self._fill_offset -= len(fill[self._fill_index])
            self._fill_index += 1
        if self._fill_index == len(fill):
            msg, self._fill_msg, self._fill = self._fill_msg, None, None
            assert msg is not None
            self.owner._deliver(msg)

    def _dispatch(self, events: list[Message | ControlFrame]) -> None:
        for event in events:
            if self._aborted:
                return
            if type(event) is Message:
                if not self._authenticated:
                    self._abort("peer sent a message before the handshake")
                    return
                self.owner._deliver(event)
            else:
                assert isinstance(event, ControlFrame)
                self._control(event)

    def _control(self, frame: ControlFrame) -> None:
        try:
            if frame.kind == HELLO and self._peer_nonce is None:
                self._on_hello(frame.payload)
            elif frame.kind == AUTH and self._peer_nonce is not None and not self._authenticated:
                self._on_auth(frame.payload)
            elif frame.kind == BYE and self._authenticated:
                self.bye_received = True
            else:
                raise ValueError(f"unexpected control frame {frame.kind}")
        except (ValueError, TypeError) as exc:
            self._abort(f"handshake failed: {exc}")

    def _on_hello(self, payload: bytes) -> None:
        job, rank, nonce = msgpack.unpackb(payload)
        owner = self.owner
        if job != owner.job:
            raise ValueError(f"peer belongs to job {job!r}, not {owner.job!r}")
        if type(rank) is not int or not 0 <= rank < owner.size or rank == owner.rank:
            raise ValueError(f"peer claims an invalid rank {rank!r}")
        if self.peer is not None and rank != self.peer:
            raise ValueError(f"expected rank {self.peer}, the peer says it is rank {rank}")
        if not isinstance(nonce, bytes) or len(nonce) != 16:
            raise ValueError("bad nonce")
        self.peer = rank
        self._peer_nonce = nonce
        assert self.transport is not None
        mac = _mac(owner.token, owner.job, owner.rank, rank, nonce)
        self._write(encode_control(AUTH, mac))

    def _on_auth(self, payload: bytes) -> None:
        assert self.peer is not None
        expected = _mac(self.owner.token, self.owner.job, self.peer, self.owner.rank, self._nonce)
        if not hmac.compare_digest(payload, expected):
            raise ValueError(f"rank {self.peer} does not hold this job's token")
        self._authenticated = True
        if not self.ready.done():
            self.ready.set_result(self)

    def _abort(self, why: str) -> None:
        self._aborted = True
        err = ChannelError(
            f"rank {self.owner.rank}: link to rank {self.peer}: {why}", peer=self.peer
        )
        if not self.ready.done():
            self.ready.set_exception(err)
        if self.transport is not None:
            self.transport.abort()

    # -- sending --
    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(None)

    def _wake(self, error: ChannelError | None) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    async def send(self, frames: list[Any], has_buffers: bool, nbytes: int) -> None:
        """Write ``frames`` (``nbytes`` in all); return once the kernel has every byte (or
        little is queued)."""
        transport = self.transport
        if self._lost is not None or transport is None:
            raise self._lost or ChannelError("link not connected", peer=self.peer)
        assert self.writer is not None
        self.writer.writelines(frames)
        self.bytes_sent += nbytes
        if not self.paused:
            return
        if not has_buffers and transport.get_write_buffer_size() < _SMALL_BACKLOG:
            return  # the frame is immutable bytes: nothing to protect, little to throttle
        while self.paused:
            if self._lost is not None:
                raise self._lost
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._flush_waiters.append(fut)
            await fut

    def _write(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)
        self.bytes_sent += len(frame)

    def say_goodbye(self) -> None:
        """Send BYE and half-close; the peer answers by closing its side."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._write(encode_control(BYE, b""))
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()
