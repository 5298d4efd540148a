"""The direct channel over real sockets in one event loop."""

import asyncio
import functools
import os
import sys

import numpy as np
import pytest

import afmi
from afmi.channels.direct import DirectChannel, DirectDriver
from afmi.config import Config
from afmi.rendezvous import RendezvousServer
from afmi.testing import conformance


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_direct_conformance(case):
    await case(functools.partial(afmi.launch_local, channel="direct", timeout=60))


@pytest.mark.parametrize(
    "case",
    [c for c in conformance.CASES if conformance.case_id(c) in {"large_array", "both_send_first"}],
    ids=conformance.case_id,
)
async def test_direct_conformance_relay(case):
    """Forcing the relay path: the same guarantees through the rendezvous service."""
    cfg = {"channels": {"direct": {"mode": "relay"}}}
    await case(functools.partial(afmi.launch_local, channel="direct", config=cfg, timeout=60))


async def _links(comm):
    await comm.barrier()
    got = await comm.sendrecv(np.arange(1000) + comm.rank, (comm.rank + 1) % comm.size)
    return comm.endpoint.channels["direct"].stats()["links"], int(got[0])


async def test_simultaneous_open_path():
    """mode=punch: every pair links by TCP simultaneous open (nobody listens)."""
    cfg = {"channels": {"direct": {"mode": "punch", "punch_timeout": 20.0, "relay": False}}}
    out = await afmi.launch_local(_links, 3, channel="direct", config=cfg, timeout=60)
    for rank, (links, first) in enumerate(out):
        assert links == {p: "punch" for p in range(3) if p != rank}
        assert first == (rank - 1) % 3


async def test_relay_path_reports_relay_links():
    cfg = {"channels": {"direct": {"mode": "relay"}}}
    out = await afmi.launch_local(_links, 3, channel="direct", config=cfg, timeout=60)
    for rank, (links, first) in enumerate(out):
        assert links == {p: "relay" for p in range(3) if p != rank}
        assert first == (rank - 1) % 3


async def test_listen_mode_links_every_pair_once():
    out = await afmi.launch_local(_links, 4, channel="direct", timeout=60)
    for rank, (links, _) in enumerate(out):
        assert links == {p: "listen" for p in range(4) if p != rank}


@pytest.mark.parametrize("mode", ["listen", "relay"])
async def test_group_leaves_no_socket_or_task(mode):
    cfg = {"channels": {"direct": {"mode": mode}}}
    before_fds, before_tasks = _open_fds(), len(asyncio.all_tasks())
    for _ in range(2):
        await afmi.launch_local(_links, 3, channel="direct", config=cfg, timeout=60)
    await asyncio.sleep(0.05)
    assert _open_fds() == before_fds
    assert len(asyncio.all_tasks()) == before_tasks


@pytest.mark.parametrize("mode", ["listen", "relay"])
async def test_peer_closing_is_not_a_failure_but_a_broken_link_is(mode):
    failures: dict[int, list[afmi.ChannelError]] = {0: [], 1: [], 2: []}
    async with RendezvousServer() as rdv:
        cfg = Config.from_dict({"channels": {"direct": {"mode": mode}}}).channels.direct
        chans = await asyncio.gather(
            *(DirectChannel.open(r, 3, "j", "tok", rdv.address, cfg) for r in range(3))
        )
        for ch in chans:
            ch.start(lambda m: None, failures[ch.rank].append)
        await chans[1].aclose()  # graceful: a goodbye
        await asyncio.sleep(0.05)
        assert failures == {0: [], 1: [], 2: []}
        with pytest.raises(afmi.ChannelError, match="rank 1 has closed"):
            await chans[0].send(1, _msg())
        chans[2]._links[0].abort()  # a broken connection
        for _ in range(100):
            if failures[0] and failures[2]:
                break
            await asyncio.sleep(0.01)
        assert [e.peer for e in failures[0]] == [2]
        assert [e.peer for e in failures[2]] == [0]
        assert "rank 2" in str(failures[0][0])
        for ch in chans:
            await ch.aclose()
        assert not rdv.jobs()


def _msg(n: int = 0):
    from afmi.wire.message import Message

    return Message(0, 0, 0, 0, b"\x90", [bytearray(n)] if n else [])


