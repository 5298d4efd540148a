"""The bench watches the machine's speed and measures a point again when it ran slow."""

import asyncio

import pytest

import afmi
from afmi.bench import measure
from afmi.bench.accuracy import summarize


@pytest.fixture(autouse=True)
def _fresh_baseline(monkeypatch):
    # the baseline is per process: every test starts from none
    monkeypatch.setattr(measure.MachineWatch, "fastest_s", float("inf"))


def test_reference_is_cpu_time_of_a_fixed_loop():
    t = measure.reference_s()
    assert 0 < t < 0.5
    # CPU time, not wall time: a sleeping thread would not count, a busier loop does
    more = measure.REFERENCE_LOOPS * 4
    original = measure.REFERENCE_LOOPS
    try:
        measure.REFERENCE_LOOPS = more
        assert measure.reference_s() > t
    finally:
        measure.REFERENCE_LOOPS = original


class _Scripted(measure.MachineWatch):
    """A watch whose reference times come from a script (the retry logic alone)."""

    def __init__(self, times, retries=2, shared=True):
        super().__init__(retries=retries, shared=shared)
        self._times = list(times)
        self.keys = []

    def sample(self, key):
        if key not in self._samples:
            self.keys.append(key)
            self._samples[key] = self._times.pop(0)
            measure.MachineWatch.fastest_s = min(measure.MachineWatch.fastest_s, self._samples[key])
        return self._samples[key]


def test_samples_are_shared_per_key_and_slowdown_is_against_the_fastest():
    watch = _Scripted([1.0, 2.0, 1.5])
    assert watch.sample("a") == 1.0
    assert watch.sample("a") == 1.0  # a second rank of the loop: the same sample
    watch.sample("b")
    assert watch.slowdown("a", "b") == pytest.approx(2.0)
    watch.sample("c")
    assert watch.slowdown("c") == pytest.approx(1.5)
    # a baseline from an earlier process lowers the fastest, never raises it
    measure.MachineWatch(0.5)
    assert measure.MachineWatch.fastest_s == 0.5
    measure.MachineWatch(3.0)
    assert measure.MachineWatch.fastest_s == 0.5


def _steady_run(times, results, retries=2, shared=True):
    # shared: both ranks use one watch, as ranks of one event loop do; otherwise each
    # rank has its own, as ranks in processes of their own do (the same script each)
    watches = [_Scripted(times, retries, shared)]
    if not shared:
        watches.append(_Scripted(times, retries, shared))

    async def main(comm):
        tried = []

        async def attempt(i):
            tried.append(i)
            return results[i], comm.rank

        before = comm._coll_seq_box[0]
        kept = await measure._steady(comm, watches[comm.rank % len(watches)], ("op", 8), attempt)
        return kept, tried, comm._coll_seq_box[0] - before

    per_rank = afmi.run_local(main, 2, channel="local")
    return [(kept, tried) for kept, tried, _ in per_rank], watches[0], per_rank[0][2]


def test_a_point_measured_on_a_slow_machine_is_measured_again_and_keeps_its_fastest():
    # attempt 0 ran at half speed, attempt 1 at full speed: two attempts, the faster kept
    per_rank, watch, collectives = _steady_run([1.0, 2.0, 1.0, 1.0], [5.0, 3.0, 9.0])
    (kept, slow), tried = per_rank[0]
    assert tried == [0, 1] and per_rank[1][1] == [0, 1]  # every rank agreed
    assert kept == (3.0, 0) and slow == pytest.approx(1.0)
    assert len(watch.keys) == 4  # before and after each attempt, once for both ranks
    assert collectives == 0  # ranks sharing the watch share its samples: nothing to send
    # ranks with a watch each learn every rank's slowdown: one allgather an attempt
    per_rank, _, collectives = _steady_run([1.0, 2.0, 1.0, 1.0], [5.0, 3.0, 9.0], shared=False)
    assert per_rank[0][1] == per_rank[1][1] == [0, 1]
    assert per_rank[0][0] == ((3.0, 0), pytest.approx(1.0))
    assert collectives == 2


