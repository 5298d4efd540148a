"""Invocation payloads, open_communicator, and the Lambda and aiohttp wrappers."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import numpy as np
import pytest

import afmi
from afmi.channels import local
from afmi.errors import ArgumentError, OperationTimeoutError
from afmi.runtime import (
    InvocationError,
    aiohttp_handler,
    lambda_handler,
    open_communicator,
    parse_invocation,
    run_invocation,
)


def warm_up_collectives() -> None:
    """Load the collective algorithms before ranks start in threads: the registry loads them
    lazily on first use, and that first use is not thread-safe."""
    import afmi.collectives.algorithms  # noqa: F401


def payload(rank: int, size: int, job: str, **extra):
    return {"rank": rank, "size": size, "job": job, "channel": "local", **extra}


def channel_available(name: str) -> bool:
    try:
        afmi.channels.base.get_driver(name)
    except ArgumentError:
        return False
    return True


async def allreduce_handler(comm: afmi.Communicator, event: dict) -> dict:
    total = await comm.allreduce(np.arange(3) * (comm.rank + 1))
    return {"rank": comm.rank, "total": total, "echo": event.get("input")}


def test_parse_accepts_json_text_and_fills_defaults():
    inv = parse_invocation(json.dumps({"rank": 1, "size": 3, "job": "j"}))
    assert (inv.rank, inv.size, inv.job, inv.channel, inv.timeout) == (1, 3, "j", "local", None)
    assert inv.config == afmi.Config()
    inv = parse_invocation(payload(0, 1, "j", config={"channel": "redis", "timeout": 5}))
    assert inv.channel == "local"  # the payload's channel wins over config.channel
    inv = parse_invocation({"rank": 0, "size": 1, "job": "j", "config": {"channel": "redis"}})
    assert inv.channel == "redis" and inv.config.timeout == 300.0


def test_parse_direct_needs_rendezvous_and_token_and_passes_them_on():
    base = payload(0, 2, "j", channel="direct")
    with pytest.raises(InvocationError, match="needs 'rendezvous'"):
        parse_invocation(base)
    with pytest.raises(InvocationError, match="needs 'token'"):
        parse_invocation({**base, "rendezvous": "127.0.0.1:7077"})
    inv = parse_invocation({**base, "rendezvous": "127.0.0.1:7077", "token": "s3cret"})
    assert inv.env() == {"AFMI_RENDEZVOUS": "127.0.0.1:7077", "AFMI_TOKEN": "s3cret"}
    assert "s3cret" not in repr(inv)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("event", "says"),
    [
        ({"rank": 0, "size": 0, "job": "j"}, "'size' must be in 1..65536"),
        ({"rank": 0, "size": 10**9, "job": "j"}, "'size' must be in 1..65536"),
        ({"rank": 0, "size": 1, "job": "a b"}, "printable characters without spaces"),
        ({"rank": 0, "size": 1, "job": "x" * 201}, "at most 200 printable"),
        ({"rank": True, "size": 2, "job": "j"}, "'rank' must be an int, got bool"),
        ({"rank": 0, "size": 2.0, "job": "j"}, "'size' must be an int"),
        ({"rank": 0, "size": 2}, "missing key 'job'"),
        ({"rank": 0, "size": 2, "job": "j", "config": []}, "'config' must be an object"),
        ({"rank": 0, "size": 2, "job": "j", "config": {"timeout": "x"}}, "timeout must be"),
        ({"rank": 0, "size": 2, "job": "j", "timeout": True}, "'timeout' must be a positive"),
    ],
)
def test_parse_rejects_bad_payloads_clearly(event, says):
    with pytest.raises(InvocationError, match="bad invocation payload") as info:
        parse_invocation(event)
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


async def test_open_communicator_joins_ranks_in_one_process():
    job = f"t-{uuid.uuid4().hex[:8]}"

    async def rank(r: int) -> int:
        async with open_communicator(payload(r, 4, job)) as comm:
            assert (comm.rank, comm.size) == (r, 4)
            return await comm.allreduce(r)

    assert await asyncio.gather(*(rank(r) for r in range(4))) == [6] * 4
    assert job not in local._JOINABLE  # released on exit


async def test_run_invocation_returns_envelope_with_stats():
    job = f"t-{uuid.uuid4().hex[:8]}"
    outs = await asyncio.gather(
        *(run_invocation(allreduce_handler, payload(r, 3, job, input=[r])) for r in range(3))
    )
    for r, out in enumerate(outs):
        assert out["result"] == {"rank": r, "total": [0, 6, 12], "echo": [r]}  # numpy -> list
        assert out["afmi"]["rank"] == r and out["afmi"]["job"] == job
        assert out["afmi"]["duration_s"] > 0
        assert out["afmi"]["stats"]["local"]["messages_sent"] >= 1
    json.dumps(outs)  # JSON-ready


async def test_run_invocation_timeout_names_rank_and_releases_channel():
    job = f"t-{uuid.uuid4().hex[:8]}"

    async def stuck(comm, event):
        await comm.recv(source=1)  # rank 1 never comes

    with pytest.raises(OperationTimeoutError, match=rf"rank 0 of job '{job}' did not finish"):
        await run_invocation(stuck, payload(0, 2, job, timeout=0.2))
    hub = local._JOINABLE.pop(job)  # rank 1 never joined, so the job's hub is still there
    assert hub.channels[0]._closed
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_handler_error_propagates_unchanged():
    async def boom(comm, event):
        raise KeyError("no such thing")

    with pytest.raises(KeyError):
        await run_invocation(boom, payload(0, 1, f"t-{uuid.uuid4().hex[:8]}"))


def test_unserializable_result_is_a_clear_error():
    async def gives_object(comm, event):
        return object()

    entry = lambda_handler(gives_object)
    with pytest.raises(TypeError, match="holds a object, which is not JSON-serializable"):
        entry(payload(0, 1, "j"), None)


class FakeContext:
    """The part of Lambda's context object the wrapper reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_lambda_handler_is_synchronous_and_returns_envelope():
    entry = lambda_handler(allreduce_handler)
    assert entry.__name__ == "allreduce_handler"
    out = entry(payload(0, 1, "solo", input="hi"), FakeContext(60_000))
    assert out["result"] == {"rank": 0, "total": [0, 1, 2], "echo": "hi"}
    assert out["afmi"]["channel"] == "local"


