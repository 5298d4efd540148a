"""The bench's start lines: every rank enters a timed collective at one instant."""

import asyncio
import time

import pytest

import afmi
from afmi.bench import measure


async def _arrive_unevenly(comm, line, calls):
    """Each rank arrives ``rank`` ms late at every call; returns (instant, late, resumed)."""
    await line.agree(comm, 0.002)
    out = []
    for i in range(calls):
        await asyncio.sleep(0.001 * comm.rank)
        arrived = time.perf_counter()
        instant, late = await line.start(comm, i)
        out.append((instant, late, arrived, time.perf_counter()))
    return out


def _same_instant_for_everyone(per_rank):
    for i in range(len(per_rank[0])):
        instants = {r[i][0] for r in per_rank}
        assert len(instants) == 1, f"call {i}: ranks got different start instants {instants}"


def test_loop_start_line_releases_all_ranks_after_the_last_arrives():
    line = measure.LoopStartLine(4)
    per_rank = afmi.run_local(_arrive_unevenly, 4, line, 3)
    _same_instant_for_everyone(per_rank)
    for i in range(3):
        last_arrival = max(r[i][2] for r in per_rank)
        assert per_rank[0][i][0] >= last_arrival  # the instant is the last arrival's
        assert all(r[i][3] >= last_arrival for r in per_rank)  # nobody left before it
        assert not any(r[i][1] for r in per_rank)


@pytest.fixture
def no_os_hiccups(monkeypatch):
    """Only a rank busy at a start is late (the test process may be descheduled anywhere)."""
    monkeypatch.setattr(measure, "LATE_AFTER_START_S", 10.0)


def test_clock_start_line_starts_everyone_at_the_timetable_instant(no_os_hiccups):
    per_rank = afmi.run_local(_arrive_unevenly, 3, measure.ClockStartLine(), 4)
    _same_instant_for_everyone(per_rank)
    slot = measure.ClockStartLine().slot_s(0.002)
    for i in range(1, 4):
        assert abs(per_rank[0][i][0] - per_rank[0][i - 1][0] - slot) < 1e-9
    for r in per_rank:
        for instant, late, _arrived, resumed in r:
            assert not late
            assert resumed >= instant  # no rank starts before the instant


async def _busy_through_the_start(comm, line):
    await line.agree(comm, 0.001)
    first = await line.start(comm, 0)
    if comm.rank == 1:
        await asyncio.sleep(0.0005)  # rank 0 sees the instant too (it shares this loop)
        time.sleep(0.05)  # blocks the loop well past the next start (slot 5 ms)
    second = await line.start(comm, 1)
    return first[1], second[1]


def test_clock_start_line_marks_a_rank_busy_at_the_start_late(no_os_hiccups):
    per_rank = afmi.run_local(_busy_through_the_start, 2, measure.ClockStartLine())
    assert per_rank[0] == (False, True) or per_rank[1] == (False, True)
    assert not per_rank[0][0] and not per_rank[1][0]


async def _start_three(comm, line):
    await line.agree(comm, 0.05)  # slots of 102 ms
    return [(await line.start(comm, i))[1] for i in range(3)]


def test_clock_start_line_marks_a_rank_that_was_not_running_at_the_instant_late(monkeypatch):
    # While the ranks spin towards call 0's instant the OS runs another process for
    # 50 ms (as it does when more ranks than cores spin): nobody runs at the instant.
    line = measure.ClockStartLine()
    held = []

    def yield_core():
        if not held and line._first - time.perf_counter() < 0.0003:
            held.append(True)
            time.sleep(0.05)

    monkeypatch.setattr(measure, "_yield_core", yield_core)
    monkeypatch.setattr(measure, "LATE_AFTER_START_S", 0.02)  # other hiccups stay below
    per_rank = afmi.run_local(_start_three, 2, line)
    assert held == [True]
    assert per_rank == [[True, False, False]] * 2


