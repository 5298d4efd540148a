"""The S3 channel against a real S3-compatible server (moto): conformance, leaks, errors."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from aiobotocore.session import get_session

import afmi
from afmi.channels.s3 import S3Channel
from afmi.config import Config
from afmi.testing import conformance
from afmi.testing.servers import free_port, wait_for_port
from afmi.wire.message import Message

PREFIX = "afmi-test"
MiB = 1024 * 1024


def config(s3, **extra: object) -> Config:
    # publish_min_bytes 0: every fetched payload sent to several ranks takes the shared path
    table = {**s3.config(PREFIX), "poll_min": 0.002, "poll_max": 0.05, "publish_min_bytes": 0}
    table.update(extra)
    return Config.from_dict({"channels": {"s3": table}})


def new_job() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def job_objects(s3, job: str) -> list[str]:
    async with get_session().create_client("s3", endpoint_url=s3.endpoint_url) as client:
        out = await client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{PREFIX}/{job}/")
        keys = [o["Key"] for o in out.get("Contents", ())]
        uploads = await client.list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{PREFIX}/{job}/")
        return keys + [u["Key"] for u in uploads.get("Uploads", ())]


@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_s3_conformance(case, s3):
    job = new_job()
    cfg = config(s3, multipart_threshold=8 * MiB, multipart_part_bytes=5 * MiB)
    run = functools.partial(afmi.launch_local, channel="s3", config=cfg, timeout=90, job=job)
    await case(run)
    assert await job_objects(s3, job) == []


async def _hang(comm):
    if comm.rank == 0:
        await comm.send(np.ones(10_000), 1)
        await comm.send("tiny", 1)
        await comm.recv(1)  # never sent
    await asyncio.sleep(30)


async def test_timeout_leaves_no_objects(s3):
    job = new_job()
    with pytest.raises(afmi.OperationTimeoutError):
        await afmi.launch_local(_hang, 2, channel="s3", config=config(s3), job=job, timeout=1)
    assert await job_objects(s3, job) == []


async def test_cancellation_leaves_no_objects(s3):
    job = new_job()
    task = asyncio.ensure_future(
        afmi.launch_local(_hang, 3, channel="s3", config=config(s3), job=job, timeout=30)
    )
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await job_objects(s3, job) == []


async def test_unread_messages_are_deleted_on_close(s3):
    job = new_job()
    async with afmi.channels.get_driver("s3").group(2, job, config(s3)) as (a, _b):
        # b is never started, so it never polls: what a sends stays in its mailbox.
        a.start(lambda m: None, lambda e: None)
        await a.send(1, Message(2, 0, 1, 0, b"h", [np.ones(1000)]))
        await a.send(1, Message(2, 0, 1, 1, b"h", []))
        await a.publish([1, 0], [Message(2, 0, 1, s, b"h", [np.ones(1000)]) for s in (2, 0)])
        assert len(await job_objects(s3, job)) >= 3
    assert await job_objects(s3, job) == []


async def _pingpong(comm, payload, n):
    peer = 1 - comm.rank
    for _ in range(n):
        if comm.rank == 0:
            await comm.send(payload, peer)
            await comm.recv(peer)
        else:
            await comm.send(await comm.recv(peer), peer)
    return comm.endpoint.channels["s3"].stats()


async def test_requests_per_message_in_pingpong(s3):
    job = new_job()
    small = await afmi.launch_local(
        _pingpong, 2, {"step": 1}, 10, channel="s3", config=config(s3), job=job
    )
    large = await afmi.launch_local(
        _pingpong, 2, np.ones(20_000), 10, channel="s3", config=config(s3), job=new_job()
    )
    for stats in small:
        # Small messages ride in the key: no GET at all, one PUT and one DELETE each.
        assert stats["messages_received"] == 10
        assert stats["requests"]["get"] == 0
        assert stats["requests"]["put"] == 10
    for stats in large:
        assert stats["requests"]["get"] == stats["messages_received"] == 10
    gets = sum(s["requests"]["get"] for s in small + large)
    msgs = sum(s["messages_received"] for s in small + large)
    assert gets / msgs <= 1.5
    assert await job_objects(s3, job) == []


async def test_multipart_upload_roundtrip(s3):
    job = new_job()
    cfg = config(s3, multipart_threshold=5 * MiB, multipart_part_bytes=5 * MiB)
    async with afmi.channels.get_driver("s3").group(2, job, cfg) as (a, b):
        got: asyncio.Queue[Message] = asyncio.Queue()
        a.start(lambda m: None, lambda e: None)
        b.start(got.put_nowait, lambda e: None)
        data = np.random.default_rng(1).integers(0, 255, 11 * MiB, dtype=np.uint8)
        await a.send(1, Message(2, 0, 3, 0, b"hdr", [data, b"tail"]))
        msg = await asyncio.wait_for(got.get(), 30)
        assert bytes(msg.buffers[0]) == data.tobytes() and bytes(msg.buffers[1]) == b"tail"
        # create + 3 parts + complete
        assert a.stats()["requests"]["put"] == 5
    assert await job_objects(s3, job) == []


async def test_publish_uploads_once_and_last_reader_deletes(s3):
    job = new_job()
    async with afmi.channels.get_driver("s3").group(4, job, config(s3)) as chans:
        queues = [asyncio.Queue() for _ in chans]
        for ch, q in zip(chans, queues):
            ch.start(q.put_nowait, lambda e: None)
        data = np.arange(50_000, dtype=np.float64)
        msgs = [Message(2, 0, 1, d, b"h", [data]) for d in (1, 2, 3)]
        await chans[0].publish([1, 2, 3], msgs)
        for d in (1, 2, 3):
            m = await asyncio.wait_for(queues[d].get(), 20)
            assert m.seq == d and bytes(m.buffers[0]) == data.tobytes()
        assert sum(ch.stats()["requests"]["get"] for ch in chans) == 3
        for _ in range(100):
            if not await job_objects(s3, job):
                break
            await asyncio.sleep(0.05)
        assert await job_objects(s3, job) == []


@pytest.mark.parametrize("published", [False, True], ids=["message", "published"])
async def test_a_receive_does_not_wait_for_the_deletes(s3, published):
    # The DELETEs (and, for a published payload, the marker's DELETE and LIST) of a
    # delivered message run in the background: hold them back, and the message
    # still arrives; closing waits for them, and nothing is left behind.
    job = new_job()
    async with afmi.channels.get_driver("s3").group(3, job, config(s3)) as chans:
        gate = asyncio.Event()
        held = 0
        for ch in chans[1:]:
            real = ch._delete

            async def delete(keys, real=real):
                nonlocal held
                held += 1
                await gate.wait()
                await real(keys)

            ch._delete = delete
        queues = [asyncio.Queue() for _ in chans]
        for ch, q in zip(chans, queues):
            ch.start(q.put_nowait, lambda e: None)
        data = np.arange(20_000, dtype=np.float64)
        msgs = [Message(2, 0, 1, d, b"h", [data]) for d in (1, 2)]
        if published:
            await chans[0].publish([1, 2], msgs)
        else:
            await asyncio.gather(*(chans[0].send(d, m) for d, m in zip((1, 2), msgs)))
        for d in (1, 2):
            m = await asyncio.wait_for(queues[d].get(), 20)
            assert bytes(m.buffers[0]) == data.tobytes()
        assert held == 2  # both deletes started and are still waiting
        assert len(await job_objects(s3, job)) >= 2
        gate.set()
    assert await job_objects(s3, job) == []


async def test_a_payload_below_publish_min_bytes_goes_to_every_reader_alone(s3):
    job = new_job()
    cfg = config(s3, publish_min_bytes=300_000)
    async with afmi.channels.get_driver("s3").group(4, job, cfg) as chans:
        queues = [asyncio.Queue() for _ in chans]
        for ch, q in zip(chans, queues):
            ch.start(q.put_nowait, lambda e: None)
        for n, puts in ((30_000, 3), (40_000, 1 + 2 * 3)):  # 240 kB alone, 320 kB once
            data = np.arange(n, dtype=np.float64)
            before = chans[0].stats()["requests"]["put"]
            await chans[0].publish(
                [1, 2, 3], [Message(2, 0, 1, d, b"h", [data]) for d in (1, 2, 3)]
            )
            assert chans[0].stats()["requests"]["put"] - before == puts
            for d in (1, 2, 3):
                m = await asyncio.wait_for(queues[d].get(), 20)
                assert bytes(m.buffers[0]) == data.tobytes()
    assert await job_objects(s3, job) == []


async def test_adaptive_polling_backs_off_while_idle(s3):
    job = new_job()
    cfg = config(s3, poll_min=0.01, poll_max=0.16)
    async with afmi.channels.get_driver("s3").group(1, job, cfg) as (a,):
        a.start(lambda m: None, lambda e: None)
        await asyncio.sleep(1.0)
        lists = a.stats()["requests"]["list"]
    # Intervals 0.01, 0.02, 0.04, 0.08, 0.16, 0.16, ...: about 9 lists in one second,
    # where fixed polling at poll_min would make about 100.
    assert 3 <= lists <= 20


async def _idle_then_exchange(comm, idle):
    await asyncio.sleep(idle)  # both pollers back off meanwhile
    if comm.rank == 0:
        await comm.send("after a long compute", 1)
        return None
    got = await comm.recv(0, timeout=1.0)
    channel = comm.endpoint.channels["s3"]
    return got, channel.stats()["wakeups"]


async def test_a_waiting_receive_cuts_a_backed_off_poll_short(s3):
    # poll intervals 0.05, 0.1, ... 0.8 s end at 1.55 s; the next LIST would be
    # 1.6 s later, at 3.15 s, long after the 1 s receive timeout (2.7 s).
    job = new_job()
    cfg = config(s3, poll_min=0.05, poll_max=60.0)
    out = await afmi.launch_local(
        _idle_then_exchange, 2, 1.7, channel="s3", config=cfg, job=job, timeout=30
    )
    got, wakeups = out[1]
    assert got == "after a long compute"
    assert wakeups >= 1
    assert await job_objects(s3, job) == []


async def test_a_receive_while_polling_fast_does_not_wake_the_poller(s3):
    job = new_job()
    cfg = config(s3, poll_min=0.05, poll_max=0.05)  # never backs off
    out = await afmi.launch_local(
        _idle_then_exchange, 2, 0.3, channel="s3", config=cfg, job=job, timeout=30
    )
    assert out[1] == ("after a long compute", 0)


async def test_a_wake_up_during_a_list_is_not_lost(s3):
    # awaited() while the poller's LIST is in flight: the next wait must end at once
    job = new_job()
    cfg = config(s3, poll_min=0.05, poll_max=60.0)
    async with afmi.channels.get_driver("s3").group(1, job, cfg) as (a,):
        a._interval = 10.0  # backing off, as after a long silence
        a.awaited()  # arrives "during the LIST": before the poller's next wait
        await asyncio.wait_for(a._idle(), 2.0)
        assert a.stats()["wakeups"] == 1
        assert a._interval == 0.05


async def test_missing_bucket_names_endpoint(s3):
    cfg = config(s3, bucket="no-such-bucket-afmi").channels.s3
    with pytest.raises(afmi.ChannelError, match=r"no-such-bucket-afmi.*does not exist") as info:
        await S3Channel.open(0, 1, new_job(), cfg)
    assert s3.endpoint_url in str(info.value)


async def test_unreachable_endpoint_names_it():
    port = free_port()
    table = {"bucket": "b", "endpoint_url": f"http://127.0.0.1:{port}", "connect_timeout": 3}
    cfg = Config.from_dict({"channels": {"s3": table}}).channels.s3
    with pytest.raises(afmi.ChannelError, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(S3Channel.open(0, 1, new_job(), cfg), 10)


async def test_wrong_credentials_are_a_clear_error(tmp_path):
    """A moto server with authentication switched on rejects unknown keys."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60, proc)
        table = {
            "bucket": "some-bucket",
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region": "us-east-1",
            "access_key_id": "AKIAWRONGWRONGWRONG0",
            "secret_access_key": "wrong",
            "connect_timeout": 20,
        }
        cfg = Config.from_dict({"channels": {"s3": table}}).channels.s3
        with pytest.raises(afmi.ChannelError, match="refused the credentials") as info:
            await S3Channel.open(0, 1, new_job(), cfg)
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        proc.terminate()
        proc.wait(10)


