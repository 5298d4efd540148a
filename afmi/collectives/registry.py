"""The collectives registry: which algorithm runs a collective call.

Algorithms register under their collective's name. :func:`select` picks,
from the applicable ones, the one whose rule matches the call's size and
payload. The choice uses only arguments every rank has in common (the
communicator size, and the payload size for collectives whose payloads
must match), so every rank picks the same algorithm without talking.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from afmi.collectives.base import Algorithm, CollectiveContext

__all__ = [
    "Chooser",
    "algorithms",
    "forced",
    "get",
    "payload_nbytes",
    "register",
    "select",
    "set_chooser",
    "unregister",
    "usable_on",
]

#: ``chooser(candidates, size, nbytes, args, ctx) -> Algorithm`` picks among applicable algorithms.
Chooser = Callable[[list[Algorithm], int, int, dict[str, Any], CollectiveContext], Algorithm]

_ALGORITHMS: dict[str, list[Algorithm]] = {}
_CHOOSERS: dict[str, Chooser] = {}
_FORCED: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "afmi_forced", default=None
)

#: Collectives whose payload size is the same on every rank (so it may steer the choice).
#: allgather is not one: its items may differ in size from rank to rank. Choosers
#: should still steer by size only for numpy arrays, whose shapes must match;
#: other payloads (strings joined by a user op...) may differ in size.
SIZE_STEERED = {"allreduce", "reduce", "reduce_scatter", "scan", "exscan"}


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to its collective's candidates (the first registered is the default).

    Raises ValueError if the collective already has an algorithm of that name.
    """
    _load()
    group = _ALGORITHMS.setdefault(algorithm.collective, [])
    if any(a.name == algorithm.name and a.channels == algorithm.channels for a in group):
        raise ValueError(
            f"{algorithm.collective} already has an algorithm named {algorithm.name!r}"
        )
    group.append(algorithm)
    return algorithm


def unregister(algorithm: Algorithm) -> None:
    """Remove a registered algorithm (ValueError if it is not registered)."""
    group = _ALGORITHMS.get(algorithm.collective, [])
    if algorithm not in group:
        raise ValueError(f"{algorithm!r} is not registered")
    group.remove(algorithm)


def get(collective: str, name: str) -> Algorithm:
    """The registered algorithm ``name`` of ``collective``; LookupError names the choices."""
    for a in algorithms(collective):
        if a.name == name:
            return a
    known = sorted(a.name for a in algorithms(collective))
    raise LookupError(f"{collective} has no algorithm {name!r}; registered: {known}")


@contextlib.contextmanager
def forced(**choices: str) -> Iterator[None]:
    """Make collective calls started inside the block use the named algorithms.

    ``with forced(allreduce="ring", bcast="binomial"): ...``. The setting is
    a context variable: it holds for the current task and for tasks started
    from it (``run_local`` ranks started inside the block, or a rank's own
    code), and every rank must force the same choice. A forced algorithm
    that cannot run a call's arguments raises LookupError at that call.
    For tests and benchmarks; applications should rely on the choosers.
    """
    for collective, name in choices.items():
        get(collective, name)
    token = _FORCED.set({**(_FORCED.get() or {}), **choices})
    try:
        yield
    finally:
        _FORCED.reset(token)


def set_chooser(collective: str, chooser: Chooser | None) -> Chooser | None:
    """Replace the rule that picks an algorithm for ``collective``; return the previous one.

    ``None`` removes the rule (the first applicable algorithm is then used).
    A chooser must give the same answer on every rank for the same call.
    """
    _load()
    previous = _CHOOSERS.pop(collective, None)
    if chooser is not None:
        _CHOOSERS[collective] = chooser
    return previous


def algorithms(collective: str | None = None) -> list[Algorithm]:
    """Registered algorithms (of one collective, or all)."""
    _load()
    if collective is not None:
        return list(_ALGORITHMS.get(collective, []))
    return [a for group in _ALGORITHMS.values() for a in group]


def payload_nbytes(obj: Any) -> int:
    """A cheap estimate of a payload's size in bytes (exact for numpy arrays)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(payload_nbytes(o) for o in obj) + 1
    if isinstance(obj, dict):
        return sum(payload_nbytes(k) + payload_nbytes(v) for k, v in obj.items()) + 1
    return 9


def usable_on(
    candidates: list[Algorithm],
    channel: str,
    size: int,
    nbytes: int,
    args: dict[str, Any],
    *,
    lenient: bool = False,
) -> list[Algorithm]:
    """The ``candidates`` that may run on ``channel`` with these arguments.

    Algorithms meant for ``channel`` win over generic ones. With ``lenient``, an
    applicability rule that raises (say, on the incomplete arguments of a
    prediction) counts as "not applicable" instead of propagating.
    """
    usable = []
    for a in candidates:
        if a.channels is not None and channel not in a.channels:
            continue
        try:
            ok = a.applicable(size, nbytes, args)
        except Exception:
            if not lenient:
                raise
            ok = False
        if ok:
            usable.append(a)
    specific = [a for a in usable if a.channels is not None]
    return specific or usable


def select(collective: str, ctx: CollectiveContext, args: dict[str, Any]) -> Algorithm:
    """The algorithm that runs ``collective`` with ``args`` on ``ctx``'s communicator."""
    _load()
    candidates = _ALGORITHMS.get(collective)
    if not candidates:
        raise LookupError(f"no algorithm registered for collective {collective!r}")
    nbytes = 0
    if collective in SIZE_STEERED:
        nbytes = payload_nbytes(args.get("x", args.get("obj")))
    name = (_FORCED.get() or {}).get(collective)
    if name is not None:
        algorithm = get(collective, name)
        if not algorithm.applicable(ctx.size, nbytes, args):
            raise LookupError(f"forced algorithm {algorithm!r} cannot run these arguments")
        return algorithm
    usable = usable_on(candidates, ctx.channel, ctx.size, nbytes, args)
    if not usable:
        raise LookupError(f"no algorithm for {collective} applies to {args!r}")
    chooser = _CHOOSERS.get(collective)
    if chooser is None:
        return usable[0]
    return chooser(usable, ctx.size, nbytes, args, ctx)


_loaded = False
_loading = False
_load_lock = threading.RLock()


def _load() -> None:
    """Import the built-in algorithms once, safely from several threads."""
    global _loaded, _loading
    if _loaded:
        return
    with _load_lock:
        if _loaded or _loading:  # done meanwhile, or a call from inside the import itself
            return
        _loading = True
        try:
            import afmi.collectives.algorithms  # noqa: F401  (registers everything)
        finally:
            _loading = False
        _loaded = True
