"""The sans-IO wire layer: messages, serialization, frames, matching. No I/O here."""

from afmi.wire.frame import ControlFrame, FrameDecoder, ProtocolError, encode_control, encode_frame
from afmi.wire.matching import ANY_SOURCE, ANY_TAG, MatchingEngine, Ticket
from afmi.wire.message import Message
from afmi.wire.serialize import decode, encode

__all__ = [
    "ANY_SOURCE",
    "ANY_TAG",
    "ControlFrame",
    "FrameDecoder",
    "MatchingEngine",
    "Message",
    "ProtocolError",
    "Ticket",
    "decode",
    "encode",
    "encode_control",
    "encode_frame",
]
