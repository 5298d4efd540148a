"""Reduction operations: :data:`SUM`, :data:`PROD`, ..., and user :class:`Op` objects.

Each op combines two values, ``op(a, b)``, where ``a`` comes from the lower
rank. Built-in ops work on Python numbers and elementwise on numpy arrays;
:data:`MAXLOC` and :data:`MINLOC` take ``(value, index)`` pairs (scalars or
equally shaped arrays) and break ties by the smaller index, as MPI does. A
user op made with ``Op(fn, commutative=False)`` is applied in exact rank
order: the result is ``x0 op x1 op ... op x(n-1)``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from afmi.errors import ArgumentError

__all__ = [
    "BAND",
    "BOR",
    "BXOR",
    "LAND",
    "LOR",
    "LXOR",
    "MAX",
    "MAXLOC",
    "MIN",
    "MINLOC",
    "Op",
    "PROD",
    "SUM",
]


class Op:
    """A binary reduction operation.

    Args:
        fn: ``fn(a, b) -> c``, where ``a`` is the partial result of lower ranks.
            It must be associative; it must not modify its arguments.
        commutative: False forces algorithms that combine in rank order.
        name: Shown in errors and reports.
    """

    __slots__ = ("_builtin", "commutative", "fn", "name")

    def __init__(
        self, fn: Callable[[Any, Any], Any], commutative: bool = True, name: str | None = None
    ) -> None:
        if not callable(fn):
            raise ArgumentError(f"Op needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.commutative = bool(commutative)
        self.name = name or getattr(fn, "__name__", "user op")
        self._builtin = False

    @classmethod
    def Create(cls, fn: Callable[[Any, Any], Any], commute: bool = True) -> Op:  # noqa: N802
        """mpi4py-style alias of ``Op(fn, commutative=commute)``."""
        return cls(fn, commutative=commute)

    def __call__(self, a: Any, b: Any) -> Any:
        return self.fn(a, b)

    @property
    def builtin(self) -> bool:
        """True for afmi's predefined ops (their results never alias inputs)."""
        return self._builtin

    def __repr__(self) -> str:
        return (
            f"afmi.{self.name}"
            if self._builtin
            else f"Op({self.name}, commutative={self.commutative})"
        )


def _builtin(name: str, fn: Callable[[Any, Any], Any]) -> Op:
    op = Op(fn, commutative=True, name=name)
    op._builtin = True
    return op


def _is_array(*xs: Any) -> bool:
    return any(isinstance(x, (np.ndarray, np.generic)) for x in xs)


def _elementwise(py: Callable[[Any, Any], Any], npf: Any) -> Callable[[Any, Any], Any]:
    def fn(a: Any, b: Any) -> Any:
        if _is_array(a, b):
            return npf(a, b)
        return py(a, b)

    return fn


def _logical(py: Callable[[bool, bool], bool], npf: Any) -> Callable[[Any, Any], Any]:
    def fn(a: Any, b: Any) -> Any:
        if _is_array(a, b):
            return npf(a, b)
        return py(bool(a), bool(b))

    return fn


def _loc(better: Any) -> Callable[[Any, Any], Any]:
    def fn(a: Any, b: Any) -> Any:
        try:
            va, ia = a
            vb, ib = b
        except (TypeError, ValueError):
            raise ArgumentError(
                "MAXLOC/MINLOC take (value, index) pairs; got "
                f"{type(a).__name__} and {type(b).__name__}"
            ) from None
        if _is_array(va, vb, ia, ib):
            va, vb, ia, ib = map(np.asarray, (va, vb, ia, ib))
            take_b = better(vb, va) | ((vb == va) & (ib < ia))
            out = (np.where(take_b, vb, va), np.where(take_b, ib, ia))
        elif better(vb, va) or (vb == va and ib < ia):
            out = (vb, ib)
        else:
            out = (va, ia)
        return type(a)(out) if isinstance(a, (tuple, list)) else out

    return fn


SUM = _builtin("SUM", _elementwise(operator.add, np.add))
PROD = _builtin("PROD", _elementwise(operator.mul, np.multiply))
MAX = _builtin("MAX", _elementwise(max, np.maximum))
MIN = _builtin("MIN", _elementwise(min, np.minimum))
LAND = _builtin("LAND", _logical(operator.and_, np.logical_and))
LOR = _builtin("LOR", _logical(operator.or_, np.logical_or))
LXOR = _builtin("LXOR", _logical(operator.xor, np.logical_xor))
BAND = _builtin("BAND", _elementwise(operator.and_, np.bitwise_and))
BOR = _builtin("BOR", _elementwise(operator.or_, np.bitwise_or))
BXOR = _builtin("BXOR", _elementwise(operator.xor, np.bitwise_xor))
MAXLOC = _builtin("MAXLOC", _loc(operator.gt))
MINLOC = _builtin("MINLOC", _loc(operator.lt))


def as_op(op: Any) -> Op:
    """Accept an :class:`Op` or a plain callable (taken as commutative)."""
    if isinstance(op, Op):
        return op
    if callable(op):
        return Op(op)
    raise ArgumentError(f"op must be an afmi.Op such as afmi.SUM or a callable, got {op!r}")