def test_lambda_handler_stops_before_lambda_would_kill_it():
    async def sleepy(comm, event):
        await asyncio.sleep(60)

    entry = lambda_handler(sleepy)
    with pytest.raises(OperationTimeoutError, match="rank 0 of job 'j' did not finish"):
        entry(payload(0, 1, "j"), FakeContext(700))  # 0.7 s left -> 0.2 s budget


def test_lambda_handler_rejects_bad_payload():
    entry = lambda_handler(allreduce_handler)
    with pytest.raises(InvocationError, match="missing key 'rank'"):
        entry({"size": 1, "job": "j"}, None)


@pytest.mark.skipif(
    not channel_available("redis"), reason="redis channel unavailable (afmi[redis] not installed)"
)
def test_lambda_handlers_in_threads_over_redis(redis_url):
    """Like Lambda: every rank is a separate synchronous call with its own event loop."""
    warm_up_collectives()
    entry = lambda_handler(allreduce_handler)
    job = f"t-{uuid.uuid4().hex[:8]}"
    size = 4
    outs: list = [None] * size
    errors: list = []

    def call(r: int) -> None:
        event = payload(
            r, size, job, channel="redis", config={"channels": {"redis": {"url": redis_url}}}
        )
        try:
            outs[r] = entry(event, FakeContext(30_000))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [o["result"]["total"] for o in outs] == [[0, 10, 20]] * size


@pytest.mark.skipif(not channel_available("direct"), reason="direct channel unavailable")
def test_lambda_handlers_in_threads_over_direct(subprocess_env):
    """Lambda-style calls in threads, linked by a real `afmi rendezvous` process."""
    import subprocess
    import sys

    from afmi.testing.servers import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "afmi", "rendezvous", "--port", str(port)],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
        warm_up_collectives()
        entry = lambda_handler(allreduce_handler)
        job, size = f"t-{uuid.uuid4().hex[:8]}", 3
        outs: list = [None] * size
        errors: list = []

        def call(r: int) -> None:
            event = payload(
                r, size, job, channel="direct", rendezvous=f"127.0.0.1:{port}", token="t0ken"
            )
            try:
                outs[r] = entry(event, FakeContext(30_000))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(r,)) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert [o["result"]["total"] for o in outs] == [[0, 6, 12]] * size
        assert all("direct" in o["afmi"]["stats"] for o in outs)
    finally:
        proc.terminate()
        proc.wait(15)


async def test_aiohttp_handler_in_a_real_server():
    import aiohttp
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/fn", aiohttp_handler(allreduce_handler, timeout=10))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/fn"
    job = f"t-{uuid.uuid4().hex[:8]}"
    try:
        async with aiohttp.ClientSession() as session:

            async def call(body):
                async with session.post(url, data=json.dumps(body)) as resp:
                    return resp.status, await resp.json()

            replies = await asyncio.gather(*(call(payload(r, 2, job)) for r in range(2)))
            assert [s for s, _ in replies] == [200, 200]
            assert [b["result"]["total"] for _, b in replies] == [[0, 3, 6]] * 2
            status, body = await call({"rank": 0})
            assert status == 400 and "missing key 'size'" in body["errorMessage"]
            status, body = await call(payload(0, 2, job + "-alone", timeout=0.2))
            assert status == 504 and body["errorType"] == "OperationTimeoutError"
    finally:
        await runner.cleanup()
