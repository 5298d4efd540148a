"""Allreduce algorithms side by side on the local channel (a measurement, not a test).

    python -m afmi.bench.allreduce_local            # 16 MiB float64, 4 ranks
    python -m afmi.bench.allreduce_local --sizes 65536 1048576 16777216 --ranks 4 8

Prints the median wall time of one allreduce (from a barrier to a barrier)
for each algorithm, and its ratio to the fastest of the row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import afmi
from afmi.bench.forced import compare_main

ALGORITHMS = ("linear", "recursive_doubling", "ring")


def _make(comm: afmi.Communicator, nbytes: int) -> Any:
    return np.full(nbytes // 8, float(comm.rank + 1))


async def _call(comm: afmi.Communicator, x: Any) -> Any:
    return await comm.allreduce(x)


def _check(comm: afmi.Communicator, nbytes: int, y: Any) -> None:
    want = comm.size * (comm.size + 1) / 2
    assert y[0] == want and y[-1] == want


def main() -> None:
    """Run the comparison from the command line."""
    compare_main(__doc__.splitlines()[0], "allreduce", ALGORITHMS, _make, _call, _check)


if __name__ == "__main__":
    main()
