"""What a function runtime adds: one 8-rank allreduce job run in-process (`afmi.launch_local`),
through `afmi serve` over plain HTTP, and through the same runtime's AWS Lambda Invoke API
(aiobotocore), side by side in one run. Prints medians and ratios.

# run: python examples/functions_overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from functions_allreduce import function_runtime

import afmi
from afmi.runtime.invoke import HttpTarget, LambdaTarget, invoke_job

SIZE = 8


async def rank_main(comm: afmi.Communicator) -> Any:
    return await comm.allreduce(np.full(10, comm.rank + 1.0))


async def median_s(job: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await job()  # warm-up: connections, imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await job()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(url: str, repeat: int) -> dict[str, float]:
    # The runtime ignores the signature; aiobotocore just needs some credentials to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    http = HttpTarget(url)
    lam = LambdaTarget("afmi-example", endpoint_url=url, region="us-east-1")
    async with http, lam:  # keep connections open across jobs, as a long-lived invoker would
        return {
            "in-process (launch_local)": await median_s(
                lambda: afmi.launch_local(rank_main, SIZE), repeat
            ),
            "afmi serve, HTTP": await median_s(
                lambda: invoke_job(http, SIZE, {"length": 10}, channel="local"), repeat
            ),
            "afmi serve, Lambda Invoke API": await median_s(
                lambda: invoke_job(lam, SIZE, {"length": 10}, channel="local"), repeat
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed jobs per way")
    args = parser.parse_args()
    with function_runtime() as url:
        results = asyncio.run(measure(url, args.repeat))
    base = results["in-process (launch_local)"]
    print(f"job of {SIZE} ranks, one allreduce; median of {args.repeat} jobs each")
    for name, seconds in results.items():
        print(f"  {name:<32} {seconds * 1000:8.2f} ms   x{seconds / base:5.1f}")


if __name__ == "__main__":
    main()
