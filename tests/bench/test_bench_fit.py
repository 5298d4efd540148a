"""Calibration math on synthetic data made by the model itself."""

import dataclasses
import json

import pytest

from afmi.bench import calibrate
from afmi.config import Config
from afmi.model import ChannelModel, FunctionPrice, channel_models, predict

SIZES = [1 << e for e in range(0, 25)]


def test_latency_and_bandwidth_are_recovered():
    pts = [(n, 40e-6 + n / 2e9) for n in SIZES]
    lat, bw = calibrate.fit_latency_bandwidth(pts)
    assert lat == pytest.approx(40e-6, rel=1e-6)
    assert bw == pytest.approx(2e9, rel=1e-6)


def test_two_regimes_are_found_when_large_messages_slow_down():
    def t(n):
        return 30e-6 + min(n, 1 << 20) / 5e9 + max(n - (1 << 20), 0) / 1e9

    fit = calibrate.fit_wire([(n, t(n)) for n in SIZES])
    assert fit["large_message_bytes"] == 1 << 20
    assert fit["bandwidth_large_bytes_per_s"] == pytest.approx(1e9, rel=1e-3)
    model = ChannelModel(name="x", bandwidth_aggregate_bytes_per_s=1e12, **fit)
    for n in SIZES:
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=1e-3)


def test_a_knee_between_two_measured_sizes_is_put_at_their_midpoint():
    # Every other size measured (as the bench fits), the knee at a held-out size:
    # only 4 MiB lies above it, so any threshold between 1 and 4 MiB fits the
    # measured sizes; the midpoint predicts the held-out 2 MiB where the knee is.
    def t(n):
        return 40e-6 + min(n, 2 << 20) / 8e9 + max(n - (2 << 20), 0) / 1.2e9

    measured = [1 << e for e in range(0, 23, 2)]  # 1 B ... 4 MiB
    fit = calibrate.fit_wire([(n, t(n)) for n in measured])
    assert fit["large_message_bytes"] == 2 << 20
    model = ChannelModel(name="x", bandwidth_aggregate_bytes_per_s=1e12, **fit)
    for n in [1 << e for e in range(0, 23)]:
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=1e-3), n


def test_one_slow_size_below_the_knee_does_not_pull_the_knee_down():
    # As measured on the direct channel (session 9): fast to 2 MiB, slow from 4 MiB,
    # and the fitted 1 MiB point a fifth slower than the line through the others.
    # A knee at 512 KiB fits the measured sizes about as well as one at 2 MiB; the
    # larger is kept, and the held-out 2 MiB is predicted where it was measured.
    def t(n):
        return 40e-6 + min(n, 2 << 20) / 5e9 + max(n - (2 << 20), 0) / 1.5e9

    measured = [1 << e for e in range(0, 23, 2)]  # 1 B ... 4 MiB
    points = [(n, t(n) * (1.25 if n == 1 << 20 else 1.0)) for n in measured]
    fit = calibrate.fit_wire(points)
    assert fit["large_message_bytes"] == 2 << 20
    model = ChannelModel(name="x", bandwidth_aggregate_bytes_per_s=1e12, **fit)
    assert model.round_time_s(1, 2 << 20) == pytest.approx(t(2 << 20), rel=0.2)


def test_one_noisy_small_size_does_not_decide_where_the_knee_goes():
    # As measured on the local channel (session 11): copies at cache speed to 256 KiB,
    # at memory speed beyond, and the 1-byte point 40 % above the latency. That point
    # is the worst error of every knee alike; the knees are compared without it, so
    # the knee is not pushed to the largest size (which put 1-2 MiB 30 % low).
    def t(n):
        return 20e-6 + min(n, 256 << 10) / 30e9 + max(n - (256 << 10), 0) / 9e9

    measured = [1 << e for e in range(0, 23, 2)]  # 1 B ... 4 MiB
    points = [(n, t(n) * (1.4 if n == 1 else 1.0)) for n in measured]
    fit = calibrate.fit_wire(points)
    assert fit["large_message_bytes"] == 256 << 10
    model = ChannelModel(name="x", bandwidth_aggregate_bytes_per_s=1e12, **fit)
    for n in (1 << 20, 2 << 20):
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=0.05), n


def test_the_largest_size_is_never_left_out_as_the_noisy_one():
    # The fitted direct ping-pongs of a cross-process run (session 15, 02:56), in us:
    # the bytes beyond 16 MiB moved at 2.9 GB/s, below at 4.5 GB/s, and only 64 MiB
    # shows it. Left out as the one noisy size, it came out 30 % short, one rate for all.
    measured = {
        1: 26.5, 4: 26.8, 16: 26.5, 64: 26.6, 256: 27.1, 1 << 10: 27.0, 4 << 10: 27.7,
        16 << 10: 30.1, 64 << 10: 50.7, 256 << 10: 70.7, 1 << 20: 294.4,
        4 << 20: 806.6, 16 << 20: 3959.5, 64 << 20: 21583.6,
    }  # fmt: skip
    fit = calibrate.fit_wire([(n, us * 1e-6) for n, us in measured.items()])
    model = ChannelModel(name="direct", bandwidth_aggregate_bytes_per_s=1e12, **fit)
    assert fit["large_message_bytes"] >= 16 << 20
    assert model.round_time_s(1, 64 << 20) == pytest.approx(21.58e-3, rel=0.1)
    assert model.round_time_s(1, 16 << 20) == pytest.approx(3.96e-3, rel=0.15)
    # one noisy size below the largest is still left out of the comparison; the
    # largest is not
    line = {"latency_s": 20e-6, "bandwidth_single_bytes_per_s": 5e9,
            "large_message_bytes": 0.0, "bandwidth_large_bytes_per_s": 5e9}  # fmt: skip
    exact = [(n, calibrate._wire(line, n)) for n in measured]
    assert calibrate._worst_but_one(line, exact) == pytest.approx(0.0, abs=1e-12)
    inner = [(n, t * (2.0 if n == 4 << 10 else 1.0)) for n, t in exact]
    assert calibrate._worst_but_one(line, inner) == pytest.approx(0.0, abs=1e-12)
    top = [(n, t * (2.0 if n == 64 << 20 else 1.0)) for n, t in exact]
    assert calibrate._worst_but_one(line, top) == pytest.approx(0.5)


def test_one_regime_is_kept_when_enough():
    fit = calibrate.fit_wire([(n, 30e-6 + n / 5e9) for n in SIZES])
    assert fit["large_message_bytes"] == 0
    assert fit["huge_message_bytes"] == 0


def test_two_regimes_get_no_third():
    def t(n):
        return 30e-6 + min(n, 1 << 20) / 5e9 + max(n - (1 << 20), 0) / 1e9

    fit = calibrate.fit_wire([(n, t(n)) for n in SIZES])
    assert fit["huge_message_bytes"] == 0


