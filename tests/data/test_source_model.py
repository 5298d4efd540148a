"""The source-choice model: HDMLP formulas, prices, ties, calibration."""

import pytest

import afmi
from afmi.data import SourceCost, SourceModel, peer_cost_for_channel


def test_time_follows_the_formulas():
    m = SourceModel(
        {
            "memory": SourceCost(latency=0, bandwidth=1e9, aggregate_bandwidth=4e9),
            "peer": SourceCost(latency=1e-3, bandwidth=1e8),
            "origin": SourceCost(latency=0.04, bandwidth=5e7, aggregate_bandwidth=1e8),
        },
        concurrency={"origin": 4, "memory": 8},
    )
    s = 10**6
    assert m.time("memory", s) == pytest.approx(s / (4e9 / 8))  # s / (r(p)/p)
    assert m.time("peer", s) == pytest.approx(1e-3 + s / min(1e8, 4e9 / 8))  # min(b_c, r/p)
    assert m.time("origin", s) == pytest.approx(0.04 + s / min(5e7, 1e8 / 4))  # min(b_fs, t/g)


def test_choice_fast_cheap_and_ties():
    m = SourceModel()
    assert m.choose(1000, ["origin", "peer"]) == "peer"  # local channel beats S3
    assert m.choose(1000, ["origin", "peer", "memory"]) == "memory"
    same = SourceCost(latency=1e-3, bandwidth=1e8)
    tie = SourceModel({"memory": same, "disk": same, "peer": same, "origin": same})
    assert tie.choose(10, ["origin", "peer", "disk"]) == "disk"
    assert tie.choose(10, ["origin", "peer"]) == "peer"
    # a peer over the s3 channel is slower and dearer than reading the origin
    s3peer = SourceModel({"peer": peer_cost_for_channel("s3")})
    assert s3peer.choose(10**5, ["origin", "peer"]) == "origin"
    # cheap: a fast but expensive peer loses to a slower free origin
    pricey = SourceModel(
        {
            "peer": SourceCost(latency=1e-4, bandwidth=1e9, request_price=1e-3),
            "origin": SourceCost(latency=0.05, bandwidth=5e7),
        },
        hint="cheap",
    )
    assert pricey.choose(1000, ["origin", "peer"]) == "origin"
    assert pricey.with_cost("peer", request_price=0.0).choose(1000, ["origin", "peer"]) == "peer"


def test_calibration_recovers_latency_and_bandwidth():
    m = SourceModel()
    obs = [(n, 0.02 + n / 2e7) for n in (1000, 10_000, 100_000, 1_000_000)]
    fitted = m.calibrate("origin", obs)
    assert fitted.costs["origin"].latency == pytest.approx(0.02, rel=1e-6)
    assert fitted.costs["origin"].bandwidth == pytest.approx(2e7, rel=1e-6)
    assert fitted.costs["origin"].request_price == m.costs["origin"].request_price
    one_size = m.calibrate("peer", [(1000, 0.003), (1000, 0.005)])
    assert one_size.costs["peer"].latency == pytest.approx(0.004 - 1000 / m.costs["peer"].bandwidth)


def test_model_errors():
    with pytest.raises(afmi.ArgumentError, match="unknown source kind 'tape'"):
        SourceModel({"tape": SourceCost(1, 1)})
    with pytest.raises(afmi.ArgumentError, match="bandwidth must be a number > 0"):
        SourceCost(latency=0, bandwidth=0)
    with pytest.raises(afmi.ArgumentError, match='hint must be "fast" or "cheap"'):
        SourceModel(hint="quick")
    with pytest.raises(afmi.ArgumentError, match="parameters are latency"):
        SourceModel().with_cost("peer", speed=3)
    with pytest.raises(afmi.ArgumentError, match="at least one"):
        SourceModel().calibrate("peer", [])
