"""What all ranks of one collective call do together: messages, bytes, reductions.

An algorithm's step structure (:meth:`afmi.collectives.base.Algorithm.steps`)
is its critical path. The model also needs the *total* work, for two things:
prices (every message written and read is paid for) and CPU contention (when
ranks share CPUs, as all ranks of one process do, their work runs one after
another). :func:`work` gives it as a :class:`Work`: from an algorithm's own
``work(size, nbytes)`` method when it has one, else from the table below for
afmi's built-in algorithms, else from an algorithm's ``traffic(size, nbytes)``
(messages and bytes) and its step structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["REDUCING", "Work", "work"]

#: Collectives that combine payloads with an op.
REDUCING = frozenset({"allreduce", "reduce", "reduce_scatter", "scan", "exscan"})


@dataclass(frozen=True)
class Work:
    """Totals over all ranks of one call.

    ``messages`` are writes (a send, an upload), ``deliveries`` are reads (a
    receive, a download): equal except where one stored payload is read by
    several ranks. ``shared_deliveries`` counts the deliveries of payloads
    stored once for two or more readers (:meth:`afmi.channels.base.Channel.publish`),
    ``shared_uploads`` those payloads and ``shared_bytes`` the size of one: a
    channel that sends payloads of that size to every reader as a message of
    its own (S3 below its inline size) sends ``shared_deliveries`` messages
    in place of the ``shared_uploads``
    (:meth:`afmi.model.params.ChannelModel.channel_work`). ``reduce_bytes``
    counts the input bytes every op application combines,
    ``path_reduce_bytes`` those on the critical path, ``reduce_op_bytes`` the
    input of one op application (0: the call's payload; a slice where the
    algorithm reduces slices, as the ring does). ``waits`` counts the
    times a rank waits for messages (None: one per delivery): fewer where a
    rank collects several messages in one wait, as a linear gather's root
    does; a channel whose receivers poll (S3) lists a mailbox at least once
    per wait (:attr:`receive_waits`). ``delivery_sizes`` gives, where the
    deliveries are not all of the call's ``nbytes``, how many carry how many
    bytes, as ``((count, nbytes), ...)``: a binomial gather's vertices send
    their whole subtree's items, so on a channel that fetches messages over an
    inline size the upper rounds may fetch where the first does not
    (:meth:`sized_deliveries`). ``receivers_busy`` says that every message
    arrives while its receiver sends one of its own (a ring's pipeline), so a
    receive finds it whole: a message longer than one TCP segment costs such
    a call nothing extra (:meth:`afmi.model.params.ChannelModel.split_deliveries`).
    """

    messages: int
    bytes_sent: int
    deliveries: int
    bytes_received: int
    reduce_bytes: int = 0
    path_reduce_bytes: int = 0
    shared_deliveries: int = 0
    shared_uploads: int = 0
    shared_bytes: int = 0
    waits: int | None = None
    reduce_op_bytes: int = 0
    delivery_sizes: tuple[tuple[int, int], ...] | None = None
    receivers_busy: bool = False

    @property
    def receive_waits(self) -> int:
        """How many times ranks wait for messages: ``waits``, or one per delivery."""
        return self.deliveries if self.waits is None else self.waits

    def sized_deliveries(self, nbytes: int) -> tuple[tuple[int, int], ...]:
        """``((count, bytes of each), ...)`` of the deliveries of a call moving ``nbytes``
        per rank: ``delivery_sizes``, or every delivery of ``nbytes``."""
        if self.delivery_sizes is None:
            return ((self.deliveries, nbytes),)
        return self.delivery_sizes


def _p2p(messages: int, nbytes: int, reduce: int = 0, path: int = 0) -> Work:
    """``messages`` sends of ``nbytes`` each, every one read once."""
    return Work(messages, messages * nbytes, messages, messages * nbytes, reduce, path)


def _log2(size: int) -> int:
    return max(size - 1, 0).bit_length()


def _tree_bytes(size: int, nbytes: int) -> int:
    """Bytes a binomial gather/scatter moves: every rank's item travels ``depth`` hops."""
    return nbytes * sum(bin(v).count("1") for v in range(1, size))


def _sizes(*parts: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """``((count, bytes), ...)`` with the parts of equal size merged, no empty ones."""
    counts: dict[int, int] = {}
    for count, b in parts:
        if count > 0:
            counts[b] = counts.get(b, 0) + count
    return tuple(sorted((count, b) for b, count in counts.items()))


def _tree_sizes(size: int, nbytes: int) -> tuple[tuple[int, int], ...]:
    """The messages of a binomial gather/scatter, ``((count, bytes), ...)``: vertex ``v``'s
    carries its subtree's items, ``min(lowest set bit of v, size - v)`` of them."""
    return _sizes(*((1, min(v & -v, size - v) * nbytes) for v in range(1, size)))


def _tree(size: int, nbytes: int) -> Work:
    """A binomial gather or scatter: ``size - 1`` messages of subtrees' items."""
    moved = _tree_bytes(size, nbytes)
    return Work(size - 1, moved, size - 1, moved, delivery_sizes=_tree_sizes(size, nbytes))


def _doubling(size: int, nbytes: int) -> Work:
    pow2 = 1 << (size.bit_length() - 1)
    rem = size - pow2
    rounds = pow2.bit_length() - 1
    exchanges = pow2 * rounds + 2 * rem
    path = rounds + (1 if rem else 0)
    return _p2p(exchanges, nbytes, (pow2 * rounds + rem) * nbytes, path * nbytes)


def _ring(size: int, nbytes: int, passes: int) -> Work:
    from afmi.collectives.ring import SEGMENT_BYTES

    chunk = -(-nbytes // size)
    segments = max(1, -(-chunk // SEGMENT_BYTES))
    messages = passes * size * (size - 1) * segments
    moved = passes * size * (size - 1) * chunk
    reduce = size * (size - 1) * chunk
    op = min(chunk, SEGMENT_BYTES)  # a chunk is combined one segment at a time
    piece = -(-chunk // segments)  # every message carries one segment of a chunk
    return Work(
        messages,
        moved,
        messages,
        moved,
        reduce,
        (size - 1) * chunk,
        reduce_op_bytes=op,
        delivery_sizes=((messages, piece),),
        receivers_busy=True,  # every rank sends to its right while its left sends to it
    )


def _scan(size: int, nbytes: int) -> Work:
    sends = sum(size - (1 << k) for k in range(_log2(size)))
    return _p2p(sends, nbytes, sends * nbytes, _log2(size) * nbytes)


def _bcast_scatter_allgather(size: int, nbytes: int) -> Work:
    from afmi.collectives.scatter_allgather import BCAST_SCATTER_MIN_BYTES

    if nbytes < BCAST_SCATTER_MIN_BYTES or size < 3:
        return _p2p(size - 1, nbytes)
    piece = -(-nbytes // size)
    scatter = _tree_bytes(size, piece)
    ring = size * (size - 1) * piece
    messages = 2 * (size - 1) + size * (size - 1)
    moved = (size - 1) * 256 + scatter + ring
    return Work(messages, moved, messages, moved)


def _published(uploads: int, readers: int, nbytes: int) -> dict[str, Any]:
    """The shared-read fields of :class:`Work` for ``uploads`` payloads of ``nbytes``, each
    published to ``readers`` ranks (a payload for one reader is a plain message: none)."""
    if readers < 2:
        return {}
    return {
        "shared_deliveries": uploads * readers,
        "shared_uploads": uploads,
        "shared_bytes": nbytes,
    }


def _scatter_reduce(size: int, nbytes: int) -> Work:
    part = -(-nbytes // size)
    slices = size * (size - 1)
    return Work(
        messages=slices + size,
        bytes_sent=(slices + size) * part,
        deliveries=2 * slices,
        bytes_received=2 * slices * part,
        reduce_bytes=slices * part,
        path_reduce_bytes=(size - 1) * part,
        waits=2 * size,  # every rank collects its slices at once, then the reduced ones
        reduce_op_bytes=part,
        **_published(size, size - 1, part),
    )


def _waits(
    per_call: Callable[[int], int], of: Callable[[int, int], Work]
) -> Callable[[int, int], Work]:
    """``of``'s work with ``per_call(size)`` waits (a rank collects several messages at once)."""
    return lambda p, n: dataclasses.replace(of(p, n), waits=per_call(p))


def _reduce_publish(size: int, nbytes: int) -> Work:
    k = size - 1
    return Work(
        messages=k + 1,
        bytes_sent=(k + 1) * nbytes,
        deliveries=2 * k,
        bytes_received=2 * k * nbytes,
        reduce_bytes=k * nbytes,
        path_reduce_bytes=k * nbytes,
        waits=size,  # the root collects the arrays at once; every other rank waits once
        **_published(1, k, nbytes),
    )


#: ``(collective, algorithm) -> work(size, nbytes)`` of afmi's built-in algorithms.
_TABLE: dict[tuple[str, str], Callable[[int, int], Work]] = {
    ("barrier", "linear"): _waits(lambda p: p, lambda p, n: _p2p(2 * (p - 1), 0)),
    ("barrier", "dissemination"): lambda p, n: _p2p(p * _log2(p), 0),
    ("bcast", "linear"): lambda p, n: _p2p(p - 1, n),
    ("bcast", "binomial"): lambda p, n: _p2p(p - 1, n),
    ("bcast", "scatter_allgather"): _bcast_scatter_allgather,
    ("bcast", "storage_publish"): lambda p, n: Work(
        1, n, p - 1, (p - 1) * n, **_published(1, p - 1, n)
    ),
    ("gather", "linear"): _waits(lambda p: 1, lambda p, n: _p2p(p - 1, n)),
    ("gather", "binomial"): _tree,
    ("scatter", "linear"): lambda p, n: _p2p(p - 1, n),
    ("scatter", "binomial"): _tree,
    ("allgather", "linear"): lambda p, n: Work(
        2 * (p - 1),
        (p - 1) * n * (1 + p),
        2 * (p - 1),
        (p - 1) * n * (1 + p),
        waits=p,
        delivery_sizes=_sizes((p - 1, n), (p - 1, p * n)),  # the items, then all of them
    ),
    ("allgather", "bruck"): lambda p, n: Work(
        p * _log2(p), p * (p - 1) * n, p * _log2(p), p * (p - 1) * n
    ),
    ("allgather", "ring"): lambda p, n: _p2p(p * (p - 1), n),
    ("alltoall", "linear"): _waits(lambda p: p, lambda p, n: _p2p(p * (p - 1), n)),
    ("alltoall", "pairwise"): lambda p, n: _p2p(p * (p - 1), n),
    ("reduce", "linear"): _waits(
        lambda p: 1, lambda p, n: _p2p(p - 1, n, (p - 1) * n, (p - 1) * n)
    ),
    ("reduce", "binomial"): lambda p, n: _p2p(p - 1, n, (p - 1) * n, _log2(p) * n),
    ("allreduce", "linear"): _waits(
        lambda p: p, lambda p, n: _p2p(2 * (p - 1), n, (p - 1) * n, (p - 1) * n)
    ),
    ("allreduce", "recursive_doubling"): _doubling,
    ("allreduce", "ring"): lambda p, n: _ring(p, n, 2),
    ("allreduce", "reduce_publish"): _reduce_publish,
    ("allreduce", "scatter_reduce"): _scatter_reduce,
    ("reduce_scatter", "linear"): lambda p, n: Work(
        2 * (p - 1),
        (p - 1) * (n + n // p),
        2 * (p - 1),
        (p - 1) * (n + n // p),
        (p - 1) * n,
        (p - 1) * n,
        waits=p,
        delivery_sizes=_sizes((p - 1, n), (p - 1, n // p)),
    ),
    ("reduce_scatter", "reduce_scatter_tree"): lambda p, n: Work(
        2 * (p - 1),
        (p - 1) * n + _tree_bytes(p, n // p),
        2 * (p - 1),
        (p - 1) * n + _tree_bytes(p, n // p),
        (p - 1) * n,
        _log2(p) * n,
        delivery_sizes=_sizes((p - 1, n), *_tree_sizes(p, n // p)),
    ),
    ("reduce_scatter", "ring"): lambda p, n: _ring(p, n, 1),
    ("scan", "linear"): _waits(
        lambda p: p, lambda p, n: _p2p(2 * (p - 1), n, (p - 1) * n, (p - 1) * n)
    ),
    ("scan", "recursive_doubling"): _scan,
    ("exscan", "linear"): _waits(
        lambda p: p, lambda p, n: _p2p(2 * (p - 1), n, (p - 1) * n, (p - 1) * n)
    ),
    ("exscan", "recursive_doubling"): _scan,
}


#: Messages all ranks send together in the centralised form of each collective,
#: ``size -> (messages, payloads of nbytes moved)``: the least any algorithm sends.
_CENTRAL: dict[str, Callable[[int], tuple[int, int]]] = {
    "barrier": lambda n: (2 * (n - 1), 0),
    "bcast": lambda n: (n - 1, n - 1),
    "scatter": lambda n: (n - 1, n - 1),
    "gather": lambda n: (n - 1, n - 1),
    "reduce": lambda n: (n - 1, n - 1),
    "allreduce": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "allgather": lambda n: (2 * (n - 1), (n - 1) + n * (n - 1)),
    "reduce_scatter": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "scan": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "exscan": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "alltoall": lambda n: (n * (n - 1), n * (n - 1)),
}


def _from_steps(op: str, algorithm: Any, size: int, nbytes: int) -> Work:
    """An estimate for algorithms without a table entry: the larger of the critical
    path's messages and the centralised form's (every algorithm moves at least that)."""
    steps = algorithm.steps(size, nbytes)
    path_messages = sum(s.rounds * s.messages for s in steps)
    path_bytes = sum(s.rounds * s.messages * s.nbytes for s in steps)
    central = _CENTRAL.get(op)
    least, payloads = central(size) if central else (0, 0)
    messages = max(path_messages, least)
    moved = max(path_bytes, payloads * nbytes)
    reduce = path = 0
    if op in REDUCING:
        reduce = (size - 1) * nbytes
        path = min(reduce, sum(s.rounds * s.nbytes for s in steps))
    return Work(messages, moved, messages, moved, reduce, path)


def has_entry(op: str, name: str) -> bool:
    """True if the table knows the work of algorithm ``name`` of ``op``."""
    return (op, name) in _TABLE


def work(op: str, algorithm: Any, size: int, nbytes: int) -> Work:
    """The :class:`Work` of ``algorithm`` running ``op`` on ``size`` ranks with ``nbytes``."""
    if size <= 1:
        return Work(0, 0, 0, 0)
    own = getattr(algorithm, "work", None)
    if callable(own):
        result = own(size, nbytes)
        if isinstance(result, Work):
            return result
    entry = _TABLE.get((op, getattr(algorithm, "name", "")))
    if entry is not None:
        return entry(size, nbytes)
    if op == "send":
        return _p2p(1, nbytes)
    estimate = _from_steps(op, algorithm, size, nbytes)
    stated = getattr(algorithm, "traffic", None)
    if callable(stated):  # an algorithm that states only its messages and bytes
        messages, moved = (int(v) for v in stated(size, nbytes))
        return Work(
            messages, moved, messages, moved, estimate.reduce_bytes, estimate.path_reduce_bytes
        )
    return estimate
