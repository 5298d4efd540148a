"""``Communicator._within``: the per-operation timeout, armed only when an operation blocks.

These drive the helper with small coroutines (logic only; the channels' own
timeout behaviour is covered by their tests).
"""

from __future__ import annotations

import asyncio

import pytest

import afmi


async def _comm():
    async def main(comm):
        return comm

    return (await afmi.launch_local(main, 1))[0]


async def test_a_step_that_finishes_at_once_needs_no_timer():
    comm = await _comm()
    loop = asyncio.get_running_loop()
    armed = []
    original = loop.call_at

    def spy(*args, **kwargs):
        armed.append(args)
        return original(*args, **kwargs)

    async def quick():
        return 7

    async def yields_once():
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return 8

    loop.call_at = spy
    try:
        assert await comm._within(quick(), 5.0, "quick") == 7
        assert await comm._within(yields_once(), 5.0, "yields") == 8
    finally:
        del loop.call_at
    assert armed == []  # neither operation ever blocked


async def test_blocking_after_the_first_steps_still_times_out():
    comm = await _comm()
    finished = []

    async def blocks(first_yield: bool):
        try:
            if first_yield:
                await asyncio.sleep(0)
            await asyncio.get_running_loop().create_future()
        finally:
            finished.append(first_yield)

    for first_yield in (False, True):
        with pytest.raises(afmi.OperationTimeoutError, match="blocker"):
            await comm._within(blocks(first_yield), 0.05, "blocker")
    assert finished == [False, True]  # the inner coroutine was unwound both times


async def test_cancellation_and_errors_pass_through():
    comm = await _comm()
    started, unwound = asyncio.Event(), []

    async def waits():
        await asyncio.sleep(0)
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            unwound.append(True)

    task = asyncio.create_task(comm._within(waits(), 30.0, "waits"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == [True]

    async def fails_later():
        await asyncio.sleep(0.001)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await comm._within(fails_later(), 5.0, "fails")

    async def fails_at_once():
        raise ValueError("now")

    with pytest.raises(ValueError, match="now"):
        await comm._within(fails_at_once(), 5.0, "fails")
