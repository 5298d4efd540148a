"""Time each algorithm of one collective side by side on the local channel.

Shared by :mod:`afmi.bench.allreduce_local` and :mod:`afmi.bench.bcast_local`:
every algorithm is forced in turn with :func:`afmi.collectives.registry.forced`
and timed from a barrier to a barrier (median of ``repeat`` runs after one warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import afmi
from afmi.collectives import registry

__all__ = ["compare_main", "print_table", "time_forced"]

#: ``make(comm, nbytes) -> x`` builds the input once, outside the timed region;
#: ``call(comm, x) -> result`` runs the collective once;
#: ``check(comm, nbytes, result)`` raises if the result is wrong.
Make = Callable[[afmi.Communicator, int], Any]
Call = Callable[[afmi.Communicator, Any], Awaitable[Any]]
Check = Callable[[afmi.Communicator, int, Any], None]


async def time_forced(
    comm: afmi.Communicator,
    collective: str,
    names: Sequence[str],
    make: Make,
    call: Call,
    check: Check,
    nbytes: int,
    repeat: int,
) -> dict[str, float]:
    """Median seconds of one ``collective`` call per forced algorithm."""
    x = make(comm, nbytes)
    out: dict[str, float] = {}
    for name in names:
        times = []
        with registry.forced(**{collective: name}):
            for i in range(repeat + 1):  # the first run warms up
                await comm.barrier()
                t0 = time.perf_counter()
                result = await call(comm, x)
                await comm.barrier()
                if i:
                    times.append(time.perf_counter() - t0)
        check(comm, nbytes, result)
        out[name] = statistics.median(times)
    return out


def compare_main(
    description: str,
    collective: str,
    names: Sequence[str],
    make: Make,
    call: Call,
    check: Check,
) -> None:
    """Command line of a side-by-side comparison: sizes x rank counts, ratio to the best."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16 << 20], help="bytes")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print_table(collective, names, make, call, check, args.sizes, args.ranks, args.repeat)


def print_table(
    collective: str,
    names: Sequence[str],
    make: Make,
    call: Call,
    check: Check,
    sizes: Sequence[int],
    ranks: Sequence[int],
    repeat: int,
    label: str = "",
) -> None:
    """Time every algorithm of ``names`` per rank count and size; print one row each
    with the median times and their ratios to the fastest (``label`` heads the table)."""
    print(f"{label}{'ranks':>5} {'bytes':>10} " + " ".join(f"{n:>26}" for n in names))
    pad = " " * len(label)
    for n_ranks in ranks:
        for nbytes in sizes:
            t = afmi.run_local(
                time_forced, n_ranks, collective, names, make, call, check, nbytes, repeat
            )[0]
            best = min(t.values())
            cells = [f"{t[n] * 1e3:10.2f} ms ({t[n] / best:5.2f}x)" for n in names]
            print(f"{pad}{n_ranks:>5} {nbytes:>10} " + " ".join(f"{c:>26}" for c in cells))
