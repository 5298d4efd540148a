import asyncio
import functools
import time

import pytest

import afmi
from afmi.channels import local
from afmi.testing import conformance


@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_local_conformance(case):
    await case(functools.partial(afmi.launch_local, channel="local", timeout=60))


async def test_connect_joins_tasks_of_one_process_into_a_job():
    async def rank(r):
        async with afmi.connect(rank=r, size=3, job="joined", channel="local") as comm:
            return await comm.allreduce(comm.rank + 1)

    assert await asyncio.gather(*(rank(r) for r in range(3))) == [6, 6, 6]
    assert "joined" not in local._JOINABLE  # released once every rank closed


async def test_connect_rejects_duplicate_rank_and_size_mismatch():
    async with afmi.connect(rank=0, size=2, job="dup", channel="local"):
        with pytest.raises(afmi.ArgumentError, match="already connected"):
            async with afmi.connect(rank=0, size=2, job="dup", channel="local"):
                pass
        with pytest.raises(afmi.ArgumentError, match="already has size 2"):
            async with afmi.connect(rank=1, size=3, job="dup", channel="local"):
                pass


async def _late_message(comm):
    # rank 1 waits 0.3 s for rank 0's message; the loop thread's CPU time over the wait
    # says whether it polled meanwhile (Config.spin is 1 s here). thread_time, not
    # process_time: other threads of the test process (executors left by earlier tests)
    # must not count
    if comm.rank == 0:
        await asyncio.sleep(0.3)
        await comm.send(b"x", 1)
        return None
    wall, cpu = time.perf_counter(), time.thread_time()
    assert await comm.recv(0) == b"x"
    return time.perf_counter() - wall, time.thread_time() - cpu, comm.endpoint.spin_seconds


async def test_a_receive_on_the_local_channel_waits_without_polling():
    # the message comes from a task of the same loop: polling would only add turns
    _, (wall, cpu, spin) = await afmi.launch_local(
        _late_message, 2, channel="local", config=afmi.Config(spin=1.0)
    )
    assert spin == 0
    assert wall >= 0.29
    # a polling wait keeps the thread busy for most of the 0.3 s; a parked one uses
    # milliseconds, plus whatever a garbage collection in the window costs
    assert cpu < 0.15, f"the waiting rank used {cpu:.2f} s of CPU in {wall:.2f} s"
