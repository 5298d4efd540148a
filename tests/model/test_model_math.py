"""The model's arithmetic: units, every function priced, traffic, config layering."""

import dataclasses
import itertools
import json

import pytest

from afmi.collectives.base import Step
from afmi.config import Config, ConfigError
from afmi.model import (
    DEFAULTS,
    P2P,
    ChannelModel,
    FunctionPrice,
    channel_models,
    function_price,
    model_for,
    predict,
    traffic,
)
from afmi.model.cli import algorithm_for
from afmi.model.predict import timing


class Rounds:
    """An algorithm stand-in with a fixed step structure."""

    name = "rounds"

    def __init__(self, steps):
        self._steps = steps

    def steps(self, size, nbytes):
        return self._steps


def test_defaults_are_fmi_aws_figures_in_seconds_and_bytes():
    # FMI's 40.4 ms is a fetched message's; afmi's small ones ride in the key (no GET)
    assert DEFAULTS["s3"].latency_s + DEFAULTS["s3"].fetch_s == pytest.approx(40.4e-3)
    assert DEFAULTS["s3"].message_latency_s(16) < DEFAULTS["s3"].message_latency_s(1 << 20)
    assert DEFAULTS["s3"].bandwidth_single_bytes_per_s == 50e6
    assert DEFAULTS["s3"].price_per_request_usd == 5.4e-6
    assert DEFAULTS["s3"].price_per_read_usd == 4.3e-7
    assert DEFAULTS["redis"].latency_s == pytest.approx(5.2e-3)
    assert DEFAULTS["redis"].bandwidth_single_bytes_per_s == 100e6
    assert DEFAULTS["redis"].bandwidth_aggregate_bytes_per_s == 400e6
    assert DEFAULTS["redis"].infrastructure_usd_per_hour == 0.038
    assert DEFAULTS["direct"].latency_s == pytest.approx(0.34e-3)
    assert DEFAULTS["direct"].infrastructure_usd_per_hour == 0.0134
    assert set(DEFAULTS) == {"local", "direct", "redis", "s3"}


def test_round_time_formula():
    m = ChannelModel(
        name="x",
        latency_s=1e-3,
        per_message_s=1e-4,
        poll_interval_s=2e-3,
        bandwidth_single_bytes_per_s=1e6,
        bandwidth_aggregate_bytes_per_s=2e6,
    )
    # one message: latency + half a poll + n / single
    assert m.round_time_s(1, 1000) == pytest.approx(1e-3 + 1e-3 + 1e-3)
    # four messages: aggregate (2 MB/s) limits: 4000 bytes / 2e6
    assert m.round_time_s(4, 1000) == pytest.approx(1e-3 + 1e-3 + 3e-4 + 2e-3)


def _model(bandwidth=1e12, **values):
    """A channel of 1 ms latency and one bandwidth, with ``values`` on top."""
    return ChannelModel(
        name="x",
        latency_s=1e-3,
        bandwidth_single_bytes_per_s=bandwidth,
        bandwidth_aggregate_bytes_per_s=bandwidth,
        **values,
    )


def test_messages_above_the_inline_size_pay_a_fetch():
    m = _model(1e9, inline_max_bytes=400, fetch_s=5e-3)
    assert not m.fetches(400) and m.fetches(401)
    assert m.round_time_s(1, 400) == pytest.approx(1e-3 + 400 / 1e9)
    assert m.round_time_s(1, 401) == pytest.approx(1e-3 + 5e-3 + 401 / 1e9)
    # a channel that sends nothing inline fetches every message
    always = _model(1e9, fetch_s=2e-3)
    assert always.fetches(0) and always.message_latency_s(0) == pytest.approx(3e-3)