def test_a_third_regime_is_found_when_the_largest_messages_slow_down_again(monkeypatch):
    # As measured across processes on the direct channel (session 12): the loopback
    # moved 256-512 KiB at 6 GB/s, 1-16 MiB at 3.5 GB/s and 32-64 MiB at 2.4 GB/s.
    # No two-piece line fits both ends: the one kept had put 256 KiB 37 % high and
    # the held-out 32 MiB 42 % low.
    def t(n):
        return (
            22e-6
            + min(n, 256 << 10) / 7e9
            + max(min(n, 16 << 20) - (256 << 10), 0) / 3.5e9
            + max(n - (16 << 20), 0) / 1.8e9
        )

    measured = [1 << e for e in range(0, 27, 2)]  # 1 B ... 64 MiB, every other size
    fit = calibrate.fit_wire([(n, t(n)) for n in measured])
    # the fast regime reaches as far as the sizes allow (to the midpoint above 256 KiB),
    # and so does the slowest (from 16 MiB, the size below the knee's midpoint)
    assert fit["large_message_bytes"] == 512 << 10
    assert fit["huge_message_bytes"] == 16 << 20
    assert fit["bandwidth_huge_bytes_per_s"] < fit["bandwidth_large_bytes_per_s"]
    assert max(abs(calibrate._wire(fit, n) / t(n) - 1) for n in measured) < 0.15
    assert calibrate._wire(fit, 32 << 20) == pytest.approx(t(32 << 20), rel=0.05)
    # the two-piece line the fit keeps without a third regime misses some size by 30 %
    monkeypatch.setattr(calibrate, "_second_knee", lambda *args: None)
    two = calibrate.fit_wire([(n, t(n)) for n in measured])
    assert two["huge_message_bytes"] == 0
    assert max(abs(calibrate._wire(two, n) / t(n) - 1) for n in measured) > 0.3


def _collective_points(truth, ranks_list=(2, 4, 8), sizes=(1, 4096, 1 << 20)):
    from afmi.model.cli import algorithm_for

    free = FunctionPrice(0.0, 0.0)
    points = []
    for op in ("barrier", "bcast", "gather", "allreduce"):
        for ranks in ranks_list:
            for nbytes in [0] if op == "barrier" else sizes:
                alg = algorithm_for(op, truth.name, ranks, nbytes)
                points.append(
                    (op, ranks, nbytes, predict(op, nbytes, ranks, alg, truth, free).time_s)
                )
    return points


_WIRE = {
    "latency_s": 30e-6,
    "bandwidth_single_bytes_per_s": 5e9,
    "large_message_bytes": 0.0,
    "bandwidth_large_bytes_per_s": 5e9,
}


def test_a_third_regime_is_weighed_against_the_two_piece_line_it_would_replace():
    # The fitted direct ping-pongs of a cross-process run (session 12, 20:11), in us.
    # The best two-piece line (knee at 256 KiB) has a worst error but one of 15 %,
    # the one kept (the largest knee within 5 points of it: 32 MiB) 18 %, and the
    # best three-piece line 11 %: more than 5 points better than the line it replaces.
    fitted = {
        **{1 << e: 21e-6 for e in range(0, 14, 2)},
        1 << 14: 22.7e-6,
        1 << 16: 36.0e-6,
        1 << 18: 57.1e-6,
        1 << 20: 309.5e-6,
        1 << 22: 1108.6e-6,
        1 << 24: 4310.8e-6,
        1 << 26: 26843.6e-6,
    }
    fit = calibrate.fit_wire(list(fitted.items()))
    assert fit["huge_message_bytes"] > 0
    # and the held-out sizes of that run that the two-piece line missed by 37-44 %
    held_out = {1 << 19: 94.5e-6, 1 << 25: 13072.9e-6}
    for n, t in [(1 << 18, fitted[1 << 18]), *held_out.items()]:
        assert calibrate._wire(fit, n) == pytest.approx(t, rel=0.3), n