def test_spans_leave_out_late_calls_and_start_at_the_instant():
    # two ranks, three calls: (start instant, exit, late)
    every = [
        [(10.0, 10.5, False), (20.0, 20.2, False), (30.0, 30.1, False)],
        [(10.0, 10.7, False), (20.0, 21.0, True), (30.0, 30.4, False)],
    ]
    spans, late = measure._spans(every, 3)
    assert late == 1
    assert [round(s, 6) for s in spans] == [0.7, 0.4]
    # every call late: all are kept, the count says so
    all_late = [[(1.0, 1.5, True)], [(1.0, 1.25, True)]]
    assert measure._spans(all_late, 1) == ([0.5], 1)


def test_collective_latency_reports_late_calls():
    rows = measure.collective_latency(
        "local", "gather", 3, [64], budget=measure.Budget(5, 5, 1, 1, 0.05, 3)
    )
    (row,) = rows
    assert row["latency_s"] > 0 and row["iterations"] >= 3
    assert row["late_calls"] == 0  # one loop: the last arrival releases everyone


def test_loop_start_line_pauses_a_random_while_before_each_start():
    line = measure.LoopStartLine(3, jitter_s=0.02)
    per_rank = afmi.run_local(_arrive_unevenly, 3, line, 8)
    _same_instant_for_everyone(per_rank)
    waits = []
    for i in range(8):
        last_arrival = max(r[i][2] for r in per_rank)
        assert all(r[i][3] >= per_rank[0][i][0] for r in per_rank)  # nobody left before it
        waits.append(per_rank[0][i][0] - last_arrival)
    assert all(-1e-6 <= w < 0.02 + 0.015 for w in waits), waits  # a pause, and a sleep's lag
    assert max(waits) - min(waits) > 0.002, waits  # not one fixed delay: the phase moves


def test_clock_start_line_with_jitter_moves_every_start_alike_on_every_rank(no_os_hiccups):
    line = measure.ClockStartLine(jitter_s=0.01)
    per_rank = afmi.run_local(_arrive_unevenly, 3, line, 6)
    _same_instant_for_everyone(per_rank)  # the seed came with the timetable
    slot = line.slot_s(0.002)
    assert slot == pytest.approx(measure.ClockStartLine().slot_s(0.002) + 0.01)
    gaps = [per_rank[0][i][0] - per_rank[0][i - 1][0] for i in range(1, 6)]
    assert all(slot - 0.01 < g < slot + 0.01 for g in gaps), gaps
    assert max(gaps) - min(gaps) > 1e-4, gaps  # not the fixed beat of a timetable without pauses
    for r in per_rank:
        for instant, late, _arrived, resumed in r:
            assert not late
            assert resumed >= instant


def test_pauses_are_the_same_on_every_rank_and_within_bounds():
    a, b = measure.Pauses(0.02, seed=7), measure.Pauses(0.02, seed=7)
    seq = [a.next() for _ in range(50)]
    assert seq == [b.next() for _ in range(50)]
    assert all(0 <= p < 0.02 for p in seq) and len(set(seq)) == 50
    assert measure.Pauses(0.0).next() == 0.0
    assert measure.Pauses(0.02, seed=7).at(3) == seq[3]  # pause i depends on seed and i only


def test_timed_leaves_the_pauses_out():
    async def main():
        async def one():
            await asyncio.sleep(0)

        return await measure._timed(10, one, measure.Pauses(0.02, seed=1))

    t0 = time.perf_counter()
    per_call = asyncio.run(main())
    spent = time.perf_counter() - t0
    assert spent > 10 * 0.002  # the pauses were slept (their mean is 10 ms)
    assert per_call < spent / 10 / 2  # but not timed


def test_only_a_polling_channel_gets_start_jitter():
    config = afmi.Config()
    assert measure.start_jitter_s("s3", config) == pytest.approx(
        measure.JITTER_POLL_INTERVALS * config.channels.s3.poll_min
    )
    for channel in ("local", "direct", "redis"):
        assert measure.start_jitter_s(channel, config) == 0.0