def test_config_validation():
    with pytest.raises(afmi.ConfigError, match=r"poll_min .* must be <= poll_max"):
        Config.from_dict({"channels": {"s3": {"poll_min": 1.0, "poll_max": 0.5}}})
    with pytest.raises(afmi.ConfigError, match="5 MiB"):
        Config.from_dict({"channels": {"s3": {"multipart_part_bytes": 1024}}})
    with pytest.raises(afmi.ConfigError, match=r"publish_min_bytes must be >= 0"):
        Config.from_dict({"channels": {"s3": {"publish_min_bytes": -1}}})


async def test_missing_bucket_setting_is_a_clear_error():
    with pytest.raises(afmi.ChannelError, match=r"channels\.s3\.bucket is not set"):
        await S3Channel.open(0, 1, "j", Config().channels.s3)


async def test_connect_reads_config_and_env(s3):
    job = new_job()
    cfg = config(s3, bucket="not-this-one", endpoint_url="http://127.0.0.1:1")
    env = {"AFMI_S3_BUCKET": s3.bucket, "AFMI_S3_ENDPOINT_URL": s3.endpoint_url}

    async def rank(r):
        async with afmi.connect(rank=r, size=2, job=job, channel="s3", config=cfg, env=env) as c:
            return await c.allreduce(c.rank + 1)

    assert await asyncio.gather(rank(0), rank(1)) == [3, 3]
    assert await job_objects(s3, job) == []


async def _wait_forever(comm):
    await comm.barrier()
    if comm.rank == 0:
        await comm.recv(1, timeout=60)


async def test_server_dying_fails_pending_receives_naming_it(s3):  # s3: credentials in env
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60, proc)
        endpoint = f"http://127.0.0.1:{port}"
        async with get_session().create_client("s3", endpoint_url=endpoint) as client:
            await client.create_bucket(Bucket="dying")
        table = {"bucket": "dying", "endpoint_url": endpoint, "connect_timeout": 2}
        cfg = Config.from_dict({"channels": {"s3": {**table, "poll_max": 0.05}}})
        job = asyncio.ensure_future(
            afmi.launch_local(_wait_forever, 2, channel="s3", config=cfg, timeout=40)
        )
        await asyncio.sleep(1.0)
        proc.kill()
        with pytest.raises(afmi.RankFailedError) as info:
            await job
        assert isinstance(info.value.error, afmi.ChannelError)
        assert f"127.0.0.1:{port}" in str(info.value.error)
    finally:
        proc.kill()
        proc.wait()