def test_rounds_are_recovered_from_collective_timings():
    truth = ChannelModel(
        name="direct",
        latency_s=30e-6,
        bandwidth_single_bytes_per_s=5e9,
        bandwidth_aggregate_bytes_per_s=3e9,
        per_message_s=12e-6,
        call_overhead_s=8e-6,
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("direct", _WIRE, points)
    assert fit["call_overhead_s"] == pytest.approx(8e-6, rel=1e-6)
    # The algorithms the registry runs here send one message per round, so
    # per_message_s is not seen; the fit still reproduces every point.
    model = ChannelModel(name="direct", **{**_WIRE, **fit})
    _assert_reproduces(model, points)


#: Ranks sharing one event loop: the wire and the rates the tests of the shared CPU
#: start from (each sets the costs it recovers).
_ONE_LOOP = ChannelModel(
    name="local",
    latency_s=30e-6,
    bandwidth_single_bytes_per_s=5e9,
    bandwidth_aggregate_bytes_per_s=5e9,
    cpu_bytes_per_s=4e9,
    reduce_bytes_per_s=2e9,
    parallel_ranks=1.0,
)


def test_a_rounds_messages_are_never_priced_slower_than_one_after_another():
    # Calls whose rounds of several messages took three times as long as sending them
    # one after another: the fit keeps the aggregate at the single stream (in session
    # 15 the Redis fit sat at a quarter of it, and priced a 4-rank allreduce's round of
    # three 512 KiB messages at 12 times one message's wire time, over the whole call)
    from afmi.model.cli import algorithm_for

    single = _WIRE["bandwidth_single_bytes_per_s"]
    truth = ChannelModel(
        name="local",  # its gathers are linear: one round of size - 1 messages
        **{**_WIRE, "bandwidth_aggregate_bytes_per_s": single / 3},
        per_message_s=5e-6,
        call_overhead_s=8e-6,
    )
    assert algorithm_for("gather", "local", 8, 1 << 20).steps(8, 1 << 20)[0].messages == 7
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("local", _WIRE, points)
    assert fit["bandwidth_aggregate_bytes_per_s"] == single
    model = ChannelModel(name="local", **{**_WIRE, **fit})
    wire = model.wire_time_s(1 << 20)
    for m in (2, 3, 7):
        assert model.round_time_s(m, 1 << 20) - model.round_time_s(1, 1 << 20) <= (
            (m - 1) * (wire + model.per_message_s) + 1e-12
        )


def _fit_one_loop(points):
    """The collective parameters of :data:`_ONE_LOOP`'s channel, fitted to ``points``."""
    return calibrate.fit_rounds("local", _WIRE, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)


def _assert_reproduces(model, points, rel=1e-3):
    from afmi.model.cli import algorithm_for

    free = FunctionPrice(0.0, 0.0)
    for op, ranks, nbytes, seconds in points:
        alg = algorithm_for(op, model.name, ranks, nbytes)
        got = predict(op, nbytes, ranks, alg, model, free).time_s
        assert got == pytest.approx(seconds, rel=rel), (op, ranks, nbytes)


def test_shared_cpu_work_is_recovered_when_ranks_share_a_loop():
    # One event loop for all ranks: the CPU bound decides most calls, the path the rest.
    truth = dataclasses.replace(
        _ONE_LOOP,
        per_message_s=5e-6,
        call_overhead_s=8e-6,
        payload_overhead_s=30e-6,
        cpu_per_message_s=25e-6,
        cpu_per_message_rank_s=3e-6,
    )
    points = _collective_points(truth)
    fit = _fit_one_loop(points)
    assert fit["parallel_ranks"] == 1.0
    assert fit["cpu_per_message_s"] == pytest.approx(25e-6, rel=1e-3)
    assert fit["cpu_per_message_rank_s"] == pytest.approx(3e-6, rel=1e-3)
    assert fit["cpu_bytes_per_s"] == pytest.approx(4e9, rel=1e-3)
    assert fit["call_overhead_s"] == pytest.approx(8e-6, rel=1e-3)
    assert fit["payload_overhead_s"] == pytest.approx(30e-6, rel=1e-3)  # seen beside barriers
    assert fit["cpu_cache_bytes"] == 0.0 and fit["cpu_bytes_large_per_s"] == 0.0  # none here
    _assert_reproduces(ChannelModel(name="local", **{**_WIRE, **fit}), points)
    # a call's bytes beyond what the caches hold are copied more slowly: the fit finds
    # where (a 2-rank bcast of 1 MiB moves 1 MiB) and the slower rate
    truth = dataclasses.replace(truth, cpu_cache_bytes=float(1 << 20), cpu_bytes_large_per_s=1e9)
    points = _collective_points(truth)
    fit = _fit_one_loop(points)
    assert fit["cpu_cache_bytes"] == 1 << 20
    assert fit["cpu_bytes_large_per_s"] == pytest.approx(1e9, rel=1e-3)
    assert fit["cpu_bytes_per_s"] == pytest.approx(4e9, rel=1e-3)
    _assert_reproduces(ChannelModel(name="local", **{**_WIRE, **fit}), points)


def test_the_rounds_that_ranks_sharing_a_loop_wait_through_are_fitted():
    # Redis in one process: every round of a call's path leaves the loop idle for a
    # server round trip, on top of the work of all ranks
    truth = ChannelModel(
        name="redis",
        latency_s=120e-6,
        bandwidth_single_bytes_per_s=1.6e9,
        bandwidth_aggregate_bytes_per_s=1.6e9,
        call_overhead_s=5e-6,
        cpu_per_message_s=30e-6,
        cpu_bytes_per_s=2e9,
        reduce_bytes_per_s=2e9,
        wait_per_round_s=150e-6,
        parallel_ranks=1.0,
    )
    points = _collective_points(truth)
    wire = {**_WIRE, "latency_s": 120e-6, "bandwidth_single_bytes_per_s": 1.6e9}
    wire["bandwidth_large_bytes_per_s"] = 1.6e9
    fit = calibrate.fit_rounds("redis", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)
    assert fit["wait_per_round_s"] == pytest.approx(150e-6, rel=1e-3)
    assert fit["cpu_per_message_s"] == pytest.approx(30e-6, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # with a CPU per rank there is no shared bound, and nothing to fit it from
    own = dataclasses.replace(truth, parallel_ranks=0.0)
    fit = calibrate.fit_rounds("redis", wire, _collective_points(own), reduce_bytes_per_s=2e9)
    assert fit["wait_per_round_s"] == 0.0


def test_the_cpu_copies_a_calls_bytes_beyond_the_cache_at_the_second_rate():
    model = ChannelModel("local", **_WIRE, bandwidth_aggregate_bytes_per_s=5e9, cpu_bytes_per_s=4e9)
    assert model.cpu_bytes_s(8e6) == pytest.approx(2e-3)  # one rate without a limit
    cached = dataclasses.replace(model, cpu_cache_bytes=4e6, cpu_bytes_large_per_s=1e9)
    assert cached.cpu_bytes_s(2e6) == pytest.approx(0.5e-3)
    assert cached.cpu_bytes_s(8e6) == pytest.approx(1e-3 + 4e-3)
    # bytes within the limit may be free (rate 0: not counted), the rest are not
    free_small = dataclasses.replace(cached, cpu_bytes_per_s=0.0)
    assert free_small.cpu_bytes_s(8e6) == pytest.approx(4e-3)
    assert dataclasses.replace(model, cpu_bytes_per_s=0.0).cpu_bytes_s(8e6) == 0.0


def test_the_fetch_step_of_inline_messages_is_found():
    # S3-like: messages up to 256 B ride in the key, larger ones pay a GET of 50 ms
    def t(n):
        return 33e-3 + (50e-3 if n > 256 else 0.0) + n / 1e8

    fit = calibrate.fit_wire([(n, t(n)) for n in SIZES], fetch=True)
    assert fit["inline_max_bytes"] == 256
    assert fit["fetch_s"] == pytest.approx(50e-3, rel=1e-3)
    assert fit["latency_s"] == pytest.approx(33e-3, rel=1e-3)
    model = ChannelModel(name="s3", bandwidth_aggregate_bytes_per_s=1e9, **fit)
    for n in SIZES:
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=1e-3)
    # without a step the fit keeps none
    flat = calibrate.fit_wire([(n, 33e-3 + n / 1e8) for n in SIZES], fetch=True)
    assert flat["fetch_s"] == 0


def test_one_noisy_inline_size_does_not_hide_the_fetch_step():
    # As measured on S3 in one process (session 11): a 256 B ping-pong, inline, a third
    # slower than its neighbours. A step at 400 B left it the worst error, as large as
    # the one-rate line's worst, so the step was refused and every fetched S3 message
    # predicted a third fast; compared without their single worst point, the step wins.
    def t(n):
        return 23e-3 + (11e-3 if n > 400 else 0.0) + n / 1e8

    measured = [1 << e for e in range(0, 23)]  # 1 B ... 4 MiB, every size, as the bench
    points = [(n, t(n) * (1.33 if n == 256 else 1.0)) for n in measured[::2]]
    fit = calibrate.fit_wire(points, inline=400)
    assert fit["fetch_s"] == pytest.approx(11e-3, rel=0.1)
    model = ChannelModel(name="s3", bandwidth_aggregate_bytes_per_s=1e9, **fit)
    for n in (512, 2048, 1 << 20):
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=0.1), n


def test_a_configured_inline_size_places_the_fetch_step():
    # Redis-like: payloads up to 64 KiB ride in the mailbox entry, larger ones are chunks
    # the receiver GETs (one more round trip). The configured size is where the step is,
    # even where another size would fit the noise as well.
    inline = 64 * 1024

    def t(n):
        return 120e-6 + (110e-6 if n > inline else 0.0) + n / 2e9

    pts = [(n, t(n) * (1.08 if n == 2 * inline else 1.0)) for n in SIZES]
    fit = calibrate.fit_wire(pts, fetch=True, inline=inline)
    assert fit["inline_max_bytes"] == inline
    assert fit["fetch_s"] == pytest.approx(110e-6, rel=0.2)
    # no step in the data: none is fitted, and the threshold stays the configured one
    flat = calibrate.fit_fetch([(n, 120e-6 + n / 2e9) for n in SIZES], inline=inline)
    assert flat["fetch_s"] == 0 and flat["inline_max_bytes"] == inline


