"""A conformance suite every channel driver must pass.

Each case is an ``async def case(run)`` where ``run(main, size, *args)``
starts ``main(comm, *args)`` on ``size`` ranks over the channel under test and
returns the results in rank order, e.g.
``functools.partial(afmi.launch_local, channel="redis", config=cfg)``. The
ranks' ``main`` functions are module-level, so a runner that starts ranks in
separate processes can import them by name.

Use it from pytest::

    from afmi.testing import conformance

    @pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
    async def test_my_channel(case):
        await case(functools.partial(afmi.launch_local, channel="mine"))
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

import afmi
from afmi.comm import Communicator

__all__ = ["CASES", "Runner", "case_id"]

Runner = Callable[..., Awaitable[list[Any]]]
Case = Callable[[Runner], Awaitable[None]]
CASES: list[Case] = []


def _case(fn: Case) -> Case:
    CASES.append(fn)
    return fn


def case_id(case: Case) -> str:
    """pytest id of a case."""
    return case.__name__.removeprefix("case_")


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# -- ordering ------------------------------------------------------------------------
async def _ordering(comm: Communicator, n: int) -> list[int] | None:
    if comm.rank == 0:
        for i in range(n):
            await comm.send(i, 1, tag=7)
        return None
    if comm.rank == 1:
        return [await comm.recv(0, 7) for _ in range(n)]
    return None


@_case
async def case_fifo_order(run: Runner) -> None:
    """Messages from one source with one tag arrive in send order."""
    out = await run(_ordering, 2, 200)
    _expect(out[1] == list(range(200)), f"order broken: {out[1][:20]}...")


async def _isend_order(comm: Communicator, n: int) -> list[int] | None:
    if comm.rank == 0:
        reqs = [comm.isend(np.full(i % 7 * 1000 + 1, i), 1, tag=1) for i in range(n)]
        await afmi.waitall(reqs)
        return None
    return [int((await comm.recv(0, 1))[0]) for _ in range(n)]


@_case
async def case_isend_order(run: Runner) -> None:
    """Concurrent isends of mixed sizes are received in the order they were started."""
    out = await run(_isend_order, 2, 50)
    _expect(out[1] == list(range(50)), f"isend order broken: {out[1]}")


# -- wildcards and status ---------------------------------------------------------------
async def _wildcards(comm: Communicator) -> Any:
    if comm.rank != 0:
        await comm.send(comm.rank * 10, 0, tag=comm.rank)
        return None
    got = {}
    for _ in range(comm.size - 1):
        st = afmi.Status()
        value = await comm.recv(afmi.ANY_SOURCE, afmi.ANY_TAG, status=st)
        got[st.source] = (value, st.tag, st.nbytes > 0)
    return got


@_case
async def case_wildcards_and_status(run: Runner) -> None:
    """ANY_SOURCE/ANY_TAG receives get every message with a correct Status."""
    out = await run(_wildcards, 4)
    _expect(out[0] == {r: (r * 10, r, True) for r in (1, 2, 3)}, f"bad wildcard result {out[0]}")


async def _tag_selective(comm: Communicator) -> Any:
    if comm.rank == 0:
        await comm.send("a", 1, tag=1)
        await comm.send("b", 1, tag=2)
        return None
    second = await comm.recv(0, tag=2)
    first = await comm.recv(0, tag=1)
    return first, second


@_case
async def case_tag_selection(run: Runner) -> None:
    """A receive for a later tag skips over earlier messages, which stay queued."""
    out = await run(_tag_selective, 2)
    _expect(out[1] == ("a", "b"), f"tag selection broken: {out[1]}")


# -- payloads ----------------------------------------------------------------------------------
async def _large(comm: Communicator, nbytes: int) -> Any:
    n = nbytes // 8
    if comm.rank == 0:
        arr = np.arange(n, dtype=np.float64)
        await comm.send(arr, 1)
        arr[:] = -1  # must not affect what rank 1 receives
        return None
    got = await comm.recv(0)
    return bool(got.shape == (n,) and got[0] == 0 and got[-1] == n - 1 and (got >= 0).all())


@_case
async def case_large_array(run: Runner) -> None:
    """A 16 MiB array arrives intact and unaffected by later changes at the sender."""
    out = await run(_large, 2, 16 * 1024 * 1024)
    _expect(out[1] is True, "large array corrupted")


async def _writable(comm: Communicator) -> Any:
    if comm.rank == 0:
        await comm.send(np.arange(10), 1)
        await comm.send(np.arange(100_000), 1)  # 800 kB: chunked where a channel chunks
        return None
    small, large = await comm.recv(0), await comm.recv(0)
    small += 1  # raises if the channel handed out a read-only view
    large += 1
    return int(small[0]), int(large[-1])


@_case
async def case_received_arrays_are_writable(run: Runner) -> None:
    """Received arrays, small and large, belong to the receiver and can be changed in place."""
    out = await run(_writable, 2)
    _expect(out[1] == (1, 100_000), f"received arrays after += 1: {out[1]}")


async def _held(comm: Communicator, count: int, nbytes: int) -> Any:
    # Rank 1 keeps a view of every other array it receives and drops the rest, so a
    # channel that reuses memory (afmi.wire.pool) must hand the dropped arrays' memory
    # to later messages and never the held ones'.
    if comm.rank == 0:
        for i in range(count):
            await comm.send(np.full(nbytes, i % 251, np.uint8), 1)
        await comm.send(np.full((2, nbytes // 2), 7, np.uint8), 1)  # several buffers
        return None
    if comm.rank != 1:
        return None
    kept: list[tuple[int, Any]] = []
    for i in range(count):
        got = await comm.recv(0)
        if got.shape != (nbytes,) or not (got == i % 251).all():
            return f"message {i} arrived wrong"
        if i % 2 == 0:
            kept.append((i % 251, got[nbytes // 3 :]))
        got[:16] = 255  # the receiver writes into what it holds
    last = await comm.recv(0)
    if not (last == 7).all():
        return "the last message arrived wrong"
    for value, view in kept:
        if not (view == value).all():
            return f"an array holding {value} was overwritten while held"
    return "ok"


@_case
async def case_held_arrays_keep_their_data(run: Runner) -> None:
    """Arrays a receiver holds keep their contents while later messages arrive (channels
    that reuse receive memory reuse only what nobody refers to)."""
    out = await run(_held, 2, 12, 600_000)
    _expect(out[1] == "ok", f"rank 1: {out[1]}")


PAYLOADS: list[Any] = [
    None,
    True,
    -(2**70),
    3.5,
    "text ü",
    b"\x00bytes",
    (1, (2, [3])),
    {"k": [1, 2], 3: (4,)},
    np.arange(12, dtype=">i4").reshape(3, 4),
    np.asfortranarray(np.ones((3, 2))),
    np.arange(20.0)[::3],
    np.zeros((0, 5)),
    np.float32(1.25),
    [np.int8(3), {"a": np.array(7)}],
]


async def _payloads(comm: Communicator) -> Any:
    if comm.rank == 0:
        for p in PAYLOADS:
            await comm.send(p, 1)
        return None
    return [await comm.recv(0) for _ in PAYLOADS]


def same(a: Any, b: Any) -> bool:
    """Equal values and equal types, recursively (arrays: dtype, shape and values)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and bool(a == b)
    return bool(a == b)


