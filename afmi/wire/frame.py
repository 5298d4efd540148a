"""Sans-IO frame codec for byte-stream channels (TCP, relays).

A frame is an 8-byte prelude, a msgpack header and the raw message buffers::

    prelude  = b"af" | version:u8 | kind:u8 | header_len:u32le
    header   = msgpack [context, source, tag, seq, skeleton, [len(buf0), len(buf1), ...]]
               or the same with a 7th field, ``pad``: zero bytes, ignored
    buffers  = buf0 | buf1 | ...

The pad puts a large message's first buffer on a 64-byte
boundary of the connection's byte stream (:func:`encode_frame`'s ``offset``).

``kind`` 0 is a :class:`~afmi.wire.message.Message`; other kinds are control
frames whose header is an opaque payload owned by the channel (handshakes,
heartbeats). :func:`encode_frame` returns a list of buffers for
``transport.writelines`` / ``socket.sendmsg`` (array data is not copied).
:class:`FrameDecoder` parses bytes back into events and offers
``get_buffer``/``buffer_updated`` so an ``asyncio.BufferedProtocol`` receives
array data straight into the buffers the message will keep.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from afmi.errors import AfmiError
from afmi.wire.message import Buffer, Message
from afmi.wire.serialize import packb

__all__ = [
    "ControlFrame",
    "FrameDecoder",
    "ProtocolError",
    "encode_control",
    "encode_frame",
    "MAX_HEADER_BYTES",
]

#: The prelude's version, shared with the rendezvous protocol's frames. A message
#: header's optional pad (session 19) left it at 1: a reader without it rejects a
#: padded header as malformed rather than misreading it.
VERSION = 1
#: Stream boundary a large message's first buffer starts on (see :func:`encode_frame`).
ALIGN = 64
#: A message whose first buffer has at least this many bytes is aligned.
ALIGN_MIN_BYTES = 64 * 1024
_PRELUDE = struct.Struct("<2sBBI")
PRELUDE_SIZE = _PRELUDE.size
MAGIC = b"af"
KIND_MESSAGE = 0
#: Headers above this size are rejected as garbage.
MAX_HEADER_BYTES = 64 * 1024 * 1024
_STAGING = 256 * 1024


class ProtocolError(AfmiError):
    """The byte stream is not a valid afmi frame stream."""


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A channel-private frame: ``kind`` (1..255) and an opaque ``payload``."""

    kind: int
    payload: bytes


def encode_frame(msg: Message, offset: int | None = None) -> list[Buffer]:
    """Encode ``msg`` as a list of buffers (prelude+header first, then the data).

    ``offset``: where in the connection's byte stream the frame will start. When
    it is given and the first buffer has :data:`ALIGN_MIN_BYTES` or more, the
    header gets a pad that starts that buffer on a multiple of :data:`ALIGN`
    bytes. Across two processes on this project's machine an exchange of 4 MiB
    arrays (each rank sending one right after receiving one) took 3.3-3.6
    times as long when the data started at the stream offsets a 38-byte header
    left it at: the kernel's copies into and out of the socket ran that much
    slower (docs/direct.md).
    """
    lens = [memoryview(b).nbytes for b in msg.buffers]
    fields = [msg.context, msg.source, msg.tag, msg.seq, msg.header, lens]
    header = packb(fields)
    if offset is not None and lens and lens[0] >= ALIGN_MIN_BYTES:
        # one more element keeps the array's one-byte prefix (7 < 16); a bin8 field
        # adds two bytes and its zeros
        k = -(offset + PRELUDE_SIZE + len(header) + 2) % ALIGN
        fields.append(bytes(k))
        header = packb(fields)
    out: list[Buffer] = [_PRELUDE.pack(MAGIC, VERSION, KIND_MESSAGE, len(header)) + header]
    out.extend(b for b, n in zip(msg.buffers, lens) if n)
    return out


def message_fields(fields: Any) -> Any:
    """The six fields of a decoded message header (a trailing pad dropped)."""
    if len(fields) == 7 and isinstance(fields[6], bytes):
        return fields[:6]
    if len(fields) != 6:
        raise ValueError(f"a message header has 6 fields and an optional pad, not {fields!r}")
    return fields


def _empty(nbytes: int) -> Any:
    # numpy.empty, not bytearray: no zero-filling pass over memory that is about to
    # be overwritten (for 16 MiB it costs about as much as the copy).
    return np.empty(nbytes, np.uint8)


def encode_control(kind: int, payload: bytes) -> bytes:
    """Encode a control frame of ``kind`` (1..255) carrying ``payload``."""
    if not 1 <= kind <= 255:
        raise ValueError(f"control frame kind must be in 1..255, got {kind}")
    return _PRELUDE.pack(MAGIC, VERSION, kind, len(payload)) + payload