def test_the_bytes_beyond_a_configured_inline_size_get_a_rate_of_their_own():
    # Redis-like: the mailbox entry moves at 0.8 GB/s, the chunks beyond it at 2 GB/s
    inline = 64 * 1024

    def t(n):
        return 130e-6 + min(n, inline) / 0.8e9 + (60e-6 + (n - inline) / 2e9 if n > inline else 0)

    fit = calibrate.fit_wire([(n, t(n)) for n in SIZES], fetch=True, inline=inline)
    assert fit["fetch_s"] == pytest.approx(60e-6, rel=1e-3)
    assert fit["bandwidth_single_bytes_per_s"] == pytest.approx(0.8e9, rel=1e-3)
    assert fit["large_message_bytes"] == inline
    assert fit["bandwidth_large_bytes_per_s"] == pytest.approx(2e9, rel=1e-3)
    model = ChannelModel(name="redis", bandwidth_aggregate_bytes_per_s=1e10, **fit)
    for n in SIZES:
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=1e-3)
    # without a configured size only the plain step is searched for: one rate for all
    searched = calibrate.fit_wire([(n, t(n)) for n in SIZES], fetch=True)
    assert searched["bandwidth_single_bytes_per_s"] == searched["bandwidth_large_bytes_per_s"]
    # two sizes above the inline size cannot tell a step from a rate: one rate for all
    few = [(n, t(n)) for n in SIZES if n <= 4 * inline]
    fit = calibrate.fit_wire(few, fetch=True, inline=inline)
    assert fit["bandwidth_single_bytes_per_s"] == fit["bandwidth_large_bytes_per_s"]


def test_the_bytes_of_the_largest_fetched_messages_get_a_slower_rate():
    # Redis across processes (session 23): chunks move at 3 GB/s up to 4 MiB, where they
    # are cut smaller, and at 1.5 GB/s beyond
    inline, huge = 64 * 1024, 4 << 20

    def t(n):
        if n <= inline:
            return 80e-6 + n / 1.5e9
        return (
            80e-6
            + inline / 1.5e9
            + 70e-6
            + (min(n, huge) - inline) / 3e9
            + max(n - huge, 0) / 1.5e9
        )

    sizes = [1 << e for e in range(0, 27)]  # to 64 MiB
    fit = calibrate.fit_wire([(n, t(n)) for n in sizes], fetch=True, inline=inline)
    assert fit["huge_message_bytes"] == huge
    assert fit["bandwidth_large_bytes_per_s"] == pytest.approx(3e9, rel=1e-3)
    assert fit["bandwidth_huge_bytes_per_s"] == pytest.approx(1.5e9, rel=1e-3)
    model = ChannelModel(name="redis", bandwidth_aggregate_bytes_per_s=1e10, **fit)
    for n in sizes:
        assert model.round_time_s(1, n) == pytest.approx(t(n), rel=1e-3)

    # one rate beyond the inline size: no third one is made up
    def one(n):
        return t(n) if n <= huge else t(huge) + (n - huge) / 3e9

    fit = calibrate.fit_wire([(n, one(n)) for n in sizes], fetch=True, inline=inline)
    assert fit.get("huge_message_bytes", 0.0) == 0.0


def test_noise_below_a_tiny_inline_size_is_not_a_rate_of_its_own():
    # S3-like: the times of messages up to 256 B wander by a millisecond with the polling;
    # a "rate" for the 400 B that ride in the key would be that noise
    def t(n):
        noise = 1e-3 * n / 256 if n <= 256 else 0.0
        return 15e-3 + noise + (7e-3 if n > 400 else 0.0) + n / 1e8

    fit = calibrate.fit_wire([(n, t(n)) for n in SIZES], fetch=True, inline=400)
    assert fit["bandwidth_single_bytes_per_s"] == fit["bandwidth_large_bytes_per_s"]
    assert fit["fetch_s"] == pytest.approx(7e-3, rel=0.1)


def _fetched_wire(latency: float, rate: float, inline: float, fetch: float) -> dict:
    """The wire of a channel whose messages above ``inline`` bytes need a fetch."""
    return {
        **_WIRE,
        "latency_s": latency,
        "bandwidth_single_bytes_per_s": rate,
        "bandwidth_large_bytes_per_s": rate,
        "inline_max_bytes": inline,
        "fetch_s": fetch,
    }


