"""Allreduce algorithms side by side on the local channel (a measurement, not a test).

    python -m afmi.bench.allreduce_local            # 16 MiB float64, 4 ranks
    python -m afmi.bench.allreduce_local --sizes 65536 1048576 16777216 --ranks 4 8

Prints the median wall time of one allreduce (from a barrier to a barrier)
for each algorithm, and its ratio to the fastest of the row.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import afmi
from afmi.collectives import registry

ALGORITHMS = ("linear", "recursive_doubling", "ring")


async def _job(comm: afmi.Communicator, nbytes: int, repeat: int) -> dict[str, float]:
    x = np.full(nbytes // 8, float(comm.rank + 1))
    want = comm.size * (comm.size + 1) / 2
    out: dict[str, float] = {}
    for name in ALGORITHMS:
        times = []
        with registry.forced(allreduce=name):
            for i in range(repeat + 1):  # the first run warms up
                await comm.barrier()
                t0 = time.perf_counter()
                y = await comm.allreduce(x)
                await comm.barrier()
                if i:
                    times.append(time.perf_counter() - t0)
        assert y[0] == want and y[-1] == want
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16 << 20], help="bytes")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'ranks':>5} {'bytes':>10} " + " ".join(f"{n:>26}" for n in ALGORITHMS))
    for ranks in args.ranks:
        for nbytes in args.sizes:
            t = afmi.run_local(_job, ranks, nbytes, args.repeat)[0]
            best = min(t.values())
            cells = [f"{t[n] * 1e3:10.2f} ms ({t[n] / best:5.2f}x)" for n in ALGORITHMS]
            print(f"{ranks:>5} {nbytes:>10} " + " ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
