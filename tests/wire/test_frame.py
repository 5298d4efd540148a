import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmi.wire.frame import (
    ALIGN,
    ALIGN_MIN_BYTES,
    PRELUDE_SIZE,
    ControlFrame,
    FrameDecoder,
    ProtocolError,
    encode_control,
    encode_frame,
)
from afmi.wire.message import Message

messages = st.builds(
    Message,
    context=st.integers(0, 2**40),
    source=st.integers(0, 10_000),
    tag=st.integers(-1, 2**40),
    seq=st.integers(0, 2**40),
    header=st.binary(max_size=64),
    buffers=st.lists(st.binary(max_size=300).map(bytearray), max_size=4),
)


def stream(msgs):
    return b"".join(bytes(part) for m in msgs for part in encode_frame(m))


def same_message(a, b):
    return (a.context, a.source, a.tag, a.seq, a.header) == (
        b.context,
        b.source,
        b.tag,
        b.seq,
        b.header,
    ) and [bytes(x) for x in a.buffers] == [bytes(x) for x in b.buffers]


@given(st.lists(messages, max_size=6), st.randoms())
@settings(max_examples=200, deadline=None)
def test_feed_in_random_pieces_gives_back_every_message(msgs, rnd):
    data = stream(msgs)
    dec = FrameDecoder()
    pos = 0
    while pos < len(data):
        n = rnd.randint(1, 50)
        dec.feed(data[pos : pos + n])
        pos += n
    got = dec.events()
    assert len(got) == len(msgs)
    assert all(same_message(a, b) for a, b in zip(msgs, got))
    assert dec.at_frame_boundary


@given(st.lists(messages, max_size=6), st.randoms())
@settings(max_examples=200, deadline=None)
def test_buffered_protocol_interface_gives_back_every_message(msgs, rnd):
    data = stream(msgs) + encode_control(7, b"ctl")
    dec = FrameDecoder()
    pos = 0
    while pos < len(data):
        buf = dec.get_buffer(-1)
        n = min(len(buf), rnd.randint(1, 64), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        dec.buffer_updated(n)
        pos += n
    got = dec.events()
    assert got[-1] == ControlFrame(7, b"ctl")
    assert all(same_message(a, b) for a, b in zip(msgs, got[:-1]))


def test_large_buffers_are_received_in_place():
    payload = bytearray(random.randbytes(1 << 20))
    data = stream([Message(1, 2, 3, 0, b"\x90", [payload])])
    dec = FrameDecoder()
    dec.feed(data[:100])  # prelude + header + a little data through staging
    target = dec.get_buffer()
    assert len(target) == len(payload) - (100 - (len(data) - len(payload)))
    target[:] = data[100:]
    dec.buffer_updated(len(target))
    (msg,) = dec.events()
    assert bytes(msg.buffers[0]) == bytes(payload)


def test_the_decoder_receives_into_the_buffers_it_is_given():
    import numpy as np

    payloads = [bytearray(random.randbytes(300_000)), bytearray(b"small")]
    made = []

    def new_buffer(n):
        made.append(np.empty(n, np.uint8))
        return made[-1]

    dec = FrameDecoder(new_buffer=new_buffer)
    dec.feed(stream([Message(1, 2, 3, 0, b"\x90", payloads)]))
    (msg,) = dec.events()
    assert [len(a) for a in made] == [300_000, 5]
    assert msg.buffers[0] is made[0] and bytes(made[0]) == bytes(payloads[0])
    assert bytes(msg.buffers[1]) == b"small"


def test_copies_take_large_buffers_from_the_given_maker_only():
    import numpy as np

    from afmi.wire.message import copy_buffers
    from afmi.wire.pool import COPY_MIN_BYTES

    big = np.arange(COPY_MIN_BYTES, dtype=np.uint8)
    small = np.arange(100, dtype=np.int32)
    asked = []

    def new_buffer(n):
        asked.append(n)
        return np.empty(n, np.uint8)

    out = copy_buffers([small, big, big[: COPY_MIN_BYTES - 1]], new_buffer)
    assert asked == [COPY_MIN_BYTES]
    assert isinstance(out[0], bytearray) and isinstance(out[2], bytearray)
    assert bytes(out[0]) == small.tobytes() and bytes(out[1]) == big.tobytes()
    big[:] = 0  # a copy: the sender may change its arrays afterwards
    assert out[1][1] == 1
    assert all(isinstance(b, bytearray) for b in copy_buffers([big]))  # no maker: bytearray


def test_empty_buffers_keep_their_positions():
    msg = Message(0, 0, 0, 0, b"h", [bytearray(), bytearray(b"x"), bytearray()])
    dec = FrameDecoder()
    dec.feed(stream([msg]))
    (got,) = dec.events()
    assert [bytes(b) for b in got.buffers] == [b"", b"x", b""]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"XX\x01\x00\x00\x00\x00\x00", "bad frame magic"),
        (b"af\x09\x00\x00\x00\x00\x00", "unsupported frame version"),
        (b"af\x01\x00\xff\xff\xff\x7f", "exceeds"),
        (b"af\x01\x00\x01\x00\x00\x00\xc1", "malformed message header"),
    ],
)
def test_garbage_raises_protocol_error(data, match):
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(data)