async def test_wrong_token_cannot_join_and_failed_opens_leave_nothing():
    before_fds, before_tasks = _open_fds(), len(asyncio.all_tasks())
    async with RendezvousServer() as rdv:
        cfg = Config.from_dict({"channels": {"direct": {"connect_timeout": 5.0}}}).channels.direct
        good = asyncio.ensure_future(DirectChannel.open(0, 2, "j", "right", rdv.address, cfg))
        await asyncio.sleep(0.05)
        with pytest.raises(afmi.ChannelError, match="wrong token"):
            await DirectChannel.open(1, 2, "j", "wrong", rdv.address, cfg)
        good.cancel()
        with pytest.raises(asyncio.CancelledError):
            await good
    await asyncio.sleep(0.05)
    assert _open_fds() == before_fds
    assert len(asyncio.all_tasks()) == before_tasks


async def test_stranger_on_listen_port_is_rejected():
    """A connection that fails the handshake never becomes a link."""
    async with RendezvousServer() as rdv:
        cfg = Config().channels.direct
        opening = asyncio.ensure_future(DirectChannel.open(1, 2, "j", "tok", rdv.address, cfg))
        for _ in range(200):
            if rdv.jobs():
                break
            await asyncio.sleep(0.01)
        server_port = None
        for _ in range(200):
            job = rdv._jobs.get("j")
            if job and 1 in job.members:
                server_port = job.members[1].endpoint[1]
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)  # our HELLO, then the link is dropped
        assert data.startswith(b"af") and len(data) < 200
        writer.close()
        # Rank 0 with the right token still links.
        ch0 = await DirectChannel.open(0, 2, "j", "tok", rdv.address, cfg)
        ch1 = await opening
        assert ch0.stats()["links"] == {1: "listen"} and ch1.stats()["links"] == {0: "listen"}
        await ch0.aclose()
        await ch1.aclose()


def test_driver_connect_needs_rendezvous_and_token():
    async def go(env):
        await DirectDriver().connect(0, 2, "j", Config(), env)

    with pytest.raises(afmi.ArgumentError, match="AFMI_RENDEZVOUS"):
        asyncio.run(go({}))
    with pytest.raises(afmi.ArgumentError, match="AFMI_TOKEN"):
        asyncio.run(go({"AFMI_RENDEZVOUS": "127.0.0.1:1"}))
    with pytest.raises(afmi.ArgumentError, match="host:port"):
        asyncio.run(go({"AFMI_RENDEZVOUS": "nowhere", "AFMI_TOKEN": "t"}))


def test_config_validates_direct_keys():
    with pytest.raises(afmi.ConfigError, match=r"channels\.direct\.mode"):
        Config.from_dict({"channels": {"direct": {"mode": "carrier-pigeon"}}})
    with pytest.raises(afmi.ConfigError, match="punch_timeout"):
        Config.from_dict({"channels": {"direct": {"punch_timeout": 0}}})


def test_run_local_direct_uses_real_sockets():
    async def main(comm):
        return await comm.allreduce(comm.rank)

    assert afmi.run_local(main, 3, channel="direct", timeout=60) == [3, 3, 3]


async def test_connect_reads_environment_and_leaves_nothing_behind():
    before_fds, before_tasks = _open_fds(), len(asyncio.all_tasks())
    async with RendezvousServer() as rdv:
        env = {"AFMI_RENDEZVOUS": rdv.address, "AFMI_TOKEN": "t", "AFMI_JOB": "envjob"}

        async def rank(r):
            async with afmi.connect(rank=r, size=2, channel="direct", env=env) as comm:
                return await comm.allreduce(comm.rank + 1)

        assert await asyncio.gather(rank(0), rank(1)) == [3, 3]
    await asyncio.sleep(0.05)
    assert _open_fds() == before_fds
    assert len(asyncio.all_tasks()) == before_tasks


async def test_links_use_nodelay_and_keepalive():
    import socket

    async def opts(comm):
        link = comm.endpoint.channels["direct"]._links[1 - comm.rank]
        sock = link.transport.get_extra_info("socket")
        return (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        )

    assert await afmi.launch_local(opts, 2, channel="direct") == [(True, True)] * 2


def _available_congestion() -> list[str]:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return f.read().split()
    except OSError:
        return []


def _system_congestion() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()


async def _congestion_of_links(comm):
    from afmi.channels.direct.tcp import congestion

    links = comm.endpoint.channels["direct"]._links.values()
    return sorted({congestion(link.transport.get_extra_info("socket")) for link in links})


needs_cc = pytest.mark.skipif(
    not {"cubic", "reno"} <= set(_available_congestion()),
    reason="needs Linux with the cubic and reno congestion controls",
)


