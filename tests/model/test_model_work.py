"""Total work of a call: traffic per algorithm, reductions, and CPUs shared by ranks."""

import dataclasses

import pytest

from afmi.collectives import registry
from afmi.collectives.base import Step
from afmi.collectives.ring import SEGMENT_BYTES
from afmi.model import DEFAULTS, ChannelModel, FunctionPrice, predict, timing, traffic, work

FREE = FunctionPrice(0.0, 0.0)


def _model(**kw):
    base = dict(
        name="x",
        latency_s=10e-6,
        bandwidth_single_bytes_per_s=1e9,
        bandwidth_aggregate_bytes_per_s=1e9,
        call_overhead_s=5e-6,
        cpu_per_message_s=20e-6,
        cpu_bytes_per_s=2e9,
        reduce_bytes_per_s=1e9,
    )
    base.update(kw)
    return ChannelModel(**base)


def test_ring_and_doubling_count_every_ranks_messages():
    ring = registry.get("allreduce", "ring")
    # 8 ranks, 4 segments' worth per rank: chunks of 4 segments' bytes cut into 4
    # messages, 2 passes of 7 rounds on every rank
    n = 8 * 4 * SEGMENT_BYTES
    assert traffic("allreduce", ring, 8, n) == (2 * 8 * 7 * 4, 2 * 7 * n)
    rd = registry.get("allreduce", "recursive_doubling")
    assert traffic("allreduce", rd, 8, 100) == (8 * 3, 8 * 3 * 100)
    # 6 ranks: 4 do 2 rounds, the 2 extra ranks send in and get the result back
    assert traffic("allreduce", rd, 6, 100)[0] == 4 * 2 + 2 * 2


def test_storage_algorithms_grow_with_the_ranks():
    publish = registry.get("bcast", "storage_publish")
    for p in (2, 4, 8):
        w = work("bcast", publish, p, 1000)
        assert (w.messages, w.deliveries, w.bytes_received) == (1, p - 1, (p - 1) * 1000)
    sr = registry.get("allreduce", "scatter_reduce")
    w4, w8 = work("allreduce", sr, 4, 1 << 20), work("allreduce", sr, 8, 1 << 20)
    assert w8.deliveries > w4.deliveries == 2 * 4 * 3
    # the reduced slices: (p - 1) * n in all, (p - 1) * n / p on the critical path
    assert w8.reduce_bytes == 7 * (1 << 20) and w8.path_reduce_bytes == 7 * (1 << 17)
    # every read of a stored payload is priced (s3 GETs)
    s3 = dataclasses.replace(DEFAULTS["s3"], publish_min_bytes=0, poll_backoff_s=0.0)
    p2 = predict("bcast", 1000, 2, publish, s3, FREE)
    p8 = predict("bcast", 1000, 8, publish, s3, FREE)
    # six more readers: a GET and a LIST each, and the marker, pointer and marker LIST of
    # all seven shared reads (one reader on 2 ranks gets a plain message)
    per_reader = s3.price_per_read_usd + s3.price_per_poll_usd
    shared = 7 * s3.requests_per_shared_read * s3.price_per_request_usd
    assert p8.request_usd - p2.request_usd == pytest.approx(6 * per_reader + shared)


def test_reads_of_a_shared_payload_cost_cpu_when_it_is_stored_once():
    publish = registry.get("bcast", "storage_publish")
    # one reader gets a plain message; two or more read one stored copy
    assert work("bcast", publish, 2, 1000).shared_deliveries == 0
    assert work("bcast", publish, 8, 1000).shared_deliveries == 7
    sr = registry.get("allreduce", "scatter_reduce")
    assert work("allreduce", sr, 4, 1 << 20).shared_deliveries == 4 * 3
    rp = registry.get("allreduce", "reduce_publish")
    assert work("allreduce", rp, 4, 1000).shared_deliveries == 3
    s3 = dataclasses.replace(
        DEFAULTS["s3"], parallel_ranks=1.0, inline_max_bytes=256, publish_min_bytes=0
    )
    extra = dataclasses.replace(s3, cpu_per_shared_read_s=4e-3)
    for p, nbytes, added in ((8, 1000, 7 * 4e-3), (8, 100, 0.0), (2, 1000, 0.0)):
        # below the inline size the payload is sent to every reader as a message of its own
        base_cpu = timing("bcast", nbytes, p, publish, s3)[1]
        assert timing("bcast", nbytes, p, publish, extra)[1] == pytest.approx(base_cpu + added)