def test_header_with_negative_buffer_length_is_rejected():
    header = msgpack.packb([0, 0, 0, 0, b"", [-5]])
    data = b"af\x01\x00" + len(header).to_bytes(4, "little") + header
    with pytest.raises(ProtocolError, match="malformed message header"):
        FrameDecoder().feed(data)


def test_a_large_first_buffer_starts_on_a_64_byte_boundary_of_the_stream():
    big = bytearray(range(256)) * 1024  # 256 KiB
    for offset in range(0, 200, 7):
        msg = Message(3, 1, 7, offset, b"skeleton", [big, bytearray(b"tail")])
        frames = encode_frame(msg, offset)
        head = len(frames[0])
        assert (offset + head) % ALIGN == 0
        assert head - PRELUDE_SIZE < len(encode_frame(msg)[0]) - PRELUDE_SIZE + ALIGN + 2
        # the pad costs nothing to a reader: the same message comes back
        dec = FrameDecoder()
        dec.feed(b"".join(bytes(f) for f in frames))
        (got,) = dec.events()
        assert same_message(got, msg)
    # no pad without an offset, for a small first buffer, or a message without buffers
    small = Message(0, 0, 0, 0, b"", [bytearray(ALIGN_MIN_BYTES - 1)])
    assert encode_frame(small, 5)[0] == encode_frame(small)[0]
    bare = Message(0, 0, 0, 0, b"h", [])
    assert encode_frame(bare, 5) == encode_frame(bare)
    large = Message(0, 0, 0, 0, b"", [bytearray(ALIGN_MIN_BYTES)])
    assert (5 + len(encode_frame(large, 5)[0])) % ALIGN == 0
    assert len(msgpack.unpackb(encode_frame(large)[0][PRELUDE_SIZE:])) == 6


@pytest.mark.parametrize("pad", [b"\x00" * 3, 7, [1]])
def test_a_header_takes_one_pad_of_bytes_and_nothing_else(pad):
    fields = [0, 0, 0, 0, b"", [1], pad]
    ok = isinstance(pad, bytes)
    for extra in ([], [b""]):  # a pad, then a pad and one field too many
        header = msgpack.packb(fields + extra)
        data = b"af\x01\x00" + len(header).to_bytes(4, "little") + header + b"x"
        dec = FrameDecoder()
        if ok and not extra:
            dec.feed(data)
            assert [bytes(b) for b in dec.events()[0].buffers] == [b"x"]
        else:
            with pytest.raises(ProtocolError, match="malformed message header"):
                dec.feed(data)


def test_control_kind_range():
    with pytest.raises(ValueError):
        encode_control(0, b"")