@needs_cc
@pytest.mark.parametrize("name", ["cubic", "reno"])
async def test_links_use_the_configured_congestion_control(name):
    cfg = Config.from_dict({"channels": {"direct": {"tcp_congestion": name}}})
    out = await afmi.launch_local(_congestion_of_links, 3, channel="direct", config=cfg)
    assert out == [[name]] * 3
    # the default is reno, whatever the system's is
    assert Config().channels.direct.tcp_congestion == "reno"


@pytest.mark.skipif("reno" not in _available_congestion(), reason="needs Linux's TCP_CONGESTION")
async def test_links_use_reno_unless_told_otherwise():
    # whatever the machine's default (this project's machine: BBR); reno is the one
    # congestion control Linux lets an unprivileged process choose by default
    out = await afmi.launch_local(_congestion_of_links, 2, channel="direct")
    assert out == [["reno"]] * 2


@needs_cc
async def test_links_keep_the_system_congestion_control_when_told_to():
    cfg = Config.from_dict({"channels": {"direct": {"tcp_congestion": "system"}}})
    assert cfg.channels.direct.tcp_congestion is None
    out = await afmi.launch_local(_congestion_of_links, 2, channel="direct", config=cfg)
    assert out == [[_system_congestion()]] * 2


@needs_cc
async def test_a_refused_congestion_control_warns_once_and_the_job_still_runs(caplog):
    from afmi.channels.direct import tcp

    tcp._warned.discard("no-such-cc")
    cfg = Config.from_dict({"channels": {"direct": {"tcp_congestion": "no-such-cc"}}})

    async def main(comm):
        total = await comm.allreduce(comm.rank)
        return total, await _congestion_of_links(comm)

    with caplog.at_level("WARNING", logger="afmi.direct"):
        out = await afmi.launch_local(main, 3, channel="direct", config=cfg)
    assert out == [(3, [_system_congestion()])] * 3
    warnings = [r for r in caplog.records if "no-such-cc" in r.getMessage()]
    assert len(warnings) == 1  # six links, one warning
    assert "tcp_allowed_congestion_control" in warnings[0].getMessage()


@needs_cc
@pytest.mark.parametrize("name", ["reno", "system"])
async def test_the_relay_paces_relayed_links_as_the_job_asks(name):
    cfg = Config.from_dict({"channels": {"direct": {"mode": "relay", "tcp_congestion": name}}})
    async with RendezvousServer(tcp_congestion=cfg.channels.direct.tcp_congestion) as rdv:
        env = {"AFMI_RENDEZVOUS": rdv.address, "AFMI_TOKEN": "t", "AFMI_JOB": "relayed"}

        async def rank(r):
            async with afmi.connect(rank=r, size=3, channel="direct", config=cfg, env=env) as comm:
                assert set(comm.endpoint.channels["direct"].stats()["links"].values()) == {"relay"}
                return await comm.allreduce(comm.rank), await _congestion_of_links(comm)

        out = await asyncio.gather(*(rank(r) for r in range(3)))
    expected = name if name != "system" else _system_congestion()
    # every rank's own end of its relay connections, and the server's two ends of each
    assert out == [(3, [expected])] * 3
    assert rdv.relayed_congestion == {expected: 6}


def test_config_checks_the_congestion_control_name():
    for bad in ("", 5, "cu bic\n"):
        with pytest.raises(afmi.ConfigError, match="tcp_congestion"):
            Config.from_dict({"channels": {"direct": {"tcp_congestion": bad}}})


@pytest.mark.parametrize("mode", ["listen", "punch", "relay"])
async def test_missing_rank_times_out_clearly_and_leaves_nothing(mode):
    before_fds, before_tasks = _open_fds(), len(asyncio.all_tasks())
    async with RendezvousServer() as rdv:
        cfg = Config.from_dict(
            {"channels": {"direct": {"mode": mode, "connect_timeout": 0.3}}}
        ).channels.direct
        with pytest.raises(afmi.ChannelError, match=r"no link to ranks \[1\] within 0\.3 s"):
            await DirectChannel.open(0, 2, "j", "tok", rdv.address, cfg)
    await asyncio.sleep(0.05)
    assert _open_fds() == before_fds
    assert len(asyncio.all_tasks()) == before_tasks


async def test_unreachable_rendezvous_is_a_clear_error():
    from afmi.testing.servers import free_port

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(afmi.ChannelError, match="cannot reach the rendezvous service"):
        await DirectChannel.open(0, 2, "j", "tok", address, Config().channels.direct)