def test_ranks_sharing_a_watch_decide_alike_when_the_baseline_drops_between_them():
    # rank 0 finishes point A at 1.2x (kept) and samples point B, whose faster
    # reference lowers the baseline, before rank 1 finishes A: measured against
    # the new baseline A would be 1.33x slow, and rank 1 alone would measure it again
    # (in a real run it then waits in A's barrier while rank 0 is in B: a hang)
    watch = _Scripted([1.0, 1.2, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0])
    b_started = asyncio.Event()

    async def main(comm):
        tried = []
        for point in ("A", "B"):

            async def attempt(i, point=point):
                tried.append((point, i))
                if point == "A" and comm.rank == 1:
                    await b_started.wait()
                if point == "B":
                    b_started.set()
                return 1.0, comm.rank

            await measure._steady(comm, watch, point, attempt)
        return tried

    per_rank = afmi.run_local(main, 2, channel="local")
    assert per_rank[0] == per_rank[1] == [("A", 0), ("B", 0)]
    assert measure.MachineWatch.fastest_s == 0.9  # the baseline did drop in between


def test_a_point_on_a_steady_machine_is_measured_once():
    per_rank, _, _ = _steady_run([1.0, 1.1], [5.0])
    (kept, slow), tried = per_rank[0]
    assert tried == [0] and kept == (5.0, 0) and slow == pytest.approx(1.1)


def test_retries_are_bounded_and_the_fastest_attempt_wins():
    slow_every_time = [1.0] + [3.0] * 5
    per_rank, _, _ = _steady_run(slow_every_time, [4.0, 2.0, 6.0])
    (kept, slow), tried = per_rank[0]
    assert tried == [0, 1, 2]
    assert kept == (2.0, 0) and slow == pytest.approx(3.0)


def test_by_default_a_slow_point_is_only_reported():
    assert measure.SLOW_RETRIES == 0
    per_rank, _, _ = _steady_run([1.0, 3.0], [4.0], retries=measure.SLOW_RETRIES)
    (kept, slow), tried = per_rank[0]
    assert tried == [0] and kept == (4.0, 0) and slow == pytest.approx(3.0)
    # without retries, ranks with a watch each send rank 0 theirs: one gather
    per_rank, _, collectives = _steady_run([1.0, 3.0], [4.0], retries=0, shared=False)
    assert per_rank[0][0] == ((4.0, 0), pytest.approx(3.0)) and collectives == 1
    with pytest.raises(ValueError, match="retries must be >= 0"):
        measure.MachineWatch(retries=-1)


def test_the_bench_takes_slow_retries_and_rejects_negative_ones(afmi_cli):
    from afmi.bench.procs import ProcsOptions
    from afmi.bench.suite import Options, run_suite
    from afmi.errors import ArgumentError

    assert Options().slow_retries == ProcsOptions().slow_retries == 0
    with pytest.raises(ArgumentError, match="--slow-retries must be 0 or more"):
        ProcsOptions(slow_retries=-1).check()
    with pytest.raises(ArgumentError, match="--slow-retries must be 0 or more"):
        run_suite(Options(channels=["local"], slow_retries=-1))
    for extra in ([], ["--processes"]):
        res = afmi_cli("bench", "--channels", "direct", "--slow-retries", "-1", *extra)
        assert res.returncode == 2 and "--slow-retries must be 0 or more" in res.stderr


def test_rows_say_how_slow_the_machine_ran_and_the_summary_counts_slow_misses():
    rows = measure.collective_latency(
        "local", "bcast", 2, [64], budget=measure.Budget(5, 5, 1, 1, 0.05, 3)
    )
    assert rows[0]["machine_slowdown"] >= 1.0
    (pp,) = measure.pingpong("local", [64], budget=measure.Budget(5, 5, 1, 1, 0.05, 3))
    assert pp["machine_slowdown"] >= 1.0

    def row(err, slowdown):
        return {
            "channel": "local",
            "op": "bcast",
            "ranks": 2,
            "nbytes": 1,
            "latency_s": 1.0,
            "rel_error": err,
            "machine_slowdown": slowdown,
        }

    acc = summarize([row(0.5, 1.6), row(0.5, 1.0), row(0.1, 1.7)], afmi.Config())
    assert acc["misses_on_slow_machine"] == 1
    assert acc["slowest_machine"] == pytest.approx(1.7)
    assert acc["at_speed_points"] == 1 and acc["at_speed_within"] == 0
