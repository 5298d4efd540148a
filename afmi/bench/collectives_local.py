"""Any collective's algorithms side by side on the local channel (a measurement, not a test).

    python -m afmi.bench.collectives_local gather --sizes 8 1048576 --ranks 4 8 16
    python -m afmi.bench.collectives_local scan reduce_scatter --repeat 9

Every algorithm registered for the collective that can run on ``local`` is
forced in turn (:func:`afmi.collectives.registry.forced`) and timed from a
barrier to a barrier; the table gives the median of ``--repeat`` calls and
the ratio to the fastest of the row, and every result is checked. The
payload is a float64 array of ``size`` bytes per rank, filled with the
rank + 1. This is how the ``local`` rules in ``afmi/collectives/algorithms.py``
were chosen (docs/collectives.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import afmi
from afmi.bench.forced import print_table
from afmi.collectives import registry

__all__ = ["CALLS", "main", "names_for"]


def _make(comm: afmi.Communicator, nbytes: int) -> Any:
    return np.full(max(nbytes // 8, 1), float(comm.rank + 1))


def _triangle(n: int) -> float:
    return n * (n + 1) / 2


def _check_gather(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    if comm.rank == 0:
        assert [float(v[0]) for v in y] == [r + 1.0 for r in range(comm.size)]


def _check_reduce(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    if comm.rank == 0:
        assert float(y[0]) == _triangle(comm.size)


def _check_allreduce(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert float(y[0]) == float(y[-1]) == _triangle(comm.size)


def _check_every(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert [float(v[0]) for v in y] == [r + 1.0 for r in range(comm.size)]


def _check_scatter(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert float(y[0]) == 1.0  # rank 0's array, sent to everyone


def _check_reduce_scatter(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert len(y) == 0 or float(y[0]) == _triangle(comm.size)


def _check_scan(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert float(y[0]) == _triangle(comm.rank + 1)


def _check_exscan(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert (y is None) if comm.rank == 0 else float(y[0]) == _triangle(comm.rank)


def _nothing(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    """A barrier has no result to check."""


Call = Callable[[afmi.Communicator, Any], Any]
Check = Callable[[afmi.Communicator, int, Any], None]

#: ``collective -> (call(comm, x), check(comm, nbytes, result))``.
CALLS: dict[str, tuple[Call, Check]] = {
    "allgather": (lambda c, x: c.allgather(x), _check_every),
    "allreduce": (lambda c, x: c.allreduce(x), _check_allreduce),
    "alltoall": (lambda c, x: c.alltoall([x] * c.size), _check_every),
    "barrier": (lambda c, x: c.barrier(), _nothing),
    "bcast": (lambda c, x: c.bcast(x, root=0), _check_scatter),
    "exscan": (lambda c, x: c.exscan(x), _check_exscan),
    "gather": (lambda c, x: c.gather(x, root=0), _check_gather),
    "reduce": (lambda c, x: c.reduce(x, root=0), _check_reduce),
    "reduce_scatter": (lambda c, x: c.reduce_scatter(x), _check_reduce_scatter),
    "scan": (lambda c, x: c.scan(x), _check_scan),
    "scatter": (
        lambda c, x: c.scatter([x] * c.size if c.rank == 0 else None, root=0),
        _check_scatter,
    ),
}


def names_for(collective: str) -> list[str]:
    """The algorithms of ``collective`` that are not tied to another channel."""
    return [
        a.name
        for a in registry.algorithms(collective)
        if a.channels is None or "local" in a.channels
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collectives", nargs="+", choices=sorted(CALLS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 1 << 20], help="bytes")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(r < 1 for r in args.ranks) or any(s < 0 for s in args.sizes):
        parser.error("--repeat and --ranks must be at least 1, --sizes at least 0")
    for collective in args.collectives:
        call, check = CALLS[collective]
        sizes = [0] if collective == "barrier" else args.sizes
        names = names_for(collective)
        print_table(
            collective, names, _make, call, check, sizes, args.ranks, args.repeat, f"{collective}: "
        )


if __name__ == "__main__":
    main()