def test_calls_that_carry_data_pay_the_payload_overhead():
    m = _model(call_overhead_s=2e-4, payload_overhead_s=3e-4)
    assert m.call_s("barrier") == pytest.approx(2e-4)
    assert m.call_s("allreduce") == pytest.approx(5e-4)
    assert m.call_s("send") == 0
    steps = Rounds([Step(1, 8, 1)])
    r = m.round_time_s(1, 8)
    assert timing("barrier", 8, 2, steps, m)[0] == pytest.approx(2e-4 + r)
    assert timing("bcast", 8, 2, steps, m)[0] == pytest.approx(5e-4 + r)


def test_every_round_after_the_first_pays_the_later_round_time():
    m = _model(later_round_s=7e-3)
    r = m.round_time_s(1, 8)
    assert timing("bcast", 8, 2, Rounds([Step(1, 8, 1)]), m)[0] == pytest.approx(r)
    two = Rounds([Step(1, 8, 1), Step(1, 8, 1)])
    assert timing("allreduce", 8, 2, two, m)[0] == pytest.approx(2 * r + 7e-3)
    assert timing("barrier", 8, 2, Rounds([Step(3, 8, 1)]), m)[0] == pytest.approx(3 * r + 2 * 7e-3)
    # steps without messages are no rounds; a point-to-point message is one
    empty = Rounds([Step(1, 8, 1), Step(2, 8, 0)])
    assert timing("bcast", 8, 2, empty, m)[0] == pytest.approx(r)
    assert timing("send", 8, 2, P2P, m)[0] == pytest.approx(r)


def test_a_collectives_first_round_takes_the_first_round_saving_less():
    m = _model(first_round_saving_s=3e-4, later_round_s=7e-3)
    r = m.round_time_s(1, 8)
    assert timing("bcast", 8, 2, Rounds([Step(1, 8, 1)]), m)[0] == pytest.approx(r - 3e-4)
    two = Rounds([Step(1, 8, 1), Step(1, 8, 1)])
    assert timing("allreduce", 8, 2, two, m)[0] == pytest.approx(2 * r + 7e-3 - 3e-4)
    # a ping-pong message is what the saving is measured against
    assert timing("send", 8, 2, P2P, m)[0] == pytest.approx(r)
    # never below nothing
    big = _model(first_round_saving_s=10.0)
    assert timing("bcast", 8, 2, Rounds([Step(1, 8, 1)]), big)[0] == 0.0


def test_fetches_are_cpu_work_where_ranks_share_cpus():
    # one loop drives every rank and the server: a fetch is CPU time of its reader
    m = _model(inline_max_bytes=400, fetch_s=5e-3, cpu_per_message_s=1e-3, parallel_ranks=1.0)
    steps = Rounds([Step(2, 10, 1)])
    inline_cpu = timing("bcast", 10, 4, steps, m)[1]
    fetched_cpu = timing("bcast", 1000, 4, Rounds([Step(2, 1000, 1)]), m)[1]
    # a 4-rank bcast delivers 3 messages (at least, for any algorithm): 3 fetches more
    assert fetched_cpu - inline_cpu == pytest.approx(3 * 5e-3, rel=1e-6)
    # with a CPU per rank there is no shared-CPU bound at all
    own = dataclasses.replace(m, parallel_ranks=0.0)
    assert timing("bcast", 1000, 4, steps, own)[1] == 0


def _gigabit(**values):
    """A channel with no latency and 1 GB/s streams, and ``values``."""
    return ChannelModel(
        name="x",
        latency_s=0.0,
        bandwidth_single_bytes_per_s=1e9,
        bandwidth_aggregate_bytes_per_s=1e9,
        **values,
    )


def test_wire_time_in_two_and_three_regimes():
    two = _gigabit(large_message_bytes=1e6, bandwidth_large_bytes_per_s=1e8)
    assert two.wire_time_s(500_000) == pytest.approx(5e-4)
    assert two.wire_time_s(2_000_000) == pytest.approx(1e-3 + 1e-2)
    three = dataclasses.replace(two, huge_message_bytes=2e6, bandwidth_huge_bytes_per_s=1e7)
    assert three.wire_time_s(500_000) == pytest.approx(5e-4)
    assert three.wire_time_s(1_500_000) == pytest.approx(1e-3 + 5e-3)
    assert three.wire_time_s(3_000_000) == pytest.approx(1e-3 + 1e-2 + 1e-1)
    # a third rate without a second: its threshold is the only knee
    only = dataclasses.replace(three, large_message_bytes=0.0)
    assert only.wire_time_s(3_000_000) == pytest.approx(2e-3 + 1e-1)


