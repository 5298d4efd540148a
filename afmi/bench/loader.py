"""Loader benchmark: afmi's clairvoyant loader against three baselines.

``F`` samples live in an S3-compatible store (a private moto server unless
``--endpoint-url`` names one); ``N`` ranks (tasks of one process, linked by
the local channel) train ``E`` epochs with a fixed compute time per batch.
Four loaders read the same plan:

* ``naive``: every sample from the origin, on demand, one batch at a time;
* ``lru``: a prefetching loader (same window) with a per-rank LRU cache of the
  same byte budget, misses from the origin;
* ``lower``: the lower bound, every sample already in local memory;
* ``afmi``: :class:`afmi.data.Loader` (placement, peers, next-use cache).

Reported per loader and epoch: epoch time (slowest rank), origin reads (all
ranks) and stall time (mean per rank). Targets when the data set fits the
aggregate caches: origin reads <= 1.05 F over the run, and epoch time from
the second epoch <= 1.1x the lower bound.

Run: ``python -m afmi.bench.loader`` (or ``afmi bench loader``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import afmi
from afmi.comm import Communicator
from afmi.data import AccessPlan, Loader, S3Source

__all__ = ["main", "run_loader_bench"]

VARIANTS = ("naive", "lru", "lower", "afmi")


async def _upload(client: Any, bucket: str, prefix: str, samples: int, size: int) -> None:
    sem = asyncio.Semaphore(32)

    async def put(i: int) -> None:
        body = i.to_bytes(8, "little") * (size // 8) + b"\0" * (size % 8)
        async with sem:
            await client.put_object(Bucket=bucket, Key=f"{prefix}{i:06d}", Body=body)

    await asyncio.gather(*(put(i) for i in range(samples)))


class _Rank:
    """What one rank measured: per epoch time, stall and origin reads."""

    def __init__(self, epochs: int) -> None:
        self.seconds = [0.0] * epochs
        self.stall = [0.0] * epochs
        self.origin = [0] * epochs


Batches = Callable[[int], Any]  # epoch -> async iterator of batches


async def _train(
    comm: Communicator,
    epochs: int,
    compute: float,
    batches: Batches,
    origin_count: Callable[[], int],
) -> _Rank:
    out = _Rank(epochs)
    for e in range(epochs):
        await comm.barrier()
        reads0 = origin_count()
        t0 = time.perf_counter()
        it = batches(e).__aiter__()
        while True:
            w0 = time.perf_counter()
            try:
                batch = await it.__anext__()
            except StopAsyncIteration:
                break
            out.stall[e] += time.perf_counter() - w0
            assert batch is not None
            await asyncio.sleep(compute)  # the training step
        out.seconds[e] = time.perf_counter() - t0
        out.origin[e] = origin_count() - reads0
    await comm.barrier()
    return out


async def _naive_batches(src: S3Source, plan: AccessPlan, rank: int, epoch: int) -> Any:
    for share in plan.batches(rank, epoch):
        yield await asyncio.gather(*(src.read(int(s)) for s in share))


async def _lru_batches(
    src: S3Source,
    plan: AccessPlan,
    rank: int,
    epoch: int,
    cache: collections.OrderedDict[int, bytes],
    capacity: int,
    window: int,
) -> Any:
    used = [sum(len(v) for v in cache.values())]

    async def fetch(s: int) -> bytes:
        data = cache.get(s)
        if data is not None:
            cache.move_to_end(s)
            return data
        data = await src.read(s)
        if len(data) <= capacity and s not in cache:
            while used[0] + len(data) > capacity:
                _, old = cache.popitem(last=False)
                used[0] -= len(old)
            cache[s] = data
            used[0] += len(data)
        return data

    queue: asyncio.Queue[asyncio.Task[bytes]] = asyncio.Queue(maxsize=max(1, window - 1))
    tasks: set[asyncio.Task[bytes]] = set()

    async def produce() -> None:
        for share in plan.batches(rank, epoch):
            for s in share.tolist():
                task = asyncio.get_running_loop().create_task(fetch(s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await queue.put(task)

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        for share in plan.batches(rank, epoch):
            yield [await (await queue.get()) for _ in range(len(share))]
    finally:
        producer.cancel()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(producer, *tasks, return_exceptions=True)


async def _lower_batches(memory: dict[int, bytes], plan: AccessPlan, rank: int, epoch: int) -> Any:
    for share in plan.batches(rank, epoch):
        yield [memory[int(s)] for s in share]


async def _run_variant(
    variant: str,
    *,
    ranks: int,
    plan: AccessPlan,
    compute: float,
    capacity: int,
    prefetch: int,
    source: Callable[[], Awaitable[S3Source]],
) -> list[_Rank]:
    async def rank_main(comm: Communicator) -> _Rank:
        src = await source()
        try:
            if variant == "naive":
                return await _train(
                    comm,
                    plan.epochs,
                    compute,
                    lambda e: _naive_batches(src, plan, comm.rank, e),
                    lambda: src.requests,
                )
            if variant == "lru":
                cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
                return await _train(
                    comm,
                    plan.epochs,
                    compute,
                    lambda e: _lru_batches(src, plan, comm.rank, e, cache, capacity, prefetch),
                    lambda: src.requests,
                )
            if variant == "lower":
                mine = {int(s) for e in range(plan.epochs) for s in plan.sequence(comm.rank, e)}
                memory = dict(zip(mine, await asyncio.gather(*(src.read(s) for s in mine))))
                return await _train(
                    comm,
                    plan.epochs,
                    compute,
                    lambda e: _lower_batches(memory, plan, comm.rank, e),
                    lambda: 0,
                )
            async with Loader(
                src, plan, comm=comm, memory_bytes=capacity, prefetch=prefetch
            ) as loader:
                return await _train(comm, plan.epochs, compute, loader.epoch, lambda: src.requests)
        finally:
            await src.aclose()

    return await afmi.launch_local(rank_main, ranks, timeout=600)


async def run_loader_bench(
    *,
    samples: int = 512,
    sample_bytes: int = 16 * 1024,
    ranks: int = 4,
    epochs: int = 3,
    batch: int = 32,
    compute: float = 0.02,
    prefetch: int = 64,
    cache_factor: float = 1.25,
    variants: tuple[str, ...] = VARIANTS,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the benchmark; returns config, per-variant results and the target checks.

    ``cache_factor`` sizes each rank's cache as that multiple of its fair share
    ``F / N`` samples (>= 1: the data set fits the aggregate caches). Without
    ``endpoint_url`` a private moto server is started (and stopped).
    """
    for v in variants:
        if v not in VARIANTS:
            raise afmi.ArgumentError(f"unknown loader {v!r}; choose from {', '.join(VARIANTS)}")
    from aiobotocore.session import get_session

    from afmi.testing.servers import s3_server

    with contextlib.ExitStack() as stack:
        region = "us-east-1"
        if endpoint_url is None:
            for key, value in {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": region,
            }.items():
                os.environ.setdefault(key, value)
            server = await asyncio.to_thread(stack.enter_context, s3_server())
            endpoint_url, bucket = server.endpoint_url, server.bucket
        if not bucket:
            raise afmi.ArgumentError("with endpoint_url= give bucket= (an existing bucket)")
        prefix = f"afmi-loader-bench/{samples}x{sample_bytes}/"
        async with get_session().create_client(
            "s3", endpoint_url=endpoint_url, region_name=region
        ) as client:
            await _upload(client, bucket, prefix, samples, sample_bytes)
        manifest_src = await S3Source.open(bucket, prefix, endpoint_url=endpoint_url, region=region)
        manifest = manifest_src.manifest
        await manifest_src.aclose()

        async def source() -> S3Source:
            return S3Source(
                bucket,  # type: ignore[arg-type]
                manifest,
                endpoint_url=endpoint_url,
                region=region,
                max_concurrency=16,
            )

        plan = AccessPlan(samples, ranks, batch, epochs, seed)
        capacity = math.ceil(cache_factor * samples / ranks) * sample_bytes
        results: dict[str, Any] = {}
        for variant in variants:
            # Like timeit, no cyclic GC while timing (for every loader alike): all ranks
            # share one process here, and a gen-2 pass over the S3 client's garbage
            # would stall every rank at a random point.
            gc.collect()
            gc.disable()
            try:
                per_rank = await _run_variant(
                    variant,
                    ranks=ranks,
                    plan=plan,
                    compute=compute,
                    capacity=capacity,
                    prefetch=prefetch,
                    source=source,
                )
            finally:
                gc.enable()
            results[variant] = {
                "epoch_seconds": [max(r.seconds[e] for r in per_rank) for e in range(epochs)],
                "origin_reads": [sum(r.origin[e] for r in per_rank) for e in range(epochs)],
                "stall_seconds": [sum(r.stall[e] for r in per_rank) / ranks for e in range(epochs)],
            }
    checks: dict[str, Any] = {}
    if "afmi" in results:
        reads = sum(results["afmi"]["origin_reads"])
        checks["origin_reads_over_F"] = reads / samples
        checks["origin_reads_ok"] = reads <= 1.05 * samples
        if "lower" in results and epochs > 1:
            ratios = [
                results["afmi"]["epoch_seconds"][e] / results["lower"]["epoch_seconds"][e]
                for e in range(1, epochs)
            ]
            checks["epoch_over_lower_bound"] = ratios
            checks["epoch_time_ok"] = all(r <= 1.1 for r in ratios)
    return {
        "config": {
            "samples": samples,
            "sample_bytes": sample_bytes,
            "ranks": ranks,
            "epochs": epochs,
            "batch": batch,
            "compute": compute,
            "prefetch": prefetch,
            "cache_bytes_per_rank": capacity,
            "aggregate_cache_over_dataset": capacity * ranks / (samples * sample_bytes),
        },
        "results": results,
        "checks": checks,
    }


