"""Rendezvous service robustness: garbage, wrong token, timeouts, many jobs at once."""

import asyncio
import os
import struct

import msgpack
import pytest

import afmi
from afmi.rendezvous import RendezvousError, RendezvousServer, RendezvousSession
from afmi.rendezvous.protocol import RENDEZVOUS_KIND, pack, read_message


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _session(rdv, job, rank, size, token="tok", mode="listen", port=1000):
    return await RendezvousSession.open(
        rdv.address,
        job=job,
        token=token,
        rank=rank,
        size=size,
        host="127.0.0.1",
        port=port + rank,
        mode=mode,
        timeout=5,
    )


async def _raw(rdv, data: bytes):
    host, port = rdv.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    return reader, writer


async def _error_reply(reader) -> str:
    msg = await read_message(reader, 5)
    assert msg["op"] == "error"
    return msg["message"]


async def _still_serves(rdv):
    sessions = await asyncio.gather(*(_session(rdv, "probe", r, 2) for r in range(2)))
    peers = await asyncio.gather(*(s.peers(5) for s in sessions))
    assert peers[0] == [("127.0.0.1", 1000), ("127.0.0.1", 1001)]
    for s in sessions:
        await s.aclose()


async def test_peers_learn_each_others_endpoints():
    async with RendezvousServer() as rdv:
        sessions = await asyncio.gather(*(_session(rdv, "j", r, 4) for r in range(4)))
        peers = await asyncio.gather(*(s.peers(5) for s in sessions))
        assert all(p == [("127.0.0.1", 1000 + r) for r in range(4)] for p in peers)
        for s in sessions:
            await s.aclose()


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an afmi rendezvous message"),
        (struct.pack("<2sBBI", b"af", 1, RENDEZVOUS_KIND, 10**6), "exceeds"),
        (struct.pack("<2sBBI", b"af", 9, RENDEZVOUS_KIND, 2) + b"\x80\x80", "unsupported frame"),
        (struct.pack("<2sBBI", b"af", 1, RENDEZVOUS_KIND, 3) + b"\xc1\xc1\xc1", "malformed"),
    ],
    ids=["http", "oversized", "version", "bad-msgpack"],
)
async def test_garbage_gets_an_error_and_the_service_keeps_serving(data, expected):
    async with RendezvousServer() as rdv:
        reader, writer = await _raw(rdv, data)
        assert expected in await _error_reply(reader)
        assert await reader.read() == b""  # that connection is closed ...
        writer.close()
        await _still_serves(rdv)  # ... and the service still works


async def test_out_of_order_and_bad_fields_get_errors_on_the_same_connection():
    async with RendezvousServer() as rdv:
        reader, writer = await _raw(rdv, pack("peers", endpoints=[]))
        assert "expected 'register' or 'relay' first" in await _error_reply(reader)
        writer.write(pack("register", job="j", token="t", rank="zero", size=2, mode="listen"))
        assert "'rank'" in await _error_reply(reader)
        writer.write(pack("register", job="j", token="t", rank=5, size=2, mode="listen"))
        assert "out of range" in await _error_reply(reader)
        body = msgpack.packb({"v": 99, "op": "register"})
        writer.write(struct.pack("<2sBBI", b"af", 1, RENDEZVOUS_KIND, len(body)) + body)
        assert "version 99" in await _error_reply(reader)
        writer.close()
        await _still_serves(rdv)


async def test_wrong_token_duplicate_rank_and_size_mismatch_are_refused():
    async with RendezvousServer() as rdv:
        first = await _session(rdv, "j", 0, 3, token="right")
        with pytest.raises(RendezvousError, match="wrong token for job 'j'"):
            await _session(rdv, "j", 1, 3, token="wrong")
        with pytest.raises(RendezvousError, match="rank 0 of job 'j' is already registered"):
            await _session(rdv, "j", 0, 3, token="right")
        with pytest.raises(RendezvousError, match="has size 3"):
            await _session(rdv, "j", 1, 4, token="right")
        await first.aclose()