def test_the_third_regime_is_set_in_config():
    cfg = Config.from_dict(
        {"model": {"direct": {"huge_message_bytes": 1 << 25, "bandwidth_huge_bytes_per_s": 1e8}}}
    )
    m = model_for("direct", cfg)
    assert m.huge_message_bytes == 1 << 25
    assert m.bandwidth_huge_bytes_per_s == 1e8
    assert m.wire_time_s(1 << 26) > model_for("direct").wire_time_s(1 << 26)


def test_a_reduction_slows_down_beyond_what_the_caches_hold():
    m = _gigabit(
        reduce_bytes_per_s=2e10, reduce_cache_bytes=512 * 1024, reduce_bytes_large_per_s=8e9
    )
    kib = 1024
    # inputs within the cache: one rate, however many of them
    assert m.reduce_s(3 * 512 * kib, 512 * kib) == pytest.approx(3 * 512 * kib / 2e10)
    # a larger input: its first 512 KiB at the fast rate, the rest at the slow one
    one = 512 * kib / 2e10 + 1536 * kib / 8e9
    assert m.reduce_s(2048 * kib, 2048 * kib) == pytest.approx(one)
    assert m.reduce_s(3 * 2048 * kib, 2048 * kib) == pytest.approx(3 * one)
    # one rate when no limit is set
    flat = dataclasses.replace(m, reduce_cache_bytes=0.0)
    assert flat.reduce_s(2048 * kib, 2048 * kib) == pytest.approx(2048 * kib / 2e10)
    assert dataclasses.replace(m, reduce_bytes_per_s=0.0).reduce_s(1e6, 1e6) == 0.0
    # a 2-rank allreduce reduces its whole payload, the ring reduces slices of it
    free = FunctionPrice(0.0, 0.0)
    slow = dataclasses.replace(m, reduce_bytes_per_s=8e9, reduce_cache_bytes=0.0)
    doubling = algorithm_for("allreduce", "direct", 2, 512 * kib)
    assert doubling.name == "recursive_doubling"
    fast_t = predict("allreduce", 512 * kib, 2, doubling, m, free).time_s
    slow_t = predict("allreduce", 512 * kib, 2, doubling, slow, free).time_s
    assert slow_t - fast_t == pytest.approx(512 * kib / 8e9 - 512 * kib / 2e10)
    ring = algorithm_for("allreduce", "direct", 8, 4 << 20)
    assert ring.name == "ring"
    assert predict("allreduce", 4 << 20, 8, ring, m, free).time_s == pytest.approx(
        predict("allreduce", 4 << 20, 8, ring, flat, free).time_s
    )  # 512 KiB slices: within the cache


def test_the_reduction_regimes_are_set_in_config():
    cfg = Config.from_dict(
        {"model": {"direct": {"reduce_cache_bytes": 1 << 20, "reduce_bytes_large_per_s": 1e9}}}
    )
    m = model_for("direct", cfg)
    assert (m.reduce_cache_bytes, m.reduce_bytes_large_per_s) == (1 << 20, 1e9)
    assert m.reduce_s(1 << 22, 1 << 22) > model_for("direct").reduce_s(1 << 22, 1 << 22)


def test_time_follows_the_algorithms_steps():
    m = dataclasses.replace(DEFAULTS["direct"], reduce_bytes_per_s=0.0)
    price = FunctionPrice(0.0, 1.0)
    alg = Rounds([Step(3, 1000, 1), Step(2, 10, 4)])
    p = predict("allreduce", 1000, 8, alg, m, price)
    expected = 3 * m.round_time_s(1, 1000) + 2 * m.round_time_s(4, 10)
    assert p.time_s == pytest.approx(expected)


