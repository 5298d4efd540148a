"""``afmi demo``: afmi's main job on its embedded default — distributed k-means.

The workload of FMI's headline result (LambdaML's k-means): every rank holds a
shard of the data, computes per-centroid sums and counts for its shard, and
one ``allreduce`` per epoch combines them. With no arguments it runs 8 ranks
over the in-memory channel in one process; ``--channel`` picks another one.
It checks the result against a single-process numpy k-means and prints each
epoch's wall time, from the end of the previous epoch to the moment the first
rank has this one's result (on the in-memory channel all ranks share one
thread, so an epoch's time is the compute of every rank plus the
communication; :class:`EpochClock`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

import afmi

_BLOCK = 4096
HELP = "run a distributed k-means over N ranks (afmi's main job) and check it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi demo``."""
    parser.add_argument("-n", "--ranks", type=int, default=8, help="number of ranks (default 8)")
    parser.add_argument("--channel", default="local", help="channel (default: local, in-memory)")
    parser.add_argument("--samples", type=int, default=200_000, help="data points in total")
    parser.add_argument("--features", type=int, default=28, help="features per point (Higgs: 28)")
    parser.add_argument("--clusters", type=int, default=10, help="k")
    parser.add_argument("--epochs", type=int, default=10, help="iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="only the summary line")


def make_shard(
    samples: int, features: int, clusters: int, seed: int, shard: int, shards: int
) -> np.ndarray:
    """Shard ``shard`` of ``shards`` of Gaussian blobs (deterministic for a seed).

    Concatenating every shard gives the same data whatever the number of shards
    used to build each one, so ranks never need to hold the whole data set.
    """
    bounds = np.linspace(0, samples, shards + 1).astype(int)
    return make_rows(samples, features, clusters, seed, int(bounds[shard]), int(bounds[shard + 1]))


def make_rows(
    samples: int, features: int, clusters: int, seed: int, lo: int, hi: int
) -> np.ndarray:
    """Rows ``lo:hi`` of the data set :func:`make_shard` shards (only their blocks are made)."""
    centres = np.random.default_rng(seed).normal(0, 5, size=(clusters, features))
    out = []
    for start in range(lo - lo % _BLOCK, hi, _BLOCK):
        rng = np.random.default_rng([seed, start])
        n = min(_BLOCK, samples - start)
        labels = rng.integers(0, clusters, size=n)
        block = centres[labels] + rng.normal(0, 1, size=(n, features))
        out.append(block[max(lo - start, 0) : hi - start])
    return np.concatenate(out) if out else np.empty((0, features))


def kmeans_step(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-centroid sums, counts and squared distance total of ``points``."""
    d = (points**2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids**2).sum(1)[None, :]
    nearest = d.argmin(1)
    k = centroids.shape[0]
    sums = np.zeros_like(centroids)
    np.add.at(sums, nearest, points)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    return sums, counts, float(d[np.arange(len(points)), nearest].sum())


def update(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """New centroids; an empty cluster keeps its old centroid."""
    out = centroids.copy()
    nonempty = counts > 0
    out[nonempty] = sums[nonempty] / counts[nonempty, None]
    return out


class EpochClock:
    """The job's epoch times, from the ranks of one process.

    An epoch ends when the first rank has its result (every rank's step has
    then run, and the allreduce has combined them), and lasts from the end of
    the one before (the first, from the end of the set-up barrier). Timing
    one rank's own window misleads on a shared event loop: it takes in
    whichever other ranks' work the loop runs inside it. With 8 ranks the
    allreduce's root, which has the result first, starts its next step
    before the others have the result, so a rank-0 window made the first
    epoch 13x and the last one 0.16x the others, and ending epochs at the
    last rank's result made them 1.9x and 0.14x.
    """

    def __init__(self, epochs: int, quiet: bool = False) -> None:
        self.epochs = epochs
        self.quiet = quiet
        self.start = 0.0
        #: Seconds of every epoch the job has finished.
        self.seconds: list[float] = []
        self._last = 0.0

    def begin(self) -> None:
        """The job starts its first epoch now (every rank has passed the set-up barrier)."""
        self.start = self._last = time.perf_counter()

    def finish(self, epoch: int, inertia: float) -> None:
        """A rank has its result of ``epoch``; the first one ends it (and prints it)."""
        if len(self.seconds) > epoch:
            return  # another rank had it first
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now
        if not self.quiet:
            print(
                f"epoch {epoch + 1:3d}/{self.epochs}  inertia {inertia:14.1f}  "
                f"{self.seconds[-1] * 1e3:8.1f} ms",
                flush=True,
            )


async def kmeans_rank(
    comm: afmi.Communicator, args: argparse.Namespace, clock: EpochClock
) -> dict[str, Any]:
    """One rank of the job: its shard, ``epochs`` iterations, one allreduce each."""
    shard = make_shard(args.samples, args.features, args.clusters, args.seed, comm.rank, comm.size)
    # The same start on every rank: the first k points of the data set.
    centroids = make_rows(args.samples, args.features, args.clusters, args.seed, 0, args.clusters)
    inertia = 0.0
    await comm.barrier()  # the epochs start once every rank has its data
    if comm.rank == 0:
        clock.begin()
    for epoch in range(args.epochs):
        sums, counts, local_inertia = kmeans_step(shard, centroids)
        packed = np.concatenate([sums.ravel(), counts, [local_inertia]])
        total = await comm.allreduce(packed)
        k, f = centroids.shape
        centroids = update(centroids, total[: k * f].reshape(k, f), total[k * f : k * f + k])
        inertia = float(total[-1])
        clock.finish(epoch, inertia)
    return {"centroids": centroids, "inertia": inertia}


def main(args: argparse.Namespace) -> int:
    """Run the job, compare with a sequential k-means, print a summary."""
    if args.ranks < 1 or args.samples < args.ranks or args.clusters < 1 or args.epochs < 1:
        print(
            "afmi demo: need ranks >= 1, samples >= ranks, clusters >= 1, epochs >= 1",
            file=sys.stderr,
        )
        return 2
    if not args.quiet:
        print(
            f"k-means: {args.samples} points x {args.features} features, k={args.clusters}, "
            f"{args.ranks} ranks over the {args.channel!r} channel, {args.epochs} epochs",
            flush=True,
        )
    clock = EpochClock(args.epochs, args.quiet)
    t0 = time.perf_counter()
    results = afmi.run_local(kmeans_rank, args.ranks, args, clock, channel=args.channel)
    elapsed = time.perf_counter() - t0

    data = make_shard(args.samples, args.features, args.clusters, args.seed, 0, 1)
    centroids = data[: args.clusters].copy()
    for _ in range(args.epochs):
        sums, counts, _ = kmeans_step(data, centroids)
        centroids = update(centroids, sums, counts)
    agree = all(np.allclose(r["centroids"], centroids, rtol=1e-9, atol=1e-9) for r in results)
    epoch_ms = np.median(clock.seconds) * 1e3
    print(
        f"done in {elapsed:.2f} s (set-up {(clock.start - t0):.2f} s); "
        f"median epoch {epoch_ms:.1f} ms; "
        f"final inertia {results[0]['inertia']:.1f}; "
        f"matches sequential k-means: {'yes' if agree else 'NO'}"
    )
    return 0 if agree else 1
