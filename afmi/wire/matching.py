"""Sans-IO matching engine: posted receives, unexpected messages, MPI order.

Rules (MPI's):

* A receive names ``(context, source, tag)``; ``source`` may be
  :data:`ANY_SOURCE` and ``tag`` :data:`ANY_TAG`.
* An arriving message matches the *earliest posted* receive that accepts it;
  if none does, it joins the unexpected queue.
* A new receive takes the *earliest arrived* unexpected message it accepts.
* Non-overtaking: messages from one source on one context are matched in the
  order they were sent. Messages carry a per-(context, source) sequence number
  and the engine holds back any message that arrives ahead of a missing
  predecessor (this lets consecutive messages travel over different channels).

The engine does no I/O and owns no futures: it hands back :class:`Ticket`
objects that the async layer completes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from afmi.wire.message import Message

__all__ = ["ANY_SOURCE", "ANY_TAG", "MatchingEngine", "Ticket"]

#: Receive from any source.
ANY_SOURCE = -2
#: Receive with any tag.
ANY_TAG = -1


@dataclass(eq=False, slots=True)
class Ticket:
    """A posted receive. ``message`` is set once it is matched."""

    context: int
    source: int
    tag: int
    message: Message | None = None
    cancelled: bool = False
    #: Free slot for the async layer (a future, a callback, ...).
    waiter: object = field(default=None, repr=False)
    #: Buffers the caller wants the payload received into (see :meth:`MatchingEngine.destination`).
    into: list[memoryview] | None = field(default=None, repr=False)

    def accepts(self, msg: Message) -> bool:
        """True if ``msg`` satisfies this receive."""
        return (
            msg.context == self.context
            and (self.source == ANY_SOURCE or self.source == msg.source)
            and (self.tag == ANY_TAG or self.tag == msg.tag)
        )


class MatchingEngine:
    """Matches incoming messages with posted receives; see the module docstring."""

    def __init__(self) -> None:
        self._posted: dict[int, list[Ticket]] = {}
        self._unexpected: dict[int, list[Message]] = {}
        self._expected_seq: dict[tuple[int, int], int] = {}
        self._held: dict[tuple[int, int], dict[int, Message]] = {}
        self._arrivals = 0

    # -- queries --
    def unexpected_count(self, context: int | None = None) -> int:
        """Messages waiting for a receive (on ``context``, or on all contexts)."""
        if context is not None:
            return len(self._unexpected.get(context, ()))
        return sum(len(q) for q in self._unexpected.values())

    def posted_count(self, context: int | None = None) -> int:
        """Receives waiting for a message (on ``context``, or on all contexts)."""
        if context is not None:
            return len(self._posted.get(context, ()))
        return sum(len(q) for q in self._posted.values())

    def held_count(self) -> int:
        """Messages held back because an earlier one from their source is missing."""
        return sum(len(h) for h in self._held.values())

    def probe(self, context: int, source: int, tag: int) -> Message | None:
        """The message a receive with these arguments would take now, if any."""
        probe = Ticket(context, source, tag)
        for msg in self._unexpected.get(context, ()):
            if probe.accepts(msg):
                return msg
        return None

    def destination(self, context: int, source: int, tag: int, seq: int) -> Ticket | None:
        """The posted receive with its own buffers that this arriving message will match.

        A channel that is about to receive a large message asks this when the
        message's header has arrived, to receive the payload straight into the
        receive's buffers. The answer is a ticket only when the match is certain:
        the message is next in its source's order, and the earliest posted receive
        accepting it names that source (not ``ANY_SOURCE``, which a message from
        elsewhere could take first) and has ``into`` buffers.
        """
        if self._expected_seq.get((context, source), 0) != seq:
            return None
        for ticket in self._posted.get(context, ()):
            if ticket.source == source and (ticket.tag == ANY_TAG or ticket.tag == tag):
                return ticket if ticket.into is not None else None
            if ticket.source == ANY_SOURCE and (ticket.tag == ANY_TAG or ticket.tag == tag):
                return None
        return None

    # -- receives --
    def post(
        self, context: int, source: int, tag: int, into: list[memoryview] | None = None
    ) -> Ticket:
        """Post a receive. If an unexpected message matches, the ticket is matched at once.

        ``into``: buffers a large payload may be received straight into (see
        :meth:`destination`); whether it was is told by ``message.landed``.
        """
        ticket = Ticket(context, source, tag, into=into)
        queue = self._unexpected.get(context)
        if queue:
            for i, msg in enumerate(queue):
                if ticket.accepts(msg):
                    del queue[i]
                    ticket.message = msg
                    return ticket
        self._posted.setdefault(context, []).append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a pending receive. Returns False if it was already matched."""
        if ticket.message is not None or ticket.cancelled:
            return False
        ticket.cancelled = True
        posted = self._posted.get(ticket.context)
        if posted is not None:
            try:
                posted.remove(ticket)
            except ValueError:
                pass
        return True

    # -- arrivals --
    def deliver(self, msg: Message) -> list[Ticket]:
        """Accept an arriving message; return the tickets this matched (maybe none).

        More than one ticket can be returned when ``msg`` fills a sequence gap
        and releases held-back successors.
        """
        key = (msg.context, msg.source)
        expected = self._expected_seq.get(key, 0)
        if msg.seq != expected:
            if msg.seq < expected:
                return []  # duplicate; already delivered
            self._held.setdefault(key, {})[msg.seq] = msg
            return []
        matched: list[Ticket] = []
        self._accept(msg, matched)
        expected += 1
        held = self._held.get(key)
        while held and expected in held:
            self._accept(held.pop(expected), matched)
            expected += 1
        if held is not None and not held:
            del self._held[key]
        self._expected_seq[key] = expected
        return matched

    def requeue(self, msg: Message) -> list[Ticket]:
        """Give back a message whose receiver was cancelled after the match.

        The message goes back in its original arrival position, so nothing is
        lost and order among unexpected messages is kept.
        """
        posted = self._posted.get(msg.context)
        if posted:
            for i, ticket in enumerate(posted):
                if ticket.accepts(msg):
                    del posted[i]
                    ticket.message = msg
                    return [ticket]
        queue = self._unexpected.setdefault(msg.context, [])
        keys = [m.arrival for m in queue]
        queue.insert(bisect.bisect(keys, msg.arrival), msg)
        return []

    def _accept(self, msg: Message, matched: list[Ticket]) -> None:
        msg.arrival = self._arrivals
        self._arrivals += 1
        posted = self._posted.get(msg.context)
        if posted:
            for i, ticket in enumerate(posted):
                if ticket.accepts(msg):
                    del posted[i]
                    ticket.message = msg
                    matched.append(ticket)
                    return
        self._unexpected.setdefault(msg.context, []).append(msg)

    def drain_context(self, context: int) -> list[Ticket]:
        """Forget a context: drop its unexpected messages, return its posted tickets."""
        self._unexpected.pop(context, None)
        return self._posted.pop(context, [])

    def all_posted(self) -> list[Ticket]:
        """Every pending ticket (used to fail them all when a channel breaks)."""
        out: list[Ticket] = []
        for q in self._posted.values():
            out.extend(q)
        return out
