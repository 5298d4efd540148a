"""bcast algorithms side by side on the local channel (a measurement, not a test).

    python -m afmi.bench.bcast_local --sizes 65536 16777216 --ranks 4 8

Prints the median wall time of one bcast (barrier to barrier) per algorithm and
its ratio to the fastest of the row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import afmi
from afmi.bench.forced import compare_main

ALGORITHMS = ("linear", "binomial", "scatter_allgather")


def _make(comm: afmi.Communicator, nbytes: int) -> Any:
    return np.full(nbytes // 8, 3.0)


async def _call(comm: afmi.Communicator, x: Any) -> Any:
    return await comm.bcast(x if comm.rank == 0 else None)


def _check(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    assert y.shape == (nbytes // 8,) and y[-1] == 3.0


def main() -> None:
    """Run the comparison from the command line."""
    compare_main(__doc__.splitlines()[0], "bcast", ALGORITHMS, _make, _call, _check)


if __name__ == "__main__":
    main()
