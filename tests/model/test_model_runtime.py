"""The model at run time: several channels per rank, choices, pinning, comm.explain."""

import warnings

import numpy as np
import pytest

import afmi
from afmi.errors import ArgumentError


def _sent(comm):
    return {name: ch.stats()["messages_sent"] for name, ch in comm.endpoint.channels.items()}


async def test_messages_go_where_the_model_says(local2, split):
    async def main(comm):
        if comm.rank == 0:
            await comm.send(b"x", 1)  # tiny: local (1 us latency)
            await comm.send(np.zeros(1 << 20, np.uint8), 1)  # 1 MiB: local2 (direct's 400 MB/s)
            return _sent(comm)
        small = await comm.recv(0)
        big = await comm.recv(0)
        return small, big.nbytes

    res = await afmi.launch_local(main, 2, channel=["local", local2], config=split, timeout=30)
    assert res[0] == {"local": 1, "local2": 1}
    assert res[1] == (b"x", 1 << 20)


async def test_order_holds_across_channels(local2, split):
    async def main(comm):
        if comm.rank == 0:
            for i in range(20):
                payload = np.full(1 << 16, i, np.uint8) if i % 2 else i
                await comm.send(payload, 1, tag=3)
            return _sent(comm)
        got = [await comm.recv(0, tag=3) for _ in range(20)]
        return [int(g[0]) if isinstance(g, np.ndarray) else g for g in got]

    res = await afmi.launch_local(main, 2, channel=["local", local2], config=split, timeout=30)
    assert res[0]["local"] > 0 and res[0]["local2"] > 0
    assert res[1] == list(range(20))


async def test_all_ranks_pick_the_same_channel_for_a_collective(local2, split):
    async def main(comm):
        x = np.full(1 << 18, comm.rank, np.int64)  # 2 MiB: local2 under SPLIT
        before = _sent(comm)
        total = await comm.allreduce(x)
        middle = _sent(comm)  # a rank's own sends are done when its call returns
        small = await comm.allreduce(comm.rank)  # 9 bytes: local
        after = _sent(comm)
        big_moves = {k: middle[k] - before[k] for k in before}
        small_moves = {k: after[k] - middle[k] for k in before}
        winner = comm.explain("allreduce", x.nbytes).winner.channel
        return int(total[0]), small, winner, big_moves, small_moves

    res = await afmi.launch_local(main, 4, channel=["local", local2], config=split, timeout=30)
    assert {r[0] for r in res} == {6} and {r[1] for r in res} == {6}
    assert {r[2] for r in res} == {"local2"}
    # the big allreduce went only on local2 ...
    assert all(r[3]["local"] == 0 for r in res) and sum(r[3]["local2"] for r in res) >= 3
    # ... and the small one only on local
    assert all(r[4]["local2"] == 0 for r in res) and sum(r[4]["local"] for r in res) >= 3


async def test_pin_a_communicator_and_a_call(local2, split):
    async def main(comm):
        pinned = comm.with_channel("local")
        assert pinned.channel == "local" and comm.channel is None
        assert "on local" in repr(pinned)
        big = np.ones(1 << 20, np.uint8)
        out = await pinned.bcast(big if comm.rank == 0 else None)  # model would pick local2
        if comm.rank == 0:
            await comm.send(b"tiny", 1, channel="local2")  # model would pick local
            req = comm.isend(b"tiny", 1, channel="local2")
            await req
        elif comm.rank == 1:
            assert await comm.recv(0) == b"tiny"
            assert await comm.recv(0) == b"tiny"
        # the view and the original share the collective sequence
        a = await comm.allreduce(1)
        b = await pinned.allreduce(2)
        c = await comm.with_channel(None).allreduce(3)
        return int(out.sum()), (a, b, c), _sent(comm)

    res = await afmi.launch_local(main, 3, channel=["local", local2], config=split, timeout=30)
    assert all(r[0] == 1 << 20 and r[1] == (3, 6, 9) for r in res)
    root = res[0][2]
    assert root["local2"] == 2  # the two pinned tiny sends, the bcast stayed on local
    assert root["local"] >= 2


