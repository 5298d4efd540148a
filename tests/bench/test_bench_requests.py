"""The bench counts the storage requests of S3 collectives and judges the model's dollars."""

import pytest

from afmi.bench import accuracy, measure
from afmi.bench.report import _accuracy_lines
from afmi.config import Config
from afmi.model import channel_models


def _config(s3) -> Config:
    return Config.from_dict({"channels": {"s3": s3.config(prefix="bench-requests")}})


def test_s3_collectives_count_their_requests_and_the_model_prices_them(s3):
    config = _config(s3)
    budget = measure.Budget(10, 3, 2, 2, 0.2, 2)  # a few calls per point
    rows = measure.collective_latency("s3", "bcast", 4, [8, 4096], config, budget)
    rows += measure.collective_latency("s3", "gather", 4, [4096], config, budget)
    small, large, gather = rows
    # every rank's requests over the timed calls, per call: a payload of 8 B rides in
    # the keys of three messages, one per reader; 4 KiB needs a GET per reader
    assert small["requests_per_call"]["put"] == pytest.approx(3)
    assert small["requests_per_call"].get("get", 0) == 0
    assert large["requests_per_call"]["get"] == pytest.approx(3)
    assert gather["requests_per_call"]["put"] == pytest.approx(3)
    for r in rows:
        assert r["requests_per_call"]["list"] >= 3  # at least one LIST per reader or wait
    accuracy.annotate(rows, config)
    s3_model = channel_models(config)["s3"]
    for r in rows:
        counted = accuracy.counted_requests(r["requests_per_call"])
        assert r["predicted_requests"]["writes"] == pytest.approx(counted["writes"])
        assert r["predicted_requests"]["reads"] == pytest.approx(counted["reads"])
        # three messages found, each by a LIST, and idle LISTs while the receivers wait
        assert r["predicted_requests"]["polls"] > 3
        usd = (
            counted["writes"] * s3_model.price_per_request_usd
            + counted["reads"] * s3_model.price_per_read_usd
            + counted["polls"] * s3_model.price_per_poll_usd
        )
        assert r["counted_request_usd"] == pytest.approx(usd)
        assert r["request_error"] == pytest.approx(r["predicted_request_usd"] / usd - 1)
    acc = accuracy.summarize(rows, config)
    assert acc["request_points"] == 3
    assert acc["request_writes_exact"] == acc["request_reads_exact"] == 3
    assert 0 <= acc["request_within"] <= 3
    line = next(x for x in _accuracy_lines("t", acc) if "storage requests" in x)
    assert "writes exact at 3, reads at 3" in line


def test_channels_without_request_counters_add_no_request_figures():
    rows = measure.collective_latency("local", "barrier", 2, [0], Config(), measure.Budget.quick())
    assert "requests_per_call" not in rows[0]
    accuracy.annotate(rows, Config())
    assert "request_error" not in rows[0]
    assert "request_points" not in accuracy.summarize(rows, Config())


def test_s3_ping_pongs_count_their_requests_per_message(s3):
    config = _config(s3)
    budget = measure.Budget(10, 3, 2, 2, 0.2, 2)
    small, large = measure.pingpong("s3", [8, 4096], config, budget)
    # one PUT per message, a GET only for a payload too large for the key, and a LIST
    # at least to find it
    assert small["requests_per_call"]["put"] == pytest.approx(1)
    assert small["requests_per_call"].get("get", 0) == 0
    assert large["requests_per_call"]["get"] == pytest.approx(1)
    assert min(small["requests_per_call"]["list"], large["requests_per_call"]["list"]) >= 1
    accuracy.annotate([small, large], config)
    assert small["predicted_requests"]["writes"] == 1 and small["predicted_requests"]["reads"] == 0
    assert large["predicted_requests"]["reads"] == 1
    assert small["request_error"] is not None


def test_channels_without_request_counters_measure_ping_pongs_as_before():
    (row,) = measure.pingpong("local", [8], Config(), measure.Budget.quick())
    assert "requests_per_call" not in row and row["latency_s"] > 0