def test_a_payload_small_enough_to_ride_inline_is_sent_to_every_reader():
    # S3 publishes a payload that fits in a key as one message per reader (7 PUTs),
    # a larger one as one upload (a PUT) read 7 times
    publish = registry.get("bcast", "storage_publish")
    s3 = DEFAULTS["s3"]
    s3 = dataclasses.replace(s3, publish_min_bytes=0, poll_backoff_s=0.0)  # no idle polls
    small = predict("bcast", 100, 8, publish, s3, FREE)
    large = predict("bcast", 1000, 8, publish, s3, FREE)
    assert small.messages == 7 and large.messages == 1
    assert small.request_usd == pytest.approx(
        7 * s3.price_per_request_usd + 7 * s3.price_per_poll_usd
    )
    assert large.request_usd == pytest.approx(
        (1 + 7 * 3) * s3.price_per_request_usd + 7 * (s3.price_per_read_usd + s3.price_per_poll_usd)
    )
    # on a channel that stores every payload (nothing inline) the upload stays one
    redis = DEFAULTS["redis"]
    assert predict("bcast", 100, 8, publish, redis, FREE).messages == 1


def test_the_model_follows_the_s3_channels_publish_threshold():
    # below channels.s3.publish_min_bytes S3 sends a bcast's payload to every reader alone
    from afmi.config import Config
    from afmi.model import model_for

    publish = registry.get("bcast", "storage_publish")
    default = model_for("s3")
    assert default.publish_min_bytes == Config().channels.s3.publish_min_bytes == 4 * 1024 * 1024
    assert predict("bcast", 1 << 20, 8, publish, default, FREE).messages == 7
    assert predict("bcast", 4 << 20, 8, publish, default, FREE).messages == 1
    always = model_for("s3", Config.from_dict({"channels": {"s3": {"publish_min_bytes": 0}}}))
    assert predict("bcast", 1 << 20, 8, publish, always, FREE).messages == 1
    # a model key overrides what the channel config says
    cfg = {
        "channels": {"s3": {"publish_min_bytes": 0}},
        "model": {"s3": {"publish_min_bytes": 1e9}},
    }
    assert model_for("s3", Config.from_dict(cfg)).publish_min_bytes == 1e9


def test_reduction_is_on_the_critical_path():
    linear = registry.get("allreduce", "linear")
    fast = _model(reduce_bytes_per_s=0.0)
    slow = _model(reduce_bytes_per_s=1e8)
    n = 1 << 20
    path_fast, _ = timing("allreduce", n, 4, linear, fast)
    path_slow, _ = timing("allreduce", n, 4, linear, slow)
    # the root combines three arrays one after another
    assert path_slow - path_fast == pytest.approx(3 * n / 1e8)


def test_ranks_sharing_a_cpu_add_up_their_work():
    rd = registry.get("allreduce", "recursive_doubling")
    own_cpu = _model(parallel_ranks=0.0)
    one_loop = _model(parallel_ranks=1.0)
    two_cores = _model(parallel_ranks=2.0)
    n = 1 << 16
    for p in (2, 4, 8):
        path, cpu_own = timing("allreduce", n, p, rd, own_cpu)
        _, cpu_loop = timing("allreduce", n, p, rd, one_loop)
        _, cpu_two = timing("allreduce", n, p, rd, two_cores)
        w = work("allreduce", rd, p, n)
        total = (
            p * 5e-6
            + (w.messages + w.deliveries) / 2 * 20e-6
            + (w.bytes_sent + w.bytes_received) / 2 / 2e9
            + w.reduce_bytes / 1e9
        )
        assert cpu_loop == pytest.approx(total)
        # two cores: shared only when there are more ranks than cores
        assert cpu_two == (pytest.approx(total / 2) if p > 2 else 0.0)
        # a CPU per rank: every rank's work is already in the path's latencies
        assert cpu_own == 0.0
        t = predict("allreduce", n, p, rd, one_loop, FREE).time_s
        assert t == pytest.approx(max(path, cpu_loop))
    # in one loop 8 ranks take far longer than 2; with a CPU each, log2 rounds
    t2, t8 = (predict("allreduce", n, p, rd, one_loop, FREE).time_s for p in (2, 8))
    assert t8 > 8 * t2
    o2, o8 = (predict("allreduce", n, p, rd, own_cpu, FREE).time_s for p in (2, 8))
    assert o8 < 4 * o2


