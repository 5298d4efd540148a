"""The :class:`Communicator`: rank, size, point-to-point and collectives.

Every blocking method is a coroutine and takes ``timeout=`` (seconds; ``None``
uses ``Config.timeout``). Nonblocking forms (``isend``, ``irecv``,
``ibcast``, ``iallreduce``, ...) return an :class:`~afmi.request.Request` at
once. Method names and defaults follow mpi4py's lowercase (object) API.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Generator, Sequence
from typing import Any, TypeVar

import numpy as np

from afmi.endpoint import Endpoint, on_channel
from afmi.errors import ArgumentError, OperationTimeoutError
from afmi.ops import SUM, Op, as_op
from afmi.request import Request, Status
from afmi.wire.matching import ANY_SOURCE, ANY_TAG, Ticket
from afmi.wire.message import Message

__all__ = ["Communicator", "ANY_SOURCE", "ANY_TAG", "TAG_UB"]

T = TypeVar("T")
#: Largest user tag.
TAG_UB = 2**31 - 1


class _Resumed:
    """Await a coroutine that already ran its first step and yielded ``pending``.

    Passes what the coroutine yields up to the running task and what the task
    sends or throws back down, exactly as ``await`` does after the first step.
    """

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: pass it down
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _copied_into(coro: Coroutine[Any, Any, Any], out: Any) -> Any:
    """Run a collective; leave its result in ``out`` (unless it wrote there) and return ``out``."""
    result = await coro
    if result is out:
        return out  # the algorithm wrote there (the ring; recursive doubling's reducing ranks)
    same_view = (
        isinstance(result, np.ndarray)
        and result.ctypes.data == out.ctypes.data
        and result.shape == out.shape
        and result.strides == out.strides
    )
    if not same_view:
        np.copyto(out, result)
    return out


async def _result_of(fut: asyncio.Future[T]) -> T:
    return await fut


class Communicator:
    """A group of ranks that exchange messages; see the module docstring.

    Messages sent on one communicator never match receives on another, and
    collectives never match user point-to-point messages: each communicator
    owns two contexts, one for point-to-point and one for its collectives.
    """

    def __init__(self, endpoint: Endpoint, group: list[int], context: int, name: str = "") -> None:
        self._ep = endpoint
        self._group = group
        self._world_to_rank = {w: r for r, w in enumerate(group)}
        self._p2p = context
        self._coll = context + 1
        #: Next collective sequence number, shared with views from :meth:`with_channel`.
        self._coll_seq_box = [0]
        #: Channel pinned for every operation of this communicator (None: the model picks).
        self._pin: str | None = None
        #: This rank's number in the communicator, 0..size-1.
        self.rank = self._world_to_rank[endpoint.rank]
        #: Number of ranks in the communicator.
        self.size = len(group)
        #: A name for errors and logs ("world", "world.split(1)", ...).
        self.name = name or f"comm{context}"

    def __repr__(self) -> str:
        pin = f" on {self._pin}" if self._pin else ""
        return f"<Communicator {self.name} rank {self.rank}/{self.size}{pin}>"

    # -- channels --
    @property
    def channels(self) -> list[str]:
        """Names of the channels this rank has open, sorted."""
        return sorted(self._ep.channels)

    @property
    def channel(self) -> str | None:
        """The channel pinned with :meth:`with_channel`, or None when the model picks."""
        return self._pin

    def with_channel(self, channel: str | None) -> Communicator:
        """This communicator with every operation pinned to ``channel`` (None: unpinned).

        The result is a view: it shares the message spaces and the collective
        sequence of ``self``, so calls on both interleave correctly, e.g.
        ``await comm.with_channel("redis").bcast(x)`` pins a single call.
        Ranks may pin differently: receivers accept from every channel.
        """
        if channel is not None:
            channel = self._ep.check_channel(channel)
        view = object.__new__(Communicator)
        view.__dict__.update(self.__dict__)
        view._pin = channel
        return view

    def explain(self, op: str, nbytes: int = 0, hint: str | float | None = None) -> Any:
        """The table behind the choice for ``op`` moving ``nbytes`` per rank here.

        Returns an :class:`afmi.model.Explanation`; ``print()`` it for a table of
        channel x algorithm -> predicted seconds and dollars, the choice marked.
        ``op`` is a collective name or ``"send"``.
        """
        from afmi.collectives import CollectiveContext
        from afmi.model.runtime import plan_explanation

        if type(nbytes) is not int or nbytes < 0:
            raise ArgumentError(f"nbytes must be an int >= 0, got {nbytes!r}")
        ctx = CollectiveContext(self, 0, op)
        return plan_explanation(
            op, ctx, self.channels, nbytes, self._ep.config, hint, pinned=self._pin
        )

    # -- mpi4py-style accessors --
    def Get_rank(self) -> int:  # noqa: N802
        """mpi4py-style accessor for :attr:`rank`."""
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        """mpi4py-style accessor for :attr:`size`."""
        return self.size

    @property
    def endpoint(self) -> Endpoint:
        """The rank's messaging core shared by all its communicators."""
        return self._ep

    @property
    def group(self) -> list[int]:
        """World ranks of this communicator's members, by communicator rank."""
        return list(self._group)

    # -- argument checks --
    def _check_rank(self, rank: Any, what: str) -> int:
        if type(rank) is not int or not 0 <= rank < self.size:
            raise ArgumentError(
                f"{what}={rank!r} is out of range: {self.name} has ranks 0..{self.size - 1}"
            )
        return rank

    def _check_source(self, source: Any) -> int:
        if source == ANY_SOURCE and type(source) is int:
            return ANY_SOURCE
        return self._group[self._check_rank(source, "source")]

    @staticmethod
    def _check_tag(tag: Any, allow_any: bool = False) -> int:
        if type(tag) is not int:
            raise ArgumentError(f"tag must be an int, got {type(tag).__name__} {tag!r}")
        if allow_any and tag == ANY_TAG:
            return tag
        if not 0 <= tag <= TAG_UB:
            raise ArgumentError(
                f"tag={tag} is out of range: use 0..{TAG_UB}"
                + (" or afmi.ANY_TAG" if allow_any else "")
            )
        return tag

    def _timeout(self, timeout: float | None) -> float | None:
        if timeout is None:
            timeout = self._ep.config.timeout
        if timeout is None or timeout == math.inf:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    async def _bounded(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        try:
            seconds = self._timeout(timeout)
        except BaseException:
            coro.close()
            raise
        return await self._within(coro, seconds, what)

    async def _within(self, coro: Coroutine[Any, Any, T], seconds: float | None, what: str) -> T:
        if seconds is None:
            return await coro
        # Run the first step before arming the timer: most sends (and receives whose
        # message is there) finish without suspending, and arming and disarming a
        # timer costs about as much as the rest of a small send.
        try:
            pending = coro.send(None)
            while pending is None:
                # A bare yield (asyncio.sleep(0), as the local channel's send ends
                # with) cannot block: let the loop turn, go on still without a timer.
                try:
                    await asyncio.sleep(0)
                except BaseException as exc:  # noqa: BLE001 - thrown in by the task: pass it down
                    pending = coro.throw(exc)
                else:
                    pending = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return,unused-ignore]
        except BaseException:
            coro.close()
            raise
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                result: T = await _Resumed(coro, pending)
                return result
        except TimeoutError:
            if scope.expired():
                raise OperationTimeoutError(
                    f"{what} on {self.name} (rank {self.rank}) did not complete within {seconds} s"
                ) from None
            raise

    # -- point-to-point --
    def _send_channel(self, channel: str | None) -> str | None:
        if channel is not None:
            return self._ep.check_channel(channel)
        return self._pin

    async def send(
        self,
        obj: Any,
        dest: int,
        tag: int = 0,
        timeout: float | None = None,
        *,
        channel: str | None = None,
    ) -> None:
        """Send ``obj`` to ``dest``; returns once the channel has taken it.

        ``send`` is buffered: it never waits for the receiver to post a
        receive, and after it returns the caller may modify its arrays.
        ``channel`` pins this message to one of :attr:`channels` (default: the
        communicator's pin, else the model's choice for the message size).
        Cancellation: a cancelled send may or may not have been delivered.
        """
        dest = self._check_rank(dest, "dest")
        self._check_tag(tag)
        name = self._send_channel(channel)
        world = self._group[dest]
        msg = self._ep.prepare(world, self._p2p, tag, obj)
        await self._bounded(self._ep.transmit(world, msg, name), timeout, f"send to rank {dest}")

    def isend(
        self, obj: Any, dest: int, tag: int = 0, *, channel: str | None = None
    ) -> Request[None]:
        """Start a send; the payload is serialized (and checked) before this returns."""
        dest = self._check_rank(dest, "dest")
        self._check_tag(tag)
        name = self._send_channel(channel)
        world = self._group[dest]
        msg = self._ep.prepare(world, self._p2p, tag, obj)
        task = self._ep.spawn(self._ep.transmit(world, msg, name))
        return Request(task, what=f"isend to rank {dest}")

    def _post(self, source: int, tag: int, out: Any = None) -> Ticket:
        src = self._check_source(source)
        tag = self._check_tag(tag, allow_any=True)
        into = None
        if out is not None:
            self._check_target(out)
            into = [memoryview(out.reshape(-1).view(np.uint8))]  # type: ignore[arg-type]
        return self._ep.post(self._p2p, src, tag, into)

    def _finish(
        self, msg: Message, status: Status | None, ticket: Ticket | None = None, out: Any = None
    ) -> Any:
        if status is not None:
            status.source = self._world_to_rank.get(msg.source, msg.source)
            status.tag = msg.tag
            status.nbytes = msg.nbytes
        if out is None:
            return self._ep.decode(msg)
        if not msg.landed_in(ticket):
            got = self._ep.decode(msg)
            if not isinstance(got, np.ndarray) or got.dtype != out.dtype or got.size != out.size:
                what = f"{got.dtype}{list(got.shape)}" if isinstance(got, np.ndarray) else type(got)
                raise ArgumentError(
                    f"received {what} from rank {status.source if status else msg.source}, "
                    f"which does not fit out= ({out.dtype}{list(out.shape)}); the message "
                    "was consumed"
                )
            np.copyto(out, got.reshape(out.shape))
        return out

    async def recv(
        self,
        source: int = ANY_SOURCE,
        tag: int = ANY_TAG,
        status: Status | None = None,
        timeout: float | None = None,
        *,
        out: Any = None,
    ) -> Any:
        """Receive the next matching message and return its payload.

        Cancellation and timeout never lose a message: if the receive is
        withdrawn, a message that arrives later (or that had just matched)
        stays queued for the next matching receive.

        ``out``: a C-contiguous, writable numpy array to receive an array payload
        into (returned instead of a new array), like ``Recv(buf)`` in MPI. The
        payload must have ``out``'s dtype and number of elements. Channels that
        can (direct, local, redis) receive a large payload straight into ``out`` when
        the receive is posted before it arrives (use :meth:`irecv` to post early).
        """
        ticket = self._post(source, tag, out)
        msg = await self._await_ticket(ticket, timeout, f"recv(source={source}, tag={tag})")
        if out is not None and status is None:
            status = Status()
        return self._finish(msg, status, ticket, out)

    async def _await_ticket(self, ticket: Ticket, timeout: float | None, what: str) -> Message:
        fut = ticket.waiter
        assert isinstance(fut, asyncio.Future)
        if fut.done():
            return fut.result()  # type: ignore[no-any-return]
        seconds = self._timeout(timeout)
        try:
            # Spin first (at most Config.spin, far below any timeout); arm the
            # timeout's timer only for a receive that then still has to wait.
            if self._ep.spin_seconds:
                await self._ep.spin(ticket)
                if fut.done():
                    return fut.result()  # type: ignore[no-any-return]
            return await self._within(_result_of(fut), seconds, what)
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._ep.give_back(fut.result())  # matched, but our caller went away
            elif not fut.done():
                fut.cancel()
            raise

    def irecv(
        self, source: int = ANY_SOURCE, tag: int = ANY_TAG, *, out: Any = None
    ) -> Request[Any]:
        """Post a receive now; ``await`` the request for the payload, ``req.status`` for details.

        ``out``: receive an array payload into this array (see :meth:`recv`).
        """
        ticket = self._post(source, tag, out)
        fut = ticket.waiter
        assert isinstance(fut, asyncio.Future)
        req: Request[Any]

        def convert(msg: Message) -> Any:
            req.status = Status()
            return self._finish(msg, req.status, ticket, out)

        req = Request(
            fut,
            convert=convert,
            on_cancel=lambda: self._ep.engine.cancel(ticket),
            what=f"irecv(source={source}, tag={tag})",
        )
        return req

    async def sendrecv(
        self,
        sendobj: Any,
        dest: int,
        sendtag: int = 0,
        source: int = ANY_SOURCE,
        recvtag: int = ANY_TAG,
        status: Status | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send to ``dest`` and receive from ``source`` concurrently; return what was received."""
        ticket = self._post(source, recvtag)
        try:
            await self.send(sendobj, dest, sendtag, timeout=timeout)
        except BaseException:
            self._ep.engine.cancel(ticket)
            fut = ticket.waiter
            assert isinstance(fut, asyncio.Future)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._ep.give_back(fut.result())
            elif not fut.done():
                fut.cancel()
            raise
        msg = await self._await_ticket(ticket, timeout, f"sendrecv with rank {dest}")
        return self._finish(msg, status)

    def iprobe(
        self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status: Status | None = None
    ) -> bool:
        """True if a matching message is waiting (it stays queued); fills ``status``."""
        src = self._check_source(source)
        tag = self._check_tag(tag, allow_any=True)
        msg = self._ep.engine.probe(self._p2p, src, tag)
        if msg is None:
            return False
        if status is not None:
            status.source = self._world_to_rank.get(msg.source, msg.source)
            status.tag, status.nbytes = msg.tag, msg.nbytes
        return True

    # -- collectives --
    def _start_collective(
        self, name: str, *, out: Any = None, **args: Any
    ) -> tuple[Any, Coroutine[Any, Any, Any]]:
        from afmi.collectives import CollectiveContext

        seq = self._coll_seq_box[0]
        self._coll_seq_box[0] += 1
        ctx = CollectiveContext(self, seq, name)
        if out is not None:
            ctx.out = out
            algorithm, coro = self._start_collective_in(name, ctx, args)
            return algorithm, _copied_into(coro, out)
        return self._start_collective_in(name, ctx, args)

    def _start_collective_in(
        self, name: str, ctx: Any, args: dict[str, Any]
    ) -> tuple[Any, Coroutine[Any, Any, Any]]:
        if (
            self._pin is None
            and len(self._ep.channels) == 1
            and not self._ep.config.model.choose_algorithm
        ):
            from afmi.collectives import select

            algorithm = select(name, ctx, args)
            return algorithm, algorithm.run(ctx, **args)
        from afmi.model.runtime import plan

        channels = [self._pin] if self._pin else self.channels
        chosen = plan(name, ctx, channels, args, self._ep.config)
        algorithm = chosen.algorithm
        return algorithm, on_channel(chosen.channel, lambda: algorithm.run(ctx, **args))

    async def _collective(self, name: str, timeout: float | None, **args: Any) -> Any:
        self._ep.check_alive()
        _, coro = self._start_collective(name, **args)
        return await self._bounded(
            coro, timeout, f"{name} (is every rank calling it with matching arguments?)"
        )

    def _icollective(self, name: str, **args: Any) -> Request[Any]:
        self._ep.check_alive()
        _, coro = self._start_collective(name, **args)
        return Request(self._ep.spawn(coro), what=f"i{name} on {self.name}")

    def _root(self, root: Any) -> int:
        return self._check_rank(root, "root")

    def _op(self, op: Any) -> Op:
        return as_op(op)

    async def barrier(self, timeout: float | None = None) -> None:
        """Wait until every rank of the communicator has entered the barrier."""
        await self._collective("barrier", timeout)

    def ibarrier(self) -> Request[None]:
        """Nonblocking :meth:`barrier`."""
        return self._icollective("barrier")

    async def bcast(self, obj: Any = None, root: int = 0, timeout: float | None = None) -> Any:
        """Return ``obj`` of ``root`` on every rank."""
        return await self._collective("bcast", timeout, obj=obj, root=self._root(root))

    def ibcast(self, obj: Any = None, root: int = 0) -> Request[Any]:
        """Nonblocking :meth:`bcast`."""
        return self._icollective("bcast", obj=obj, root=self._root(root))

    async def gather(
        self, obj: Any, root: int = 0, timeout: float | None = None
    ) -> list[Any] | None:
        """Return the list of every rank's ``obj`` on ``root`` (in rank order), None elsewhere."""
        return await self._collective("gather", timeout, obj=obj, root=self._root(root))  # type: ignore[no-any-return]

    def igather(self, obj: Any, root: int = 0) -> Request[list[Any] | None]:
        """Nonblocking :meth:`gather`."""
        return self._icollective("gather", obj=obj, root=self._root(root))

    def _scatter_seq(self, seq: Any, root: int) -> Any:
        if self.rank != root:
            return None
        if seq is None or not hasattr(seq, "__len__") or len(seq) != self.size:
            raise ArgumentError(
                f"scatter on the root needs a sequence of {self.size} items (one per rank), "
                f"got {type(seq).__name__}"
                + (f" of length {len(seq)}" if hasattr(seq, "__len__") else "")
            )
        return list(seq)

    async def scatter(
        self, seq: Sequence[Any] | None, root: int = 0, timeout: float | None = None
    ) -> Any:
        """Send item ``i`` of root's ``seq`` to rank ``i``; return this rank's item."""
        root = self._root(root)
        return await self._collective(
            "scatter", timeout, seq=self._scatter_seq(seq, root), root=root
        )

    def iscatter(self, seq: Sequence[Any] | None, root: int = 0) -> Request[Any]:
        """Nonblocking :meth:`scatter`."""
        root = self._root(root)
        return self._icollective("scatter", seq=self._scatter_seq(seq, root), root=root)

    async def allgather(self, obj: Any, timeout: float | None = None) -> list[Any]:
        """Return the list of every rank's ``obj`` on every rank."""
        return await self._collective("allgather", timeout, obj=obj)  # type: ignore[no-any-return]

    def iallgather(self, obj: Any) -> Request[list[Any]]:
        """Nonblocking :meth:`allgather`."""
        return self._icollective("allgather", obj=obj)

    def _alltoall_seq(self, seq: Any) -> list[Any]:
        if seq is None or not hasattr(seq, "__len__") or len(seq) != self.size:
            raise ArgumentError(
                f"alltoall needs a sequence of {self.size} items (item i goes to rank i)"
            )
        return list(seq)

    async def alltoall(self, seq: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """Send item ``i`` to rank ``i``; return the items received, in source-rank order."""
        return await self._collective("alltoall", timeout, seq=self._alltoall_seq(seq))  # type: ignore[no-any-return]

    def ialltoall(self, seq: Sequence[Any]) -> Request[list[Any]]:
        """Nonblocking :meth:`alltoall`."""
        return self._icollective("alltoall", seq=self._alltoall_seq(seq))

    async def reduce(
        self, x: Any, op: Op = SUM, root: int = 0, timeout: float | None = None
    ) -> Any:
        """Combine every rank's ``x`` with ``op``; the result on ``root``, None elsewhere."""
        return await self._collective(
            "reduce", timeout, x=x, op=self._op(op), root=self._root(root)
        )

    def ireduce(self, x: Any, op: Op = SUM, root: int = 0) -> Request[Any]:
        """Nonblocking :meth:`reduce`."""
        return self._icollective("reduce", x=x, op=self._op(op), root=self._root(root))

    async def allreduce(
        self, x: Any, op: Op = SUM, timeout: float | None = None, *, out: Any = None
    ) -> Any:
        """Combine every rank's ``x`` with ``op``; the result on every rank.

        ``out``: a numpy array to write the result into (and return), like MPI's
        receive buffer: same shape and dtype as the array ``x``, C-contiguous,
        writable, not sharing memory with ``x``. Reusing one ``out`` across calls
        saves allocating (and the kernel zero-filling) a result array per call, and
        the ring algorithm receives the other ranks' data straight into it.
        """
        self._check_out(x, out)
        return await self._collective("allreduce", timeout, x=x, op=self._op(op), out=out)

    def iallreduce(self, x: Any, op: Op = SUM, *, out: Any = None) -> Request[Any]:
        """Nonblocking :meth:`allreduce`; compute while it progresses, then ``await`` it."""
        self._check_out(x, out)
        return self._icollective("allreduce", x=x, op=self._op(op), out=out)

    @staticmethod
    def _check_target(out: Any) -> None:
        """An ``out=`` array must be a C-contiguous, writable numpy array."""
        if not isinstance(out, np.ndarray):
            raise ArgumentError(f"out= must be a numpy array, got {type(out).__name__}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ArgumentError("out= must be a C-contiguous, writable array")

    @staticmethod
    def _check_out(x: Any, out: Any) -> None:
        if out is None:
            return
        if not isinstance(x, np.ndarray) or not isinstance(out, np.ndarray):
            raise ArgumentError(
                f"out= needs x and out to be numpy arrays, got x: {type(x).__name__}, "
                f"out: {type(out).__name__}"
            )
        if out.shape != x.shape or out.dtype != x.dtype:
            raise ArgumentError(
                f"out= must match x: x is {x.dtype}{list(x.shape)}, out is "
                f"{out.dtype}{list(out.shape)}"
            )
        Communicator._check_target(out)
        if np.shares_memory(x, out):
            raise ArgumentError("out= must not share memory with x (afmi has no in-place mode)")

    async def scan(self, x: Any, op: Op = SUM, timeout: float | None = None) -> Any:
        """Inclusive prefix reduction: rank ``i`` gets ``x0 op ... op xi``."""
        return await self._collective("scan", timeout, x=x, op=self._op(op))

    def iscan(self, x: Any, op: Op = SUM) -> Request[Any]:
        """Nonblocking :meth:`scan`."""
        return self._icollective("scan", x=x, op=self._op(op))

    async def exscan(self, x: Any, op: Op = SUM, timeout: float | None = None) -> Any:
        """Exclusive prefix reduction: rank ``i`` gets ``x0 op ... op x(i-1)``; None on rank 0."""
        return await self._collective("exscan", timeout, x=x, op=self._op(op))

    def iexscan(self, x: Any, op: Op = SUM) -> Request[Any]:
        """Nonblocking :meth:`exscan`."""
        return self._icollective("exscan", x=x, op=self._op(op))

    async def reduce_scatter(self, x: Any, op: Op = SUM, timeout: float | None = None) -> Any:
        """Reduce equally shaped arrays, then give rank ``i`` block ``i`` along axis 0.

        Blocks are those of ``numpy.array_split(result, size)``.
        """
        return await self._collective("reduce_scatter", timeout, x=self._array(x), op=self._op(op))

    def ireduce_scatter(self, x: Any, op: Op = SUM) -> Request[Any]:
        """Nonblocking :meth:`reduce_scatter`."""
        return self._icollective("reduce_scatter", x=self._array(x), op=self._op(op))

    @staticmethod
    def _array(x: Any) -> Any:
        import numpy as np

        if not isinstance(x, np.ndarray) or x.ndim == 0:
            raise ArgumentError(
                "reduce_scatter needs a numpy array with at least one dimension, "
                f"got {type(x).__name__}"
            )
        return x

    # -- communicator management --
    async def dup(self, timeout: float | None = None) -> Communicator:
        """A new communicator with the same ranks and a separate message space."""
        info = await self.allgather(self._ep.next_context, timeout=timeout)
        context = max(info)
        self._ep.next_context = context + 2
        return Communicator(self._ep, list(self._group), context, name=f"{self.name}.dup")

    async def split(
        self, color: int | None, key: int = 0, timeout: float | None = None
    ) -> Communicator | None:
        """Partition the ranks by ``color``; order each part by ``(key, rank)``.

        Every rank must call it. A rank passing ``color=None`` takes part in no
        new communicator and gets None.
        """
        if color is not None and type(color) is not int:
            raise ArgumentError(f"color must be an int or None, got {type(color).__name__}")
        if type(key) is not int:
            raise ArgumentError(f"key must be an int, got {type(key).__name__}")
        info = await self.allgather((color, key, self._ep.next_context), timeout=timeout)
        context = max(i[2] for i in info)
        self._ep.next_context = context + 2
        if color is None:
            return None
        members = sorted((k, r) for r, (c, k, _) in enumerate(info) if c == color)
        group = [self._group[r] for _, r in members]
        return Communicator(self._ep, group, context, name=f"{self.name}.split({color})")