def _flood_payloads():
    # large arrays the kernel takes only in part, small ones between them, and dicts of
    # more arrays than one writev takes
    out = []
    for i in range(12):
        if i % 3 == 0:
            out.append(np.full((4 << 20) // 8, i, dtype=np.float64))
        elif i % 3 == 1:
            out.append(np.array([i]))
        else:
            out.append({f"k{j}": np.full(8, i + j) for j in range(1100)})
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


async def _flood(comm):
    expected = _flood_payloads()
    if comm.rank == 0:
        link = comm.endpoint.channels["direct"]._links[1]
        for one_by_one in (True, False):
            payloads = _flood_payloads()
            if one_by_one:  # each finds nothing queued before it
                for p in payloads:
                    await comm.send(p, 1, tag=3)
            else:
                await afmi.waitall([comm.isend(p, 1, tag=3) for p in payloads])
            for p in payloads:  # sent: changing them now must not change what arrives
                for a in p.values() if isinstance(p, dict) else [p]:
                    a[...] = -1
        await comm.barrier()
        return link.writer.vectored
    got = [await comm.recv(0, 3) for _ in range(2 * len(expected))]
    await comm.barrier()
    return [_same(a, b) for a, b in zip(expected * 2, got)]


async def test_messages_written_with_writev_arrive_whole_and_in_order():
    """On asyncio's own loop before Python 3.12 the link writes a large message's
    buffers with one writev (no joined copy) and queues what the kernel does not take."""
    vectored, same = await afmi.launch_local(_flood, 2, channel="direct", timeout=60)
    assert vectored == (sys.version_info < (3, 12))
    assert same == [True] * 24


async def test_a_large_array_starts_on_a_64_byte_boundary_of_its_links_stream(monkeypatch):
    """Whatever went over the link before (odd-sized messages, the handshake), the data
    of a message whose first array has 64 KiB or more starts on a 64-byte boundary of
    the link's byte stream, as the receiver counts it; smaller ones are not padded."""
    from afmi.channels.direct import link

    starts: list[tuple[int, int]] = []  # (array bytes, stream offset of its first byte)
    start_fill = link.Link._start_fill

    def recording(self, msg, lens, head):
        starts.append((lens[0], self.bytes_received - len(head)))
        return start_fill(self, msg, lens, head)

    monkeypatch.setattr(link.Link, "_start_fill", recording)
    sizes = [1 << 16, 3, 1 << 20, 77, 5, 1 << 17, (1 << 17) + 13, 200_001, 1]

    async def main(comm):
        for i, n in enumerate(sizes):
            if comm.rank == 0:
                await comm.send(np.full(n, i, np.uint8), 1)
                await comm.send({"odd": "x" * i}, 1)  # a message of no array at all
            else:
                got = await comm.recv(0)
                assert got.size == n and (got == i).all()
                assert await comm.recv(0) == {"odd": "x" * i}
        ch = comm.endpoint.channels["direct"]
        links = [lk for lk in ch._links.values() if lk.peer != comm.rank]
        return [(lk.bytes_sent, lk.bytes_received) for lk in links]

    counts = await afmi.launch_local(main, 2, channel="direct", timeout=60)
    # (a message of 64 KiB is parsed from the staging area: no fill to record)
    large = [n for n in sizes if n > 1 << 16]
    assert sorted(n for n, _ in starts) == sorted(large)
    assert all(offset % 64 == 0 for _, offset in starts), starts
    assert len({offset % 4096 for _, offset in starts}) > 1  # not one place in a page
    # what one end wrote is what the other read
    ((sent0, received0),), ((sent1, received1),) = counts
    assert sent0 == received1 and sent1 == received0 and sent0 % 64 != 0


async def test_the_frame_of_a_64_kib_array_is_read_at_once(monkeypatch):
    """The staging area holds a 64 KiB array and its header: such a message is parsed
    from one read; a larger one is read into a buffer of its own (the fill route)."""
    from afmi.channels.direct import link

    fills: list[int] = []
    start_fill = link.Link._start_fill

    def counting(self, msg, lens, head):
        fills.append(sum(lens))
        return start_fill(self, msg, lens, head)

    monkeypatch.setattr(link.Link, "_start_fill", counting)

    async def main(comm):
        for n in (1 << 16, 1 << 17):
            if comm.rank == 0:
                await comm.send(np.ones(n, np.uint8), 1)
            else:
                assert (await comm.recv(0)).sum() == n
        return None

    await afmi.launch_local(main, 2, channel="direct", timeout=60)
    assert fills == [1 << 17]
