"""The link protocol byte by byte: a hand-written peer speaks to a real DirectChannel."""

import asyncio
import random

import msgpack
import numpy as np
import pytest

import afmi
from afmi.channels.direct import DirectChannel
from afmi.channels.direct.link import AUTH, HELLO, _mac
from afmi.config import Config
from afmi.rendezvous import RendezvousServer, RendezvousSession
from afmi.wire.frame import FrameDecoder, encode_control, encode_frame
from afmi.wire.message import Message
from afmi.wire.serialize import decode, encode


class FakeRank0:
    """Plays rank 0 of a 2-rank job by hand: registers, dials rank 1, handshakes."""

    def __init__(self, rdv: RendezvousServer, token: str = "tok", link_token: str = "tok") -> None:
        self.rdv = rdv
        self.token = token
        self.link_token = link_token

    async def __aenter__(self):
        self.session = await RendezvousSession.open(
            self.rdv.address,
            job="j",
            token=self.token,
            rank=0,
            size=2,
            host="127.0.0.1",
            port=9,
            mode="listen",
            timeout=5,
        )
        host, port = (await self.session.peers(5))[1]
        self.reader, self.writer = await asyncio.open_connection(host, port)
        nonce = b"n" * 16
        self.writer.write(encode_control(HELLO, msgpack.packb(["j", 0, nonce])))
        decoder = FrameDecoder()
        frames = []
        while len(frames) < 2:
            decoder.feed(await self.reader.read(1000))
            frames += decoder.events()
        peer_nonce = msgpack.unpackb(frames[0].payload)[2]
        self.expected_auth = _mac(self.token, "j", 1, 0, nonce)
        self.peer_auth = frames[1].payload
        self.writer.write(encode_control(AUTH, _mac(self.link_token, "j", 0, 1, peer_nonce)))
        return self

    async def __aexit__(self, *exc):
        self.writer.close()
        await self.session.aclose()


def _frames(values):
    out = bytearray()
    for seq, value in enumerate(values):
        header, buffers = encode(value)
        for part in encode_frame(Message(0, 0, 5, seq, header, buffers)):
            out += memoryview(part).cast("B")
    return bytes(out)


async def _open_rank1(rdv, **direct):
    cfg = Config.from_dict({"channels": {"direct": {"connect_timeout": 10.0, **direct}}})
    return await DirectChannel.open(1, 2, "j", "tok", rdv.address, cfg.channels.direct)


@pytest.mark.parametrize("chunking", ["bytewise", "random", "whole"])
async def test_frames_split_anywhere_arrive_intact_and_in_order(chunking):
    values = [i if i % 3 else np.arange(i * 1000, dtype=np.int32) for i in range(40)]
    values.append(np.arange(400_000, dtype=np.float64))  # larger than the staging area
    data = _frames(values)
    got: list[Message] = []
    failures: list[afmi.ChannelError] = []
    async with RendezvousServer() as rdv:
        opening = asyncio.ensure_future(_open_rank1(rdv))
        async with FakeRank0(rdv) as peer:
            ch = await opening
            assert peer.peer_auth == peer.expected_auth  # rank 1 proved it holds the token
            ch.start(got.append, failures.append)
            rng = random.Random(7)
            pos = 0
            while pos < len(data):
                step = {"bytewise": 1, "random": rng.choice([1, 3, 8, 100, 5000, 70000])}.get(
                    chunking, len(data)
                )
                peer.writer.write(data[pos : pos + step])
                pos += step
                if (chunking == "bytewise" and pos % 512 == 0) or chunking == "random":
                    await peer.writer.drain()
                    await asyncio.sleep(0)
                if chunking == "bytewise" and pos > 20_000:
                    peer.writer.write(data[pos:])  # the rest at once, to keep the test fast
                    pos = len(data)
            for _ in range(500):
                if len(got) == len(values):
                    break
                await asyncio.sleep(0.01)
            await ch.aclose()
    assert not failures
    assert [m.seq for m in got] == list(range(len(values)))
    for sent, msg in zip(values, got):
        received = decode(msg.header, msg.buffers)
        if isinstance(sent, np.ndarray):
            assert np.array_equal(sent, received)
        else:
            assert received == sent


async def test_garbage_on_a_link_fails_the_channel_naming_the_peer():
    failures: list[afmi.ChannelError] = []
    async with RendezvousServer() as rdv:
        opening = asyncio.ensure_future(_open_rank1(rdv))
        async with FakeRank0(rdv) as peer:
            ch = await opening
            ch.start(lambda m: None, failures.append)
            peer.writer.write(b"this is not a frame at all")
            for _ in range(500):
                if failures:
                    break
                await asyncio.sleep(0.01)
            await ch.aclose()
    assert len(failures) == 1 and failures[0].peer == 0
    assert "rank 0" in str(failures[0])


async def test_peer_with_wrong_token_is_not_linked():
    async with RendezvousServer() as rdv:
        opening = asyncio.ensure_future(_open_rank1(rdv, connect_timeout=1.0))
        # The rendezvous rejects a wrong token outright, so pass it there and present a
        # wrong secret in the link handshake: rank 1 drops the connection.
        async with FakeRank0(rdv, link_token="forged") as peer:
            assert await asyncio.wait_for(peer.reader.read(), 5) == b""
            with pytest.raises(afmi.ChannelError, match=r"no link to ranks \[0\]"):
                await opening
