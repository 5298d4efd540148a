"""Messages of the rendezvous protocol: length-prefixed, versioned msgpack maps.

Every message travels as an afmi control frame (see :mod:`afmi.wire.frame`)::

    b"af" | frame version:u8 | kind=RENDEZVOUS_KIND:u8 | length:u32le | msgpack map

and the map always carries ``"v"`` (protocol version) and ``"op"``. The
frame prelude gives the length prefix and rejects garbage at once (bad magic),
the ``"v"`` field lets the protocol evolve. Messages above
:data:`MAX_MESSAGE_BYTES` are refused before they are read.

Client to service:

* ``register`` ``{job, token, rank, size, host, port, mode}``: join a job and
  publish this rank's endpoint (``port`` 0 with mode ``"punch"``: "use the
  address you see me connect from").
* ``relay`` ``{job, token, rank, peer}`` on a fresh connection: splice this
  connection with the peer's matching one (the relay fallback).

Service to client: ``registered``, ``peers {endpoints}``, ``punch {peer, host,
port}`` (connect now, from your registered port), ``relayed`` and ``error
{message}``.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from afmi.errors import AfmiError
from afmi.wire.frame import MAGIC, VERSION, encode_control

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RENDEZVOUS_KIND",
    "RendezvousError",
    "pack",
    "read_message",
    "unpack",
]

#: Version carried in every message's ``"v"`` field.
PROTOCOL_VERSION = 1
#: Control-frame kind used by rendezvous messages.
RENDEZVOUS_KIND = 16
#: Largest message the service or a client accepts.
MAX_MESSAGE_BYTES = 64 * 1024
_PRELUDE = struct.Struct("<2sBBI")


class RendezvousError(AfmiError, ConnectionError):
    """The rendezvous service refused a request, or the exchange broke or timed out."""


def pack(op: str, **fields: Any) -> bytes:
    """Encode one message with operation ``op``."""
    body = msgpack.packb({"v": PROTOCOL_VERSION, "op": op, **fields}, use_bin_type=True)
    return encode_control(RENDEZVOUS_KIND, body)


def parse_prelude(prelude: bytes) -> int:
    """Check a frame prelude and return the body length.

    Raises:
        RendezvousError: not an afmi frame, wrong version or kind, or too long.
    """
    magic, version, kind, length = _PRELUDE.unpack(prelude)
    if magic != MAGIC:
        raise RendezvousError(f"not an afmi rendezvous message (starts with {prelude[:8]!r})")
    if version != VERSION or kind != RENDEZVOUS_KIND:
        raise RendezvousError(
            f"unsupported frame version {version} / kind {kind}: "
            f"expected version {VERSION}, kind {RENDEZVOUS_KIND}"
        )
    if length > MAX_MESSAGE_BYTES:
        raise RendezvousError(f"message of {length} bytes exceeds the {MAX_MESSAGE_BYTES} limit")
    return int(length)


def unpack(body: bytes) -> dict[str, Any]:
    """Decode a message body; it must be a map with a matching ``v`` and a string ``op``."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - any decoding problem is a protocol error
        raise RendezvousError(f"malformed rendezvous message: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise RendezvousError("a rendezvous message must be a map with a string 'op'")
    if msg.get("v") != PROTOCOL_VERSION:
        raise RendezvousError(
            f"rendezvous protocol version {msg.get('v')!r} is not supported "
            f"(this side speaks {PROTOCOL_VERSION})"
        )
    return msg


async def read_message(reader: asyncio.StreamReader, timeout: float | None) -> dict[str, Any]:
    """Read one message from ``reader`` within ``timeout`` seconds.

    Raises:
        RendezvousError: malformed input, end of stream, or timeout.
    """
    try:
        async with asyncio.timeout(timeout):
            prelude = await reader.readexactly(_PRELUDE.size)
            length = parse_prelude(prelude)
            body = await reader.readexactly(length)
    except TimeoutError:
        raise RendezvousError(f"no rendezvous message within {timeout} s") from None
    except asyncio.IncompleteReadError:
        raise RendezvousError("connection closed in the middle of the rendezvous") from None
    except OSError as exc:
        raise RendezvousError(f"rendezvous connection broke: {exc}") from None
    return unpack(body)


def field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``msg[name]`` checked to be of ``kind`` (bool is never an int here)."""
    value = msg.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RendezvousError(f"{msg.get('op')!r} message needs field {name!r} of type {kind}")
    return value
