import asyncio

import pytest

import afmi


async def run1(fn):
    async def main(comm):
        return await fn(comm)

    return (await afmi.launch_local(main, 3))[0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.send(1, 3), r"dest=3 is out of range: world has ranks 0..2"),
        (lambda c: c.send(1, -1), "dest=-1"),
        (lambda c: c.send(1, 1.0), "dest=1.0"),
        (lambda c: c.send(1, 1, tag=-3), "tag=-3 is out of range"),
        (lambda c: c.send(1, 1, tag="x"), "tag must be an int"),
        (lambda c: c.recv(source=9), "source=9"),
        (lambda c: c.recv(tag=-5), "tag=-5"),
        (lambda c: c.bcast(1, root=3), "root=3"),
        (lambda c: c.reduce(1, root=-1), "root=-1"),
        (lambda c: c.scatter([1, 2], root=0), "sequence of 3 items"),
        (lambda c: c.alltoall([1]), "sequence of 3 items"),
        (lambda c: c.allreduce(1, op="sum"), "op must be an afmi.Op"),
        (lambda c: c.reduce_scatter([1, 2, 3]), "numpy array"),
        (lambda c: c.recv(timeout=-1), "timeout must be a positive"),
        (lambda c: c.split("red"), "color must be an int"),
    ],
)
async def test_bad_arguments_raise_valueerror_at_once(call, match):
    async def check(comm):
        if comm.rank != 0:
            return None
        with pytest.raises(afmi.ArgumentError, match=match) as info:
            await call(comm)
        assert isinstance(info.value, ValueError)
        return True

    assert await run1(check)


async def test_unsupported_payload_is_a_typeerror():
    async def check(comm):
        with pytest.raises(afmi.PayloadTypeError) as info:
            await comm.send({1: {2: object()}}, 0)
        return isinstance(info.value, TypeError)

    assert await run1(check)


async def test_recv_timeout_is_a_timeouterror_and_comm_stays_usable():
    async def main(comm):
        if comm.rank == 0:
            with pytest.raises(afmi.OperationTimeoutError) as info:
                await comm.recv(1, tag=3, timeout=0.05)
            assert isinstance(info.value, TimeoutError)
            assert "recv(source=1, tag=3)" in str(info.value) and "0.05 s" in str(info.value)
        await comm.barrier()
        if comm.rank == 1:
            await comm.send("after", 0, tag=3)
            return None
        return await comm.recv(1, tag=3)

    assert (await afmi.launch_local(main, 2))[0] == "after"


async def test_config_timeout_is_the_default():
    async def main(comm):
        if comm.rank == 0:
            with pytest.raises(afmi.OperationTimeoutError, match="0.05 s"):
                await comm.recv(1)
        return True

    assert await afmi.launch_local(main, 2, config={"timeout": 0.05}) == [True, True]


async def test_collective_timeout_names_the_collective():
    async def main(comm):
        if comm.rank == 0:
            with pytest.raises(afmi.OperationTimeoutError, match="allreduce"):
                await comm.allreduce(1, timeout=0.05)
        return True

    assert await afmi.launch_local(main, 2) == [True, True]


async def test_failing_rank_cancels_others_and_is_named():
    cancelled = []

    async def main(comm):
        if comm.rank == 2:
            await asyncio.sleep(0.01)
            raise KeyError("boom")
        try:
            await comm.recv(2)
        except asyncio.CancelledError:
            cancelled.append(comm.rank)
            raise

    with pytest.raises(afmi.RankFailedError, match=r"rank 2 failed: KeyError") as info:
        await afmi.launch_local(main, 4)
    assert info.value.rank == 2 and isinstance(info.value.__cause__, KeyError)
    assert sorted(cancelled) == [0, 1, 3]


async def test_job_timeout():
    async def main(comm):
        await asyncio.sleep(10)

    with pytest.raises(afmi.OperationTimeoutError, match="did not finish within 0.1 s"):
        await afmi.launch_local(main, 2, timeout=0.1)


@pytest.mark.parametrize("size", [0, -1, 2.5, "4"])
def test_bad_size(size):
    async def main(comm):
        return None

    with pytest.raises(afmi.ArgumentError, match="size must be a positive int"):
        afmi.run_local(main, size)


def test_unknown_channel_lists_the_known_ones():
    async def main(comm):
        return None

    with pytest.raises(afmi.ArgumentError, match="unknown channel 'carrier-pigeon'.*local"):
        afmi.run_local(main, 2, channel="carrier-pigeon")


def test_run_local_returns_results_in_rank_order_with_args():
    async def main(comm, base, *, _unused=None):
        await asyncio.sleep(0.001 * (comm.size - comm.rank))
        return base + comm.rank

    assert afmi.run_local(main, 4, 100) == [100, 101, 102, 103]


async def test_connect_without_environment_explains_what_is_missing(monkeypatch):
    monkeypatch.delenv("AFMI_RANK", raising=False)
    monkeypatch.delenv("AFMI_SIZE", raising=False)
    with pytest.raises(afmi.ArgumentError, match="afmi run"):
        async with afmi.connect():
            pass
    with pytest.raises(afmi.ArgumentError, match="AFMI_RANK='x' is not an integer"):
        async with afmi.connect(env={"AFMI_RANK": "x", "AFMI_SIZE": "2"}):
            pass
    with pytest.raises(afmi.ArgumentError, match="rank=3 is out of range for size 2"):
        async with afmi.connect(rank=3, size=2, job="j"):
            pass


async def test_no_tasks_left_after_job():
    async def main(comm):
        reqs = [comm.iallreduce(comm.rank) for _ in range(5)]
        comm.irecv(0, tag=77)  # never matched: must be cleaned up
        return await afmi.waitall(reqs)

    before = len(asyncio.all_tasks())
    out = await afmi.launch_local(main, 3)
    assert out[0] == [3] * 5
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