async def test_jobs_are_isolated_by_name():
    async with RendezvousServer() as rdv:
        a = [await _session(rdv, "a", r, 2, token="ta", port=2000) for r in range(2)]
        b = [await _session(rdv, "b", r, 2, token="tb", port=3000) for r in range(2)]
        pa = await a[0].peers(5)
        pb = await b[1].peers(5)
        assert pa == [("127.0.0.1", 2000), ("127.0.0.1", 2001)]
        assert pb == [("127.0.0.1", 3000), ("127.0.0.1", 3001)]
        for s in a + b:
            await s.aclose()


async def test_many_concurrent_jobs_and_ranks():
    async with RendezvousServer() as rdv:
        sessions = await asyncio.gather(
            *(_session(rdv, f"job{j}", r, 8, token=f"t{j}") for j in range(10) for r in range(8))
        )
        peers = await asyncio.gather(*(s.peers(10) for s in sessions))
        assert all(len(p) == 8 for p in peers)
        assert rdv.counters["registered"] == 80
        for s in sessions:
            await s.aclose()
        for _ in range(100):
            if not rdv.jobs():
                break
            await asyncio.sleep(0.01)
        assert rdv.jobs() == []


async def test_silent_client_times_out():
    async with RendezvousServer(step_timeout=0.2) as rdv:
        reader, writer = await _raw(rdv, b"")
        assert "no rendezvous message within 0.2 s" in await _error_reply(reader)
        writer.close()


async def test_incomplete_job_times_out_with_a_clear_error():
    async with RendezvousServer(job_timeout=0.2) as rdv:
        s = await _session(rdv, "j", 0, 3)
        with pytest.raises(RendezvousError, match=r"only 1 of 3 ranks registered within 0\.2 s"):
            await s.peers(5)
        await s.aclose()
        assert rdv.jobs() == []


async def test_relay_without_partner_times_out_and_relay_needs_the_token():
    async with RendezvousServer(relay_timeout=0.2) as rdv:
        s = await _session(rdv, "j", 0, 2, token="t")
        reader, writer = await _raw(rdv, pack("relay", job="j", token="bad", rank=0, peer=1))
        assert "relay refused" in await _error_reply(reader)
        writer.write(pack("relay", job="j", token="t", rank=0, peer=1))
        assert "did not ask for a relay" in await _error_reply(reader)
        writer.close()
        await s.aclose()


async def test_close_leaves_nothing_behind():
    before = _fds()
    rdv = RendezvousServer()
    await rdv.start()
    s = await _session(rdv, "j", 0, 2)
    _, writer = await _raw(rdv, b"")
    await asyncio.sleep(0.05)
    await rdv.aclose()
    await s.aclose()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)
    assert _fds() == before
    assert len(asyncio.all_tasks()) == 1


def test_rendezvous_cli_serves(subprocess_env):
    import subprocess
    import sys

    from afmi.testing.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "afmi", "rendezvous", "--host", "127.0.0.1", "--port", str(port)],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"afmi rendezvous listening on 127.0.0.1:{port}"

        async def probe():
            class R:
                address = f"127.0.0.1:{port}"

            await _still_serves(R)

        asyncio.run(probe())
    finally:
        proc.terminate()
        proc.wait(10)


def test_rendezvous_cli_rejects_a_bad_congestion_control_name(afmi_cli):
    proc = afmi_cli("rendezvous", "--port", "0", "--tcp-congestion", "")
    assert proc.returncode == 2
    assert "--tcp-congestion" in proc.stderr and "'system'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["rendezvous", "serve"])
def test_cli_refuses_a_port_out_of_range(command, afmi_cli):
    # `--port 99999` used to listen on 99999 - 65536 = 34463 without a word
    extra = ["module:handler"] if command == "serve" else []  # the port is checked first
    proc = afmi_cli(command, *extra, "--port", "99999")
    assert proc.returncode == 2
    assert "a port is a number from 0 (any free port) to 65535, got 99999" in proc.stderr


def test_server_refuses_a_port_out_of_range():
    for bad in (-1, 65536, 99999, "7077", True):
        with pytest.raises(afmi.ArgumentError, match="port must be 0"):
            RendezvousServer(port=bad)
