"""Storage tiers of one rank: memory and local disk, each with a byte budget.

A tier stores raw sample bytes by sample id and limits concurrent reads and
writes with a semaphore. It does not decide *what* to keep: the loader does
(static placement plus a next-use cache, see :mod:`afmi.data.placement`).
:meth:`Tier.put` refuses to go over the budget.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from afmi.errors import ArgumentError

__all__ = ["DiskTier", "MemoryTier", "Tier", "TierFullError"]


class TierFullError(ArgumentError):
    """A put would exceed the tier's byte budget."""


def _check_budget(capacity: int, concurrency: int, what: str) -> None:
    if type(capacity) is not int or capacity < 0:
        raise ArgumentError(f"{what} capacity must be an int >= 0 (bytes), got {capacity!r}")
    if type(concurrency) is not int or concurrency < 1:
        raise ArgumentError(f"{what} concurrency must be an int >= 1, got {concurrency!r}")


class Tier(abc.ABC):
    """A byte-budgeted store of samples; see the module docstring."""

    #: ``"memory"`` or ``"disk"``.
    kind: str = "?"

    def __init__(self, capacity: int, concurrency: int) -> None:
        _check_budget(capacity, concurrency, type(self).__name__)
        #: Byte budget.
        self.capacity = capacity
        #: Most concurrent reads/writes.
        self.concurrency = concurrency
        self._sizes: dict[int, int] = {}  # reserved (being written or stored)
        self._ready: set[int] = set()  # stored completely
        self._sem = asyncio.Semaphore(concurrency)
        #: Bytes currently stored.
        self.used = 0

    def __contains__(self, sample: int) -> bool:
        return sample in self._ready

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def free(self) -> int:
        """Bytes still available."""
        return self.capacity - self.used

    def samples(self) -> list[int]:
        """Ids currently stored."""
        return list(self._ready)

    async def get(self, sample: int) -> bytes | None:
        """The stored bytes of ``sample``, or None if it is not here (or still being written)."""
        if sample not in self._ready:
            return None
        async with self._sem:
            try:
                return await self._read(sample)
            except FileNotFoundError:  # removed while we waited
                return None

    async def put(self, sample: int, data: bytes) -> None:
        """Store ``data`` for ``sample`` (a sample already stored or being stored is kept).

        The sample is visible to :meth:`get` once completely written.
        """
        if sample in self._sizes:
            return
        if len(data) > self.free:
            raise TierFullError(
                f"{self.kind} tier: {len(data)} bytes for sample {sample} do not fit "
                f"({self.free} of {self.capacity} bytes free)"
            )
        self._sizes[sample] = len(data)  # reserve before awaiting
        self.used += len(data)
        try:
            async with self._sem:
                await self._write(sample, data)
        except BaseException:
            if sample in self._sizes:
                self._forget(sample)
            self._delete(sample)
            raise
        if sample in self._sizes:
            self._ready.add(sample)
        else:  # removed while being written
            self._delete(sample)

    def remove(self, sample: int) -> None:
        """Drop ``sample`` (no-op if absent)."""
        if sample in self._sizes:
            self._forget(sample)
            self._delete(sample)

    def _forget(self, sample: int) -> None:
        self.used -= self._sizes.pop(sample)
        self._ready.discard(sample)

    @abc.abstractmethod
    async def _read(self, sample: int) -> bytes: ...

    @abc.abstractmethod
    async def _write(self, sample: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def _delete(self, sample: int) -> None: ...

    async def aclose(self) -> None:
        """Drop everything stored. Idempotent."""
        for sample in list(self._sizes):
            self.remove(sample)


class MemoryTier(Tier):
    """Samples kept as bytes objects in this process."""

    kind = "memory"

    def __init__(self, capacity: int, concurrency: int = 64) -> None:
        super().__init__(capacity, concurrency)
        self._data: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"MemoryTier(capacity={self.capacity}, used={self.used})"

    async def get(self, sample: int) -> bytes | None:
        return self._data.get(sample) if sample in self._ready else None  # never waits

    def peek(self, sample: int) -> bytes | None:
        """The stored bytes of ``sample`` or None, without awaiting."""
        return self._data.get(sample) if sample in self._ready else None

    async def _read(self, sample: int) -> bytes:
        return self._data[sample]

    async def _write(self, sample: int, data: bytes) -> None:
        self._data[sample] = data

    def _delete(self, sample: int) -> None:
        self._data.pop(sample, None)


class DiskTier(Tier):
    """One file per sample in a private directory made under ``directory``.

    The private directory (``afmi-tier-*``) is removed by :meth:`aclose`.
    """

    kind = "disk"

    def __init__(
        self, directory: str | os.PathLike[str], capacity: int, concurrency: int = 4
    ) -> None:
        super().__init__(capacity, concurrency)
        base = Path(directory)
        if not base.is_dir():
            raise ArgumentError(f"DiskTier: {base} is not a directory")
        self.path = Path(tempfile.mkdtemp(prefix="afmi-tier-", dir=base))

    def __repr__(self) -> str:
        return f"DiskTier({str(self.path)!r}, capacity={self.capacity}, used={self.used})"

    def _file(self, sample: int) -> Path:
        return self.path / f"{sample}.bin"

    async def _read(self, sample: int) -> bytes:
        return await asyncio.to_thread(self._file(sample).read_bytes)

    async def _write(self, sample: int, data: bytes) -> None:
        final = self._file(sample)
        part = final.with_suffix(".part")

        def write() -> None:
            part.write_bytes(data)
            os.replace(part, final)  # readers never see a partial file

        await asyncio.to_thread(write)

    def _delete(self, sample: int) -> None:
        try:
            self._file(sample).unlink()
        except FileNotFoundError:
            pass

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.to_thread(shutil.rmtree, self.path, True)
