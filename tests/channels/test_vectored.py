"""VectoredWriter over a real socket pair and asyncio's own transport."""

from __future__ import annotations

import asyncio
import socket
import sys

import numpy as np
import pytest

from afmi.channels.vectored import VectoredWriter, joins_to_write


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:  # pragma: no cover - never read here
        pass


def _drain(sock: socket.socket, into: bytearray, limit: int | None = None) -> None:
    """Read what the kernel has for ``sock`` now (at most ``limit`` bytes)."""
    while limit is None or limit > 0:
        try:
            chunk = sock.recv(min(1 << 16, limit) if limit is not None else 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        into += chunk
        if limit is not None:
            limit -= len(chunk)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio's own writelines is unjoined")
async def test_what_the_kernel_does_not_take_stays_in_order():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    b.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(_Sink, sock=a)
    try:
        assert joins_to_write(transport)
        writer = VectoredWriter(transport)
        assert writer.vectored
        rng = np.random.default_rng(3)
        first = rng.integers(0, 255, 3 << 20, dtype=np.uint8)
        head, second = b"header", rng.integers(0, 255, 1 << 20, dtype=np.uint8)
        small = [b"a", b"bc"]
        writer.writelines([b"x", first])  # the kernel takes part; the transport queues the rest
        assert transport.get_write_buffer_size() > 0
        got = bytearray()
        _drain(b, got, 256 * 1024)  # room in the kernel again, the transport not yet told
        writer.writelines([head, second])  # must queue behind the rest, not writev now
        writer.writelines(small)  # small: always the transport's writelines
        want = b"x" + first.tobytes() + head + second.tobytes() + b"abc"
        while len(got) < len(want):
            _drain(b, got)
            await asyncio.sleep(0)
        assert bytes(got) == want
        # with nothing queued, a large list goes out with writev, the rest queued in order
        third = rng.integers(0, 255, 2 << 20, dtype=np.uint8)
        writer.writelines([b"y", third, b"z"])
        want = b"y" + third.tobytes() + b"z"
        got = bytearray()
        while len(got) < len(want):
            _drain(b, got)
            await asyncio.sleep(0)
        assert bytes(got) == want
    finally:
        transport.close()
        b.close()
        await asyncio.sleep(0)


def test_a_transport_with_its_own_writelines_is_left_to_it():
    class OwnWritelines(asyncio.Transport):
        def writelines(self, list_of_data):  # pragma: no cover - not called
            raise AssertionError

    assert not joins_to_write(OwnWritelines())
    assert not VectoredWriter(OwnWritelines()).vectored