def test_a_message_has_no_cpu_bound():
    from afmi.model import P2P

    m = _model(parallel_ranks=1.0, cpu_per_message_s=1.0)
    assert timing("send", 100, 2, P2P, m)[1] == 0
    assert predict("send", 100, 2, P2P, m, FREE).time_s == pytest.approx(10e-6 + 100 / 1e9)


def test_an_algorithms_own_work_wins():
    class Mine:
        name = "mine"

        def steps(self, size, nbytes):
            return [Step(1, nbytes, size - 1)]

        def work(self, size, nbytes):
            return work("bcast", registry.get("bcast", "linear"), size, nbytes * 3)

    assert traffic("bcast", Mine(), 4, 10) == (3, 90)
    m = dataclasses.replace(DEFAULTS["direct"])
    assert predict("bcast", 10, 4, Mine(), m, FREE).messages == 3


def test_local_defaults_share_one_loop():
    assert DEFAULTS["local"].parallelism(8) == 1
    assert DEFAULTS["direct"].parallelism(8) == 8


def test_ranks_that_outnumber_the_cores_work_more_slowly_together():
    m = dataclasses.replace(DEFAULTS["direct"], parallel_ranks=1.75, shared_cpus=2.0, crowding=0.5)
    assert m.parallelism(2) == 1.75  # not more ranks than cores: as before
    assert m.parallelism(4) == pytest.approx(1.75 * 0.5**0.5)
    assert m.parallelism(8) == pytest.approx(1.75 * 0.25**0.5)
    assert dataclasses.replace(m, crowding=0.0).parallelism(8) == 1.75
    assert dataclasses.replace(m, shared_cpus=0.0).parallelism(8) == 1.75
    # a crowded call's CPU bound grows by the same factor
    alg = registry.get("bcast", "binomial")
    plain = dataclasses.replace(m, crowding=0.0)
    _, cpu = timing("bcast", 1 << 20, 4, alg, m)
    _, cpu_plain = timing("bcast", 1 << 20, 4, alg, plain)
    rounds = 2 * m.wait_per_round_s
    assert cpu - rounds == pytest.approx((cpu_plain - rounds) / 0.5**0.5)


def test_crowding_is_a_model_setting():
    from afmi.config import Config
    from afmi.model import channel_models

    cfg = Config.from_dict({"model": {"direct": {"crowding": 0.75, "shared_cpus": 2}}})
    direct = channel_models(cfg)["direct"]
    assert (direct.crowding, direct.shared_cpus) == (0.75, 2.0)
    cfg = Config.from_dict(
        {"model": {"direct": {"split_message_bytes": 65419, "cpu_per_split_message_s": 5e-5}}}
    )
    direct = channel_models(cfg)["direct"]
    assert (direct.split_message_bytes, direct.cpu_per_split_message_s) == (65419.0, 5e-5)
    cfg = Config.from_dict(
        {"model": {"direct": {"split_message_bytes": 65419, "split_latency_s": 1e-5}}}
    )
    direct = channel_models(cfg)["direct"]
    assert direct.message_latency_s(65420) - direct.message_latency_s(65419) == pytest.approx(1e-5)


def test_every_registered_algorithm_has_exact_work():
    from afmi.model.work import has_entry

    missing = [
        (a.collective, a.name)
        for a in registry.algorithms()
        if not has_entry(a.collective, a.name) and not hasattr(a, "work")
    ]
    assert missing == []
    for a in registry.algorithms():
        for p in (2, 3, 8):
            w = work(a.collective, a, p, 4096)
            assert (w.messages >= 1 and w.deliveries >= w.messages) or a.name == "storage_publish"
            assert w.path_reduce_bytes <= w.reduce_bytes


def test_messages_cost_more_with_more_ranks_sharing_the_loop():
    rd = registry.get("allreduce", "recursive_doubling")
    flat = _model(parallel_ranks=1.0, cpu_bytes_per_s=0.0, reduce_bytes_per_s=0.0)
    crowded = dataclasses.replace(flat, cpu_per_message_rank_s=2e-6)
    for p in (2, 4, 8):
        w = work("allreduce", rd, p, 64)
        extra = timing("allreduce", 64, p, rd, crowded)[1] - timing("allreduce", 64, p, rd, flat)[1]
        assert extra == pytest.approx((w.messages + w.deliveries) / 2 * (p - 1) * 2e-6)