def format_table(report: dict[str, Any]) -> str:
    """A markdown table of a :func:`run_loader_bench` report."""
    cfg = report["config"]
    lines = [
        f"F={cfg['samples']} samples x {cfg['sample_bytes']} B, N={cfg['ranks']} ranks, "
        f"E={cfg['epochs']} epochs, B={cfg['batch']}, "
        f"compute {cfg['compute'] * 1000:.0f} ms/batch, "
        f"cache {cfg['aggregate_cache_over_dataset']:.2f}x data set (aggregate)",
        "",
        "| loader | epoch | epoch time (s) | x lower bound | origin reads | stall/rank (s) |",
        "|---|---|---|---|---|---|",
    ]
    res = report["results"]
    lower = res.get("lower")
    for name, r in res.items():
        for e, secs in enumerate(r["epoch_seconds"]):
            ratio = f"{secs / lower['epoch_seconds'][e]:.2f}" if lower else "-"
            lines.append(
                f"| {name} | {e + 1} | {secs:.3f} | {ratio} | {r['origin_reads'][e]} | "
                f"{r['stall_seconds'][e]:.3f} |"
            )
    checks = report["checks"]
    if checks:
        lines.append("")
        if "origin_reads_over_F" in checks:
            lines.append(
                f"afmi origin reads / F = {checks['origin_reads_over_F']:.3f} "
                f"(target <= 1.05: {'met' if checks['origin_reads_ok'] else 'MISSED'})"
            )
        if "epoch_over_lower_bound" in checks:
            ratios = ", ".join(f"{r:.3f}" for r in checks["epoch_over_lower_bound"])
            lines.append(
                f"afmi epoch time / lower bound from epoch 2 = {ratios} "
                f"(target <= 1.1: {'met' if checks['epoch_time_ok'] else 'MISSED'})"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m afmi.bench.loader`` / ``afmi bench loader``."""
    parser.add_argument("--samples", type=int, default=512, help="F, samples in the store")
    parser.add_argument("--sample-bytes", type=int, default=16 * 1024, help="bytes per sample")
    parser.add_argument("--ranks", type=int, default=4, help="N, ranks reading")
    parser.add_argument("--epochs", type=int, default=3, help="E, epochs")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--compute", type=float, default=0.02, help="seconds of compute per batch")
    parser.add_argument("--prefetch", type=int, default=64, help="prefetch window, samples")
    parser.add_argument(
        "--cache-factor",
        type=float,
        default=1.25,
        help="per-rank cache as a multiple of F/N samples (>=1: fits the aggregate caches)",
    )
    parser.add_argument(
        "--loaders", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}"
    )
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: private moto)")
    parser.add_argument("--bucket", default=None, help="bucket at --endpoint-url")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments; print the table (or JSON). Exit status 0."""
    report = asyncio.run(
        run_loader_bench(
            samples=args.samples,
            sample_bytes=args.sample_bytes,
            ranks=args.ranks,
            epochs=args.epochs,
            batch=args.batch,
            compute=args.compute,
            prefetch=args.prefetch,
            cache_factor=args.cache_factor,
            variants=tuple(v.strip() for v in args.loaders.split(",") if v.strip()),
            endpoint_url=args.endpoint_url,
            bucket=args.bucket,
        )
    )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m afmi.bench.loader``."""
    parser = argparse.ArgumentParser(
        prog="python -m afmi.bench.loader", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
