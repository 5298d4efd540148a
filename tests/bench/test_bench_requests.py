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
