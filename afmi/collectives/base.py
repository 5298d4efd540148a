"""What a collective algorithm sees: :class:`CollectiveContext` and :class:`Algorithm`.

Every collective call on a communicator gets a sequence number (all ranks
call collectives in the same order, as MPI requires). Its messages travel on
the communicator's hidden collective context with tags derived from that
number and the collective's kind, so concurrent nonblocking collectives never mix, and collectives
never match user point-to-point messages.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from afmi.collectives.combine import mismatch_message
from afmi.errors import ArgumentError
from afmi.wire.matching import Ticket
from afmi.wire.message import Message
from afmi.wire.serialize import encode

if TYPE_CHECKING:
    from afmi.comm import Communicator

__all__ = ["Algorithm", "CollectiveContext", "Step", "SUBTAGS"]

#: Number of distinct sub-tags one collective call may use.
SUBTAGS = 1 << 12

#: Each collective's number in the tag, so that ranks calling different
#: collectives at the same point never match each other's messages (they time
#: out with a hint instead of returning garbage).
KINDS = {
    name: i
    for i, name in enumerate(
        (
            "barrier",
            "bcast",
            "gather",
            "scatter",
            "allgather",
            "alltoall",
            "reduce",
            "allreduce",
            "reduce_scatter",
            "scan",
            "exscan",
        )
    )
}
#: Tag room per collective call: every kind of collective, and others.
_KIND_SLOTS = 16


@dataclass(frozen=True)
class Step:
    """One round of an algorithm, for the performance model.

    ``rounds`` sequential rounds in which each rank sends (and receives) at
    most ``messages`` messages of ``nbytes`` bytes each.
    """

    rounds: int
    nbytes: int
    messages: int = 1


class CollectiveContext:
    """Tagged point-to-point on a communicator's collective context."""

    def __init__(self, comm: Communicator, seq: int, name: str) -> None:
        self.comm = comm
        self.rank = comm.rank
        self.size = comm.size
        self.name = name
        self._ep = comm.endpoint
        self._group = comm._group
        self._context = comm._coll
        kind = KINDS.get(name, _KIND_SLOTS - 1)
        self._base = (seq * _KIND_SLOTS + kind) * SUBTAGS
        #: The caller's result array (``allreduce(..., out=)``), C-contiguous and shaped
        #: like the input; an algorithm may write its result there directly.
        self.out: Any = None

    @property
    def channel(self) -> str:
        """Name of the channel this rank sends on by default ("local", "direct", ...)."""
        return self._ep.default_channel

    def empty_like(self, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """An uninitialised array shaped and typed like the C-contiguous ``arr``, for a
        result the caller keeps: from the process's receive pool (memory of an earlier
        result or message nothing refers to any more, for arrays of
        :data:`~afmi.wire.pool.POOL_MIN_BYTES` or more; docs/design.md, "Receive
        buffers"), else ``numpy.empty_like``."""
        pool = self._ep.pool
        if pool is None or arr.dtype.hasobject:
            return np.empty_like(arr)
        out: np.ndarray[Any, Any] = pool.take(arr.nbytes).view(arr.dtype).reshape(arr.shape)
        return out

    def _tag(self, sub: int) -> int:
        if not 0 <= sub < SUBTAGS:
            raise ValueError(f"collective sub-tag {sub} out of range")
        return self._base + sub

    async def send(self, obj: Any, dest: int, sub: int = 0) -> None:
        """Send ``obj`` to communicator rank ``dest``."""
        world = self._group[dest]
        msg = self._ep.prepare(world, self._context, self._tag(sub), obj)
        await self._ep.transmit(world, msg)

    def pack(self, obj: Any) -> Message:
        """Encode ``obj`` once into a message that :meth:`send_raw` can send to many ranks.

        The buffers are views of ``obj``'s arrays (no copy); send them before
        anything modifies those arrays.
        """
        header, buffers = encode(obj, allow_pickle=self._ep.config.pickle)
        return Message(self._context, self._ep.rank, 0, -1, header, buffers)

    async def send_raw(self, msg: Message, dest: int, sub: int = 0) -> None:
        """Forward an already received message's payload to ``dest`` without decoding it."""
        world = self._group[dest]
        out = self._ep.stamp(world, self._context, self._tag(sub), msg.header, msg.buffers)
        await self._ep.transmit(world, out)

    async def recv_raw(self, source: int, sub: int = 0) -> Message:
        """Receive the undecoded message from ``source``."""
        ticket = self._ep.post(self._context, self._group[source], self._tag(sub))
        return await self._ep.arrival(ticket)

    def post_into(self, source: int, outs: list[Any], sub: int = 0) -> list[Ticket]:
        """Post receives from ``source`` now, one per array of ``outs``, in message order.

        Channels that can (direct) receive each message's data straight into its
        array, once the receive is posted before the data arrives; await each
        with :meth:`wait_into`, and :meth:`withdraw` the rest if you give up.
        ``outs`` must be C-contiguous writable arrays.
        """
        ep, world, tag = self._ep, self._group[source], self._tag(sub)
        return [ep.post(self._context, world, tag, [memoryview(o).cast("B")]) for o in outs]

    async def wait_into(self, ticket: Ticket, out: Any) -> None:
        """Wait for a receive from :meth:`post_into`; its data is then in ``out``.

        When the channel did not receive into ``out`` itself, the received array
        is copied in (it must have ``out``'s dtype and a shape that fits).
        """
        msg = await self._ep.arrival(ticket)
        if not msg.landed_in(ticket):
            data = self._ep.decode(msg)
            try:
                np.copyto(out, data, casting="no")
            except (TypeError, ValueError) as exc:
                sender = self._group.index(msg.source) if msg.source in self._group else None
                raise ArgumentError(mismatch_message(self.name, sender, data, out)) from exc

    def withdraw(self, tickets: list[Ticket]) -> None:
        """Cancel the receives of ``tickets`` that have not completed."""
        for ticket in tickets:
            fut = ticket.waiter
            if isinstance(fut, asyncio.Future) and not fut.done():
                self._ep.engine.cancel(ticket)
                fut.cancel()

    async def recv(self, source: int, sub: int = 0) -> Any:
        """Receive and decode the message from ``source``."""
        return self._ep.decode(await self.recv_raw(source, sub))

    async def recv_each(self, sources: list[int], sub: int = 0) -> list[Any]:
        """Receive and decode one message from each of ``sources``, in their order.

        Every receive is posted before the first wait, so the messages match
        in whatever order they come, and no task is created: a root collecting
        from ``p - 1`` ranks with ``asyncio.gather`` paid a task per receive
        (a 2-rank gather in one process took 49 µs a call, a bcast 30 µs). If a
        wait fails or is cancelled, the receives not yet completed are withdrawn.
        """
        return await self.wait_each(self.post_each(sources, sub))

    def post_each(self, sources: list[int], sub: int = 0) -> list[Ticket]:
        """Post a receive from each of ``sources`` now; collect them with :meth:`wait_each`
        (or :meth:`withdraw` them if you give up before)."""
        ep, tag = self._ep, self._tag(sub)
        return [ep.post(self._context, self._group[r], tag) for r in sources]

    async def wait_each(self, tickets: list[Ticket], raw: bool = False) -> list[Any]:
        """The decoded messages of receives from :meth:`post_each` (``raw``: the undecoded
        messages), in ticket order; if a wait fails or is cancelled, the
        receives not yet completed are withdrawn."""
        out: list[Any] = []
        try:
            for ticket in tickets:
                msg = await self._ep.arrival(ticket)
                out.append(msg if raw else self._ep.decode(msg))
        except BaseException:
            self.withdraw(tickets[len(out) :])
            raise
        return out

    async def exchange(
        self,
        sources: list[int],
        sending: Coroutine[Any, Any, Any],
        sub: int = 0,
        raw: bool = False,
    ) -> list[Any]:
        """Post a receive from each of ``sources``, run ``sending``, then collect the
        receives in turn (:meth:`wait_each`): the messages match in whatever order
        they come, with no task per receive. If ``sending`` fails or is cancelled,
        the receives are withdrawn before the error propagates."""
        try:
            tickets = self.post_each(sources, sub)
        except BaseException:
            sending.close()
            raise
        try:
            await sending
        except BaseException:
            self.withdraw(tickets)
            raise
        return await self.wait_each(tickets, raw=raw)

    def decode(self, msg: Message) -> Any:
        """Decode a message from :meth:`recv_raw`."""
        return self._ep.decode(msg)

    async def sendrecv(self, obj: Any, dest: int, source: int, sub: int = 0) -> Any:
        """Send to ``dest`` while receiving from ``source`` (a failed send withdraws
        the receive)."""
        (received,) = await self.exchange([source], self.send(obj, dest, sub), sub)
        return received


class Algorithm(abc.ABC):
    """One way to run one collective. Subclasses are registered in :mod:`.registry`."""

    #: Collective it implements ("allreduce", ...).
    collective: ClassVar[str]
    #: Unique name ("recursive_doubling", "ring", "binomial", ...).
    name: ClassVar[str]
    #: Channels this algorithm is meant for (None: any). Channel-specific
    #: algorithms are preferred over generic ones on their channels.
    channels: ClassVar[frozenset[str] | None] = None

    def applicable(self, size: int, nbytes: int, args: dict[str, Any]) -> bool:
        """False if the algorithm cannot run these arguments (e.g. a non-commutative op)."""
        return True

    @abc.abstractmethod
    def steps(self, size: int, nbytes: int) -> list[Step]:
        """The critical path as rounds of messages, for the performance model."""

    #: ``async run(ctx, **args)``: run on every rank and return this rank's result.
    #: Each subclass spells out the keyword arguments of its collective.
    run: Callable[..., Coroutine[Any, Any, Any]]

    def __repr__(self) -> str:
        return f"<{self.collective}:{self.name}>"
