"""Payload serialization: msgpack skeleton plus numpy buffers out of band.

:func:`encode` turns a Python object into ``(header, buffers)``: ``header`` is
msgpack bytes describing the object, ``buffers`` are memoryviews of the raw
array data, *not copied* when the array is contiguous. :func:`decode` rebuilds
the object; arrays are views over the received buffers, so no copy happens on
receive either.

Supported: None, bool, int (any size), float, complex, str, bytes, bytearray,
list, tuple, dict, numpy arrays of any non-object dtype, shape, byte order and
memory layout, and numpy scalars, nested. Types are kept exactly: a tuple comes
back as a tuple, a ``numpy.float32`` as a ``numpy.float32``. Anything else
raises :class:`~afmi.errors.PayloadTypeError` naming the type, unless pickle is
explicitly allowed.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import msgpack
import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

from afmi.errors import PayloadTypeError
from afmi.wire.message import Buffer

__all__ = ["encode", "decode", "packb"]

_TUPLE = 1
_ARRAY = 2
_SCALAR = 3
_BIGINT = 4
_PICKLE = 5
_BYTEARRAY = 6
_COMPLEX = 7
_SET = 8
_FROZENSET = 9


def _dtype_descr(dtype: np.dtype[Any]) -> Any:
    if dtype.fields is None and dtype.subdtype is None:
        return dtype.str
    return dtype_to_descr(dtype)


#: dtypes by their ``dtype.str`` (a payload's arrays mostly share a few).
_DTYPES: dict[str, np.dtype[Any]] = {}


def _descr_dtype(descr: Any) -> np.dtype[Any]:
    if isinstance(descr, str):
        dtype = _DTYPES.get(descr)
        if dtype is None:
            dtype = np.dtype(descr)
            if len(_DTYPES) < 256:
                _DTYPES[descr] = dtype
        return dtype
    return descr_to_dtype([tuple(f) if isinstance(f, list) else f for f in descr])


def _flat_bytes(arr: np.ndarray[Any, Any]) -> tuple[Buffer, str]:
    """A uint8 view of ``arr``'s data (copying only if not contiguous) and its order."""
    if arr.flags.c_contiguous and arr.size and arr.dtype.itemsize:
        # the cheapest view (0.2 against 0.6 us); datetimes have no buffer protocol
        try:
            return memoryview(arr).cast("B"), "C"  # type: ignore[arg-type]
        except ValueError:
            pass
    if arr.flags.c_contiguous:
        flat, order = arr.reshape(-1), "C"
    elif arr.flags.f_contiguous:
        flat, order = arr.T.reshape(-1), "F"
    else:
        flat, order = np.ascontiguousarray(arr).reshape(-1), "C"
    if flat.dtype.itemsize == 0:
        return b"", order
    return memoryview(flat.view(np.uint8)), order  # type: ignore[arg-type]


class _Packers(threading.local):
    """One reusable msgpack packer per thread.

    ``msgpack.packb`` builds a new ``Packer`` (and its 256 KiB buffer) on every
    call, which costs more than packing a small header; a packer kept per
    thread packs the same bytes at well under half the cost.
    """

    def __init__(self) -> None:
        self.strict = msgpack.Packer(use_bin_type=True, strict_types=True)


_PACKERS = _Packers()

#: Types msgpack packs natively with ``strict_types`` (no ``default`` hook).
_NATIVE = frozenset({type(None), bool, int, float, str, bytes})


