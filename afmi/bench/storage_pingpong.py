"""Side-by-side measurements for the redis and s3 channels (docs/performance.md).

    python -m afmi.bench.storage_pingpong redis   # afmi redis channel vs raw redis-py RPUSH/BLPOP
    python -m afmi.bench.storage_pingpong redis --processes   # ... and with one process per side
    python -m afmi.bench.storage_pingpong s3      # afmi s3 channel on a private moto server
    python -m afmi.bench.storage_pingpong s3 --after-silence 0.1 1 3   # first message after

Run from the repository root (PYTHONPATH=.). Redis: the server on 127.0.0.1:6379
or AFMI_TEST_REDIS_URL. Ping-pong between two ranks in one process (and, with
``--processes``, also between two processes, which is what functions see);
the figure is half the round trip (median of the timed iterations after
warm-up). The raw baseline is redis-py (``redis.asyncio``, hiredis): ``RPUSH``
of the whole value, ``BLPOP`` on the other side, laid out like afmi's ranks
(same process, or a process per side). Rounds alternate between raw and afmi
so that both see the same machine load; each row gives the medians of the
rounds, their ratio, and the median of the rounds' own raw/afmi ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np

import afmi
from afmi.runtime.orphans import guarded
from afmi.testing.servers import redis_server, s3_server


async def _raw_side(url: str, key: str, side: int, nbytes: int, iters: int) -> float:
    """One side of the raw redis-py ping-pong (side 0 times it; side 1 echoes)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    payload = bytes(nbytes) or b"x"
    times = []
    try:
        for _ in range(iters + 2):
            if side == 1:
                popped = await client.blpop([key + ":b"], 0)
                assert popped is not None
                await client.rpush(key + ":a", popped[1])
                continue
            t0 = time.perf_counter()
            await client.rpush(key + ":b", payload)
            popped = await client.blpop([key + ":a"], 0)
            assert popped is not None and len(popped[1]) == len(payload)
            times.append((time.perf_counter() - t0) / 2)
    finally:
        await client.aclose()
    return statistics.median(times[2:]) if times else 0.0


async def _raw_pingpong(url: str, nbytes: int, iters: int) -> float:
    key = f"afmi-bench-raw:{uuid.uuid4().hex}"
    _, half = await asyncio.gather(
        _raw_side(url, key, 1, nbytes, iters), _raw_side(url, key, 0, nbytes, iters)
    )
    return half


async def _afmi_pingpong(comm: afmi.Communicator, nbytes: int, iters: int) -> Any:
    data: Any = np.zeros(nbytes, dtype=np.uint8) if nbytes else b"x"
    peer = 1 - comm.rank
    times = []
    for _ in range(iters + 2):
        t0 = time.perf_counter()
        if comm.rank == 0:
            await comm.send(data, peer)
            data = await comm.recv(peer)
        else:
            data = await comm.recv(peer)
            await comm.send(data, peer)
        times.append((time.perf_counter() - t0) / 2)
    ch = next(iter(comm.endpoint.channels.values()))
    return statistics.median(times[2:]), ch.stats()


async def _afmi_side(url: str, job: str, rank: int, nbytes: int, iters: int) -> float:
    """One rank of the afmi ping-pong in a process of its own."""
    cfg = {"channels": {"redis": {"url": url}}}
    async with afmi.connect(rank=rank, size=2, job=job, channel="redis", config=cfg) as comm:
        half, _ = await _afmi_pingpong(comm, nbytes, iters)
        await comm.barrier()
    return float(half)


def _child(argv: list[str]) -> None:
    """``_child raw|afmi URL KEY SIDE NBYTES ITERS``: print side 0's half round trip."""
    kind, url, key, side, nbytes, iters = argv
    loop = afmi.launch.new_event_loop()
    side_fn = _raw_side if kind == "raw" else _afmi_side
    half = loop.run_until_complete(side_fn(url, key, int(side), int(nbytes), int(iters)))
    print(json.dumps(half), flush=True)