def test_a_tally_counts_polls_inside_calls_and_other_requests_throughout():
    # logic only: a stand-in for a rank whose one channel counts its requests
    from types import SimpleNamespace

    counts = {"put": 0, "get": 0, "list": 0}
    channel = SimpleNamespace(stats=lambda: {"requests": dict(counts)})
    comm = SimpleNamespace(endpoint=SimpleNamespace(channels={"s3": channel}))
    tally = measure.Tally(comm)
    assert tally.counting
    counts["list"] += 3  # the poller between calls: no call's
    tally.start()
    counts.update(put=counts["put"] + 1, list=counts["list"] + 2)
    tally.stop()
    counts.update(get=counts["get"] + 1, list=counts["list"] + 4)  # a prefetch, more polls
    assert tally.end() == {"put": 1, "get": 1, "list": 2}
    silent = SimpleNamespace(
        endpoint=SimpleNamespace(channels={"local": SimpleNamespace(stats=dict)})
    )
    assert not measure.Tally(silent).counting and measure.Tally(silent).end() == {}


def _rows_polled_at(model, seconds, share=0.0):
    """Bench rows whose counted LISTs are what ``model`` predicts with polls of ``seconds``
    (and ``share`` of a wait's further messages found by polls of their own)."""
    import dataclasses

    from afmi.model.cli import algorithm_for
    from afmi.model.params import FunctionPrice
    from afmi.model.predict import predict

    truth = dataclasses.replace(model, poll_request_s=seconds, finds_per_further_message=share)
    rows = []
    for op, ranks, nbytes in [
        ("send", 2, 8),
        ("send", 2, 4096),
        ("bcast", 4, 8),
        ("bcast", 8, 4096),
        ("gather", 4, 8),
        ("gather", 8, 8),
        ("gather", 8, 4096),
        ("allreduce", 4, 8),
    ]:
        alg = algorithm_for(op, "s3", ranks, nbytes)
        polls = predict(op, nbytes, ranks, alg, truth, FunctionPrice(0.0, 0.0)).polls
        row = {"ranks": ranks, "nbytes": nbytes, "requests_per_call": {"list": polls}}
        if op != "send":
            row["op"] = op
        rows.append(row)
    return rows


def test_the_calibration_finds_how_long_a_poll_takes_from_the_polls_counted():
    # logic only: counts made by the model itself with a known poll time
    from afmi.bench import calibrate
    from afmi.model.params import DEFAULTS

    s3 = DEFAULTS["s3"]
    for seconds in (0.0, 0.004, 0.009, 0.025):
        assert calibrate.fit_poll_request(s3, _rows_polled_at(s3, seconds)) == pytest.approx(
            seconds, abs=calibrate.POLL_REQUEST_STEP_S
        )
    # nothing to fit: no poller, or no row that counted a poll
    import dataclasses

    rows = _rows_polled_at(s3, 0.009)
    assert calibrate.fit_poll_request(dataclasses.replace(s3, poll_backoff_s=0.0), rows) == 0
    assert calibrate.fit_poll_request(s3, [{"nbytes": 8, "requests_per_call": {}}]) == 0


def test_the_calibration_finds_how_many_polls_a_gather_root_makes_from_the_counts():
    # logic only: counts made by the model itself with a known share and poll time
    import dataclasses

    from afmi.bench import calibrate
    from afmi.model.params import DEFAULTS

    s3 = DEFAULTS["s3"]
    for seconds, share in ((0.0, 0.0), (0.0, 0.2), (0.004, 0.3), (0.009, 1.0)):
        fitted = calibrate.fit_polls(s3, _rows_polled_at(s3, seconds, share))
        assert fitted["finds_per_further_message"] == pytest.approx(share)
        assert fitted["poll_request_s"] == pytest.approx(seconds, abs=calibrate.POLL_REQUEST_STEP_S)
    off = dataclasses.replace(s3, poll_backoff_s=0.0)
    assert calibrate.fit_polls(off, _rows_polled_at(s3, 0.0, 0.5)) == {
        "poll_request_s": 0.0,
        "finds_per_further_message": 0.0,
    }


