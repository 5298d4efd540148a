import asyncio
import functools

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
