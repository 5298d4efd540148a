"""The Redis channel's RESP client against a real server: large values in and out."""

import sys
import uuid

import numpy as np

from afmi.channels.redis.resp import RespConnection


async def _open(redis_url: str) -> RespConnection:
    from urllib.parse import urlparse

    url = urlparse(redis_url)
    return await RespConnection.open(url.hostname or "127.0.0.1", url.port or 6379)


async def test_large_values_go_out_unjoined_and_come_back_whole(redis_url):
    """Values of several buffers, from a few bytes to 8 MiB, pipelined on one
    connection: on asyncio's own loop before Python 3.12 the large ones are written
    with writev (no joined copy), and every value reads back as written."""
    conn = await _open(redis_url)
    prefix = f"afmi-test-resp-{uuid.uuid4().hex}"
    rng = np.random.default_rng(5)
    values = [rng.integers(0, 255, n, dtype=np.uint8) for n in (7, 40_000, 1 << 20, 8 << 20)]
    try:
        assert conn._writer is not None and conn._writer.vectored == (sys.version_info < (3, 12))
        head = b"head:"
        replies = await conn.pipeline(
            [("SET", f"{prefix}:{i}", (head, v.data)) for i, v in enumerate(values)]
        )
        assert replies == [b"OK"] * len(values)
        for i, v in enumerate(values):
            got = await conn.command("GETDEL", f"{prefix}:{i}")
            assert got[: len(head)] == head
            assert np.array_equal(np.frombuffer(got[len(head) :], np.uint8), v)
        assert await conn.command("EXISTS", *[f"{prefix}:{i}" for i in range(len(values))]) == 0
    finally:
        conn.close()
