"""Memory for large received messages, reused once nothing refers to it.

A channel that receives a large message needs memory for its payload. Fresh
memory is expensive: the kernel maps and zeroes every page on first touch. On
this project's machine (a 2-core Firecracker VM) taking a fresh 16 MiB array
and writing it once cost 5.2 ms where writing an array already in use cost
0.6 ms, and across processes a 4-rank gather of 8 MiB arrays spent about half
of its root's CPU time on new pages (docs/design.md, "Receive buffers").

A :class:`BufferPool` hands out arrays cut from *slabs* it keeps, and reuses a
slab once nothing but the pool refers to it: every array, view or memoryview a
user derives from a received array holds a reference to its slab, so CPython's
reference count says exactly when the memory is free again (no callback and no
explicit release). Slabs come in size classes at most a quarter apart, so that
messages of a repeating size (the gradients of a training loop, the chunks of
a collective) find theirs again; only messages of ``min_bytes`` or more use
the pool, smaller ones come from the allocator's own free lists.

The pool holds at most ``limit_bytes`` of slabs. A slab someone still holds
counts until the pool forgets it (the holder keeps the memory, which returns
to the system when the last reference goes). To make room the pool forgets
the slabs of the size class used least recently first, held ones before free
ones within a class. ``Config.recv_pool_bytes`` sets the limit
(0: every message gets fresh memory, as without a pool).

Reference counts decide reuse, so the pool works only where they are exact:
on CPython with its global interpreter lock. Elsewhere (PyPy, a free-threaded
build) :func:`shared_pool` returns None and channels allocate as before.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

__all__ = [
    "BufferPool",
    "COPY_MIN_BYTES",
    "POOL_MIN_BYTES",
    "current_pool",
    "pool_supported",
    "shared_pool",
    "size_class",
]

#: Smallest message payload that takes pooled memory (below it the allocator reuses
#: freed memory by itself, and a lookup would cost more than it saves).
POOL_MIN_BYTES = 64 * 1024
#: Smallest buffer an in-process copy (the local channel, a send to oneself) takes from
#: the pool. Measured on ``local``, 4 ranks in one process (2026-12-06): with the pool a
#: bcast of 512 KiB took 0.35-0.38 against 0.48-0.51 ms, an allreduce of 1 MiB 2.2-2.3
#: against 2.7-2.8 ms and a bcast of 16 MiB 4.4-5.0 against 12.0-12.6 ms; from 128 to
#: 256 KiB the allocator's own recycled memory was as fast or faster (a gather of
#: 256 KiB 0.21-0.22 against 0.18-0.22 ms), and copying into a slab costs about 1.5 us
#: more than into a fresh ``bytearray`` when both are warm.
COPY_MIN_BYTES = 512 * 1024
#: Slabs kept per size class: a caller that holds more arrays of one size than this
#: gets fresh memory for the rest, and the pool forgets its oldest slab of that size.
PER_CLASS = 8


def _refs(slabs: list[Any], index: int) -> int:
    """The reference count of ``slabs[index]`` as seen from inside the pool."""
    return sys.getrefcount(slabs[index])


def _baseline() -> int:
    # What _refs reports for an array that only a pool's list holds (the list's
    # reference and the call's own temporaries): measured, not assumed.
    probe = [np.empty(1, np.uint8)]
    return _refs(probe, 0)


def pool_supported() -> bool:
    """True where reference counts are exact (CPython with the GIL)."""
    if sys.implementation.name != "cpython" or not hasattr(sys, "getrefcount"):
        return False
    gil = getattr(sys, "_is_gil_enabled", None)
    return gil is None or bool(gil())


_FREE_REFS = _baseline() if pool_supported() else -1


def size_class(nbytes: int) -> int:
    """The slab size for ``nbytes``: rounded up to a quarter of its power of two (at
    least a 4 KiB page), so a slab is at most 25 % larger than the message."""
    if nbytes <= 4096:
        return 4096
    step = max(4096, 1 << ((nbytes - 1).bit_length() - 3))
    return -(-nbytes // step) * step


class BufferPool:
    """Reusable memory for large received payloads (see the module docstring).

    ``limit_bytes`` bounds the slabs the pool keeps; ``min_bytes`` is the smallest
    request it serves from them. Thread-safe.
    """

    def __init__(self, limit_bytes: int, *, min_bytes: int = POOL_MIN_BYTES) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes}")
        self.limit_bytes = int(limit_bytes)
        self.min_bytes = int(min_bytes)
        self._classes: dict[int, list[np.ndarray[Any, Any]]] = {}
        self._held = 0
        self._lock = threading.Lock()
        self._taken = self._reused = self._allocated = self._unpooled = 0

    def take(self, nbytes: int) -> np.ndarray[Any, Any]:
        """A writable ``uint8`` array of ``nbytes`` whose contents are undefined.

        It is a view of a pooled slab when ``nbytes`` is at least ``min_bytes`` and
        fits the limit, else a fresh ``numpy.empty`` array.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        size = size_class(nbytes)
        if nbytes < self.min_bytes or size > self.limit_bytes:
            self._unpooled += 1
            return np.empty(nbytes, np.uint8)
        with self._lock:
            self._taken += 1
            # the class moves to the end: the dict runs from the least recently used
            # class to the most, the order in which _make_room forgets slabs
            slabs = self._classes[size] = self._classes.pop(size, [])
            # the most recently used free slab first: the likeliest still in the caches
            for i in range(len(slabs) - 1, -1, -1):
                if _refs(slabs, i) == _FREE_REFS:
                    slab = slabs.pop(i)
                    slabs.append(slab)  # most recently used last
                    self._reused += 1
                    return slab[:nbytes]
            if len(slabs) >= PER_CLASS:
                self._held -= len(slabs.pop(0))
            self._make_room(size)  # may drop classes left empty, this one too
            slab = np.empty(size, np.uint8)
            self._classes.setdefault(size, []).append(slab)
            self._held += size
            self._allocated += 1
            return slab[:nbytes]

    def _make_room(self, size: int) -> None:
        """Forget slabs until ``size`` more fits the limit, those of the least recently
        used size class first; within a class held ones first (forgetting them frees
        nothing now, but their memory would be reused only once let go), then free ones,
        the least recently used first.

        Until session 22 every class's held slabs went before any free one, and classes
        in the order they were made: in a pool full of sizes used once, a size in use
        every call (4 ranks in one process, ring allreduces of 4 MiB) lost the slabs
        its ranks were holding at the moment and took fresh memory nearly every call.
        """
        if self._held + size <= self.limit_bytes:
            return
        for slabs in self._classes.values():  # least recently used class first
            for want_free in (False, True):
                i = 0
                while i < len(slabs) and self._held + size > self.limit_bytes:
                    if (_refs(slabs, i) == _FREE_REFS) == want_free:
                        self._held -= len(slabs.pop(i))
                    else:
                        i += 1
            if self._held + size <= self.limit_bytes:
                break
        for key in [k for k, v in self._classes.items() if not v]:
            del self._classes[key]

    def clear(self) -> None:
        """Forget every slab: free ones return to the system now, held ones with
        their last reference."""
        with self._lock:
            self._classes.clear()
            self._held = 0

    def stats(self) -> dict[str, int]:
        """Counters: requests served from slabs (``taken``), of them from a slab used
        before (``reused``), slabs made (``allocated``), requests too small or too
        large for the pool (``unpooled``), and the slabs kept (``slabs``,
        ``held_bytes``, of which ``free_bytes`` are referenced by nobody else)."""
        with self._lock:
            free = sum(
                len(slabs[i])
                for slabs in self._classes.values()
                for i in range(len(slabs))
                if _refs(slabs, i) == _FREE_REFS
            )
            return {
                "taken": self._taken,
                "reused": self._reused,
                "allocated": self._allocated,
                "unpooled": self._unpooled,
                "slabs": sum(len(s) for s in self._classes.values()),
                "held_bytes": self._held,
                "free_bytes": free,
            }


_shared: BufferPool | None = None
_shared_lock = threading.Lock()


def shared_pool(limit_bytes: int) -> BufferPool | None:
    """The process's pool, its limit raised to at least ``limit_bytes``; None when
    ``limit_bytes`` is 0 or reference counts cannot be trusted (:func:`pool_supported`).

    Every channel of a process shares one pool, so ranks of one process (a local
    simulation) reuse each other's memory and the limit is not multiplied by them.
    """
    global _shared
    if limit_bytes <= 0 or not pool_supported():
        return None
    with _shared_lock:
        if _shared is None:
            _shared = BufferPool(limit_bytes)
        elif _shared.limit_bytes < limit_bytes:
            _shared.limit_bytes = limit_bytes
        return _shared


def current_pool() -> BufferPool | None:
    """The process's pool as it is (None before any endpoint made one), for its
    :meth:`~BufferPool.stats` or :meth:`~BufferPool.clear`."""
    return _shared