def test_every_participating_function_is_priced():
    price = function_price(Config().faas)
    assert price.memory_gib == 1.0  # 1024 MiB
    m = DEFAULTS["direct"]
    alg = Rounds([Step(1, 100, 1)])
    p8 = predict("bcast", 100, 8, alg, m, price)
    p16 = predict("bcast", 100, 16, alg, m, price)
    assert p8.time_s == p16.time_s
    assert p8.function_usd == pytest.approx(0.0000166667 * 1.0 * p8.time_s * 8)
    assert p16.function_usd == pytest.approx(2 * p8.function_usd)
    send = predict("send", 100, 2, P2P, m, price)
    assert send.function_usd == pytest.approx(0.0000166667 * send.time_s * 2)


def test_memory_scales_the_function_price():
    cfg = Config.from_dict({"faas": {"memory_mb": 2048}})
    assert function_price(cfg.faas).memory_gib == 2.0


def test_storage_requests_and_infrastructure_are_priced():
    price = FunctionPrice(0.0, 1.0)
    no_idle = dataclasses.replace(DEFAULTS["s3"], poll_backoff_s=0.0)  # no idle LISTs
    s3 = predict("send", 10_000, 2, P2P, no_idle, price)
    # PUT, then the LIST that finds it (billed like a PUT) and the GET
    assert s3.request_usd == pytest.approx(5.4e-6 + 5.4e-6 + 4.3e-7)
    assert (s3.writes, s3.reads, s3.polls) == (1, 1, 1)
    inline = predict("send", 10, 2, P2P, no_idle, price)
    assert inline.request_usd == pytest.approx(5.4e-6 + 5.4e-6)  # rides in the key: no GET
    assert s3.infrastructure_usd == 0
    redis = predict("send", 10, 2, P2P, DEFAULTS["redis"], price)
    assert redis.request_usd == 0
    assert redis.infrastructure_usd == pytest.approx(2 * 0.038 / 1e6)
    off = ChannelModel(**{**DEFAULTS["redis"].__dict__, "include_infrastructure": False})
    assert predict("send", 10, 2, P2P, off, price).infrastructure_usd == 0
    gb = ChannelModel(**{**DEFAULTS["direct"].__dict__, "price_per_gb_usd": 0.02})
    assert predict("send", 10**9, 2, P2P, gb, price).transfer_usd == pytest.approx(0.02)


def test_a_waiting_receiver_polls_idly_as_its_poller_backs_off():
    s3 = DEFAULTS["s3"]
    # the poller lists after 5 ms, 10, 20, ... (doubling) while nothing arrives
    assert s3.idle_polls(0.0) == 0
    assert s3.idle_polls(0.005) == pytest.approx(1.0)
    assert s3.idle_polls(0.035) == pytest.approx(3.0)  # after 5, 15 and 35 ms
    # from 0.5 s on (channels.s3.poll_max) one LIST per 0.5 s
    capped = s3.idle_polls(0.495)
    assert s3.idle_polls(1.495) == pytest.approx(capped + 2.0)
    assert dataclasses.replace(s3, poll_backoff_s=0.0).idle_polls(1.0) == 0
    # a message takes its predicted time to arrive, and the receiver lists meanwhile
    p = predict("send", 10, 2, P2P, s3, FunctionPrice(0.0, 1.0))
    assert p.polls == pytest.approx(1 + s3.idle_polls(p.time_s))
    assert p.request_usd == pytest.approx(s3.price_per_request_usd + p.polls * 5.4e-6)


