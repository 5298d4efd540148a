"""Side-by-side anchors: the same ping-pong without afmi.

* ``socket``: two processes, blocking TCP sockets over loopback with
  ``sendall``/``recv_into`` and an 8-byte length prefix: what plain Python
  reaches on this machine. Both ends use the TCP congestion control direct
  links use (``channels.direct.tcp_congestion``), so the rows differ by what
  afmi does, not by how the kernel paces the connection.
* ``mpi4py``: two MPI processes (``mpiexec -n 2``) exchanging numpy buffers
  with ``Send``/``Recv``; Open MPI is restricted to its TCP transport so it
  compares with afmi's network channels. Skipped, with the reason, when
  mpi4py or ``mpiexec`` is missing.

``python -m afmi.bench.anchors echo [CONGESTION]`` is the socket echo side (it prints its port).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afmi.bench.measure import Budget
from afmi.channels.direct.tcp import set_congestion
from afmi.config import DirectConfig
from afmi.runtime.orphans import guarded
from afmi.testing.servers import stop_process

__all__ = ["ANCHORS", "mpi4py_pingpong", "socket_pingpong"]

#: The channel names of the anchors' rows, measured beside afmi's channels.
ANCHORS = ("socket", "mpi4py")

_LEN = struct.Struct("!Q")
#: Bytes of the echo protocol's length prefix, zero-padded: a message's data starts
#: on a 64-byte boundary of the stream, as afmi's large messages do (across processes
#: on this project's machine, data at other offsets made exchanges 3-4x slower;
#: docs/direct.md, "Aligned data").
_HEAD = 64


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed the connection")
        got += n


def _echo(congestion: str | None) -> None:
    """Print the listening port, serve one client: echo length-prefixed messages until EOF."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        conn, _ = server.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_congestion(conn, congestion)
        head = bytearray(_HEAD)
        buf = bytearray(1 << 16)
        while True:
            try:
                _recv_exact(conn, memoryview(head))
            except ConnectionError:
                return
            (n,) = _LEN.unpack_from(head)
            if n > len(buf):
                buf = bytearray(n)
            _recv_exact(conn, memoryview(buf)[:n])
            conn.sendall(head)
            conn.sendall(memoryview(buf)[:n])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def mpi_env() -> dict[str, str]:
    """Environment for mpi4py anchors: Open MPI over TCP only, as root, oversubscribed."""
    env = _child_env()
    env.update(
        {
            "OMPI_MCA_btl": "tcp,self",
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1",
            # yield the CPU while waiting: the machine may have fewer free cores than ranks
            "OMPI_MCA_mpi_yield_when_idle": "1",
        }
    )
    return env


