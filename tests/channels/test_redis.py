"""The Redis channel against a real Redis server: conformance, leaks, errors, chunking."""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

import afmi
from afmi.channels.redis import RedisChannel, RedisEndpoint
from afmi.config import Config
from afmi.testing import conformance
from afmi.testing.servers import free_port, wait_for_port

PREFIX = "afmi-test"


def config(url: str, **redis: object) -> Config:
    return Config.from_dict({"channels": {"redis": {"url": url, "prefix": PREFIX, **redis}}})


def new_job() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def job_keys(url: str, job: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return [k async for k in client.scan_iter(match=f"{PREFIX}:{job}:*")]
    finally:
        await client.aclose()


@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_redis_conformance(case, redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=256 * 1024)
    run = functools.partial(afmi.launch_local, channel="redis", config=cfg, timeout=60, job=job)
    await case(run)
    assert await job_keys(redis_url, job) == []


STREAMED_CASES = [c for c in conformance.CASES if "large" in c.__name__ or "isend" in c.__name__]


@pytest.mark.parametrize("case", STREAMED_CASES, ids=conformance.case_id)
async def test_redis_conformance_streamed(case, redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=16 * 1024, inline_bytes=1024, stream_min_chunks=2)
    await case(
        functools.partial(afmi.launch_local, channel="redis", config=cfg, timeout=60, job=job)
    )
    assert await job_keys(redis_url, job) == []


async def _send_unreceived(comm, nbytes, split=False):
    def payload():
        if not split:
            return np.ones(nbytes // 8)
        # arrays of odd sizes: their chunks cut the aligned layout, not each array
        return [np.ones(nbytes // 40 + 3 * i, dtype=np.uint8) for i in range(40)]

    if comm.rank == 0:
        await comm.send(payload(), 1)
        await comm.send("small", 1)
        await comm.send(payload(), 1)  # never received
    await comm.barrier()
    return comm.rank


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("stream", [0, 2])
async def test_unreceived_messages_leave_no_keys(redis_url, stream, split):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=64 * 1024, inline_bytes=1024, stream_min_chunks=stream)
    out = await afmi.launch_local(
        _send_unreceived, 2, 300_000, split, channel="redis", config=cfg, job=job, timeout=30
    )
    assert out == [0, 1]
    assert await job_keys(redis_url, job) == []


async def _hang(comm):
    if comm.rank == 0:
        await comm.send(np.ones(100_000), 1)
        await comm.recv(1)  # never sent: the job times out
    await asyncio.sleep(30)


@pytest.mark.parametrize("stream", [0, 2])
async def test_timeout_leaves_no_keys(redis_url, stream):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=64 * 1024, inline_bytes=1024, stream_min_chunks=stream)
    with pytest.raises(afmi.OperationTimeoutError):
        await afmi.launch_local(_hang, 2, channel="redis", config=cfg, job=job, timeout=0.5)
    assert await job_keys(redis_url, job) == []


@pytest.mark.parametrize("stream", [0, 2])
async def test_cancellation_leaves_no_keys(redis_url, stream):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=64 * 1024, inline_bytes=1024, stream_min_chunks=stream)
    task = asyncio.ensure_future(
        afmi.launch_local(_hang, 3, channel="redis", config=cfg, job=job, timeout=30)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await job_keys(redis_url, job) == []


async def test_every_key_has_a_ttl_and_chunks_are_consumed(redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=100_000, inline_bytes=1000, key_ttl=30, stream_min_chunks=3)
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        got: list[afmi.wire.message.Message] = []
        b.start(got.append, lambda e: None)
        a.start(lambda m: None, lambda e: None)
        # Stop b's receiver first so the message stays in storage for inspection.
        payload = np.arange(60_000, dtype=np.float64)
        msg = afmi.wire.message.Message(2, 0, 1, 0, b"h", [payload])
        await b.aclose()
        await a.send(1, msg)
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = await job_keys(redis_url, job)
            # mailbox + ceil(480000 / 100000) chunks + the list of chunk notices
            assert len(keys) == 1 + 5 + 1
            for key in keys:
                ttl = await client.pttl(key)
                assert 0 < ttl <= 30_000
        finally:
            await client.delete(*keys)
            await client.aclose()


async def test_chunked_message_arrives_and_keys_are_deleted(redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=10_000, inline_bytes=100)
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        got: asyncio.Queue[afmi.wire.message.Message] = asyncio.Queue()
        a.start(lambda m: None, lambda e: None)
        b.start(got.put_nowait, lambda e: None)
        bufs = [np.arange(7_001, dtype=np.int32), b"xyz", np.zeros(0)]
        await a.send(1, afmi.wire.message.Message(2, 0, 5, 0, b"head", bufs))
        msg = await asyncio.wait_for(got.get(), 10)
        assert (msg.context, msg.source, msg.tag, msg.header) == (2, 0, 5, b"head")
        assert [bytes(x) for x in msg.buffers] == [bytes(memoryview(x)) for x in bufs]
        assert await job_keys(redis_url, job) == []  # chunks deleted as they were read
        # the chunks cut the buffers laid back to back (28004 bytes, 28 of alignment,
        # 3): 3 chunks, not one per buffer (4)
        assert a.stats()["chunks_written"] == b.stats()["chunks_read"] == 3
        assert b.stats()["messages_received"] == 1
        assert all(memoryview(x).readonly is False for x in msg.buffers)


def test_payloads_up_to_two_chunks_per_connection_take_small_chunks():
    from afmi.channels.redis.channel import _chunk_size

    cfg = Config().channels.redis  # 1 MiB chunks, 512 KiB small ones, 2 fetch connections
    assert _chunk_size(65 * 1024, cfg) == _chunk_size(4 << 20, cfg) == 512 * 1024
    assert _chunk_size((4 << 20) + 1, cfg) == _chunk_size(64 << 20, cfg) == 1 << 20
    three = Config.from_dict({"channels": {"redis": {"fetch_connections": 3}}}).channels.redis
    assert _chunk_size(6 << 20, three) == 512 * 1024
    assert _chunk_size((6 << 20) + 1, three) == 1 << 20
    for small in (0, 1 << 20, 2 << 20):  # off, or no smaller than chunk_bytes: chunk_bytes
        cfg = Config.from_dict({"channels": {"redis": {"small_chunk_bytes": small}}})
        assert _chunk_size(1 << 20, cfg.channels.redis) == 1 << 20
    with pytest.raises(afmi.ConfigError, match=r"small_chunk_bytes must be >= 0"):
        Config.from_dict({"channels": {"redis": {"small_chunk_bytes": -1}}})


@pytest.mark.parametrize("stream", [0, 2])
async def test_a_payload_of_a_few_chunks_is_cut_into_small_ones(redis_url, stream):
    # default chunk sizes: 1 MiB + 100 B (laid out) is three chunks of 512 KiB, 5 MiB
    # (over two 1 MiB chunks per fetch connection) five of 1 MiB
    job = new_job()
    cfg = config(redis_url, stream_min_chunks=stream)
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        got: asyncio.Queue[afmi.wire.message.Message] = asyncio.Queue()
        a.start(lambda m: None, lambda e: None)
        b.start(got.put_nowait, lambda e: None)
        rng = np.random.default_rng(7)
        for nbytes, chunks in (((1 << 20) + 100, 3), (5 << 20, 5)):
            data = rng.integers(0, 256, nbytes, dtype=np.uint8)
            before = a.stats()["chunks_written"]
            await a.send(1, afmi.wire.message.Message(2, 0, 5, 0, b"h", [data]))
            msg = await asyncio.wait_for(got.get(), 20)
            assert bytes(msg.buffers[0]) == data.tobytes()
            assert a.stats()["chunks_written"] - before == chunks
        assert b.stats()["chunks_read"] == a.stats()["chunks_written"] == 8
        assert await job_keys(redis_url, job) == []


async def test_a_payload_published_to_several_ranks_in_small_chunks(redis_url):
    job = new_job()
    cfg = config(redis_url)
    async with afmi.channels.get_driver("redis").group(3, job, cfg) as chans:
        queues: list[asyncio.Queue[afmi.wire.message.Message]] = [asyncio.Queue() for _ in chans]
        for ch, q in zip(chans, queues):
            ch.start(q.put_nowait, lambda e: None)
        data = np.arange(1 << 17, dtype=np.float64)  # 1 MiB: two 512 KiB chunks
        msgs = [afmi.wire.message.Message(2, 0, 1, d, b"h", [data]) for d in (1, 2)]
        await chans[0].publish([1, 2], msgs)
        for q in queues[1:]:
            got = await asyncio.wait_for(q.get(), 20)
            assert np.array_equal(np.frombuffer(got.buffers[0], np.float64), data)
        assert chans[0].stats()["chunks_written"] == 2
        assert chans[1].stats()["chunks_read"] == chans[2].stats()["chunks_read"] == 2
        for _ in range(50):  # the last reader deletes the chunks after delivering
            if not await job_keys(redis_url, job):
                break
            await asyncio.sleep(0.05)
        assert await job_keys(redis_url, job) == []


@pytest.mark.parametrize("stream", [0, 2])
async def test_many_small_buffers_share_chunks_and_arrive_aligned(redis_url, stream):
    from afmi.channels.redis.channel import _ALIGN

    job = new_job()
    cfg = config(redis_url, chunk_bytes=64 * 1024, inline_bytes=1024, stream_min_chunks=stream)
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        got: asyncio.Queue[afmi.wire.message.Message] = asyncio.Queue()
        a.start(lambda m: None, lambda e: None)
        b.start(got.put_nowait, lambda e: None)
        # a dict of arrays, as a model's gradients: 40 buffers of odd sizes, 2 MiB
        bufs = [np.arange(1000 + 2561 * i, dtype=np.uint8) for i in range(40)]
        bufs[7] = np.zeros(0, dtype=np.uint8)
        total = sum(x.nbytes for x in bufs)
        await a.send(1, afmi.wire.message.Message(2, 0, 5, 0, b"head", bufs))
        msg = await asyncio.wait_for(got.get(), 10)
        assert [bytes(x) for x in msg.buffers] == [x.tobytes() for x in bufs]
        # the payload's length over the chunk size, with at most _ALIGN - 1 bytes of
        # alignment per buffer: 31 chunks of 64 KiB, where one per buffer made 53
        chunks = a.stats()["chunks_written"]
        assert -(-total // (64 * 1024)) <= chunks <= -(-(total + 40 * _ALIGN) // (64 * 1024))
        assert chunks == b.stats()["chunks_read"] == 31
        addresses = [np.frombuffer(x, np.uint8).ctypes.data for x in msg.buffers if len(x)]
        first = addresses[0]
        assert all((addr - first) % _ALIGN == 0 for addr in addresses)
        assert await job_keys(redis_url, job) == []


async def test_publish_stores_chunks_once_and_last_reader_deletes(redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=50_000, inline_bytes=100)
    async with afmi.channels.get_driver("redis").group(4, job, cfg) as chans:
        queues = [asyncio.Queue() for _ in chans]
        for ch, q in zip(chans, queues):
            ch.start(q.put_nowait, lambda e: None)
        data = np.arange(30_000, dtype=np.float64)
        msgs = [afmi.wire.message.Message(2, 0, 1, d, b"h", [data]) for d in (1, 2, 3)]
        await chans[0].publish([1, 2, 3], msgs)
        assert chans[0].stats()["chunks_written"] == 5  # not 15
        for d in (1, 2, 3):
            m = await asyncio.wait_for(queues[d].get(), 10)
            assert m.seq == d and bytes(m.buffers[0]) == data.tobytes()
        # several buffers published at once: one layout, read whole by every reader
        parts = [np.arange(7_000 + i, dtype=np.int16) for i in range(9)]
        msgs = [afmi.wire.message.Message(2, 0, 1, 10 + d, b"h", parts) for d in (1, 2, 3)]
        await chans[0].publish([1, 2, 3], msgs)
        assert chans[0].stats()["chunks_written"] == 5 + 3  # 126,144 bytes laid out, 50,000 a chunk
        for d in (1, 2, 3):
            m = await asyncio.wait_for(queues[d].get(), 10)
            assert [bytes(b) for b in m.buffers] == [x.tobytes() for x in parts]
        for _ in range(50):
            if not await job_keys(redis_url, job):
                break
            await asyncio.sleep(0.02)
        assert await job_keys(redis_url, job) == []


def count_outstanding(conns, verbs):
    """Spy on ``conns``: the most commands with one of ``verbs`` waiting for a reply at
    once on each (every request goes through ``submit_many``)."""
    outstanding = {id(c): 0 for c in conns}
    peak = {id(c): 0 for c in conns}
    for conn in conns:
        key, submit = id(conn), conn.submit_many

        def counted(commands, *args, key=key, submit=submit, **kw):
            futs = submit(commands, *args, **kw)
            for command, fut in zip(commands, futs):
                if command[0] in verbs:
                    outstanding[key] += 1
                    peak[key] = max(peak[key], outstanding[key])
                    fut.add_done_callback(
                        lambda _, key=key: outstanding.__setitem__(key, outstanding[key] - 1)
                    )
            return futs

        conn.submit_many = counted
    return peak


@pytest.mark.parametrize(("window", "most", "stored"), [(4_000, 2, 2), (1, 1, 1), (0, 5, 10)])
async def test_chunks_move_a_window_at_a_time(redis_url, window, most, stored):
    # 10 chunks of 1000 bytes over 2 connections: a window of 4000 bytes is 2 chunks
    # per connection, 1 byte still one chunk, 0 every chunk at once (a fetch spreads
    # them over both connections, a store writes them on one).
    job = new_job()
    cfg = config(
        redis_url, chunk_bytes=1000, inline_bytes=100, fetch_connections=2, window_bytes=window
    )
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        got: asyncio.Queue[afmi.wire.message.Message] = asyncio.Queue()
        a.start(lambda m: None, lambda e: None)
        b.start(got.put_nowait, lambda e: None)
        fetched = count_outstanding(b._bulk, ("GET", "GETDEL"))
        written = count_outstanding(a._bulk, ("SET",))
        data = np.arange(2_500, dtype=np.int32)  # 10_000 bytes
        await a.send(1, afmi.wire.message.Message(2, 0, 5, 0, b"h", [data]))
        msg = await asyncio.wait_for(got.get(), 10)
        assert bytes(msg.buffers[0]) == data.tobytes()
        assert sorted(fetched.values()) == [most, most]
        assert max(written.values()) == stored
        # Two messages fetched at once share the window (with none they may ask for 10).
        both = [data + 1, data + 2]
        await asyncio.gather(
            *(
                a.send(1, afmi.wire.message.Message(2, 0, 5, seq, b"h", [d]))
                for seq, d in enumerate(both, 1)
            )
        )
        for d in both:
            msg = await asyncio.wait_for(got.get(), 10)
            assert bytes(msg.buffers[0]) == d.tobytes()
        if window:
            assert sorted(fetched.values()) == [most, most]
            assert max(written.values()) == stored
        assert b.stats()["chunks_read"] == 30
        assert await job_keys(redis_url, job) == []


async def test_a_store_cancelled_midway_deletes_its_chunks(redis_url):
    job = new_job()
    cfg = config(redis_url, chunk_bytes=1000, inline_bytes=100, window_bytes=2000)
    async with afmi.channels.get_driver("redis").group(2, job, cfg) as (a, b):
        b.start(lambda m: None, lambda e: None)
        a.start(lambda m: None, lambda e: None)
        sets = 0
        for conn in a._bulk:
            submit = conn.submit_many

            def counted(commands, *args, submit=submit, **kw):
                nonlocal sets
                sets += sum(c[0] == "SET" for c in commands)
                if sets == 3:
                    sending.cancel()  # the store is between its third and fourth chunk
                return submit(commands, *args, **kw)

            conn.submit_many = counted
        data = np.arange(2_500, dtype=np.int32)
        sending = asyncio.ensure_future(
            a.send(1, afmi.wire.message.Message(2, 0, 5, 0, b"h", [data]))
        )
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert 3 <= sets < 10
        for _ in range(100):
            if not await job_keys(redis_url, job):
                break
            await asyncio.sleep(0.01)
        assert await job_keys(redis_url, job) == []
        assert b.stats()["messages_received"] == 0


async def test_connect_reads_url_from_config_and_env(redis_url, subprocess_env):
    job = new_job()
    cfg = config("redis://127.0.0.1:1/0")  # wrong on purpose: AFMI_REDIS_URL overrides it

    async def rank(r):
        env = {"AFMI_REDIS_URL": redis_url}
        async with afmi.connect(rank=r, size=2, job=job, channel="redis", config=cfg, env=env) as c:
            return await c.allreduce(c.rank + 1)

    assert await asyncio.gather(rank(0), rank(1)) == [3, 3]
    assert await job_keys(redis_url, job) == []


async def test_unreachable_server_names_endpoint():
    port = free_port()
    cfg = config(f"redis://127.0.0.1:{port}/0", connect_timeout=2)
    with pytest.raises(afmi.ChannelError, match=f"127.0.0.1:{port}"):
        await afmi.launch_local(_hang, 2, channel="redis", config=cfg, timeout=10)


async def test_silent_server_times_out_naming_endpoint():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = config(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
        with pytest.raises(afmi.ChannelError, match=rf"127.0.0.1:{port}/0 did not answer within"):
            await RedisChannel.open(0, 1, new_job(), cfg.channels.redis)
    finally:
        server.close()
        await server.wait_closed()


async def test_wrong_password_is_a_clear_error(redis_url):
    ep = RedisEndpoint.from_url(redis_url)
    url = f"redis://nobody:wrong@{ep.host}:{ep.port}/0"
    cfg = config(url, connect_timeout=5)
    with pytest.raises(afmi.ChannelError, match="refused the credentials") as info:
        await RedisChannel.open(0, 1, new_job(), cfg.channels.redis)
    assert "wrong" not in str(info.value)  # the password is not echoed


async def test_bad_db_number_is_a_clear_error(redis_url):
    ep = RedisEndpoint.from_url(redis_url)
    cfg = config(f"redis://{ep.host}:{ep.port}/999999", connect_timeout=5)
    with pytest.raises(afmi.ChannelError, match="999999"):
        await RedisChannel.open(0, 1, new_job(), cfg.channels.redis)


def test_url_forms():
    ep = RedisEndpoint.from_url("rediss://u:secret@example.org:6380/3?ssl_cert_reqs=none")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password) == (
        "example.org",
        6380,
        3,
        "u",
        "secret",
    )
    assert ep.tls is not None and str(ep) == "rediss://example.org:6380/3"
    assert RedisEndpoint.from_url("redis://h").port == 6379
    with pytest.raises(afmi.ConfigError, match="must start with redis://"):
        RedisEndpoint.from_url("http://h:1")


def test_config_validation():
    with pytest.raises(afmi.ConfigError, match=r"channels\.redis\.chunk_bytes"):
        Config.from_dict({"channels": {"redis": {"chunk_bytes": 0}}})
    with pytest.raises(afmi.ConfigError, match=r"channels\.redis\.window_bytes"):
        Config.from_dict({"channels": {"redis": {"window_bytes": -1}}})
    with pytest.raises(afmi.ConfigError, match=r"channels\.redis\.prefix"):
        Config.from_dict({"channels": {"redis": {"prefix": "a:b"}}})


async def _wait_forever(comm):
    await comm.barrier()
    if comm.rank == 0:
        await comm.recv(1, timeout=60)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
async def test_server_dying_fails_pending_receives_naming_it(tmp_path):
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        ["redis-server", *args, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20, proc)
        cfg = config(f"redis://127.0.0.1:{port}/0", connect_timeout=2)
        job = asyncio.ensure_future(
            afmi.launch_local(_wait_forever, 2, channel="redis", config=cfg, timeout=30)
        )
        await asyncio.sleep(0.5)
        proc.kill()
        with pytest.raises(afmi.RankFailedError) as info:
            await job
        assert isinstance(info.value.error, afmi.ChannelError)
        assert f"127.0.0.1:{port}" in str(info.value.error)
    finally:
        proc.kill()
        proc.wait()


async def test_garbage_in_mailbox_fails_the_channel_clearly(redis_url):
    job = new_job()
    cfg = config(redis_url)
    async with afmi.channels.get_driver("redis").group(1, job, cfg) as (a,):
        errors: asyncio.Queue[afmi.ChannelError] = asyncio.Queue()
        a.start(lambda m: None, errors.put_nowait)
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.rpush(a.mailbox(0), b"not msgpack \xc1")
        finally:
            await client.aclose()
        err = await asyncio.wait_for(errors.get(), 10)
        assert "unreadable entry" in str(err) and a.mailbox(0) in str(err)
    assert await job_keys(redis_url, job) == []


SCRIPT = """
import asyncio, afmi, numpy as np

async def main():
    async with afmi.connect() as comm:
        x = np.full(300_000, comm.rank + 1.0)
        total = await comm.allreduce(x)
        print(comm.rank, int(total[0]), int(total[-1]), flush=True)

afmi.launch.new_event_loop().run_until_complete(main())
"""


async def test_ranks_in_separate_processes(redis_url, subprocess_env, python, tmp_path):
    job = new_job()
    cfg = tmp_path / "afmi.json"
    cfg.write_text(f'{{"channels": {{"redis": {{"url": "{redis_url}", "prefix": "{PREFIX}"}}}}}}')
    procs = []
    for rank in range(3):
        env = dict(subprocess_env, AFMI_RANK=str(rank), AFMI_SIZE="3", AFMI_JOB=job)
        env.update(AFMI_CHANNEL="redis", AFMI_CONFIG=str(cfg))
        procs.append(
            await asyncio.create_subprocess_exec(
                python, "-c", SCRIPT, env=env, stdout=asyncio.subprocess.PIPE
            )
        )
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sorted(o[0].decode().strip() for o in outs) == ["0 6 6", "1 6 6", "2 6 6"]
    assert await job_keys(redis_url, job) == []


async def _spin(comm):
    return comm.endpoint.spin_seconds


async def test_receives_over_storage_alone_do_not_spin(redis_url):
    # A message over Redis comes a server round trip later at the earliest; polling
    # for it would only take CPU from the server (see docs/concepts.md).
    assert await afmi.launch_local(_spin, 2, channel="redis", config=config(redis_url)) == [0, 0]
    both = await afmi.launch_local(_spin, 2, channel=["local", "redis"], config=config(redis_url))
    assert both == [0, 0]  # nor does the in-memory channel (tasks of one loop)
    both = await afmi.launch_local(_spin, 2, channel=["direct", "redis"], config=config(redis_url))
    assert both == [afmi.Config().spin] * 2  # a socket's message may need the loop to poll


async def _allreduce_out(comm):
    x = np.arange(300_000, dtype=np.float64) * (comm.rank + 1)
    out = np.zeros_like(x)
    got = await comm.allreduce(x, out=out)
    assert got is out
    buf = np.zeros(50_000)
    if comm.rank == 0:
        await comm.send(np.full(50_000, 7.0), 1)
    elif comm.rank == 1:
        assert await comm.recv(0, out=buf) is buf
        assert (buf == 7.0).all()
    return float(out[-1])


async def test_receives_into_caller_arrays_over_redis(redis_url):
    # out= works for the storage allreduce algorithms and for point-to-point
    job = new_job()
    got = await afmi.launch_local(
        _allreduce_out, 3, channel="redis", config=config(redis_url), job=job, timeout=60
    )
    assert got == [299_999.0 * 6] * 3
    assert await job_keys(redis_url, job) == []


async def _posted_out(comm):
    big = 1 << 19  # float64: 4 MiB, chunked (1 MiB chunks)
    if comm.rank == 0:
        await comm.barrier()
        await comm.send(np.arange(big, dtype=np.float64), 1, tag=3)
        await comm.barrier()
        await comm.send(-np.arange(big, dtype=np.float64), 1)  # into out, unposted
        await comm.send([np.ones(10_000), np.ones(10_000)], 1)  # two buffers: copied
        await comm.barrier()
        return None
    out = np.zeros(big)
    req = comm.irecv(0, tag=3, out=out)
    await comm.barrier()  # posted before rank 0 sends
    assert await req is out and np.array_equal(out, np.arange(big, dtype=np.float64))
    await comm.barrier()
    await comm.barrier()  # both messages are stored, and the first may be fetched already
    again = await comm.recv(0, out=out)
    assert again is out and np.array_equal(out, -np.arange(big, dtype=np.float64))
    pair = await comm.recv(0)
    assert [a.sum() for a in pair] == [10_000.0, 10_000.0]
    return comm.endpoint.channels["redis"].stats()["received_in_place"]


async def test_a_posted_receive_fetches_chunks_straight_into_its_array(redis_url):
    """A chunked message of one array whose recv(out=) is posted when its entry is read
    is fetched into that array (no fresh allocation, no copy); one that arrives before
    its receive is copied into out as before."""
    job = new_job()
    got = await afmi.launch_local(
        _posted_out, 2, channel="redis", config=config(redis_url), job=job, timeout=60
    )
    assert got[1] == 1
    assert await job_keys(redis_url, job) == []