@_case
async def case_payload_types(run: Runner) -> None:
    """Every supported payload type round-trips with its type."""
    out = await run(_payloads, 2)
    for sent, got in zip(PAYLOADS, out[1]):
        _expect(same(sent, got), f"payload {sent!r} came back as {got!r}")


# -- no deadlock, self-send, many ranks --------------------------------------------------
async def _both_send_first(comm: Communicator) -> Any:
    peer = 1 - comm.rank
    await comm.send(np.full(100_000, comm.rank), peer)
    got = await comm.recv(peer)
    return int(got[0])


@_case
async def case_both_send_first(run: Runner) -> None:
    """Two ranks that both send before receiving do not deadlock."""
    out = await run(_both_send_first, 2)
    _expect(out == [1, 0], f"exchange broken: {out}")


async def _self_send(comm: Communicator) -> Any:
    await comm.send({"me": comm.rank}, comm.rank, tag=3)
    return await comm.recv(comm.rank, 3)


@_case
async def case_send_to_self(run: Runner) -> None:
    """A rank can send to itself."""
    out = await run(_self_send, 2)
    _expect(out == [{"me": 0}, {"me": 1}], f"self send broken: {out}")


async def _all_pairs(comm: Communicator) -> Any:
    reqs = [comm.irecv(src, tag=5) for src in range(comm.size)]
    await afmi.waitall([comm.isend((comm.rank, d), d, tag=5) for d in range(comm.size)])
    got = await afmi.waitall(reqs)
    return got == [(s, comm.rank) for s in range(comm.size)]