def packb(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True, strict_types=True)`` with a reused packer.

    Raises what msgpack raises for objects it cannot pack without a ``default``
    hook (e.g. ``TypeError``); use it for trees of native msgpack types only.
    """
    out: bytes = _PACKERS.strict.pack(obj)
    return out


def _encode_fast(obj: Any) -> tuple[bytes, list[Buffer]] | None:
    """The common payloads without the generic ``default`` hook (same bytes out).

    Handles a scalar of a native msgpack type and a single numeric array with a
    plain (non-structured) dtype; anything else returns None.
    """
    t = type(obj)
    if t in _NATIVE:
        if t is int and not -(1 << 63) <= obj < (1 << 64):
            return None  # big int: the generic path's _BIGINT extension
        return packb(obj), []
    if t is np.ndarray and obj.dtype.fields is None and obj.dtype.subdtype is None:
        if obj.dtype.hasobject:
            return None
        data, order = _flat_bytes(obj)
        meta = packb([obj.dtype.str, list(obj.shape), order, 0])
        return packb(msgpack.ExtType(_ARRAY, meta)), [data]
    return None


def encode(obj: Any, *, allow_pickle: bool = False) -> tuple[bytes, list[Buffer]]:
    """Serialize ``obj`` into a msgpack header and a list of raw buffers.

    Raises:
        PayloadTypeError: ``obj`` contains an unsupported type (named in the
            message) and ``allow_pickle`` is false.
    """
    fast = _encode_fast(obj)
    if fast is not None:
        return fast
    return _encode_generic(obj, allow_pickle)


def _encode_generic(obj: Any, allow_pickle: bool) -> tuple[bytes, list[Buffer]]:
    enc = _Encoder(allow_pickle)
    return enc.pack(obj), enc.buffers


class _Encoder:
    """One :func:`encode` call (a class, not closures: see :class:`_Decoder`)."""

    __slots__ = ("allow_pickle", "buffers")

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.buffers: list[Buffer] = []

    def default(self, o: Any) -> Any:
        pack, allow_pickle, buffers = self.pack, self.allow_pickle, self.buffers
        t = type(o)
        if t is tuple:
            return msgpack.ExtType(_TUPLE, pack(list(o)))
        if t is np.ndarray:
            if o.dtype.hasobject:
                if allow_pickle:
                    return msgpack.ExtType(_PICKLE, pickle.dumps(o, protocol=5))
                raise PayloadTypeError(
                    f"cannot send a numpy array of dtype {o.dtype} (it holds Python objects); "
                    "convert it to a numeric dtype or enable Config(pickle=True)"
                )
            data, order = _flat_bytes(o)
            buffers.append(data)
            descr = _dtype_descr(o.dtype)
            meta = [descr, list(o.shape), order, len(buffers) - 1]
            # natives only for a plain dtype: the reused packer, not a new one
            return msgpack.ExtType(_ARRAY, packb(meta) if type(descr) is str else pack(meta))
        if isinstance(o, np.generic) and not o.dtype.hasobject:
            a = np.asarray(o)
            return msgpack.ExtType(_SCALAR, pack([_dtype_descr(a.dtype), a.tobytes()]))
        if t is int:  # only reached when out of msgpack's 64-bit range
            n = (o.bit_length() + 8) // 8
            return msgpack.ExtType(_BIGINT, o.to_bytes(n, "little", signed=True))
        if t is bytearray:
            return msgpack.ExtType(_BYTEARRAY, bytes(o))
        if t is complex:
            return msgpack.ExtType(_COMPLEX, pack([o.real, o.imag]))
        if t is set:
            return msgpack.ExtType(_SET, pack(list(o)))
        if t is frozenset:
            return msgpack.ExtType(_FROZENSET, pack(list(o)))
        if allow_pickle:
            return msgpack.ExtType(_PICKLE, pickle.dumps(o, protocol=5))
        raise PayloadTypeError(
            f"cannot send an object of type {t.__module__}.{t.__qualname__}: afmi sends None, "
            "bool, int, float, complex, str, bytes, list, tuple, dict, set and numpy arrays/"
            "scalars; convert it, or enable Config(pickle=True) for trusted peers"
        )

    def pack(self, o: Any) -> bytes:
        try:
            packed: bytes = msgpack.packb(
                o, default=self.default, use_bin_type=True, strict_types=True
            )
            return packed
        except PayloadTypeError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadTypeError(f"cannot serialize payload: {exc}") from exc


def decode(header: bytes, buffers: list[Buffer], *, allow_pickle: bool = False) -> Any:
    """Rebuild the object encoded by :func:`encode` from its header and buffers.

    Arrays are zero-copy views over ``buffers`` (writable when the buffers are).
    """
    return _Decoder(buffers, allow_pickle).unpack(header)


class _Decoder:
    """One :func:`decode` call.

    A class rather than two closures that call each other: such closures form a
    reference cycle holding ``buffers``, and a received array would then live on
    until the cyclic garbage collector runs instead of going as soon as the
    result does (its memory returned late, and fresh pages faulted in for the
    next message).
    """

    __slots__ = ("allow_pickle", "buffers")

    def __init__(self, buffers: list[Buffer], allow_pickle: bool) -> None:
        self.buffers = buffers
        self.allow_pickle = allow_pickle

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self.ext_hook, raw=False, strict_map_key=False)

    def ext_hook(self, code: int, data: bytes) -> Any:
        unpack = self.unpack
        if code == _TUPLE:
            return tuple(unpack(data))
        if code == _ARRAY:
            descr, shape, order, index = unpack(data)
            dtype = _descr_dtype(descr)
            if dtype.itemsize == 0:
                return np.empty(shape, dtype=dtype, order=order)
            flat = np.frombuffer(self.buffers[index], dtype=dtype)
            if len(shape) == 1:
                return flat
            return flat.reshape(shape, order=order)
        if code == _SCALAR:
            descr, raw = unpack(data)
            return np.frombuffer(raw, dtype=_descr_dtype(descr))[0]
        if code == _BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == _BYTEARRAY:
            return bytearray(data)
        if code == _COMPLEX:
            re, im = unpack(data)
            return complex(re, im)
        if code == _SET:
            return set(unpack(data))
        if code == _FROZENSET:
            return frozenset(unpack(data))
        if code == _PICKLE:
            if not self.allow_pickle:
                raise PayloadTypeError(
                    "received a pickled payload but pickle is not enabled on this rank; "
                    "set Config(pickle=True) on every rank"
                )
            return pickle.loads(data)
        raise PayloadTypeError(f"unknown payload extension type {code}")