def socket_pingpong(
    nbytes_list: Sequence[int],
    budget: Budget | None = None,
    congestion: str | None = DirectConfig.tcp_congestion,
) -> list[dict[str, Any]]:
    """Blocking-socket ping-pong between this process and a child echo process, both
    ends with TCP congestion control ``congestion`` (None: the system's). Every message
    has a 64-byte header; before each size an untimed message realigns the stream, so
    the data of the sizes from 64 B on starts on a 64-byte boundary, as afmi's does."""
    budget = budget or Budget()
    echo = [sys.executable, "-m", "afmi.bench.anchors", "echo"]
    if congestion:
        echo.append(congestion)
    proc = subprocess.Popen(
        guarded(echo),
        env=_child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError("the socket echo process did not start")
        port = int(line)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_congestion(sock, congestion)
            offset = 0  # bytes each way so far

            def exchange(nbytes: int) -> None:
                sock.sendall(_LEN.pack(nbytes).ljust(_HEAD, b"\0") + bytes(nbytes))
                _recv_exact(sock, memoryview(bytearray(_HEAD + nbytes)))

            for nbytes in nbytes_list:
                pad = -offset % _HEAD
                if pad:  # one untimed message of the right size realigns the stream
                    exchange(pad)
                    offset += _HEAD + pad
                out = bytes(nbytes)
                back = bytearray(nbytes)
                head = _LEN.pack(nbytes).ljust(_HEAD, b"\0")
                hbuf = bytearray(_HEAD)

                def one(
                    head: bytes = head,
                    out: bytes = out,
                    hbuf: bytearray = hbuf,
                    back: bytearray = back,
                ) -> None:
                    sock.sendall(head)
                    sock.sendall(out)
                    _recv_exact(sock, memoryview(hbuf))
                    _recv_exact(sock, memoryview(back))

                warm, iters = budget.plan(nbytes)
                t0 = time.perf_counter()
                for _ in range(max(warm, 1)):
                    one()
                iters = budget.cap(iters, (time.perf_counter() - t0) / max(warm, 1))
                t0 = time.perf_counter()
                for _ in range(iters):
                    one()
                half = (time.perf_counter() - t0) / iters / 2
                offset += (max(warm, 1) + iters) * (_HEAD + nbytes)
                rows.append(_row("socket", nbytes, iters, half))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    return rows


def _row(channel: str, nbytes: int, iters: int, half: float) -> dict[str, Any]:
    return {
        "channel": channel,
        "nbytes": nbytes,
        "iterations": iters,
        "latency_s": half,
        "bandwidth_bytes_per_s": nbytes / half if half > 0 else 0.0,
    }


_MPI_SCRIPT = """
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
plan = json.loads(sys.argv[1])
rows = []
for nbytes, warm, iters in plan:
    buf = np.ones(nbytes, dtype=np.uint8)
    comm.Barrier()
    for i in range(warm + iters):
        if i == warm:
            t0 = MPI.Wtime()
        if rank == 0:
            comm.Send(buf, dest=1, tag=1)
            comm.Recv(buf, source=1, tag=1)
        else:
            comm.Recv(buf, source=0, tag=1)
            comm.Send(buf, dest=0, tag=1)
    rows.append((nbytes, iters, (MPI.Wtime() - t0) / iters / 2))
if rank == 0:
    print("AFMI-MPI " + json.dumps(rows), flush=True)
"""


def _mpiexec() -> str | None:
    return shutil.which("mpiexec") or shutil.which("mpirun")


def mpi4py_unavailable() -> str | None:
    """Why the mpi4py anchor cannot run here, or None if it can."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install mpi4py, with an MPI such as libopenmpi-dev)"
    if _mpiexec() is None:
        return "no mpiexec/mpirun on PATH (apt-get install openmpi-bin, or pip install mpich)"
    return None


def mpi4py_pingpong(
    nbytes_list: Sequence[int], budget: Budget | None = None, timeout: float = 300.0
) -> list[dict[str, Any]]:
    """mpi4py buffer ping-pong between two MPI processes over TCP (Open MPI ``btl tcp,self``).

    Raises:
        RuntimeError: mpi4py or MPI is missing, or the MPI run failed (the reason says which).
    """
    reason = mpi4py_unavailable()
    if reason:
        raise RuntimeError(reason)
    budget = budget or Budget()
    plan = []
    for n in nbytes_list:
        warm, iters = budget.plan(n)
        # Large messages: keep the run short on a shared machine (roughly 1 GB/s assumed).
        iters = budget.cap(iters, n / 1e9 + 2e-5)
        plan.append((n, warm, iters))
    env = mpi_env()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_MPI_SCRIPT)
        script = f.name
    try:
        exe = _mpiexec()
        assert exe is not None
        proc = subprocess.run(
            [exe, "-n", "2", sys.executable, script, json.dumps(plan)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    finally:
        os.unlink(script)
    for line in proc.stdout.splitlines():
        if line.startswith("AFMI-MPI "):
            return [_row("mpi4py", n, it, half) for n, it, half in json.loads(line[9:])]
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"mpiexec failed (exit {proc.returncode}): {' | '.join(tail)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"] and len(sys.argv) <= 3:
        _echo(sys.argv[2] if len(sys.argv) == 3 else None)
    else:
        print("usage: python -m afmi.bench.anchors echo [CONGESTION]", file=sys.stderr)
        sys.exit(2)