async def _in_processes(kind: str, url: str, nbytes: int, iters: int) -> float:
    """Run both sides of a ping-pong as two processes; return side 0's figure."""
    key = f"afmi-bench-{kind}-{uuid.uuid4().hex[:12]}"
    procs = [
        await asyncio.create_subprocess_exec(
            *guarded(
                [
                    sys.executable,
                    "-m",
                    "afmi.bench.storage_pingpong",
                    "_child",
                    kind,
                    url,
                    key,
                    str(side),
                    str(nbytes),
                    str(iters),
                ]
            ),
            stdout=subprocess.PIPE,
        )
        for side in (1, 0)
    ]
    outs = [await p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{kind} ping-pong process failed: {[p.returncode for p in procs]}")
    return float(json.loads(outs[1][0]))


SIZES = [(1, 200), (1 << 20, 12), (16 << 20, 12)]
ROUNDS = 3


async def bench_redis(
    processes: bool = False,
    rounds: int = ROUNDS,
    sizes: list[int] | None = None,
) -> None:
    with redis_server() as url:
        cfg = {"channels": {"redis": {"url": url}}}
        layouts = ["one process"] + (["two processes"] if processes else [])
        print(
            f"{'bytes':>9} {'layout':>13} {'raw redis-py':>13} {'afmi redis':>11} {'afmi/raw':>9}"
        )
        plan = SIZES if sizes is None else [(n, 200 if n < 65536 else 12) for n in sizes]
        for nbytes, iters in plan:
            raws: dict[str, list[float]] = {k: [] for k in layouts}
            ours: dict[str, list[float]] = {k: [] for k in layouts}
            for _ in range(rounds):  # interleaved, so both see the same machine load
                raws["one process"].append(await _raw_pingpong(url, nbytes, iters))
                out = await afmi.launch_local(
                    _afmi_pingpong, 2, nbytes, iters, channel="redis", config=cfg
                )
                ours["one process"].append(out[0][0])
                if processes:
                    raws["two processes"].append(await _in_processes("raw", url, nbytes, iters))
                    ours["two processes"].append(await _in_processes("afmi", url, nbytes, iters))
            for layout in layouts:
                raw, our = statistics.median(raws[layout]), statistics.median(ours[layout])
                # Each round's raw and afmi ran back to back: the median of the rounds'
                # ratios cancels slow changes of the machine's load better.
                paired = statistics.median(r / o for r, o in zip(raws[layout], ours[layout]))
                print(
                    f"{nbytes:>9} {layout:>13} {raw * 1e6:>10.0f} us {our * 1e6:>8.0f} us"
                    f" {our / raw:>8.2f}   (speedup {raw / our:.2f}x, per round {paired:.2f}x)",
                    flush=True,
                )


async def bench_s3() -> None:
    with s3_server() as server:
        os.environ.update(server.env())
        cfg = {"channels": {"s3": server.config()}}
        print(f"{'bytes':>9} {'half RTT':>10} {'MB/s':>7}  requests per message")
        for nbytes, iters in [(1, 30), (100_000, 20), (1 << 20, 10), (16 << 20, 4)]:
            out = await afmi.launch_local(
                _afmi_pingpong, 2, nbytes, iters, channel="s3", config=cfg
            )
            half = out[0][0]
            msgs = sum(s["messages_received"] for _, s in out)
            reqs: dict[str, float] = {}
            for _, s in out:
                for k, v in s["requests"].items():
                    reqs[k] = reqs.get(k, 0) + v / msgs
            per = ", ".join(f"{k} {v:.2f}" for k, v in reqs.items() if k != "head")
            rate = nbytes / half / 1e6
            print(f"{nbytes:>9} {half * 1e3:>7.1f} ms {rate:>7.1f}  {per}", flush=True)


async def _after_silence(comm: afmi.Communicator, silence: float) -> float:
    """Both ranks compute (sleep) ``silence`` s; rank 0 then sends and rank 1 receives.

    Returns, on rank 1, seconds from rank 0's send to rank 1's receipt (one clock).
    """
    await comm.barrier()
    await asyncio.sleep(silence)
    if comm.rank == 0:
        await comm.send(time.perf_counter(), 1)
        return 0.0
    sent = await comm.recv(0)
    return time.perf_counter() - float(sent)


async def bench_s3_silence(silences: list[float], rounds: int = 5) -> None:
    """Latency of the first message after a silence, with and without the poller's wake-up.

    "without" replaces :meth:`S3Channel.awaited` by the no-op of the base class for
    the run (what afmi did before it told pollers about waiting receives). The two
    alternate round by round, so both see the same machine.
    """
    from afmi.channels.base import Channel
    from afmi.channels.s3 import S3Channel

    woken = S3Channel.awaited
    with s3_server() as server:
        os.environ.update(server.env())
        cfg = {"channels": {"s3": server.config()}}
        print(f"{'silence':>8} {'with wake-up':>13} {'without':>9}  (median of {rounds} rounds)")
        for silence in silences:
            got: dict[str, list[float]] = {"with": [], "without": []}
            for _ in range(rounds):
                for mode in ("with", "without"):
                    S3Channel.awaited = woken if mode == "with" else Channel.awaited  # type: ignore[method-assign]
                    try:
                        out = await afmi.launch_local(
                            _after_silence, 2, silence, channel="s3", config=cfg
                        )
                    finally:
                        S3Channel.awaited = woken  # type: ignore[method-assign]
                    got[mode].append(out[1])
            w, wo = statistics.median(got["with"]), statistics.median(got["without"])
            print(f"{silence:>7.2f}s {w * 1e3:>10.1f} ms {wo * 1e3:>6.1f} ms", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        _child(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel", nargs="?", choices=["redis", "s3"], default="redis")
    parser.add_argument("--processes", action="store_true", help="redis: also one process per side")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="rounds per row (redis; s3 --after-silence)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="redis: bytes (default 1 1MiB 16MiB)")
    parser.add_argument(
        "--after-silence",
        type=float,
        nargs="+",
        metavar="SECONDS",
        help="s3: time the first message after these silences, with and without the wake-up",
    )
    args = parser.parse_args(argv)
    loop = afmi.launch.new_event_loop()
    if args.channel == "redis":
        loop.run_until_complete(bench_redis(args.processes, args.rounds, args.sizes))
    elif args.after_silence:
        loop.run_until_complete(bench_s3_silence(args.after_silence, args.rounds))
    else:
        loop.run_until_complete(bench_s3())


if __name__ == "__main__":
    main()
