import random

from hypothesis import given, settings
from hypothesis import strategies as st

from afmi.wire.matching import ANY_SOURCE, ANY_TAG, MatchingEngine
from afmi.wire.message import Message


def msg(ctx, src, tag, seq, body=b""):
    return Message(ctx, src, tag, seq, body)


def test_posted_receive_matches_first_arrival():
    eng = MatchingEngine()
    t = eng.post(0, 1, 5)
    assert t.message is None
    assert eng.deliver(msg(0, 1, 5, 0, b"a")) == [t]
    assert t.message.header == b"a"


def test_unexpected_messages_matched_in_arrival_order_with_wildcards():
    eng = MatchingEngine()
    eng.deliver(msg(0, 2, 1, 0, b"x"))
    eng.deliver(msg(0, 1, 2, 0, b"y"))
    eng.deliver(msg(0, 1, 1, 1, b"z"))
    assert eng.post(0, 1, ANY_TAG).message.header == b"y"
    assert eng.post(0, ANY_SOURCE, 1).message.header == b"x"
    assert eng.post(0, ANY_SOURCE, ANY_TAG).message.header == b"z"
    assert eng.unexpected_count() == 0


def test_earliest_posted_receive_wins():
    eng = MatchingEngine()
    a = eng.post(0, ANY_SOURCE, ANY_TAG)
    b = eng.post(0, 3, 3)
    assert eng.deliver(msg(0, 3, 3, 0)) == [a]
    assert eng.deliver(msg(0, 3, 3, 1)) == [b]


def test_contexts_never_mix():
    eng = MatchingEngine()
    t = eng.post(1, ANY_SOURCE, ANY_TAG)
    assert eng.deliver(msg(0, 0, 0, 0)) == []
    assert t.message is None and eng.unexpected_count(0) == 1


def test_out_of_order_arrivals_are_held_until_the_gap_fills():
    eng = MatchingEngine()
    eng.deliver(msg(0, 1, 0, 2, b"c"))
    eng.deliver(msg(0, 1, 0, 1, b"b"))
    assert eng.held_count() == 2 and eng.unexpected_count() == 0
    t = eng.post(0, 1, 0)
    assert eng.deliver(msg(0, 1, 0, 0, b"a")) == [t]
    assert t.message.header == b"a"
    assert [eng.post(0, 1, 0).message.header for _ in range(2)] == [b"b", b"c"]
    assert eng.held_count() == 0


def test_duplicates_are_dropped():
    eng = MatchingEngine()
    eng.deliver(msg(0, 1, 0, 0))
    eng.deliver(msg(0, 1, 0, 0))
    assert eng.unexpected_count() == 1


def test_cancel_before_match_leaves_message_for_next_receive():
    eng = MatchingEngine()
    t = eng.post(0, 1, 0)
    assert eng.cancel(t)
    assert not eng.cancel(t)
    eng.deliver(msg(0, 1, 0, 0, b"m"))
    assert t.message is None
    assert eng.post(0, 1, 0).message.header == b"m"


def test_requeue_restores_arrival_position_and_rematches():
    eng = MatchingEngine()
    eng.deliver(msg(0, 1, 0, 0, b"first"))
    eng.deliver(msg(0, 1, 0, 1, b"second"))
    taken = eng.post(0, 1, 0).message
    assert eng.requeue(taken) == []
    assert eng.post(0, 1, 0).message.header == b"first"
    waiting = eng.post(0, 1, 0)
    assert waiting.message.header == b"second"
    t = eng.post(0, 1, 0)
    assert eng.requeue(msg(0, 1, 0, 9, b"back")) == [t]


def test_probe_does_not_consume():
    eng = MatchingEngine()
    eng.deliver(msg(0, 4, 2, 0, b"p"))
    assert eng.probe(0, ANY_SOURCE, 2).header == b"p"
    assert eng.probe(0, 4, 3) is None
    assert eng.unexpected_count() == 1


@given(
    n_sources=st.integers(1, 4),
    per_source=st.integers(0, 8),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_non_overtaking_under_any_interleaving_and_reordering(n_sources, per_source, seed):
    """Whatever the arrival order and the mix of posts, per-(source, tag) order is kept."""
    rnd = random.Random(seed)
    eng = MatchingEngine()
    arrivals = [
        msg(0, s, rnd.randint(0, 1), i) for s in range(n_sources) for i in range(per_source)
    ]
    for m in arrivals:
        m.header = f"{m.source}:{m.seq}".encode()
    rnd.shuffle(arrivals)  # channels may reorder; seq numbers must repair it
    received = []
    tickets = []
    for m in arrivals:
        if rnd.random() < 0.5:
            tickets.append(
                eng.post(
                    0, rnd.choice([ANY_SOURCE, *range(n_sources)]), rnd.choice([ANY_TAG, 0, 1])
                )
            )
        eng.deliver(m)
    while eng.unexpected_count():
        tickets.append(eng.post(0, ANY_SOURCE, ANY_TAG))
    for t in tickets:
        if t.message is not None:
            received.append(t.message)
        else:
            eng.cancel(t)
    assert len(received) == len(arrivals)
    for s in range(n_sources):
        for tag in (0, 1):
            seqs = [m.seq for m in received if m.source == s and m.tag == tag]
            # matched-in order == sent order for each (source, tag)
            order = sorted(received, key=lambda m: m.arrival)
            seqs_by_match = [m.seq for m in order if m.source == s and m.tag == tag]
            assert seqs_by_match == sorted(seqs)


def test_destination_is_the_in_order_receive_that_names_the_source_and_has_buffers():
    eng = MatchingEngine()
    buf = [memoryview(bytearray(4))]
    t = eng.post(0, 1, 7, into=buf)
    assert eng.destination(0, 1, 7, 0) is t
    assert eng.destination(0, 1, 7, 1) is None  # out of order: would be held back
    assert eng.destination(0, 1, 8, 0) is None  # another tag: t does not accept it
    assert eng.destination(1, 1, 7, 0) is None  # another context
    assert eng.deliver(msg(0, 1, 7, 0)) == [t]
    assert eng.destination(0, 1, 7, 1) is None  # nothing posted any more


def test_destination_refuses_when_an_earlier_receive_could_take_the_message():
    eng = MatchingEngine()
    wild = eng.post(0, ANY_SOURCE, ANY_TAG)
    eng.post(0, 1, 7, into=[memoryview(bytearray(4))])
    # A message from elsewhere could take the wildcard first: no certain match.
    assert eng.destination(0, 1, 7, 0) is None
    eng.cancel(wild)
    assert eng.destination(0, 1, 7, 0) is not None
    plain = MatchingEngine()
    plain.post(0, 1, 7)  # an earlier receive without buffers of its own
    plain.post(0, 1, 7, into=[memoryview(bytearray(4))])
    assert plain.destination(0, 1, 7, 0) is None
