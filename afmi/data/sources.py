"""Where samples come from: the origin store.

A :class:`Source` maps sample ids ``0..F-1`` to bytes and knows each
sample's size through its :class:`Manifest`. Three sources ship:

* :class:`S3Source`: one object per sample in an S3 or S3-compatible bucket,
  read with concurrent GETs through aiobotocore; samples larger than
  ``part_bytes`` are read as concurrent ranged GETs.
* :class:`DirectorySource`: one file per sample in a local directory.
* :class:`ArraySource`: sample ``i`` is ``array[i]`` of an in-memory numpy array.

A source turns bytes back into a sample with :meth:`Source.decode`
(``bytes`` by default; arrays for :class:`ArraySource`).
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afmi.data.model import SourceCost
from afmi.errors import AfmiError, ArgumentError

__all__ = [
    "ArraySource",
    "DirectorySource",
    "Manifest",
    "S3Source",
    "SampleReadError",
    "Source",
]


class SampleReadError(AfmiError, OSError):
    """A sample could not be read; the message names the sample and the source."""

    def __init__(self, sample: int, where: str, reason: str) -> None:
        super().__init__(f"sample {sample} could not be read from {where}: {reason}")
        #: The sample id.
        self.sample = sample
        #: Description of the source (``s3://bucket/key``, a path, ...).
        self.where = where


@dataclass(frozen=True)
class Manifest:
    """The data set's samples: a key (object name, file name) and a size in bytes each."""

    keys: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.sizes):
            raise ArgumentError(
                f"manifest has {len(self.keys)} keys but {len(self.sizes)} sizes: "
                "give one size per key"
            )
        for key, size in zip(self.keys, self.sizes):
            if type(size) is not int or size < 0:
                raise ArgumentError(f"manifest size of {key!r} must be an int >= 0, got {size!r}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def total_bytes(self) -> int:
        """Sum of all sample sizes."""
        return sum(self.sizes)

    def to_json(self) -> str:
        """The manifest as JSON (``{"keys": [...], "sizes": [...]}``)."""
        return json.dumps({"keys": list(self.keys), "sizes": list(self.sizes)})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Read a manifest written by :meth:`to_json`."""
        try:
            data = json.loads(text)
            return cls(tuple(data["keys"]), tuple(int(s) for s in data["sizes"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArgumentError(
                f'not a manifest: expected JSON {{"keys": [...], "sizes": [...]}} ({exc})'
            ) from exc


class Source(abc.ABC):
    """The origin of a data set; see the module docstring.

    Subclasses implement :meth:`read` and may override :meth:`read_range`,
    :meth:`decode`, :meth:`aclose` and :attr:`default_cost`.
    """

    #: Most concurrent reads the loader issues to this source.
    max_concurrency: int = 16

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        #: Requests sent to the store (a ranged read counts one per range).
        self.requests = 0

    def __len__(self) -> int:
        return len(self.manifest)

    def size(self, sample: int) -> int:
        """Size of ``sample`` in bytes."""
        return self.manifest.sizes[sample]

    def requests_for(self, sample: int) -> int:
        """How many requests :meth:`read` sends to the store for ``sample``."""
        return 1

    @abc.abstractmethod
    def describe(self, sample: int) -> str:
        """Where ``sample`` lives, for error messages (``s3://bucket/key``, a path, ...)."""

    def _check(self, sample: int) -> None:
        if not 0 <= sample < len(self.manifest):
            raise SampleReadError(
                sample, repr(self), f"no such sample: ids are 0..{len(self.manifest) - 1}"
            )

    @abc.abstractmethod
    async def read(self, sample: int) -> bytes:
        """All bytes of ``sample``; raises :class:`SampleReadError` naming it on failure."""

    async def read_range(self, sample: int, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of ``sample``."""
        return (await self.read(sample))[start:stop]

    def decode(self, sample: int, data: bytes) -> Any:
        """Turn stored bytes back into the sample the user sees (``bytes`` by default)."""
        return data

    @property
    def default_cost(self) -> SourceCost:
        """Model parameters of this source (latency, bandwidth, price)."""
        return SourceCost(latency=1e-4, bandwidth=1e9, aggregate_bandwidth=2e9)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections. Idempotent."""

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ArraySource(Source):
    """Sample ``i`` is ``array[i]``; decoded samples are read-only arrays of that shape."""

    max_concurrency = 64

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        if not isinstance(array, np.ndarray) or array.ndim < 1 or array.dtype.hasobject:
            raise ArgumentError(
                "ArraySource needs a numpy array with at least one dimension "
                "(samples along axis 0) and a non-object dtype"
            )
        self.array = np.ascontiguousarray(array)
        n = len(self.array)
        item = int(self.array[0].nbytes) if n else 0
        super().__init__(Manifest(tuple(str(i) for i in range(n)), (item,) * n))

    def __repr__(self) -> str:
        return f"ArraySource(shape={self.array.shape}, dtype={self.array.dtype})"

    def describe(self, sample: int) -> str:
        return f"{self!r}[{sample}]"

    async def read(self, sample: int) -> bytes:
        self._check(sample)
        self.requests += 1
        return bytes(self.array[sample].tobytes())

    def decode(self, sample: int, data: bytes) -> Any:
        return np.frombuffer(data, dtype=self.array.dtype).reshape(self.array.shape[1:])

    @property
    def default_cost(self) -> SourceCost:
        return SourceCost(latency=1e-6, bandwidth=1e10, aggregate_bandwidth=2e10)


class DirectorySource(Source):
    """One file per sample in ``directory`` (``names`` in id order; default: sorted file names)."""

    max_concurrency = 8

    def __init__(self, directory: str | os.PathLike[str], names: Sequence[str] | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ArgumentError(f"DirectorySource: {self.directory} is not a directory")
        if names is None:
            names = sorted(p.name for p in self.directory.iterdir() if p.is_file())
        sizes = []
        for name in names:
            try:
                sizes.append((self.directory / name).stat().st_size)
            except OSError as exc:
                raise ArgumentError(
                    f"DirectorySource: cannot stat {self.directory / name}: {exc.strerror}"
                ) from exc
        super().__init__(Manifest(tuple(names), tuple(sizes)))

    def __repr__(self) -> str:
        return f"DirectorySource({str(self.directory)!r})"

    def describe(self, sample: int) -> str:
        return str(self.directory / self.manifest.keys[sample])

    async def read(self, sample: int) -> bytes:
        self._check(sample)
        path = self.directory / self.manifest.keys[sample]
        self.requests += 1
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise SampleReadError(sample, str(path), exc.strerror or str(exc)) from exc

    async def read_range(self, sample: int, start: int, stop: int) -> bytes:
        self._check(sample)
        path = self.directory / self.manifest.keys[sample]

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(max(0, stop - start))

        self.requests += 1
        try:
            return await asyncio.to_thread(read)
        except OSError as exc:
            raise SampleReadError(sample, str(path), exc.strerror or str(exc)) from exc


class S3Source(Source):
    """One object per sample in an S3 (or S3-compatible) bucket, read with aiobotocore.

    Build it with :meth:`open` (lists the objects under ``prefix`` to make the
    manifest) or pass a :class:`Manifest` of keys and sizes. Up to
    ``max_concurrency`` GETs run at once over a pooled connection set; samples
    larger than ``part_bytes`` are fetched as concurrent ranged GETs.
    Credentials come from the usual AWS environment and files.
    """

    def __init__(
        self,
        bucket: str,
        manifest: Manifest,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = 16,
        part_bytes: int | None = 8 * 1024 * 1024,
    ) -> None:
        if not bucket or not isinstance(bucket, str):
            raise ArgumentError("S3Source needs a bucket name")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ArgumentError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if part_bytes is not None and (type(part_bytes) is not int or part_bytes < 1):
            raise ArgumentError(f"part_bytes must be a positive int or None, got {part_bytes!r}")
        super().__init__(manifest)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_concurrency = max_concurrency
        self.part_bytes = part_bytes
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Source(s3://{self.bucket}, {len(self)} samples)"

    @classmethod
    async def open(
        cls,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = 16,
        part_bytes: int | None = 8 * 1024 * 1024,
    ) -> S3Source:
        """List the objects under ``prefix`` (sorted by key) and return a source over them."""
        src = cls(
            bucket,
            Manifest((), ()),
            endpoint_url=endpoint_url,
            region=region,
            max_concurrency=max_concurrency,
            part_bytes=part_bytes,
        )
        try:
            client = await src._get_client()
            keys, sizes = [], []
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    keys.append(obj["Key"])
                    sizes.append(int(obj["Size"]))
        except Exception as exc:
            await src.aclose()
            if isinstance(exc, ArgumentError):
                raise
            raise ArgumentError(
                f"cannot list s3://{bucket}/{prefix} at {endpoint_url or 'AWS'}: {exc}"
            ) from exc
        if not keys:
            await src.aclose()
            raise ArgumentError(f"no objects under s3://{bucket}/{prefix}: nothing to load")
        order = sorted(range(len(keys)), key=keys.__getitem__)
        src.manifest = Manifest(tuple(keys[i] for i in order), tuple(sizes[i] for i in order))
        return src

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                stack = AsyncExitStack()
                session = get_session()
                self._client = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        config=AioConfig(max_pool_connections=self.max_concurrency),
                    )
                )
                self._stack = stack
        return self._client

    def describe(self, sample: int) -> str:
        return f"s3://{self.bucket}/{self.manifest.keys[sample]}"

    def requests_for(self, sample: int) -> int:
        size, part = self.manifest.sizes[sample], self.part_bytes
        return 1 if part is None or size <= part else -(-size // part)

    async def _get(self, sample: int, byte_range: str | None) -> bytes:
        client = await self._get_client()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.manifest.keys[sample]}
        if byte_range is not None:
            args["Range"] = byte_range
        self.requests += 1
        try:
            resp = await client.get_object(**args)
            async with resp["Body"] as body:
                return bytes(await body.read())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SampleReadError(
                sample, self.describe(sample), f"{type(exc).__name__}: {exc}"
            ) from exc

    async def read(self, sample: int) -> bytes:
        self._check(sample)
        size = self.manifest.sizes[sample]
        part = self.part_bytes
        if part is None or size <= part:
            return await self._get(sample, None)
        ranges = [(lo, min(lo + part, size)) for lo in range(0, size, part)]
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.read_range(sample, lo, hi)) for lo, hi in ranges]
        except* SampleReadError as group:
            raise group.exceptions[0] from None
        return b"".join(t.result() for t in tasks)

    async def read_range(self, sample: int, start: int, stop: int) -> bytes:
        self._check(sample)
        if stop <= start:
            return b""
        return await self._get(sample, f"bytes={start}-{stop - 1}")

    @property
    def default_cost(self) -> SourceCost:
        # S3 overhead and per-connection bandwidth as measured for FMI; GET price per request.
        return SourceCost(
            latency=40.4e-3, bandwidth=50e6, aggregate_bandwidth=10e9, request_price=4.3e-7
        )

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
