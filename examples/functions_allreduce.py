"""A job of 8 functions hosted by `afmi serve`, started by the invoker, doing an allreduce
over the direct channel and over Redis (and the in-process local channel), with the cost report.

# run: python examples/functions_allreduce.py

The same job from a shell (the handler is this file's `handler`):

    afmi serve examples/functions_allreduce.py:handler --port 8080 &
    afmi invoke -n 8 --url http://127.0.0.1:8080 --channel direct
    afmi invoke -n 8 --url http://127.0.0.1:8080 --channel redis --config redis.json

On AWS Lambda, deploy `entry = afmi.runtime.lambda_handler(handler)` and use
`afmi invoke -n 8 --lambda FUNCTION --rendezvous HOST:PORT --channel direct`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import afmi
from afmi.runtime.invoke import HttpTarget, invoke_job
from afmi.testing.servers import free_port, redis_server, wait_for_port

SIZE = 8
LENGTH = 100_000  # float64 values per function: 800 kB


async def handler(comm: afmi.Communicator, event: dict[str, Any]) -> dict[str, Any]:
    """One function of the job: contribute a vector, get the sum of all of them."""
    vector = np.full(event.get("length", 10), float(comm.rank + 1))
    total = await comm.allreduce(vector)
    return {"rank": comm.rank, "first": float(total[0]), "length": len(total)}


@contextlib.contextmanager
def function_runtime() -> Iterator[str]:
    """Start `afmi serve` with this file's handler; yield its URL."""
    port = free_port()
    env = dict(os.environ)
    here = str(Path(afmi.__file__).resolve().parent.parent)  # the afmi this script imports
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    target = f"{Path(__file__).resolve()}:handler"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afmi",
            "serve",
            target,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def channel_ready(name: str) -> str | None:
    """None when the channel can be used, else why not."""
    try:
        afmi.channels.base.get_driver(name)
    except afmi.ArgumentError as exc:
        return str(exc)
    return None


async def run_job(url: str, channel: str, config: dict[str, Any] | None = None) -> None:
    result = await invoke_job(
        HttpTarget(url), SIZE, {"length": LENGTH}, channel=channel, config=config, timeout=60
    )
    expected = SIZE * (SIZE + 1) / 2  # ranks contribute 1, 2, ..., SIZE
    assert all(r["first"] == expected and r["length"] == LENGTH for r in result.results)
    slowest = max(r.handler_duration_s or 0.0 for r in result.ranks)
    print(
        f"{channel}: {SIZE} functions agree on the sum {expected:.0f} x {LENGTH} values; "
        f"wall {result.wall_s * 1000:.1f} ms, slowest function {slowest * 1000:.1f} ms"
    )
    print(result.cost.format())
    print()


def main() -> None:
    with function_runtime() as url:
        asyncio.run(run_job(url, "local"))
        reason = channel_ready("direct")
        if reason:
            print(f"direct: skipped ({reason})\n")
        else:
            asyncio.run(run_job(url, "direct"))
        reason = channel_ready("redis")
        if reason:
            print(f"redis: skipped ({reason})")
            return
        with contextlib.ExitStack() as stack:
            try:
                redis_url = stack.enter_context(redis_server())
            except RuntimeError as exc:
                print(f"redis: skipped (no Redis server: {exc})")
                return
            asyncio.run(run_job(url, "redis", {"channels": {"redis": {"url": redis_url}}}))


if __name__ == "__main__":
    main()