def test_each_poll_takes_its_request_time_before_the_next_interval_starts():
    # a LIST that takes 10 ms: the k-th idle poll ends 5 (2**k - 1) + 10 k ms into the wait
    s3 = dataclasses.replace(DEFAULTS["s3"], poll_request_s=0.010)
    assert s3.idle_polls(0.015) == pytest.approx(1.0)
    assert s3.idle_polls(0.035) == pytest.approx(2.0)
    assert s3.idle_polls(0.065) == pytest.approx(3.0)
    assert s3.idle_polls(0.050) == pytest.approx(2.5, abs=0.1)  # between the 2nd and 3rd
    # fewer idle polls than instant ones for every wait, and none for no wait
    instant = DEFAULTS["s3"]
    for wait in (0.001, 0.02, 0.3, 2.0, 30.0):
        assert s3.idle_polls(wait) < instant.idle_polls(wait)
    assert s3.idle_polls(0.0) == 0
    # once the interval has reached 0.5 s (channels.s3.poll_max), one poll per 0.51 s
    capped = s3.idle_polls(2.0)
    assert s3.idle_polls(2.0 + 2 * 0.51) == pytest.approx(capped + 2.0)
    # the count rises with the wait, without a step where the interval reaches its cap
    waits = [i / 1000 for i in range(1, 3000, 7)]
    counts = [s3.idle_polls(w) for w in waits]
    assert all(b > a for a, b in itertools.pairwise(counts))
    over = Config.from_dict({"model": {"s3": {"poll_request_s": 0.010}}})
    assert channel_models(over)["s3"].idle_polls(0.035) == pytest.approx(2.0)


def test_one_poll_finds_every_message_a_wait_collects():
    # a linear gather's root waits once for all its messages: one LIST finds those stored
    # by then (counted on S3: 2.6-4.0 LISTs for a 4-rank gather, idle ones included)
    from afmi.collectives import registry

    s3 = dataclasses.replace(DEFAULTS["s3"], poll_backoff_s=0.0)
    linear = registry.get("gather", "linear")
    p = predict("gather", 100, 4, linear, s3, FunctionPrice(0.0, 1.0))
    assert (p.writes, p.polls) == (3, 1)
    # a channel may still price a poll per message
    per_message = dataclasses.replace(s3, polls_per_message=1.0)
    assert predict("gather", 100, 4, linear, per_message, FunctionPrice(0.0, 1.0)).polls == 4


def test_a_wait_whose_messages_arrive_apart_polls_for_each_find():
    # a linear gather's root waits once for its 7 messages; with a share of them found
    # by polls of their own, each such find is a poll and starts the backoff again
    from afmi.collectives import registry

    linear = registry.get("gather", "linear")
    price = FunctionPrice(0.0, 1.0)
    flat = dataclasses.replace(DEFAULTS["s3"], poll_backoff_s=0.0)
    half = dataclasses.replace(flat, finds_per_further_message=0.5)
    assert predict("gather", 100, 8, linear, half, price).polls == pytest.approx(1 + 6 * 0.5)
    s3 = DEFAULTS["s3"]
    once = predict("gather", 100, 8, linear, s3, price)
    apart = dataclasses.replace(s3, finds_per_further_message=0.5)
    p = predict("gather", 100, 8, linear, apart, price)
    assert p.polls == pytest.approx(4.0 * (1 + s3.idle_polls(once.time_s / 4.0)))
    assert p.polls > once.polls and p.time_s == once.time_s  # dollars, not time
    # a wait for one message has no further ones: a ping-pong polls as before
    send = predict("send", 10, 2, P2P, apart, price)
    assert send.polls == pytest.approx(predict("send", 10, 2, P2P, s3, price).polls)
    over = Config.from_dict({"model": {"s3": {"finds_per_further_message": 0.5}}})
    assert channel_models(over)["s3"].finds_per_further_message == 0.5
    with pytest.raises(ConfigError, match="a share of messages, from 0 to 1; got 1.5"):
        Config.from_dict({"model": {"s3": {"finds_per_further_message": 1.5}}})


