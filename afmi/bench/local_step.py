"""One step of a local simulation under the local rules and under the network rules.

    python -m afmi.bench.local_step                 # 4, 8 and 16 ranks
    python -m afmi.bench.local_step --ranks 32 --steps 10

A step is what a data-parallel training loop does between computations:
allreduce of 1 MiB of gradients, reduce_scatter of 1 MiB, scan and gather of
64 KiB, allgather of a small object. The registry's rules for the ``local``
channel (docs/collectives.md) are timed against the algorithms the rules for
network channels pick for the same calls, forced
(:func:`afmi.collectives.registry.forced`), the two alternating after a
warm-up; the medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

import afmi
from afmi.collectives import registry

__all__ = ["CALLS", "main", "network_choices", "step_seconds"]

GRADIENT_BYTES = 1 << 20
SMALL_BYTES = 1 << 16


#: The calls of a step and the payload bytes each carries per rank.
CALLS = {
    "allreduce": GRADIENT_BYTES,
    "reduce_scatter": GRADIENT_BYTES,
    "scan": SMALL_BYTES,
    "gather": SMALL_BYTES,
    "allgather": 8,
}


def network_choices(size: int, channel: str = "direct") -> dict[str, str]:
    """The algorithm the rules for ``channel`` pick for each call of a step."""
    from afmi.model.cli import algorithm_for

    return {op: algorithm_for(op, channel, size, nbytes).name for op, nbytes in CALLS.items()}


async def _step(comm: afmi.Communicator, steps: int, forced: dict[str, str]) -> float:
    g = np.full(GRADIENT_BYTES // 8, float(comm.rank))
    s = np.full(SMALL_BYTES // 8, float(comm.rank))
    with registry.forced(**forced):
        await comm.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            total = await comm.allreduce(g)
            await comm.reduce_scatter(g)
            await comm.scan(s)
            await comm.gather(s, root=0)
            await comm.allgather(comm.rank)
        await comm.barrier()
        seconds = time.perf_counter() - t0
    assert float(total[0]) == comm.size * (comm.size - 1) / 2
    return seconds


def step_seconds(ranks: int, steps: int, forced: dict[str, str]) -> float:
    """Seconds per step on ``ranks`` ranks of the local channel (slowest rank)."""
    return float(max(afmi.run_local(_step, ranks, steps, forced))) / steps


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=20, help="steps per measurement")
    parser.add_argument("--repeat", type=int, default=4, help="measurements per rule set")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeat < 1 or any(r < 2 for r in args.ranks):
        parser.error("--steps and --repeat must be at least 1, --ranks at least 2")
    print(
        f"{'ranks':>5} {'local rules':>12} {'network rules':>14} {'ratio':>6}  network rules pick"
    )
    for ranks in args.ranks:
        network = network_choices(ranks)
        step_seconds(ranks, 1, {})  # warm-up: the first arrays cost page faults
        local, other = [], []
        for _ in range(args.repeat):
            local.append(step_seconds(ranks, args.steps, {}))
            other.append(step_seconds(ranks, args.steps, network))
        a, b = statistics.median(local), statistics.median(other)
        picks = ", ".join(f"{op} {name}" for op, name in network.items())
        print(f"{ranks:>5} {a * 1e3:9.2f} ms {b * 1e3:11.2f} ms {b / a:5.2f}x  {picks}")


if __name__ == "__main__":
    main()