async def test_pinning_an_unopened_channel_is_a_clear_error():
    async def main(comm):
        with pytest.raises(ArgumentError, match="channel 'redis' is not open on rank 0"):
            comm.with_channel("redis")
        with pytest.raises(ArgumentError, match="open channels: local"):
            await comm.send(1, 0, channel="s3")
        return True

    assert await afmi.launch_local(main, 1, timeout=30) == [True]


async def test_comm_explain(local2, split):
    async def main(comm):
        exp = comm.explain("bcast", 1 << 20)
        pinned = comm.with_channel("local").explain("bcast", 1 << 20)
        send = comm.explain("send", 10)
        with pytest.raises(ArgumentError, match="nbytes"):
            comm.explain("bcast", -1)
        return exp, pinned, send

    (exp, pinned, send), *_ = await afmi.launch_local(
        main, 4, channel=["local", local2], config=split, timeout=30
    )
    assert {r.channel for r in exp.rows} == {"local", "local2"}
    assert exp.winner.channel == "local2" and exp.size == 4
    assert pinned.winner.channel == "local" and "pinned to channel 'local'" in str(pinned)
    assert send.winner.channel == "local" and send.size == 2


async def test_explain_on_a_single_channel():
    async def main(comm):
        return str(comm.explain("allreduce", 64))

    text = (await afmi.launch_local(main, 2, timeout=30))[0]
    marked = [line for line in text.splitlines() if line.startswith("*  local")]
    assert len(marked) == 1  # one row (an algorithm on local) is the choice
    assert "* chosen: local / " in text


async def test_channel_lists_and_auto():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # channels that are configured but fail to open

        async def main(comm):
            return comm.channels, await comm.allreduce(1)

        res = await afmi.launch_local(main, 2, channel="auto", timeout=60)
    assert "local" in res[0][0] and res[0][1] == 2
    with pytest.raises(ArgumentError, match="repeat"):
        await afmi.launch_local(main, 2, channel="local,local")
    with pytest.raises(ArgumentError, match="unknown channel 'nope'"):
        await afmi.launch_local(main, 2, channel=["local", "nope"])


async def test_model_may_choose_the_algorithm():
    async def main(comm):
        return await comm.allreduce(comm.rank)

    cfg = {"model": {"choose_algorithm": True}}
    assert await afmi.launch_local(main, 3, config=cfg, timeout=30) == [3, 3, 3]


def test_auto_names_for_processes_skip_unconfigured_channels():
    from afmi.config import Config
    from afmi.launch import channel_names

    names, auto = channel_names("auto", Config(), in_process=False, env={})
    assert auto and "local" not in names and "direct" not in names and "s3" not in names
    names, _ = channel_names("local, direct", Config(), in_process=True)
    assert names == ["local", "direct"]
    with pytest.raises(ArgumentError, match="channel must be"):
        channel_names([], Config(), in_process=True)


async def test_rejected_timeout_on_a_pinned_collective_leaves_nothing_behind():
    import gc

    async def main(comm):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ArgumentError, match="timeout"):
                await comm.with_channel("local").allreduce(1, timeout=-1)
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]
        return await comm.allreduce(1)

    assert await afmi.launch_local(main, 2, timeout=30) == [2, 2]


async def test_connect_opens_several_channels(local2, split):
    import asyncio
    import uuid

    job = f"multi-{uuid.uuid4().hex[:8]}"

    async def rank(r):
        async with afmi.connect(
            rank=r, size=2, job=job, channel=["local", local2], config=split, env={}
        ) as comm:
            assert comm.channels == ["local", "local2"]
            if r == 0:
                await comm.send(np.zeros(1 << 20, np.uint8), 1)
                await comm.send(b"x", 1)
                return _sent(comm)
            big, small = await comm.recv(0), await comm.recv(0)
            return big.nbytes, small

    sent, got = await asyncio.wait_for(asyncio.gather(rank(0), rank(1)), 30)
    assert sent == {"local": 1, "local2": 1} and got == (1 << 20, b"x")
    with pytest.raises(ArgumentError, match="unknown channel 'nope'"):
        async with afmi.connect(rank=0, size=1, job=job + "x", channel="local,nope", env={}):
            pass