def test_the_model_polls_as_the_s3_channel_is_configured():
    cfg = Config.from_dict({"channels": {"s3": {"poll_min": 0.02, "poll_max": 1.0}}})
    s3 = channel_models(cfg)["s3"]
    assert (s3.poll_backoff_s, s3.poll_backoff_max_s) == (0.02, 1.0)
    over = Config.from_dict({"model": {"s3": {"poll_backoff_s": 0.0}}})
    assert channel_models(over)["s3"].idle_polls(1.0) == 0


def test_total_is_the_sum_of_the_parts():
    p = predict("send", 1 << 20, 2, P2P, DEFAULTS["s3"], function_price(Config().faas))
    assert p.usd == pytest.approx(
        p.request_usd + p.transfer_usd + p.infrastructure_usd + p.function_usd
    )
    assert p.to_dict()["usd"] == p.usd


def test_traffic_counts_all_ranks():
    alg = Rounds([Step(1, 8, 7)])
    assert traffic("bcast", alg, 8, 8) == (7, 56)
    assert traffic("alltoall", alg, 8, 8) == (56, 448)
    assert traffic("barrier", Rounds([Step(2, 1, 7)]), 8, 0)[0] == 14


def test_one_rank_costs_nothing_to_communicate():
    p = predict("allreduce", 100, 1, Rounds([Step(1, 100, 0)]), DEFAULTS["s3"], FunctionPrice(1, 1))
    assert p.time_s == 0 and p.messages == 0 and p.usd == 0


def test_config_overrides_a_default():
    cfg = Config.from_dict(
        {"model": {"redis": {"latency_s": 0.001, "include_infrastructure": False}}}
    )
    models = channel_models(cfg)
    assert models["redis"].latency_s == 0.001
    assert models["redis"].include_infrastructure is False
    assert models["redis"].bandwidth_single_bytes_per_s == 100e6  # untouched default
    assert models["s3"] == DEFAULTS["s3"]


def test_model_file_then_inline_overrides(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": {"local": {"latency_s": 7e-6, "per_message_s": 1e-6}}}))
    cfg = Config.from_dict({"model": {"file": str(path), "local": {"per_message_s": 2e-6}}})
    local = channel_models(cfg)["local"]
    assert local.latency_s == 7e-6
    assert local.per_message_s == 2e-6


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"model": {"redis": {"latency": 1}}}, "model.redis.latency"),
        ({"model": {"redis": {"latency_s": -1}}}, "latency_s must be >= 0"),
        ({"model": {"s3": {"bandwidth_single_bytes_per_s": 0}}}, "must be > 0"),
        ({"model": {"usd_per_s": -1}}, "usd_per_s"),
        ({"hint": "quick"}, "hint must be one of"),
    ],
)
def test_bad_model_config_is_a_clear_error(data, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(data)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.file"):
        channel_models(Config.from_dict({"model": {"file": str(tmp_path / "nope.json")}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"local": {"latncy_s": 1}}}))
    with pytest.raises(ConfigError, match="latncy_s"):
        channel_models(Config.from_dict({"model": {"file": str(bad)}}))
    flat = tmp_path / "flat.json"
    flat.write_text("{}")
    with pytest.raises(ConfigError, match="'model' table"):
        channel_models(Config.from_dict({"model": {"file": str(flat)}}))


def test_redis_and_s3_models_follow_what_the_channels_are_configured_to_do():
    models = channel_models()
    assert models["redis"].inline_max_bytes == Config().channels.redis.inline_bytes
    assert models["s3"].inline_max_bytes == 400  # 600 key characters hold ~400 B of payload
    cfg = Config.from_dict(
        {"channels": {"redis": {"inline_bytes": 1024}, "s3": {"key_payload_bytes": 0}}}
    )
    models = channel_models(cfg)
    assert models["redis"].inline_max_bytes == 1024
    assert models["s3"].inline_max_bytes == 0  # nothing rides in a key: every message is fetched
    assert models["s3"].fetches(1)
    # the config's model table still overrides what the channel config implies
    cfg = Config.from_dict({"model": {"redis": {"inline_max_bytes": 10}}})
    assert channel_models(cfg)["redis"].inline_max_bytes == 10


