import functools

import pytest

import afmi
from afmi.testing import conformance


@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_local_conformance(case):
    await case(functools.partial(afmi.launch_local, channel="local", timeout=60))


async def test_local_channel_rejects_connect():
    with pytest.raises(afmi.ArgumentError, match="only links ranks inside one process"):
        async with afmi.connect(rank=0, size=2, job="j", channel="local"):
            pass
