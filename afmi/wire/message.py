"""The unit every channel moves: a :class:`Message`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from afmi.wire.pool import COPY_MIN_BYTES

__all__ = ["Message", "Buffer", "copy_buffers", "packed_layout"]

#: Anything exposing the buffer protocol (bytes, bytearray, memoryview, numpy arrays).
Buffer = Any


@dataclass(slots=True)
class Message:
    """One message: routing fields, a msgpack skeleton and raw buffers.

    ``context`` says which communicator (and whether user point-to-point or a
    collective) the message belongs to, ``source`` is the sender's *world* rank,
    ``seq`` counts messages from ``source`` on ``context`` so that a receiver
    can restore send order even when consecutive messages take different
    channels. ``header`` is the payload skeleton produced by
    :func:`afmi.wire.serialize.encode`, ``buffers`` hold array data out of band.
    """

    context: int
    source: int
    tag: int
    seq: int
    header: bytes
    buffers: list[Buffer] = field(default_factory=list)
    #: Arrival order at the receiver, assigned by the matching engine.
    arrival: int = -1
    #: The posted receive whose own buffers this message was received into (see
    #: :meth:`afmi.wire.matching.MatchingEngine.destination`), else None.
    landed: Any = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Bytes of payload: the skeleton plus every buffer."""
        return len(self.header) + sum(memoryview(b).nbytes for b in self.buffers)

    def landed_in(self, ticket: Any) -> bool:
        """Whether this message was received straight into ``ticket``'s buffers; called
        once, by the receive that waited on ``ticket``.

        It also forgets the ticket: the ticket refers to this message (its match)
        and ``landed`` back to the ticket, and that cycle would keep the received
        memory alive until the garbage collector ran, so the receive pool
        (:mod:`afmi.wire.pool`) could not reuse it (session 21: a 16 MiB ring
        allreduce without ``out=`` found its result's memory still held in about
        two calls of three and took fresh memory instead).
        """
        landed, self.landed = self.landed, None
        return landed is ticket

    def detached(self, new_buffer: Callable[[int], Any] | None = None) -> Message:
        """Return a copy whose buffers are private and writable.

        In-process channels call this on send so that the receiver never sees
        changes the sender makes to its arrays after the send completes. The
        copies are ``bytearray`` objects, except that a buffer of
        :data:`~afmi.wire.pool.COPY_MIN_BYTES` or more goes into
        ``new_buffer(nbytes)`` when it is given (the receiving channel's
        :meth:`~afmi.channels.base.Channel.new_buffer`: reused memory).
        """
        return Message(
            self.context,
            self.source,
            self.tag,
            self.seq,
            self.header,
            copy_buffers(self.buffers, new_buffer),
        )


def copy_buffers(
    buffers: list[Buffer], new_buffer: Callable[[int], Any] | None = None
) -> list[Buffer]:
    """Copy each buffer (one memcpy each): into a fresh ``bytearray``, or, for buffers
    of :data:`~afmi.wire.pool.COPY_MIN_BYTES` or more when ``new_buffer`` is given,
    into the ``uint8`` array ``new_buffer(nbytes)`` returns."""
    out: list[Buffer] = []
    for b in buffers:
        mv = memoryview(b)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        if new_buffer is not None and mv.nbytes >= COPY_MIN_BYTES:
            dst = new_buffer(mv.nbytes)
            dst[:] = np.frombuffer(mv, np.uint8)
            out.append(dst)
        else:
            out.append(bytearray(mv))
    return out


def packed_layout(sizes: Sequence[int], align: int = 64) -> tuple[list[int], int]:
    """Offsets of buffers of ``sizes`` laid back to back in one flat payload, each from a
    multiple of ``align`` bytes (so that arrays built on them are aligned), and its length."""
    offsets, end = [], 0
    for n in sizes:
        start = -(-end // align) * align
        offsets.append(start)
        end = start + n
    return offsets, end