def test_a_small_payload_published_to_several_readers_costs_per_reader_only_on_s3():
    """S3 PUTs an object per reader for a payload that rides in the key; Redis sends one
    pipelined write with an entry per reader, which costs as one payload read by each,
    with the payload's bytes copied per reader."""
    from afmi.model.work import Work

    shared = Work(1, 100, 7, 700, shared_deliveries=7, shared_uploads=1, shared_bytes=100)
    redis = dataclasses.replace(DEFAULTS["redis"], inline_max_bytes=65536.0)
    assert redis.publish_inline_once and redis.stores_once(100)
    once = redis.channel_work(shared)
    # one write and its shared reads, but the payload is copied into every reader's entry
    assert once.messages == 1 and once.shared_deliveries == 7
    assert once.bytes_sent == 700
    # a payload above the inline size is stored once, as chunks every reader fetches
    big = Work(1, 1 << 20, 7, 7 << 20, shared_deliveries=7, shared_uploads=1, shared_bytes=1 << 20)
    assert redis.channel_work(big) == big
    s3 = DEFAULTS["s3"]
    assert not s3.publish_inline_once and not s3.stores_once(100)
    per_reader = s3.channel_work(shared)
    assert per_reader.messages == 7 and per_reader.shared_deliveries == 0
    # below publish_min_bytes a payload goes to every reader whatever rides inline
    assert not dataclasses.replace(s3, publish_inline_once=True).stores_once(100 << 10)
    assert s3.stores_once(5 << 20)
    cfg = Config.from_dict({"model": {"redis": {"publish_inline_once": False}}})
    assert not channel_models(cfg)["redis"].stores_once(100)


def test_ranks_sharing_cpus_wait_through_every_round_of_the_path():
    """One event loop: while a round's messages are with the server, no rank has work."""
    alg = Rounds([Step(3, 100, 1)])
    loop = dataclasses.replace(DEFAULTS["redis"], parallel_ranks=1.0, cpu_per_message_s=10e-6)
    path, cpu = timing("bcast", 100, 4, alg, loop)
    waiting = dataclasses.replace(loop, wait_per_round_s=50e-6)
    assert timing("bcast", 100, 4, alg, waiting) == pytest.approx((path, cpu + 3 * 50e-6))
    # a CPU per rank: every rank's waits are already on its own path
    own = dataclasses.replace(waiting, parallel_ranks=0.0)
    assert timing("bcast", 100, 4, alg, own)[1] == 0.0
    cfg = Config.from_dict({"model": {"redis": {"wait_per_round_s": 1e-4}}})
    assert channel_models(cfg)["redis"].wait_per_round_s == 1e-4


def test_a_fetch_costs_its_time_of_cpu_unless_set():
    # in one process (ranks share the loop), with a fetch step as calibrated
    m = dataclasses.replace(model_for("redis"), fetch_s=2e-4, parallel_ranks=1.0)
    assert m.cpu_per_fetch_s is None and m.fetch_cpu_s() == 2e-4
    cfg = Config.from_dict({"model": {"redis": {"cpu_per_fetch_s": 1e-6}}})
    assert model_for("redis", cfg).cpu_per_fetch_s == 1e-6
    cheap = dataclasses.replace(m, cpu_per_fetch_s=1e-6)
    assert cheap.fetch_cpu_s() == 1e-6
    # an 8-rank bcast of fetched messages: 7 reads, each 2e-4 - 1e-6 less CPU
    nbytes = 1 << 20
    assert m.fetches(nbytes)
    alg = algorithm_for("bcast", "redis", 8, nbytes)
    slow = timing("bcast", nbytes, 8, alg, m)[1]
    fast = timing("bcast", nbytes, 8, alg, cheap)[1]
    assert slow - fast == pytest.approx(7 * (2e-4 - 1e-6), rel=1e-6)