def test_collectives_with_fetched_messages_are_fitted():
    # One loop drives every rank and the server takes the fetches: the CPU bound
    # counts every fetch, the critical path every fetch on it.
    wire = _fetched_wire(30e-3, 1e8, 256.0, 40e-3)
    truth = ChannelModel(
        name="s3",
        **wire,
        bandwidth_aggregate_bytes_per_s=1e8,
        call_overhead_s=5e-3,
        cpu_per_message_s=20e-3,
        reduce_bytes_per_s=2e9,
        parallel_ranks=1.0,
        publish_min_bytes=4 << 20,  # the channel's default: nothing here is stored once
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)
    assert fit["cpu_per_message_s"] == pytest.approx(20e-3, rel=1e-3)
    assert fit["call_overhead_s"] == pytest.approx(5e-3, rel=1e-3)
    assert fit["cpu_per_shared_read_s"] == pytest.approx(0.0, abs=1e-6)
    assert fit["cpu_per_fetch_s"] == pytest.approx(40e-3, rel=1e-3)  # unset: as long as a fetch
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # reads of a payload stored once for several readers cost more (markers, pointers);
    # the channel stores them once from 1 MiB (the sweep's largest size) on
    stored = Config.from_dict({"channels": {"s3": {"publish_min_bytes": 1 << 20}}})
    truth = dataclasses.replace(truth, cpu_per_shared_read_s=12e-3, publish_min_bytes=1 << 20)
    points = _collective_points(truth)
    fit = calibrate.fit_rounds(
        "s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0, config=stored
    )
    assert fit["cpu_per_shared_read_s"] == pytest.approx(12e-3, rel=1e-3)
    assert fit["cpu_per_message_s"] == pytest.approx(20e-3, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # the fit follows the channel's configuration: with its default threshold (4 MiB)
    # nothing here is stored once, so there are no shared reads to price
    wrong = calibrate.fit_rounds("s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)
    assert wrong["cpu_per_shared_read_s"] == 0.0


def test_the_cpu_of_a_fetch_is_fitted_apart_from_its_time():
    # Redis in one process (session 12): the readers' GETs overlap, so a fetch that
    # adds 166 us to a ping-pong cost the loop next to nothing; charged at its time,
    # 8-rank bcasts of 256 KiB came out 41 % high, and the bytes then fitted as almost
    # free put the inline 64 KiB ones 36-47 % low.
    wire = _fetched_wire(120e-6, 1.5e9, 4096.0, 160e-6)
    truth = ChannelModel(
        name="redis",
        **wire,
        bandwidth_aggregate_bytes_per_s=1.5e9,
        payload_overhead_s=20e-6,
        cpu_per_message_s=30e-6,
        cpu_per_fetch_s=5e-6,
        cpu_bytes_per_s=1.4e9,
        reduce_bytes_per_s=2e9,
        parallel_ranks=1.0,
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("redis", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)
    # (a shared read of a bcast's payload is a fetch too: the two share the cost here)
    assert fit["cpu_per_fetch_s"] < 20e-6
    assert fit["cpu_bytes_per_s"] == pytest.approx(1.4e9, rel=0.05)
    _assert_reproduces(dataclasses.replace(truth, **fit), points, rel=0.1)
    # the same figures with every fetch charged at its time miss the fetched calls
    old = dataclasses.replace(truth, **fit)
    old = dataclasses.replace(old, cpu_per_fetch_s=None)
    assert old.fetch_cpu_s() == 160e-6
    with pytest.raises(AssertionError):
        _assert_reproduces(old, points, rel=0.3)


def test_the_cpu_of_a_wait_is_told_from_the_cpu_of_a_message():
    # S3 on one event loop: a LIST for every wait, a PUT and a DELETE for every message.
    # A linear gather's root waits once for all messages, a bcast's readers once each.
    wire = dict(_WIRE, inline_max_bytes=256.0, fetch_s=5e-3)
    truth = ChannelModel(
        name="s3",
        **wire,
        bandwidth_aggregate_bytes_per_s=1e8,
        call_overhead_s=1e-3,
        cpu_per_message_s=5e-3,
        cpu_per_wait_s=4e-3,
        reduce_bytes_per_s=2e9,
        parallel_ranks=1.0,
        publish_min_bytes=4 << 20,
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=1.0)
    assert fit["cpu_per_wait_s"] == pytest.approx(4e-3, rel=1e-3)
    assert fit["cpu_per_message_s"] == pytest.approx(5e-3, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)


def test_the_later_rounds_of_a_polling_channel_are_fitted():
    # S3's receivers poll and back off while their rank waits out the first round (a
    # message takes 15 ms: a first round can save at most that)
    wire = dict(_WIRE, latency_s=15e-3, inline_max_bytes=256.0, fetch_s=5e-3)
    truth = ChannelModel(
        name="s3",
        **wire,
        bandwidth_aggregate_bytes_per_s=5e9,
        call_overhead_s=1e-3,
        later_round_s=9e-3,
        reduce_bytes_per_s=2e9,
        parallel_ranks=0.0,  # a CPU per rank: every call is its critical path
        publish_min_bytes=4 << 20,
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=0.0)
    assert fit["later_round_s"] == pytest.approx(9e-3, rel=1e-3)
    assert fit["call_overhead_s"] == pytest.approx(1e-3, rel=1e-3)
    assert fit["first_round_saving_s"] == pytest.approx(0.0, abs=1e-9)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # a first round faster than a ping-pong message; the path alone tells only the
    # call overhead less the saving, which is all the predictions use
    truth = dataclasses.replace(truth, first_round_saving_s=4e-3)
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("s3", wire, points, reduce_bytes_per_s=2e9, parallel_ranks=0.0)
    assert fit["later_round_s"] == pytest.approx(9e-3, rel=1e-3)
    assert fit["first_round_saving_s"] - fit["call_overhead_s"] == pytest.approx(3e-3, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # a channel whose receivers do not poll: a round is a round unless the calls say
    # otherwise (Redis in one process, session 13: a 2-rank allreduce took 300 us, the
    # gather and bcast of its two messages 123 and 134 us, and was predicted 26-32 %
    # low; with its second round's extra time fitted, within 6 %)
    truth = dataclasses.replace(
        truth,
        name="direct",
        latency_s=_WIRE["latency_s"],
        inline_max_bytes=0.0,
        fetch_s=0.0,
        first_round_saving_s=0.0,
    )
    points = _collective_points(dataclasses.replace(truth, later_round_s=0.0))
    fit = calibrate.fit_rounds("direct", _WIRE, points, reduce_bytes_per_s=2e9)
    assert fit["later_round_s"] == 0.0 and fit["first_round_saving_s"] == 0.0
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("direct", _WIRE, points, reduce_bytes_per_s=2e9)
    assert fit["later_round_s"] == pytest.approx(9e-3, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)


def test_reduce_rate_is_measured():
    rate = calibrate.measure_reduce_rate("float64", 1 << 16)
    assert 1e6 < rate < 1e13
    rates = calibrate.measure_reduce_rates("uint8", 1 << 19)
    assert sorted(rates) == [1 << 16, 1 << 17, 1 << 18, 1 << 19]
    assert all(1e6 < r < 1e13 for r in rates.values())
    assert list(calibrate.measure_reduce_rates("uint8", 1000)) == [1000]


def test_the_reduction_gets_a_second_rate_where_its_inputs_outgrow_the_caches():
    # numpy's SUM of uint8 inputs on this machine (session 13), bytes per second
    ladder = {
        1 << 16: 16.6e9,
        1 << 18: 24.5e9,
        1 << 19: 20.1e9,
        1 << 20: 9.2e9,
        1 << 21: 8.0e9,
        1 << 24: 7.8e9,
    }
    got = calibrate.reduction_regimes(ladder)
    assert got == {
        "reduce_bytes_per_s": 24.5e9,
        "reduce_cache_bytes": float(1 << 19),
        "reduce_bytes_large_per_s": 7.8e9,
    }
    # several runs: every size at its fastest
    slower = {n: r / 2 for n, r in ladder.items()}
    assert calibrate.fastest_reduction([slower, ladder, slower]) == got
    # a ladder within the caches (in process, to 256 KiB): one rate, the largest input's
    assert calibrate.reduction_regimes({1 << 16: 16.6e9, 1 << 18: 24.5e9}) == {
        "reduce_bytes_per_s": 24.5e9
    }
    assert calibrate.reduction_regimes({1 << 24: 7.8e9}) == {"reduce_bytes_per_s": 7.8e9}
    with pytest.raises(ValueError):
        calibrate.reduction_regimes({})


def test_the_fit_prices_the_reductions_at_their_measured_rates():
    # Across processes the bench measured SUM on the largest allreduce's inputs (7.3 GB/s)
    # and charged every allreduce's reduction at that rate; a 2-rank allreduce of 512 KiB
    # came out 43 % high (session 13). The fit takes the reduction's two rates as given.
    wire = {**_WIRE, "bandwidth_single_bytes_per_s": 5e9, "bandwidth_large_bytes_per_s": 5e9}
    reduction = {
        "reduce_bytes_per_s": 2.4e10,
        "reduce_cache_bytes": float(1 << 19),
        "reduce_bytes_large_per_s": 7e9,
    }
    truth = ChannelModel(
        name="direct",
        **wire,
        bandwidth_aggregate_bytes_per_s=5e9,
        payload_overhead_s=20e-6,
        cpu_per_message_s=10e-6,
        cpu_bytes_per_s=4e9,
        parallel_ranks=1.0,
        **reduction,
    )
    points = _collective_points(truth)
    fit = calibrate.fit_rounds("direct", wire, points, parallel_ranks=1.0, **reduction)
    assert fit["reduce_cache_bytes"] == 1 << 19 and fit["reduce_bytes_large_per_s"] == 7e9
    assert fit["cpu_bytes_per_s"] == pytest.approx(4e9, rel=1e-3)
    _assert_reproduces(dataclasses.replace(truth, **fit), points)
    # priced at the largest input's rate alone, the same calls fit worse
    one = calibrate._fit_rounds("direct", wire, points, parallel_ranks=1.0, reduce_bytes_per_s=7e9)
    two = calibrate._fit_rounds("direct", wire, points, parallel_ranks=1.0, **reduction)
    assert two[0] < one[0]


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_model_file_round_trips_through_config(tmp_path, suffix):
    params = {
        "latency_s": 3.5e-5,
        "per_message_s": 1.25e-5,
        "bandwidth_single_bytes_per_s": 4.5e9,
        "bandwidth_aggregate_bytes_per_s": 6e9,
        "call_overhead_s": 2e-6,
    }
    path = calibrate.write_model_file(tmp_path / f"model{suffix}", {"local": params})
    direct = Config.from_file(path)
    assert direct.model.local.latency_s == 3.5e-5
    assert direct.model.calibrated and "afmi bench --calibrate" in direct.model.calibrated
    for cfg in (direct, Config.from_dict({"model": {"file": str(path)}})):
        local = channel_models(cfg)["local"]
        for key, value in params.items():
            assert getattr(local, key) == value
        assert channel_models(cfg)["s3"] == channel_models(Config())["s3"]
    if suffix == ".json":
        assert set(json.loads(path.read_text())["model"]) == {"calibrated", "local"}


def test_a_message_with_the_data_is_fitted_apart_from_a_barriers():
    from afmi.model.cli import algorithm_for

    # One event loop: a barrier's empty messages cost 9 us of CPU, a message that carries
    # an array 9 us more (serialized, copied, rebuilt); the barriers tell the two apart
    truth = dataclasses.replace(
        _ONE_LOOP,
        latency_s=15e-6,
        call_overhead_s=6e-6,
        payload_overhead_s=4e-6,
        cpu_per_message_s=9e-6,
        cpu_per_payload_message_s=9e-6,
    )
    points = _collective_points(truth)
    fit = _fit_one_loop(points)
    assert fit["cpu_per_message_s"] == pytest.approx(9e-6, rel=1e-3)
    assert fit["cpu_per_payload_message_s"] == pytest.approx(9e-6, rel=1e-3)
    _assert_reproduces(ChannelModel(name="local", **{**_WIRE, **fit}), points)
    # one price for every message: priced alike, the 8-rank barrier comes out 2x slow
    barrier = next(p for p in points if p[0] == "barrier" and p[1] == 8)
    one = dataclasses.replace(truth, cpu_per_message_s=18e-6, cpu_per_payload_message_s=0.0)
    alg = algorithm_for("barrier", "local", 8, 0)
    assert predict("barrier", 0, 8, alg, one, FunctionPrice(0.0, 0.0)).time_s > 1.8 * barrier[3]
    # where every message costs the same, the fit keeps the simpler form
    plain = dataclasses.replace(truth, cpu_per_message_s=18e-6, cpu_per_payload_message_s=0.0)
    fit = _fit_one_loop(_collective_points(plain))
    assert fit["cpu_per_payload_message_s"] == 0.0
    assert fit["cpu_per_message_s"] == pytest.approx(18e-6, rel=1e-3)
    # and without barriers nothing tells them apart: one price per message
    calls = [p for p in points if p[0] != "barrier"]
    fit = _fit_one_loop(calls)
    assert fit["cpu_per_payload_message_s"] == 0.0


def test_accuracy_summary_judges_time_and_choice():
    from afmi.bench.accuracy import annotate, summarize

    rows = [
        {"channel": "local", "nbytes": 1, "latency_s": 20e-6},
        {"channel": "s3", "nbytes": 1, "latency_s": 50e-3},
        {"channel": "local", "op": "bcast", "ranks": 4, "nbytes": 8, "latency_s": 1.0},
        {"channel": "s3", "op": "bcast", "ranks": 4, "nbytes": 8, "latency_s": 0.5},
    ]
    cfg = Config()
    annotate(rows, cfg)
    assert rows[0]["predicted_s"] == pytest.approx(20e-6, rel=1e-3)  # local default latency
    assert rows[0]["rel_error"] == pytest.approx(0.0, abs=1e-3)
    acc = summarize(rows, cfg)
    assert acc["points"] == 4
    assert acc["choice_points"] == 2 and acc["choice_correct"] == 1
    assert acc["choice_misses"] == [
        {"op": "bcast", "ranks": 4, "nbytes": 8, "picked": "local", "fastest": "s3"}
    ]
    assert acc["within_tolerance"] >= 1 and acc["max_abs_rel_error"] > 0.3


def test_accuracy_reports_the_noise_of_the_passes():
    from afmi.bench.accuracy import annotate, summarize

    cfg = Config()
    base = {"channel": "local", "nbytes": 1}
    rows = [
        # predicted 20 us: one miss whose passes lay 100 % apart, one whose lay 5 % apart
        {**base, "latency_s": 40e-6, "pass_latencies_s": [20e-6, 40e-6, 40e-6]},
        {**base, "latency_s": 40e-6, "pass_latencies_s": [40e-6, 42e-6, 40e-6]},
        {**base, "latency_s": 20e-6, "pass_latencies_s": [20e-6, 21e-6, 22e-6]},
    ]
    annotate(rows, cfg)
    acc = summarize(rows, cfg)
    assert acc["points"] - acc["within_tolerance"] == 2
    assert acc["misses_noisier_than_tolerance"] == 1
    assert acc["pass_spread_by_channel"] == {"local": pytest.approx(0.1)}  # the median
    # the two points whose passes agree: one within the tolerance, one (5 % apart) not
    assert (acc["steady_points"], acc["steady_within"]) == (2, 1)
    # rows of one pass report no noise
    single = [{**base, "latency_s": 40e-6}]
    annotate(single, cfg)
    assert "pass_spread_by_channel" not in summarize(single, cfg)


def test_accuracy_lists_the_points_outside_the_tolerance_with_their_passes():
    from afmi.bench.accuracy import annotate, summarize
    from afmi.bench.report import _accuracy_lines

    cfg = Config()
    base = {"channel": "local", "nbytes": 1}  # predicted 20 us
    rows = [
        {**base, "latency_s": 30e-6, "pass_latencies_s": [30e-6, 45e-6], "fitted": True},
        {**base, "latency_s": 50e-6, "machine_slowdown": 1.5},
        {**base, "latency_s": 21e-6},
        {**base, "op": "bcast", "ranks": 2, "nbytes": 4096, "latency_s": 1e-6},
    ]
    annotate(rows, cfg)
    acc = summarize(rows, cfg)
    misses = acc["time_misses"]
    # worst first; the point within the tolerance is not listed
    errors = [m["rel_error"] for m in misses]
    assert len(misses) == 3 and errors == sorted(errors, key=lambda e: -abs(e))
    assert [m["latency_s"] for m in misses] == [1e-6, 50e-6, 30e-6]
    assert misses[2]["pass_latencies_s"] == [30e-6, 45e-6] and misses[2]["fitted"] is True
    assert misses[1]["machine_slowdown"] == 1.5 and misses[1]["fitted"] is False
    lines = _accuracy_lines("accuracy", acc)
    listed = lines[lines.index(next(x for x in lines if x.startswith("  outside 30%"))) + 1 :]
    assert len(listed) == 3
    assert listed[1].startswith("    local send 1 B: measured 50.0 us, model 20.0 us (-60%)")
    assert listed[1].endswith("CPU slowdown 1.50x")
    assert "passes 30.0 us, 45.0 us (fastest kept); fitted" in listed[2]
    assert listed[0].startswith("    local bcast 4 KiB on 2 ranks: measured 1.0 us")
    # the list is capped, and a run with every point within the tolerance lists none
    many = [{**base, "latency_s": 1e-3} for _ in range(30)]
    annotate(many, cfg)
    assert len(summarize(many, cfg)["time_misses"]) == 20
    good = [{**base, "latency_s": 20e-6}]
    annotate(good, cfg)
    assert summarize(good, cfg)["time_misses"] == []
    assert not any(x.startswith("  outside") for x in _accuracy_lines("a", summarize(good, cfg)))


def _processes_on_two_cores(**shares):
    """A direct channel's model for processes on one machine, sharing its CPUs as told."""
    return ChannelModel(
        name="direct",
        latency_s=30e-6,
        bandwidth_single_bytes_per_s=5e9,
        bandwidth_aggregate_bytes_per_s=5e9,
        call_overhead_s=8e-6,
        cpu_per_message_s=40e-6,
        cpu_bytes_per_s=3e9,
        reduce_bytes_per_s=2e9,
        **shares,
    )


def test_cores_left_to_processes_are_fitted():
    # 4 and 8 processes on a machine where other work leaves them 1.5 cores
    truth = _processes_on_two_cores(parallel_ranks=1.5)
    points = _collective_points(truth)
    fit = calibrate.fit_parallel("direct", _WIRE, points, reduce_bytes_per_s=2e9, cpus=2)
    assert fit["parallel_ranks"] == 1.5
    assert fit["cpu_per_message_s"] == pytest.approx(40e-6, rel=1e-3)
    _assert_reproduces(ChannelModel(name="direct", **{**_WIRE, **fit}), points)


def test_ranks_that_outnumber_the_cores_are_fitted_a_crowding():
    # 2, 4 and 8 processes on 2 cores, the 4 and 8 working together more slowly
    truth = _processes_on_two_cores(parallel_ranks=2.0, shared_cpus=2.0, crowding=0.75)
    points = _collective_points(truth)
    fit = calibrate.fit_parallel("direct", _WIRE, points, reduce_bytes_per_s=2e9, cpus=2)
    assert (fit["crowding"], fit["shared_cpus"], fit["parallel_ranks"]) == (0.75, 2.0, 2.0)
    _assert_reproduces(ChannelModel(name="direct", **{**_WIRE, **fit}), points)
    # without a point of more ranks than cores there is nothing to fit it to
    two = [p for p in points if p[1] <= 2]
    fit = calibrate.fit_parallel("direct", _WIRE, two, reduce_bytes_per_s=2e9, cpus=2)
    assert "crowding" not in fit


def test_the_largest_size_is_always_fitted():
    rows = [{"nbytes": 1 << e} for e in range(0, 19, 2)]  # 10 sizes, 1 B .. 256 KiB
    fitted = calibrate.split_fitted(rows)
    assert [r["nbytes"] for r in fitted] == [4, 64, 1024, 16384, 1 << 18]
    held = [r["nbytes"] for r in rows if not r["fitted"]]
    assert held == [1, 16, 256, 4096, 65536]  # inside the fitted range but for 1 B
    few = [{"nbytes": n} for n in (8, 4096)]
    assert calibrate.split_fitted(few) == few and all(r["fitted"] for r in few)


def test_the_first_size_past_a_step_of_the_model_is_fitted_too():
    # In one process the sweep's 64 KiB calls are held out, and the fitted 16 and 256 KiB
    # calls hardly show a cost of messages over one TCP segment (session 25): the 256 KiB
    # calls' per-byte terms take it up. The first size past the limit is fitted as well.
    rows = [{"nbytes": 1 << e} for e in range(0, 19, 2)]
    fitted = calibrate.split_fitted(rows, [65419.0])
    assert [r["nbytes"] for r in fitted] == [4, 64, 1024, 16384, 65536, 1 << 18]
    assert [r["nbytes"] for r in rows if not r["fitted"]] == [1, 16, 256, 4096]
    # a step whose first size past it is fitted anyway, or with no size past it, adds none
    for step in (5000.0, 1e9):
        fitted = calibrate.split_fitted(rows, [step])
        assert [r["nbytes"] for r in fitted] == [4, 64, 1024, 16384, 1 << 18]


def test_the_split_limit_is_a_step_only_in_calls_of_more_than_two_ranks():
    params = {"latency_s": 3e-5, "split_message_bytes": 65419.0}
    assert calibrate.fit_steps(params, 4) == [65419.0]
    assert calibrate.fit_steps(params, 2) == []  # split_deliveries charges none there
    assert calibrate.fit_steps({"latency_s": 3e-5}, 8) == []  # no limit known


# The fitted direct rows of a cross-process run (session 18, 09:34; every other size,
# as the bench fits them): (op, ranks, bytes, us). Two ranks share the machine's two
# CPUs; four ranks call in two rounds (recursive doubling, binomial trees, the
# dissemination barrier) and take about 200 us more than two ranks in one.
# fmt: off
_TWO_CPU_DIRECT_ROWS = [
    ("allreduce", 2, 32, 89.1), ("allreduce", 2, 512, 89.9), ("allreduce", 2, 8192, 91.0),
    ("allreduce", 2, 131072, 186.5), ("allreduce", 2, 2097152, 888.7),
    ("allreduce", 2, 16777216, 6907.7), ("allreduce", 4, 32, 456.3),
    ("allreduce", 4, 512, 470.1), ("allreduce", 4, 8192, 454.1), ("allreduce", 4, 131072, 690.9),
    ("allreduce", 4, 2097152, 2869.6), ("allreduce", 4, 16777216, 24331.2),
    ("barrier", 2, 0, 52.8), ("barrier", 4, 0, 390.8), ("bcast", 2, 32, 58.5),
    ("bcast", 2, 512, 56.3), ("bcast", 2, 8192, 59.6), ("bcast", 2, 131072, 95.2),
    ("bcast", 2, 2097152, 411.2), ("bcast", 2, 16777216, 2850.8), ("bcast", 4, 32, 278.4),
    ("bcast", 4, 512, 289.8), ("bcast", 4, 8192, 246.0), ("bcast", 4, 131072, 360.4),
    ("bcast", 4, 2097152, 1420.0), ("bcast", 4, 16777216, 10262.0), ("gather", 2, 32, 53.3),
    ("gather", 2, 512, 57.2), ("gather", 2, 8192, 63.7), ("gather", 2, 131072, 105.1),
    ("gather", 2, 2097152, 404.3), ("gather", 2, 16777216, 2778.1), ("gather", 4, 32, 230.1),
    ("gather", 4, 512, 249.8), ("gather", 4, 8192, 273.4), ("gather", 4, 131072, 458.7),
    ("gather", 4, 2097152, 2318.3), ("gather", 4, 16777216, 15173.2),
]
# fmt: on


def test_a_first_round_saves_at_most_a_messages_latency():
    # Fitted freely, these rows priced a later round at 714 us and a first round 508 us
    # below a ping-pong message of 23 us: right for two rounds, but the 6-round ring
    # of a 4-rank allreduce of 512 KiB, held out, came out 3.34 ms against 1.39 ms.
    from afmi.model.cli import algorithm_for

    wire = {
        "latency_s": 23.47e-6,
        "bandwidth_single_bytes_per_s": 7.87e9,
        "large_message_bytes": 8388608.0,
        "bandwidth_large_bytes_per_s": 3.78e9,
    }
    points = [(op, n, b, us * 1e-6) for op, n, b, us in _TWO_CPU_DIRECT_ROWS]
    reduction = {
        "reduce_bytes_per_s": 24.0e9,
        "reduce_cache_bytes": 4194304.0,
        "reduce_bytes_large_per_s": 10.88e9,
    }
    fit = calibrate.fit_parallel("direct", wire, points, cpus=2, **reduction)
    assert fit["first_round_saving_s"] <= wire["latency_s"] + 1e-12
    model = ChannelModel(name="direct", **{**wire, **fit})
    alg = algorithm_for("allreduce", "direct", 4, 1 << 19)
    assert alg.name == "ring"
    got = predict("allreduce", 1 << 19, 4, alg, model, FunctionPrice(0.0, 0.0)).time_s
    assert got < 1.35 * 1.39e-3  # measured 1.39 ms (the unbounded fit: 2.4x)
    # with the cost of messages longer than a TCP segment (kept here at about 26 us) the
    # ring stays within bounds: its receivers are busy when their messages arrive (charged
    # for its 24 messages of 128 KiB as well, session 24's version put it at 2.16 ms)
    wire["split_message_bytes"] = 65419.0
    fit = calibrate.fit_parallel("direct", wire, points, cpus=2, **reduction)
    assert fit["cpu_per_split_message_s"] > 0
    model = ChannelModel(name="direct", **{**wire, **fit})
    got = predict("allreduce", 1 << 19, 4, alg, model, FunctionPrice(0.0, 0.0)).time_s
    assert got < 1.35 * 1.39e-3


def _split_points(truth):
    """Calls of 2 and 4 ranks on both sides of the split limit."""
    return _collective_points(truth, (2, 4), (8, 8192, 32768, 131072, 1 << 20))


def test_the_cost_of_messages_over_one_tcp_segment_is_fitted_where_it_shows():
    # Four processes on two CPUs: messages over the limit cost 60 us more CPU each in
    # calls of four ranks (docs/direct.md, "Messages longer than a TCP segment")
    wire = {**_WIRE, "split_message_bytes": 65419.0}
    truth = ChannelModel(
        name="direct",
        **wire,
        bandwidth_aggregate_bytes_per_s=5e9,
        cpu_per_message_s=30e-6,
        cpu_per_payload_message_s=30e-6,
        cpu_bytes_per_s=3e9,
        cpu_per_split_message_s=60e-6,
        reduce_bytes_per_s=2e10,
        parallel_ranks=1.75,
    )
    points = _split_points(truth)
    fit = calibrate.fit_parallel("direct", wire, points, reduce_bytes_per_s=2e10, cpus=2)
    assert fit["split_message_bytes"] == 65419.0
    assert fit["cpu_per_split_message_s"] == pytest.approx(60e-6, rel=1e-3)
    assert fit["parallel_ranks"] == 1.75
    _assert_reproduces(ChannelModel(name="direct", **{**wire, **fit}), points)
    # without such a cost the fit adds none
    plain = dataclasses.replace(truth, cpu_per_split_message_s=0.0)
    points = _split_points(plain)
    fit = calibrate.fit_parallel("direct", wire, points, reduce_bytes_per_s=2e10, cpus=2)
    assert "cpu_per_split_message_s" not in fit
    _assert_reproduces(ChannelModel(name="direct", **{**wire, **fit}), points)
    # nor where no limit is known (a channel that is not TCP, or no MSS to read)
    points = _split_points(truth)
    fit = calibrate.fit_parallel("direct", _WIRE, points, reduce_bytes_per_s=2e10, cpus=2)
    assert "cpu_per_split_message_s" not in fit


# The direct ping-pongs of a cross-process run (session 26, 05:10), every size: (bytes, us).
# From 32 to 64 KiB the time jumps by 14 us, where the frame outgrows one TCP segment;
# from 64 to 128 KiB it grows by 3.
# fmt: off
_SPLIT_PINGPONGS = [
    (1, 16.2), (2, 16.1), (4, 16.4), (8, 15.9), (16, 15.8), (32, 16.2), (64, 15.9),
    (128, 16.1), (256, 16.2), (512, 16.4), (1024, 16.1), (2048, 16.3), (4096, 16.3),
    (8192, 16.2), (16384, 17.4), (32768, 18.2), (65536, 32.5), (131072, 35.3),
    (262144, 47.1), (524288, 66.5), (1048576, 110.3), (2097152, 209.6), (4194304, 392.9),
    (8388608, 969.5), (16777216, 2386.7), (33554432, 5112.6), (67108864, 10321.4),
]
# fmt: on


def test_the_wire_fit_finds_the_step_of_a_frame_longer_than_one_segment():
    rows = [{"nbytes": n, "latency_s": us * 1e-6} for n, us in _SPLIT_PINGPONGS]
    fitted = [(r["nbytes"], r["latency_s"]) for r in calibrate.split_fitted(rows)]
    plain = calibrate.fit_wire(fitted)
    stepped = calibrate.fit_wire(fitted, split=65419.0)
    assert stepped["split_message_bytes"] == 65419.0
    assert 8e-6 < stepped["split_latency_s"] < 16e-6  # 13.2 us
    model = ChannelModel(name="direct", bandwidth_aggregate_bytes_per_s=1e10, **stepped)

    def error(params, n, us):
        return calibrate._wire(params, n) / (us * 1e-6) - 1

    # without the step the fitted 64 KiB ping-pong came out 30 % short (the run's one
    # miss); with it every size, held out or not, is within 30 %
    assert error(plain, 65536, 32.5) < -0.25
    for n, us in _SPLIT_PINGPONGS:
        assert abs(error(stepped, n, us)) < 0.3, n
        want = calibrate._wire(stepped, n)
        assert model.message_latency_s(n) + model.wire_time_s(n) == pytest.approx(want)
    # the model adds the step to every message above the limit, and only there
    assert model.message_latency_s(65419) == model.latency_s
    assert model.message_latency_s(65420) == model.latency_s + model.split_latency_s


def test_the_wire_fit_adds_no_step_where_the_times_show_none():
    rows = [(n, 20e-6 + n / 5e9) for n in (1 << e for e in range(0, 25, 2))]
    fit = calibrate.fit_wire(rows, split=65419.0)
    assert fit["split_latency_s"] == 0.0
    assert fit["latency_s"] == pytest.approx(20e-6, rel=1e-3)
    # a limit above every size (or below all of them) leaves nothing to tell apart
    for limit in (1e9, 0.5):
        assert calibrate.fit_wire(rows, split=limit)["split_latency_s"] == 0.0


def test_the_split_limit_is_read_from_a_loopback_connection():
    from afmi.channels.direct.tcp import segment_bytes

    mss = segment_bytes()
    if mss is None:
        pytest.skip("this platform does not report TCP_MAXSEG")
    assert 500 <= mss <= 65536  # 65483 on Linux loopback (MTU 65536)
    assert calibrate.split_params("direct") == {
        "split_message_bytes": float(mss - calibrate.FRAME_OVERHEAD_BYTES)
    }
    assert calibrate.split_params("redis") == {}