@_case
async def case_many_ranks_all_pairs(run: Runner) -> None:
    """Eight ranks exchange a message between every ordered pair."""
    out = await run(_all_pairs, 8)
    _expect(all(out), f"all-pairs exchange broken: {out}")


# -- cancellation and timeouts --------------------------------------------------------------
async def _cancel_then_receive(comm: Communicator) -> Any:
    if comm.rank == 0:
        req = comm.irecv(1, tag=9)
        cancelled = req.cancel()
        await comm.send("go", 1, tag=1)
        value = await comm.recv(1, tag=9, timeout=30)
        return cancelled, req.cancelled(), value
    await comm.recv(0, tag=1)
    await comm.send("payload", 0, tag=9)
    return None


@_case
async def case_cancel_keeps_message(run: Runner) -> None:
    """A cancelled irecv does not consume the message it would have matched."""
    out = await run(_cancel_then_receive, 2)
    _expect(out[0] == (True, True, "payload"), f"cancel lost a message: {out[0]}")


async def _timeout_then_receive(comm: Communicator) -> Any:
    if comm.rank == 0:
        try:
            await comm.recv(1, tag=4, timeout=0.2)
        except afmi.OperationTimeoutError:
            timed_out = True
        else:
            timed_out = False
        await comm.send("late ok?", 1, tag=1)
        value = await comm.recv(1, tag=4, timeout=30)
        return timed_out, value
    await comm.recv(0, tag=1)
    await comm.send("late", 0, tag=4)
    return None


@_case
async def case_timeout_keeps_communicator(run: Runner) -> None:
    """A recv past its timeout raises, and the communicator still works afterwards."""
    out = await run(_timeout_then_receive, 2)
    _expect(out[0] == (True, "late"), f"timeout handling broken: {out[0]}")


async def _task_cancel(comm: Communicator) -> Any:
    if comm.rank == 0:
        task = asyncio.ensure_future(comm.recv(1, tag=2))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await comm.send("now", 1)
        return await comm.recv(1, tag=2, timeout=30)
    await comm.recv(0)
    await comm.send(42, 0, tag=2)
    return None


@_case
async def case_cancelled_task_keeps_message(run: Runner) -> None:
    """Cancelling a task blocked in recv does not lose the message."""
    out = await run(_task_cancel, 2)
    _expect(out[0] == 42, f"task cancel lost a message: {out[0]}")


# -- collectives smoke ------------------------------------------------------------------------
async def _collectives(comm: Communicator) -> Any:
    x = np.arange(1000, dtype=np.float64) * (comm.rank + 1)
    total = await comm.allreduce(x)
    root = await comm.bcast({"cfg": 1} if comm.rank == 0 else None)
    gathered = await comm.allgather(comm.rank)
    await comm.barrier()
    n = comm.size
    return bool(np.allclose(total, np.arange(1000) * n * (n + 1) / 2)), root, gathered


@_case
async def case_collectives(run: Runner) -> None:
    """allreduce, bcast, allgather and barrier run over the channel with 5 ranks."""
    out = await run(_collectives, 5)
    for r, (ok, root, gathered) in enumerate(out):
        _expect(ok and root == {"cfg": 1} and gathered == list(range(5)), f"rank {r}: {out[r]}")
