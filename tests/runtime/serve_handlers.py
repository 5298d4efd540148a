"""Handlers hosted by ``afmi serve`` in the runtime tests, and a helper that starts it.

``afmi serve`` loads this file by path (``tests/runtime/serve_handlers.py:job``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import afmi
from afmi.testing.servers import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
THIS = str(HERE / "serve_handlers.py")


async def job(comm: afmi.Communicator, event: dict[str, Any]) -> Any:
    """Behaviour chosen by ``event["mode"]``: allreduce (default), fail, sleep."""
    mode = event.get("mode", "allreduce")
    if mode == "fail":
        if comm.rank == event["fail_rank"]:
            raise ValueError(f"boom on rank {comm.rank}")
        await comm.barrier()  # waits for the failed rank: only cancellation ends it
        return "passed the barrier"
    if mode == "sleep":
        if comm.rank == event["sleep_rank"]:
            await asyncio.sleep(3600)
        return "awake"
    vector = np.full(4, comm.rank + 1.0)
    total = await comm.allreduce(vector)
    return {"rank": comm.rank, "size": comm.size, "sum": total, "input": event.get("input")}


def not_async(comm: afmi.Communicator, event: dict[str, Any]) -> None:
    """A synchronous function: afmi serve must refuse it."""


@dataclass
class Served:
    """A running ``afmi serve`` subprocess."""

    url: str
    proc: subprocess.Popen[str]
    stderr: list[str] = field(default_factory=list)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def wait_idle(self, tasks: int | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """Health once no invocation is running (cancelled ones may take a moment to end)
        and, if given, at most ``tasks`` tasks are left (closed connections wind down)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            done = health["active"] == 0 and (tasks is None or health["tasks"] <= tasks)
            if done or time.monotonic() > deadline:
                return health
            time.sleep(0.05)


@contextlib.contextmanager
def serve(env: dict[str, str], target: str = f"{THIS}:job", *extra: str) -> Iterator[Served]:
    """Start ``python -m afmi serve TARGET`` on a free port; stop it on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "afmi", "serve", target, "--port", str(port), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
        yield served
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        served.stderr[:] = err.splitlines()
