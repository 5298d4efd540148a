"""Applying a reduction op inside an algorithm, in place when that is safe.

Built-in elementwise ops on numpy arrays write their result into a buffer
the algorithm owns (a received array, or an earlier result) instead of
allocating a new array per step. The caller's input array is never written:
algorithms pass as ``into`` only arrays they received or produced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from afmi import ops
from afmi.errors import ArgumentError
from afmi.ops import Op

__all__ = ["combine", "elementwise_ufunc", "mismatch_message"]

#: Built-in ops that map onto one numpy ufunc and keep the operands' dtype.
_SAME_DTYPE: dict[int, Any] = {
    id(ops.SUM): np.add,
    id(ops.PROD): np.multiply,
    id(ops.MIN): np.minimum,
    id(ops.MAX): np.maximum,
    id(ops.BAND): np.bitwise_and,
    id(ops.BOR): np.bitwise_or,
    id(ops.BXOR): np.bitwise_xor,
}
#: Built-in logical ops: their result is bool whatever the operands' dtype.
_LOGICAL: dict[int, Any] = {
    id(ops.LAND): np.logical_and,
    id(ops.LOR): np.logical_or,
    id(ops.LXOR): np.logical_xor,
}


def elementwise_ufunc(op: Op, dtype: np.dtype[Any]) -> Any:
    """The numpy ufunc computing ``op`` elementwise on arrays of ``dtype`` into the same dtype.

    None when ``op`` is not such a built-in op (user ops, MAXLOC/MINLOC, or a
    logical op on a non-bool dtype, whose result dtype would differ).
    """
    if not op.builtin or dtype.kind not in "biufc":
        # Strings, datetimes, structured dtypes...: a result may need another
        # dtype or size (np.add on "<U2" arrays gives "<U4"), so never in place.
        return None
    ufunc = _SAME_DTYPE.get(id(op))
    if ufunc is None and dtype == np.bool_:
        ufunc = _LOGICAL.get(id(op))
    if ufunc is None:
        return None
    if ufunc in (np.bitwise_and, np.bitwise_or, np.bitwise_xor) and dtype.kind not in "biu":
        return None
    return ufunc


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype}[{', '.join(map(str, x.shape))}]"
    return type(x).__name__


def mismatch_message(collective: str, sender: int | None, theirs: Any, mine: Any) -> str:
    """The error for a rank whose part of a collective does not match this rank's."""
    who = f"rank {sender}" if sender is not None else "another rank"
    return (
        f"{collective}: {who} sent {_describe(theirs)} where this rank expected "
        f"{_describe(mine)}: every rank must pass an array of the same shape and dtype"
    )


def combine(op: Op, lo: Any, hi: Any, into: Any = None) -> Any:
    """``op(lo, hi)`` (``lo`` from the lower ranks), written into ``into`` when safe.

    ``into`` must be ``lo``, ``hi`` or None, and an array the algorithm owns.
    It is used only for built-in elementwise ops on equally shaped, equally
    typed arrays of at least one dimension (a 0-d result stays a numpy scalar,
    as ``op`` gives it). Arrays of different shapes under a built-in op, or of
    different dtypes under one that keeps its operands' dtype (SUM, PROD, MIN,
    MAX and the bitwise ops; a logical op's partial results are bool whatever
    the inputs), are an error that says so: numpy's own said only that shapes
    do not broadcast, or broadcast them, and promoted mixed dtypes, where the
    ring, which takes larger arrays, refused them.
    """
    if (
        op.builtin
        and isinstance(lo, np.ndarray)
        and isinstance(hi, np.ndarray)
        and (lo.shape != hi.shape or (lo.dtype != hi.dtype and id(op) in _SAME_DTYPE))
    ):
        raise ArgumentError(
            f"reduction with {op!r}: ranks passed arrays {_describe(lo)} and {_describe(hi)}; "
            "every rank must pass an array of the same shape and dtype"
        )
    if (
        into is not None
        and isinstance(lo, np.ndarray)
        and isinstance(hi, np.ndarray)
        and isinstance(into, np.ndarray)
        and lo.ndim > 0
        and lo.shape == hi.shape == into.shape
        and lo.dtype == hi.dtype == into.dtype
        and into.flags.writeable
    ):
        ufunc = elementwise_ufunc(op, into.dtype)
        if ufunc is not None:
            ufunc(lo, hi, out=into)
            return into
    return op(lo, hi)