def test_polls_priced_with_the_fitted_poll_time_match_the_lists_counted_on_moto(s3):
    import dataclasses
    import math

    from afmi.bench import calibrate, suite
    from afmi.model.cli import algorithm_for
    from afmi.model.params import FunctionPrice
    from afmi.model.predict import predict

    config = _config(s3)
    budget = measure.Budget(10, 3, 2, 2, 0.2, 2)
    pingpongs = measure.pingpong("s3", [1, 16, 256, 4096], config, budget)
    swept = []
    for op, sizes in (("barrier", [0]), ("bcast", [8]), ("gather", [8]), ("allreduce", [8])):
        swept += measure.collective_latency("s3", op, 4, sizes, config, budget)
    # the bench's calibration of the channel: the time model, then the poll's duration
    opts = suite.Options(channels=["s3"], quick=True)
    reduction = {"reduce_bytes_per_s": 1e9}
    params, _ = suite._calibrate_channel("s3", pingpongs, config, opts, [4], reduction, swept)
    seconds = params["poll_request_s"]
    # How long a LIST takes depends on the machine: on a loaded one moto answered in
    # 6-9 ms (session 19), on a quiet one the counts fit instant polls best.
    assert 0 <= seconds <= calibrate.POLL_REQUEST_MAX_S
    model = dataclasses.replace(channel_models(config)["s3"], **params)

    def ratios(m):
        out = []
        for r in pingpongs + swept:
            op, size = r.get("op", "send"), r.get("ranks", 2)
            alg = algorithm_for(op, "s3", size, r["nbytes"])
            polls = predict(op, r["nbytes"], size, alg, m, FunctionPrice(0.0, 0.0)).polls
            out.append(polls / r["requests_per_call"]["list"])
        return out

    def misfit(m):
        return sum(math.log(x) ** 2 for x in ratios(m))

    # over every point, the held-out ping-pongs too, every point's polls come within
    # half again of the LISTs counted
    assert all(1 / 1.5 < x < 1.5 for x in ratios(model)), ratios(model)
    # and a poll time far off the fitted one fits worse
    assert misfit(model) < misfit(dataclasses.replace(model, poll_request_s=seconds + 0.05))


def test_noisy_points_are_those_of_a_jittered_channel_whose_passes_disagree():
    from afmi.bench.suite import NOISY_SPREAD, noisy_points

    def passes(*ms):
        return [{"latency_s": m * 1e-3} for m in ms]

    runs = {
        ("gather", "s3", 8, 16): passes(42, 66, 46),  # 57 % apart
        ("gather", "s3", 8, 64): passes(50, 55, 52),  # 10 %
        ("send", "s3", 2, 1): passes(10, 14, 12),  # 40 %
        ("gather", "direct", 8, 16): passes(0.2, 0.4, 0.3),  # fastest pass kept: no jitter
        ("bcast", "s3", 4, 8): passes(20, 20 * (1 + NOISY_SPREAD) - 1e-9, 21),  # just within
    }
    assert noisy_points(runs, Config()) == {("gather", "s3", 8): [16], ("send", "s3", 2): [1]}


def test_the_sweep_measures_noisy_s3_points_again(s3):
    from afmi.bench import suite

    config = _config(s3)
    opts = suite.Options(
        channels=["s3"], ops=["gather"], ranks=[2], seconds_per_point=0.1, anchors=False
    )
    said: list[str] = []
    swept = suite._sweep(opts, ["s3"], config, [1, 4096], [1, 16], [2], {}, said.append)
    points = swept.pingpong + swept.collectives
    assert len(points) == 4
    for p in points:
        first = p["pass_latencies_s"][:3]
        noisy = max(first) / min(first) - 1 > suite.NOISY_SPREAD
        # a noisy point has two passes more, measured after the sweep's three
        assert len(p["pass_latencies_s"]) == (5 if noisy else 3), p["pass_latencies_s"]
        assert p["latency_s"] == sorted(p["pass_latencies_s"])[len(p["pass_latencies_s"]) // 2]
        assert p["pass_estimate"] == "median"
    extra = [m for m in said if m.startswith("extra pass")]
    assert bool(extra) == any(len(p["pass_latencies_s"]) == 5 for p in points)