class FrameDecoder:
    """Incremental frame parser; feed bytes in, take events out.

    Two ways to feed it: :meth:`feed` with bytes you already have, or
    :meth:`get_buffer` / :meth:`buffer_updated` (the ``asyncio.BufferedProtocol``
    interface), which lets large message buffers be received in place.
    """

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        *,
        new_buffer: Callable[[int], Any] | None = None,
    ) -> None:
        self._max_header = max_header_bytes
        #: Makes the array a message buffer of ``n`` bytes is received into (a channel's
        #: pooled memory, :meth:`afmi.channels.base.Channel.new_buffer`); default numpy.empty.
        self._new_buffer = new_buffer or _empty
        self._events: list[Message | ControlFrame] = []
        self._staging = bytearray(_STAGING)
        self._pending = bytearray()  # bytes of prelude/header collected so far
        self._need = PRELUDE_SIZE  # bytes wanted for the current prelude/header step
        self._state = 0  # 0 prelude, 1 header, 2 buffers
        self._kind = 0
        self._header_len = 0
        self._msg: Message | None = None
        self._targets: list[Any] = []  # uint8 numpy arrays the buffers are received into
        self._target_index = 0
        self._target_offset = 0

    # -- events --
    def next_event(self) -> Message | ControlFrame | None:
        """Return the next complete frame, or None when more bytes are needed."""
        if self._events:
            return self._events.pop(0)
        return None

    def events(self) -> list[Message | ControlFrame]:
        """Return and clear every complete frame parsed so far."""
        ev, self._events = self._events, []
        return ev

    @property
    def at_frame_boundary(self) -> bool:
        """True when no frame is partially received."""
        return self._state == 0 and not self._pending

    # -- buffered-protocol feeding --
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return writable memory to receive the next bytes into."""
        if self._state == 2:
            target = self._targets[self._target_index]
            return memoryview(target)[self._target_offset :]
        return memoryview(self._staging)

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` written into the memory from :meth:`get_buffer`."""
        if self._state == 2:
            self._advance_target(nbytes)
            return
        self.feed(memoryview(self._staging)[:nbytes])

    # -- plain feeding --
    def feed(self, data: Buffer) -> None:
        """Parse ``data`` (any bytes-like object)."""
        mv = memoryview(data).cast("B")
        pos, end = 0, len(mv)
        while pos < end:
            if self._state == 2:
                target = self._targets[self._target_index]
                take = min(len(target) - self._target_offset, end - pos)
                target[self._target_offset : self._target_offset + take] = mv[pos : pos + take]
                pos += take
                self._advance_target(take)
                continue
            take = min(self._need - len(self._pending), end - pos)
            self._pending += mv[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                self._step()

    # -- internals --
    def _step(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        if self._state == 0:
            magic, version, kind, hlen = _PRELUDE.unpack(data)
            if magic != MAGIC:
                raise ProtocolError(f"bad frame magic {magic!r}: peer is not speaking afmi")
            if version != VERSION:
                raise ProtocolError(f"unsupported frame version {version} (this is {VERSION})")
            if hlen > self._max_header:
                raise ProtocolError(f"frame header of {hlen} bytes exceeds {self._max_header}")
            self._kind, self._header_len = kind, hlen
            if hlen == 0:
                self._finish_header(b"")
            else:
                self._state, self._need = 1, hlen
            return
        self._finish_header(data)

    def _finish_header(self, data: bytes) -> None:
        self._state, self._need = 0, PRELUDE_SIZE
        if self._kind != KIND_MESSAGE:
            self._events.append(ControlFrame(self._kind, data))
            return
        try:
            fields: Any = msgpack.unpackb(data, raw=False, use_list=True)
            context, source, tag, seq, skeleton, lens = message_fields(fields)
            if not all(type(n) is int and n >= 0 for n in lens):
                raise ValueError("bad buffer lengths")
        except Exception as exc:  # noqa: BLE001 - any malformed header is a protocol error
            raise ProtocolError(f"malformed message header: {exc}") from exc
        self._msg = Message(context, source, tag, seq, skeleton, [])
        self._targets = [self._new_buffer(n) for n in lens if n]
        self._msg.buffers = [t if n else bytearray() for t, n in zip(self._iter(lens), lens)]
        self._target_index = self._target_offset = 0
        if self._targets:
            self._state = 2
        else:
            self._complete()

    def _iter(self, lens: list[int]) -> Any:
        it = iter(self._targets)
        for n in lens:
            yield next(it) if n else None

    def _advance_target(self, nbytes: int) -> None:
        self._target_offset += nbytes
        while self._target_index < len(self._targets) and self._target_offset >= len(
            self._targets[self._target_index]
        ):
            self._target_offset -= len(self._targets[self._target_index])
            self._target_index += 1
        if self._target_index == len(self._targets):
            self._complete()

    def _complete(self) -> None:
        assert self._msg is not None
        self._events.append(self._msg)
        self._msg = None
        self._targets = []
        self._state, self._need = 0, PRELUDE_SIZE