def test_waits_count_a_rank_that_collects_several_messages_once():
    for p in (2, 4, 8):
        gather = work("gather", registry.get("gather", "linear"), p, 100)
        assert gather.deliveries == p - 1 and gather.receive_waits == 1  # the root, once
        barrier = work("barrier", registry.get("barrier", "linear"), p, 0)
        assert barrier.receive_waits == p  # the root once, then every other rank
        publish = work("bcast", registry.get("bcast", "storage_publish"), p, 100)
        assert publish.waits is None and publish.receive_waits == p - 1  # one per delivery
        rp = work("allreduce", registry.get("allreduce", "reduce_publish"), p, 100)
        assert rp.receive_waits == p
        sr = work("allreduce", registry.get("allreduce", "scatter_reduce"), p, 1 << 20)
        assert sr.receive_waits == 2 * p
        counter = work("barrier", registry.get("barrier", "redis_counter"), p, 0)
        assert counter.receive_waits == p - 1  # only the released ranks wait for a message
        binomial = work("gather", registry.get("gather", "binomial"), p, 100)
        assert binomial.receive_waits == binomial.deliveries  # one message per wait


def test_every_wait_costs_cpu_where_ranks_share_it():
    from afmi.model import timing

    waits = _model(
        cpu_per_message_s=0.0,
        call_overhead_s=0.0,
        cpu_bytes_per_s=0.0,
        cpu_per_wait_s=4e-3,
        parallel_ranks=1.0,
        reduce_bytes_per_s=0.0,
    )
    gather = registry.get("gather", "linear")
    bcast = registry.get("bcast", "linear")
    # the same 7 messages: the gather's root waits once, each of the bcast's 7 readers once
    assert timing("gather", 100, 8, gather, waits)[1] == pytest.approx(4e-3)
    assert timing("bcast", 100, 8, bcast, waits)[1] == pytest.approx(7 * 4e-3)
    # with a CPU per rank, no CPU bound (the waits are in the measured latencies)
    own = dataclasses.replace(waits, parallel_ranks=0.0)
    assert timing("bcast", 100, 8, bcast, own)[1] == 0.0


def test_only_messages_with_the_data_pay_for_it():
    # ranks sharing one loop: 8-rank dissemination barrier (24 empty messages) and
    # linear bcast (7 messages with the array)
    plain = _model(parallel_ranks=1.0, call_overhead_s=0.0)
    paid = dataclasses.replace(plain, cpu_per_payload_message_s=5e-6)
    barrier = registry.get("barrier", "dissemination")
    bcast = registry.get("bcast", "linear")
    assert timing("barrier", 0, 8, barrier, paid) == timing("barrier", 0, 8, barrier, plain)
    cpu_plain = timing("bcast", 64, 8, bcast, plain)[1]
    cpu_paid = timing("bcast", 64, 8, bcast, paid)[1]
    # every message is written and read: (7 + 7) / 2 of them pay once each
    assert cpu_paid - cpu_plain == pytest.approx(7 * 5e-6)
    # a point-to-point message has no shared CPU bound to pay it in
    from afmi.model import P2P

    assert timing("send", 64, 2, P2P, paid) == timing("send", 64, 2, P2P, plain)


@pytest.mark.parametrize("p", [2, 3, 5, 6, 8, 13, 16])
def test_a_binomial_trees_messages_carry_their_subtrees_items(p):
    from afmi.model.work import _tree_bytes

    for collective in ("gather", "scatter"):
        w = work(collective, registry.get(collective, "binomial"), p, 100)
        sizes = w.sized_deliveries(100)
        # every delivery accounted for, and the bytes are the tree's item-hops
        assert sum(c for c, _ in sizes) == w.deliveries == p - 1
        assert sum(c * b for c, b in sizes) == w.bytes_received == _tree_bytes(p, 100)
        if p == 8:  # vertices 1, 3, 5, 7 send one item, 2 and 6 two, 4 four
            assert sizes == ((1, 400), (2, 200), (4, 100))
        if p == 6:  # vertex 4's subtree is cut at the last rank: 4 and 5
            assert sizes == ((2, 200), (3, 100))
    # algorithms whose messages all carry the call's payload say nothing more
    flat = work("bcast", registry.get("bcast", "binomial"), p, 100)
    assert flat.delivery_sizes is None and flat.sized_deliveries(100) == ((p - 1, 100),)
    linear = work("allgather", registry.get("allgather", "linear"), p, 100)
    assert sorted(linear.sized_deliveries(100)) == sorted(
        [(p - 1, 100), (p - 1, p * 100)] if p > 1 else []
    )


