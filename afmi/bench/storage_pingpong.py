"""Side-by-side measurements for the redis and s3 channels (docs/performance.md).

    python -m afmi.bench.storage_pingpong redis   # afmi redis channel vs raw redis-py RPUSH/BLPOP
    python -m afmi.bench.storage_pingpong s3      # afmi s3 channel on a private moto server

Run from the repository root (PYTHONPATH=.). Redis: the server on 127.0.0.1:6379
or AFMI_TEST_REDIS_URL. Ping-pong between two ranks in one process; the figure
is half the round trip (median of the timed iterations after warm-up).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

import numpy as np

import afmi
from afmi.testing.servers import redis_server, s3_server


async def _raw_pingpong(url: str, nbytes: int, iters: int) -> float:
    import redis.asyncio as aioredis

    a, b = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    key = f"afmi-bench-raw:{uuid.uuid4().hex}"
    payload = bytes(nbytes) or b"x"

    async def peer() -> None:
        for _ in range(iters + 2):
            popped = await b.blpop([key + ":b"], 0)
            assert popped is not None
            await b.rpush(key + ":a", popped[1])

    task = asyncio.ensure_future(peer())
    times = []
    for _ in range(iters + 2):
        t0 = time.perf_counter()
        await a.rpush(key + ":b", payload)
        await a.blpop([key + ":a"], 0)
        times.append((time.perf_counter() - t0) / 2)
    await task
    await a.aclose()
    await b.aclose()
    return statistics.median(times[2:])


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


SIZES = [(1, 200), (1 << 20, 12), (16 << 20, 12)]
ROUNDS = 3


async def bench_redis() -> None:
    with redis_server() as url:
        cfg = {"channels": {"redis": {"url": url}}}
        print(f"{'bytes':>9} {'raw redis-py':>13} {'afmi redis':>11} {'afmi/raw':>9}")
        for nbytes, iters in SIZES:
            raws, ours = [], []
            for _ in range(ROUNDS):  # interleaved, so both see the same machine load
                raws.append(await _raw_pingpong(url, nbytes, iters))
                out = await afmi.launch_local(
                    _afmi_pingpong, 2, nbytes, iters, channel="redis", config=cfg
                )
                ours.append(out[0][0])
            raw, our = statistics.median(raws), statistics.median(ours)
            print(
                f"{nbytes:>9} {raw * 1e6:>10.0f} us {our * 1e6:>8.0f} us {our / raw:>8.2f}"
                f"   (speedup {raw / our:.2f}x)",
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


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "redis"
    loop = afmi.launch.new_event_loop()
    loop.run_until_complete(bench_redis() if which == "redis" else bench_s3())
