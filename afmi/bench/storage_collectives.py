"""Storage collectives side by side on the redis (or s3) channel (a measurement, not a test).

    python -m afmi.bench.storage_collectives                      # redis, 4 ranks, 16 MiB
    python -m afmi.bench.storage_collectives --channel s3 --sizes 1048576
    python -m afmi.bench.storage_collectives --channel s3 --sizes 64 4096 --ops gather,scan

Prints the median wall time of one call of each collective of ``--ops``
(default allreduce, bcast, barrier) with a float64 array of ``--sizes``
bytes (barrier to barrier, so a row includes one barrier), for each
algorithm, forced with ``registry.forced``, its ratio to the fastest of the
row, and (s3) the requests per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import afmi
from afmi.collectives import registry
from afmi.collectives.storage import COUNTER_BARRIER_MIN_SIZE
from afmi.testing.servers import redis_server, s3_server

ALGORITHMS = {
    "allreduce": ("scatter_reduce", "reduce_publish", "linear", "ring"),
    "bcast": ("storage_publish", "linear", "binomial"),
    "barrier": ("redis_counter", "dissemination", "linear"),
    "gather": ("linear", "binomial"),
    "scatter": ("linear", "binomial"),
    "reduce": ("linear", "binomial"),
    "allgather": ("linear", "bruck"),
    "alltoall": ("linear", "pairwise"),
    "reduce_scatter": ("linear", "ring"),
    "scan": ("linear", "recursive_doubling"),
}
DEFAULT_OPS = "allreduce,bcast,barrier"


async def _call(comm: afmi.Communicator, collective: str, x: Any) -> None:
    """One call of ``collective`` with ``x`` (``x`` from every rank, or the root's)."""
    n = comm.size
    if collective == "allreduce":
        y = await comm.allreduce(x)
        want = n * (n + 1) / 2
        assert y[0] == want and y[-1] == want
    elif collective == "bcast":
        y = await comm.bcast(x if comm.rank == 0 else None)
        assert y[-1] == 1.0
    elif collective == "gather":
        got = await comm.gather(x)
        assert got is None or [v[0] for v in got] == [r + 1.0 for r in range(n)]
    elif collective == "scatter":
        got = await comm.scatter([x] * n if comm.rank == 0 else None)
        assert got[0] == 1.0
    elif collective == "reduce":
        await comm.reduce(x)
    elif collective == "allgather":
        assert len(await comm.allgather(x)) == n
    elif collective == "alltoall":
        assert len(await comm.alltoall([x] * n)) == n
    elif collective == "reduce_scatter":
        await comm.reduce_scatter(np.concatenate([x] * n))
    elif collective == "scan":
        y = await comm.scan(x)
        assert y[0] == (comm.rank + 1) * (comm.rank + 2) / 2


def _names(collective: str, channel: str, ranks: int) -> list[str]:
    """The algorithms of ``collective`` that can run on ``channel`` with ``ranks``."""
    names = list(ALGORITHMS[collective])
    if collective == "barrier" and (channel != "redis" or ranks < COUNTER_BARRIER_MIN_SIZE):
        names.remove("redis_counter")
    return names


async def _job(comm: afmi.Communicator, nbytes: int, repeat: int, ops: list[str]) -> dict[str, Any]:
    x = np.full(max(nbytes // 8, 1), float(comm.rank + 1))
    channel = next(iter(comm.endpoint.channels.values()))
    out: dict[str, Any] = {}
    for collective in ops:
        for name in _names(collective, channel.name, comm.size):
            times, requests = [], 0
            with registry.forced(**{collective: name}):
                for i in range(repeat + 1):  # the first run warms up
                    await comm.barrier()
                    before = sum(channel.stats().get("requests", {}).values())
                    t0 = time.perf_counter()
                    if collective != "barrier":
                        await _call(comm, collective, x)
                    await comm.barrier()  # the one timed alone in a barrier row
                    if i:
                        times.append(time.perf_counter() - t0)
                        requests += sum(channel.stats().get("requests", {}).values()) - before
            out[f"{collective}:{name}"] = (statistics.median(times), requests / repeat)
    return out


@contextlib.contextmanager
def _config(channel: str) -> Iterator[dict[str, Any]]:
    if channel == "redis":
        with redis_server() as url:
            yield {"channels": {"redis": {"url": url}}}
    else:
        with s3_server() as server:
            os.environ.update(server.env())
            yield {"channels": {"s3": {**server.config(), "poll_max": 0.05}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channel", choices=["redis", "s3"], default="redis")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16 << 20], help="bytes")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--ops", default=DEFAULT_OPS, help=f"collectives (of {', '.join(ALGORITHMS)})"
    )
    args = parser.parse_args()
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown collectives {unknown}: choose among {', '.join(ALGORITHMS)}")
    with _config(args.channel) as cfg:
        for ranks in args.ranks:
            for nbytes in args.sizes:
                results = afmi.run_local(
                    _job, ranks, nbytes, args.repeat, ops, channel=args.channel, config=cfg
                )
                for collective in ops:
                    names = _names(collective, args.channel, ranks)
                    t = {n: results[0][f"{collective}:{n}"][0] for n in names}
                    best = min(t.values())
                    cells = []
                    for n in names:
                        reqs = sum(r[f"{collective}:{n}"][1] for r in results)
                        extra = f", {reqs:.0f} req" if args.channel == "s3" else ""
                        cells.append(f"{n} {t[n] * 1e3:.1f} ms ({t[n] / best:.2f}x{extra})")
                    print(f"{ranks} ranks {nbytes:>9} B {collective:>9}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