def test_only_the_messages_over_the_inline_size_are_fetched():
    # Redis's shape: messages up to 64 KiB ride in the mailbox entry, larger ones are fetched.
    # An 8-rank binomial gather of 64 KiB items sends 4 messages of one item, 2 of two and
    # 1 of four: the three of 128 and 256 KiB are fetched, and cost the fetch's CPU.
    m = _model(inline_max_bytes=64 * 1024, fetch_s=1e-4, cpu_per_fetch_s=5e-5, parallel_ranks=1.0)
    gather = registry.get("gather", "binomial")
    kib = 1024
    assert m.fetched_reads(work("gather", gather, 8, 64 * kib), 64 * kib) == 3
    assert m.fetched_reads(work("gather", gather, 8, 16 * kib), 16 * kib) == 0  # 64 KiB at most
    assert m.fetched_reads(work("gather", gather, 8, 64 * kib + 1), 64 * kib + 1) == 7
    # a bcast's messages are all of the call's size: all fetched or none
    bcast = registry.get("bcast", "binomial")
    assert m.fetched_reads(work("bcast", bcast, 8, 64 * kib), 64 * kib) == 0
    assert m.fetched_reads(work("bcast", bcast, 8, 128 * kib), 128 * kib) == 7
    # the CPU bound counts them: three fetches' CPU more than if none were fetched
    inline = dataclasses.replace(m, inline_max_bytes=1 << 30)
    extra = (
        timing("gather", 64 * kib, 8, gather, m)[1]
        - timing("gather", 64 * kib, 8, gather, inline)[1]
    )
    assert extra == pytest.approx(3 * 5e-5)


def test_messages_over_one_tcp_segment_cost_more_where_several_links_carry_them():
    # ranks sharing one loop; messages over 64,000 B pay 30 us more each, in calls of
    # more than two ranks (docs/direct.md, "Messages longer than a TCP segment")
    plain = _model(parallel_ranks=1.0, call_overhead_s=0.0)
    split = dataclasses.replace(plain, split_message_bytes=64_000.0, cpu_per_split_message_s=30e-6)
    rd = registry.get("allreduce", "recursive_doubling")
    small, large = 60_000, 70_000
    # 4 ranks, 2 rounds of exchanges: 8 messages, every one over the limit
    assert timing("allreduce", small, 4, rd, split) == timing("allreduce", small, 4, rd, plain)
    path_plain, cpu_plain = timing("allreduce", large, 4, rd, plain)
    path_split, cpu_split = timing("allreduce", large, 4, rd, split)
    assert path_split == path_plain  # the extra work is shared CPU, not a longer path
    assert cpu_split - cpu_plain == pytest.approx(8 * 30e-6)
    # one link (two ranks): no extra cost
    assert timing("allreduce", large, 2, rd, split) == timing("allreduce", large, 2, rd, plain)
    # a binomial gather's upper message carries two items: over the limit where one is not
    gather = registry.get("gather", "binomial")
    extra = (
        timing("gather", 40_000, 4, gather, split)[1]
        - timing("gather", 40_000, 4, gather, plain)[1]
    )
    assert extra == pytest.approx(30e-6)
    # without a limit nothing is split, whatever the cost says
    off = dataclasses.replace(split, split_message_bytes=0.0)
    assert timing("allreduce", large, 4, rd, off) == timing("allreduce", large, 4, rd, plain)


def test_a_rings_messages_are_its_segments():
    ring = registry.get("allreduce", "ring")
    # 4 ranks, 512 KiB: chunks of 128 KiB, each one message
    w = work("allreduce", ring, 4, 512 << 10)
    assert w.sized_deliveries(512 << 10) == ((w.deliveries, 128 << 10),)
    # chunks of two segments: every message one segment
    n = 4 * 2 * SEGMENT_BYTES
    w = work("allreduce", ring, 4, n)
    assert w.sized_deliveries(n) == ((2 * 4 * 3 * 2, SEGMENT_BYTES),)
    # its receivers are busy sending when their messages arrive: no split cost (across
    # processes a ring of chunks just over a segment took as long as one just under)
    assert w.receivers_busy
    split = _model(parallel_ranks=1.0, split_message_bytes=64 << 10, cpu_per_split_message_s=1e-6)
    large = work("allreduce", ring, 4, 512 << 10)
    assert split.split_deliveries(large, 512 << 10, 4) == 0
    idle = dataclasses.replace(large, receivers_busy=False)
    assert split.split_deliveries(idle, 512 << 10, 4) == 24  # 128 KiB messages
    small = dataclasses.replace(work("allreduce", ring, 4, 128 << 10), receivers_busy=False)
    assert split.split_deliveries(small, 128 << 10, 4) == 0  # 32 KiB messages
