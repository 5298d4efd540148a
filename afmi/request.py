"""Nonblocking requests: awaitable, testable, cancellable handles.

``comm.isend``, ``comm.irecv`` and the nonblocking collectives return a
:class:`Request` at once; the operation progresses in the background while
the caller computes. ``await req`` gives the operation's result.

Cancellation (written down, and tested):

* ``req.cancel()`` withdraws a receive that has not matched yet; the message
  it would have matched stays queued for the next matching receive. A
  request that already completed is not affected (``cancel`` returns False).
* Cancelling the *task awaiting* a request cancels the request, with the same
  guarantee: no message is lost.
* ``await req.wait(timeout)`` only waits: on timeout it raises
  :class:`~afmi.errors.OperationTimeoutError` and the request keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar

from afmi.errors import ArgumentError, OperationTimeoutError

__all__ = ["Request", "Status", "testall", "waitall", "waitany"]

T = TypeVar("T")


class Status:
    """Filled by a receive: the ``source`` rank, the ``tag`` and the payload's ``nbytes``."""

    __slots__ = ("nbytes", "source", "tag")

    def __init__(self) -> None:
        self.source: int = -1
        self.tag: int = -1
        self.nbytes: int = 0

    def Get_source(self) -> int:  # noqa: N802 - mpi4py name
        """mpi4py-style accessor for :attr:`source`."""
        return self.source

    def Get_tag(self) -> int:  # noqa: N802 - mpi4py name
        """mpi4py-style accessor for :attr:`tag`."""
        return self.tag

    def __repr__(self) -> str:
        return f"Status(source={self.source}, tag={self.tag}, nbytes={self.nbytes})"


class Request(Generic[T]):
    """Handle of an operation in progress. Await it for the result."""

    __slots__ = ("_convert", "_converted", "_future", "_on_cancel", "_value", "status", "what")

    def __init__(
        self,
        future: asyncio.Future[Any],
        *,
        convert: Callable[[Any], T] | None = None,
        on_cancel: Callable[[], bool] | None = None,
        what: str = "request",
    ) -> None:
        self._future = future
        self._convert = convert
        self._on_cancel = on_cancel
        self._value: Any = None
        self._converted = False
        #: For receives: source, tag and size of the matched message, once done.
        self.status: Status | None = None
        #: What the request does ("irecv from 3", "iallreduce"), for errors.
        self.what = what

    # -- state --
    def done(self) -> bool:
        """True once the operation completed, failed or was cancelled."""
        return self._future.done()

    def cancelled(self) -> bool:
        """True if the request was cancelled before it completed."""
        return self._future.cancelled()

    def cancel(self) -> bool:
        """Cancel the operation if it has not completed; see the module docstring."""
        if self._future.done():
            return False
        if self._on_cancel is not None and not self._on_cancel():
            return False
        return self._future.cancel()

    def test(self) -> tuple[bool, T | None]:
        """``(True, result)`` if done (raising its error if it failed), else ``(False, None)``."""
        if not self._future.done():
            return False, None
        return True, self._result()

    def result(self) -> T:
        """The result of a completed request (raises if not done or if it failed)."""
        if not self._future.done():
            raise asyncio.InvalidStateError(f"{self.what} is not done yet")
        return self._result()

    def _result(self) -> T:
        if not self._converted:
            raw = self._future.result()
            self._value = self._convert(raw) if self._convert is not None else raw
            self._converted = True
            # A convert function may refer to this request (an irecv's sets its
            # status): dropping it breaks that cycle, so a received array's memory
            # goes back to the receive pool once the caller drops it, not once the
            # garbage collector runs.
            self._convert = self._on_cancel = None
        return self._value  # type: ignore[no-any-return]

    # -- waiting --
    def __await__(self) -> Generator[Any, None, T]:
        yield from self._future.__await__()
        return self._result()

    async def wait(self, timeout: float | None = None) -> T:
        """Wait for the result; on timeout raise, leaving the request running."""
        if timeout is None:
            await asyncio.wait([self._future])
        else:
            done, _ = await asyncio.wait([self._future], timeout=timeout)
            if not done:
                raise OperationTimeoutError(f"{self.what} did not complete within {timeout} s")
        return self._result()

    def add_done_callback(self, fn: Callable[[Request[T]], None]) -> None:
        """Call ``fn(self)`` when the request completes."""
        self._future.add_done_callback(lambda _f: fn(self))

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<Request {self.what} {state}>"


def _check(requests: Iterable[Request[Any]]) -> list[Request[Any]]:
    reqs = list(requests)
    for r in reqs:
        if not isinstance(r, Request):
            raise ArgumentError(f"expected afmi.Request objects, got {type(r).__name__}")
    return reqs


async def waitall(requests: Iterable[Request[Any]], timeout: float | None = None) -> list[Any]:
    """Wait for every request; return their results in order.

    If some fail, waits for all the others to finish, then raises the error of
    the first failed request in list order. On timeout raises
    :class:`~afmi.errors.OperationTimeoutError` and leaves the requests running.
    """
    reqs = _check(requests)
    if not reqs:
        return []
    futures = [r._future for r in reqs]
    _, pending = await asyncio.wait(futures, timeout=timeout)
    if pending:
        raise OperationTimeoutError(
            f"waitall: {len(pending)} of {len(reqs)} requests did not complete within {timeout} s"
        )
    return [r._result() for r in reqs]


async def waitany(
    requests: Sequence[Request[Any]], timeout: float | None = None
) -> tuple[int, Any]:
    """Wait until one request completes; return ``(index, result)`` of the lowest such index."""
    reqs = _check(requests)
    if not reqs:
        raise ArgumentError("waitany needs at least one request")
    for i, r in enumerate(reqs):
        if r.done():
            return i, r._result()
    done, _ = await asyncio.wait(
        [r._future for r in reqs], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if not done:
        raise OperationTimeoutError(f"waitany: no request completed within {timeout} s")
    for i, r in enumerate(reqs):
        if r.done():
            return i, r._result()
    raise AssertionError("unreachable")  # pragma: no cover


def testall(requests: Iterable[Request[Any]]) -> tuple[bool, list[Any] | None]:
    """``(True, results)`` if every request is done, else ``(False, None)``; never blocks."""
    reqs = _check(requests)
    if all(r.done() for r in reqs):
        return True, [r._result() for r in reqs]
    return False, None
