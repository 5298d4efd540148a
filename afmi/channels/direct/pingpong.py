"""OSU-style ping-pong of the direct channel beside a plain blocking socket, in one run.

``python -m afmi.channels.direct.pingpong [--max-size BYTES] [--quick]``

Two processes on loopback; for each message size it prints the one-way
latency (half the round trip, µs) and the bandwidth (size / one-way time) of:

* ``socket``: blocking ``socket.sendall`` / ``recv_into`` a preallocated
  buffer, TCP_NODELAY and the links' congestion control, each size's data
  starting on a 64-byte boundary of the stream as afmi's does (the anchor);
* ``channel``: :class:`DirectChannel` alone (``send`` / ``on_message``), large
  messages received into the one preallocated array it also sends (the
  channel's ``destination`` hook, as a posted ``recv(out=)`` uses it);
* ``comm``: ``await comm.send(array)`` / ``await comm.recv(out=array)`` through
  the whole stack (serialization, matching, timeouts), receiving into one
  preallocated array as the socket row does.

The afmi rows use :func:`afmi.launch.new_event_loop` (uvloop when installed).
This is a tuning tool for the channel; ``afmi bench`` is the project's suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from afmi.channels.direct.tcp import set_congestion
from afmi.config import DirectConfig
from afmi.wire.frame import ALIGN

__all__ = ["main", "sizes_up_to"]

Result = dict[int, float]  # size -> one-way seconds
_CONTEXT = 999  # a context no communicator uses


def sizes_up_to(limit: int) -> list[int]:
    """1, 8, 64, ... (x8) up to ``limit``, plus 1 MiB and 16 MiB when within it."""
    out = [1]
    while out[-1] * 8 <= limit:
        out.append(out[-1] * 8)
    for extra in (1 << 20, 16 << 20, 64 << 20):
        if extra <= limit and extra not in out:
            out.append(extra)
    return sorted(out)


def iterations(size: int, quick: bool) -> tuple[int, int]:
    """(warm-up, timed) iterations for ``size``: fewer for large messages."""
    if size <= 64 * 1024:
        n = 2000
    else:
        n = max(8, int(256 * 1024 * 1024 / size))
    if quick:
        n = max(4, n // 10)
    return max(2, n // 10), n


# -- blocking socket anchor ---------------------------------------------------------------------
def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("peer closed")
        got += n


def _socket_rank(rank: int, port: int, sizes: list[int], quick: bool, out: Connection) -> None:
    if rank == 0:
        lsock = socket.create_server(("127.0.0.1", port))
        out.send("listening")
        sock, _ = lsock.accept()
        lsock.close()
    else:
        sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    set_congestion(sock, DirectConfig.tcp_congestion)  # as the channel's links do
    result: Result = {}
    offset = 0  # bytes each way so far
    for size in sizes:
        # Each size's data starts on a 64-byte boundary of the stream, as afmi's large
        # messages do: across processes on this project's machine data at other
        # offsets made exchanges 3-4x slower (docs/direct.md, "Aligned data").
        pad = -offset % ALIGN
        if pad and rank == 0:
            sock.sendall(bytes(pad))
            _recv_exactly(sock, memoryview(bytearray(pad)))
        elif pad:
            _recv_exactly(sock, memoryview(bytearray(pad)))
            sock.sendall(bytes(pad))
        buf = np.zeros(size, np.uint8)
        view = memoryview(buf.data)
        warm, n = iterations(size, quick)
        offset += pad + (warm + n) * size
        for i in range(warm + n):
            if i == warm:
                t0 = time.perf_counter()
            if rank == 0:
                sock.sendall(view)
                _recv_exactly(sock, view)
            else:
                _recv_exactly(sock, view)
                sock.sendall(view)
        result[size] = (time.perf_counter() - t0) / n / 2
    sock.close()
    if rank == 0:
        out.send(result)


# -- afmi ---------------------------------------------------------------------------------------
async def _channel_pingpong(comm: Any, sizes: list[int], quick: bool) -> Result:
    from afmi.endpoint import spin_until
    from afmi.wire.message import Message

    ch = comm.endpoint.channels["direct"]
    original = ch._on_message
    loop = asyncio.get_running_loop()
    inbox: list[Message] = []
    waiter: list[asyncio.Future[None] | None] = [None]

    def on_message(msg: Message) -> None:
        if msg.context != _CONTEXT:
            original(msg)  # e.g. the closing barrier, sent by a peer that finished first
            return
        inbox.append(msg)
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    spin = comm.endpoint.config.spin

    async def arrival() -> Message:
        # The endpoint's progress rule: spin the loop for Config.spin, then block.
        while not inbox:
            fut = waiter[0] = loop.create_future()
            await spin_until(fut, spin)
            await fut
        return inbox.pop(0)

    class Slot:  # what the endpoint gives for a posted receive with its own buffer
        into: list[memoryview] = []

    slot = Slot()

    def destination(context: int, source: int, tag: int, seq: int, lens: list[int]) -> Any:
        ok = context == _CONTEXT and len(lens) == 1 and lens[0] == slot.into[0].nbytes
        return slot if ok else None

    ch._on_message = on_message  # take the channel over from the endpoint for this test
    ch.destination = destination  # and receive into one array, as the socket row does
    await comm.barrier()  # both sides have taken over before the first ping
    peer = 1 - comm.rank
    result: Result = {}
    for size in sizes:
        buf = np.zeros(size, np.uint8)
        # Into the array it sends next, as the socket and comm rows do: a second
        # array would double the memory the ping-pong touches (1 MiB: 563 against
        # 436 µs through comm in session 2, which received into its one array).
        slot.into = [memoryview(buf)]  # type: ignore[arg-type]
        warm, n = iterations(size, quick)
        for i in range(warm + n):
            if i == warm:
                t0 = time.perf_counter()
            if comm.rank == 0:
                await ch.send(peer, Message(_CONTEXT, 0, 0, i, b"\xc0", [buf]))
                await arrival()
            else:
                await arrival()
                await ch.send(peer, Message(_CONTEXT, 1, 0, i, b"\xc0", [buf]))
        result[size] = (time.perf_counter() - t0) / n / 2
    ch._on_message = original
    ch.destination = None
    return result


async def _comm_pingpong(comm: Any, sizes: list[int], quick: bool) -> Result:
    peer = 1 - comm.rank
    result: Result = {}
    for size in sizes:
        buf = np.zeros(size, np.uint8)
        warm, n = iterations(size, quick)
        for i in range(warm + n):
            if i == warm:
                t0 = time.perf_counter()
            # Into one preallocated array, as the socket anchor's recv_into does.
            if comm.rank == 0:
                await comm.send(buf, peer)
                await comm.recv(peer, out=buf)
            else:
                await comm.recv(peer, out=buf)
                await comm.send(buf, peer)
        result[size] = (time.perf_counter() - t0) / n / 2
    return result


def _afmi_rank(
    rank: int, which: str, sizes: list[int], quick: bool, link: Connection, out: Connection
) -> None:
    import afmi
    from afmi.launch import new_event_loop
    from afmi.rendezvous import RendezvousServer

    async def run() -> Result:
        server = None
        if rank == 0:
            server = RendezvousServer()
            await server.start()
            link.send(server.address)
            address = server.address
        else:
            address = link.recv()
        env = {"AFMI_RENDEZVOUS": address, "AFMI_TOKEN": "pingpong"}
        try:
            async with afmi.connect(
                rank=rank, size=2, job="pingpong", channel="direct", env=env
            ) as comm:
                fn = _channel_pingpong if which == "channel" else _comm_pingpong
                res = await fn(comm, sizes, quick)
                await comm.barrier()
                return res
        finally:
            if server is not None:
                await server.aclose()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        res = runner.run(run())
    if rank == 0:
        out.send(res)


def _pair(target: Callable[..., None], args: tuple[Any, ...]) -> Result:
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    res_r, res_w = ctx.Pipe(duplex=False)
    procs = [
        ctx.Process(target=target, args=(rank, *args, (a if rank == 0 else b), res_w))
        for rank in (0, 1)
    ]
    for p in procs:
        p.start()
    result: Result = res_r.recv()
    for p in procs:
        p.join(60)
    return result


def _socket_pair(sizes: list[int], quick: bool) -> Result:
    from afmi.testing.servers import free_port

    port = free_port()
    ctx = mp.get_context("fork")
    res_r, res_w = ctx.Pipe(duplex=False)
    p0 = ctx.Process(target=_socket_rank, args=(0, port, sizes, quick, res_w))
    p0.start()
    assert res_r.recv() == "listening"
    p1 = ctx.Process(target=_socket_rank, args=(1, port, sizes, quick, res_w))
    p1.start()
    result: Result = res_r.recv()
    p0.join(60)
    p1.join(60)
    return result


def _afmi_pair(which: str, sizes: list[int], quick: bool) -> Result:
    def target(rank: int, link: Connection, out: Connection) -> None:
        _afmi_rank(rank, which, sizes, quick, link, out)

    return _pair(target, ())


def main(argv: list[str] | None = None) -> None:
    """Run the three ping-pongs (best of ``--rounds``) and print a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-size", type=int, default=64 << 20)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternate the three rows this often; keep the best"
    )
    args = parser.parse_args(argv)
    sizes = sizes_up_to(args.max_size)
    runs: dict[str, Callable[[], Result]] = {
        "socket": lambda: _socket_pair(sizes, args.quick),
        "channel": lambda: _afmi_pair("channel", sizes, args.quick),
        "comm": lambda: _afmi_pair("comm", sizes, args.quick),
    }
    rows: dict[str, Result] = {k: {} for k in runs}
    for _ in range(max(1, args.rounds)):
        for k, run in runs.items():
            for size, seconds in run().items():
                rows[k][size] = min(seconds, rows[k].get(size, seconds))
    head = f"{'bytes':>10} " + " ".join(f"{k + ' µs':>11} {k + ' GB/s':>13}" for k in rows)
    print(head)
    for size in sizes:
        cells = " ".join(
            f"{rows[k][size] * 1e6:11.1f} {size / rows[k][size] / 1e9:13.3f}" for k in rows
        )
        print(f"{size:>10} {cells}")
    for k in ("channel", "comm"):
        if 8 in sizes:
            ratio = rows[k][8] / rows["socket"][8]
            print(f"{k}: latency at 8 B = {ratio:.2f}x socket (target <= 1.5)")
        if 16 << 20 in sizes:
            bw = rows["socket"][16 << 20] / rows[k][16 << 20]
            print(f"{k}: bandwidth at 16 MiB = {bw:.2f}x socket (target >= 0.9)")


if __name__ == "__main__":
    main()
