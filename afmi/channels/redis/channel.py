"""The Redis channel: one mailbox list per rank, large payloads in chunk keys.

Keys (all under ``{prefix}:{job}``, all with a TTL of ``key_ttl``):

* ``…:mb:{rank}`` — the rank's mailbox, a list of *entries*. A small
  message travels whole inside its entry; a large one leaves only a
  descriptor there.
* ``…:c:{src}:{n}:{i}`` — chunk ``i`` of the ``n``-th large message of rank
  ``src`` (``chunk_bytes`` each). The chunks cut the message's buffers laid
  back to back (each from a multiple of 64 bytes), so many small buffers
  share a chunk; the receiver reads them into one allocation of the same
  layout.
* ``…:c:{src}:{n}:n`` — the chunk *notices* of a streamed message: the
  sender pipelines, on one connection, the descriptor first and then, for
  each chunk, ``SET`` chunk and ``RPUSH`` its number here. The receiver blocks
  on this list and reads every chunk as soon as it is stored, so writing and
  reading overlap. Only messages of at least ``stream_min_chunks`` chunks are
  streamed (off by default: on one 2-core machine it did not beat the stored
  path, which writes the chunks first and the descriptor after them).
* ``…:rc:{src}:{n}`` — for a payload published to several ranks at once
  (:meth:`RedisChannel.publish`), how many readers are still to come; the
  reader that decrements it to zero deletes the chunks.
* ``…:bar:{name}`` — the arrival counter of one barrier
  (:meth:`RedisChannel.arrive`); the rank that brings it to the group size
  deletes it.

One background task per rank blocks in ``BLPOP`` on its mailbox (no
polling). A descriptor starts a separate fetch task that ``GETDEL``\\ s the
chunks concurrently over ``fetch_connections`` connections, straight into
the message's buffers, so the mailbox never waits behind a large transfer;
per-source delivery order is kept by a small reorder queue. Consumed keys are
deleted as they are read; on close the rank deletes its mailbox and every
chunk that undelivered descriptors in it still point to. Stores and fetches
of chunks keep at most ``window_bytes`` waiting for a reply per rank (see
docs/storage.md: asked for all at once, megabytes of replies and of a
pipeline's buffer were copied on both sides).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url

from afmi.channels.base import Channel, open_group
from afmi.channels.redis.resp import Parts, RespConnection, RespError
from afmi.errors import ChannelError, ConfigError
from afmi.wire.message import Buffer, Message, packed_layout

if TYPE_CHECKING:
    from afmi.config import Config, RedisConfig

__all__ = ["RedisChannel", "RedisDriver", "RedisEndpoint"]

#: Entry that tells a rank's own receiver to stop (pushed by :meth:`RedisChannel.aclose`).
_STOP = b""


@dataclass(frozen=True)
class RedisEndpoint:
    """Where and how to reach the server, parsed from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """Parse ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS)."""
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"channels.redis.url must start with redis:// or rediss://, got {url!r}"
            )
        try:
            kw = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(
                f"channels.redis.url {url!r} is not a valid Redis URL: {exc}"
            ) from exc
        tls = None
        if kw.get("connection_class") is SSLConnection:
            tls = ssl.create_default_context()
            if str(kw.get("ssl_cert_reqs", "")).lower() in ("none", "0"):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        return cls(
            host=kw.get("host") or "127.0.0.1",
            port=int(kw.get("port") or 6379),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls,
        )

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def client(self, timeout: float) -> aioredis.Redis:
        """A redis-py client for control commands."""
        return aioredis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.tls is not None,
            ssl_cert_reqs="none"
            if self.tls is not None and self.tls.verify_mode == ssl.CERT_NONE
            else "required",
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # Fail at once on a refused password (redis-py retries connection errors,
            # and an authentication error is one of them).
            retry=Retry(NoBackoff(), 0),
        )

    async def raw(self) -> RespConnection:
        """A fast pipelined connection for the data path."""
        return await RespConnection.open(
            self.host,
            self.port,
            ssl=self.tls,
            username=self.username,
            password=self.password,
            db=self.db,
        )


def _flat(buf: Buffer) -> memoryview:
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


#: In a chunked message's stored payload every buffer starts at a multiple of this
#: many bytes; the receiver's one allocation has the same layout, so arrays decoded
#: from its buffers are aligned.
_ALIGN = 64


def _layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Offsets of a chunked message's buffers in its stored payload, and its length.

    The buffers lie back to back (each from a multiple of :data:`_ALIGN`), and
    the chunks cut that payload, not each buffer: a message of many small
    buffers (a list or dict of arrays) takes as few chunks, and requests, as one
    array of its size. One chunk per buffer made a dict of 64 arrays of 16 KiB
    take 4.7x as long as one 1 MiB array between two ranks.
    """
    return packed_layout(sizes, _ALIGN)


def _chunk_count(sizes: Sequence[int], chunk: int) -> int:
    """How many chunks a message with buffers of ``sizes`` is stored in."""
    return -(-_layout(sizes)[1] // chunk)


def _chunk_size(payload: int, cfg: RedisConfig) -> int:
    """The size of the chunks a chunked payload of ``payload`` bytes (laid out) is cut into.

    ``cfg.chunk_bytes``, or ``cfg.small_chunk_bytes`` (when smaller) for a payload of at
    most two ``chunk_bytes`` chunks per fetch connection: cut into 1 MiB chunks, a
    1 MiB payload kept one of the two fetch connections idle and a 2 MiB one gave
    each connection one chunk and nothing to pipeline. With 512 KiB chunks up to
    4 MiB, a ping-pong of 1-4 MiB between two processes took 0.63-0.73x its time
    (docs/storage.md); larger payloads gained nothing and keep the larger chunks.
    """
    small = cfg.small_chunk_bytes
    if 0 < small < cfg.chunk_bytes and payload <= 2 * cfg.chunk_bytes * cfg.fetch_connections:
        return small
    return cfg.chunk_bytes


def _chunk_values(
    views: Sequence[memoryview], chunk: int, offsets: Sequence[int]
) -> list[memoryview | Parts]:
    """Each chunk's value: a view of one buffer, or the parts of several in order
    (with the zero bytes that align the next buffer), none of them copied; ``offsets``
    are the buffers' places in the payload (:func:`_layout`)."""
    pieces: list[memoryview] = []
    end = 0
    for start, view in zip(offsets, views):
        if start > end:
            pieces.append(memoryview(bytes(start - end)))
        pieces.append(view)
        end = start + view.nbytes
    values: list[memoryview | Parts] = []
    parts: list[memoryview] = []
    room = chunk
    for piece in pieces:
        while piece.nbytes:
            take = min(room, piece.nbytes)
            parts.append(piece[:take])
            piece, room = piece[take:], room - take
            if room == 0:
                values.append(parts[0] if len(parts) == 1 else tuple(parts))
                parts, room = [], chunk
    if parts:
        values.append(parts[0] if len(parts) == 1 else tuple(parts))
    return values


async def _in_window(
    slots: asyncio.Semaphore, submit: Callable[[], asyncio.Future[Any]]
) -> asyncio.Future[Any]:
    """``submit()`` once one of ``slots`` is free; the slot is freed with the reply."""
    await slots.acquire()
    try:
        fut = submit()
    except BaseException:
        slots.release()
        raise
    fut.add_done_callback(lambda _: slots.release())
    return fut


def _ref_keys(ref: list[Any], nchunks: int) -> list[str]:
    """Every key a large message's descriptor refers to."""
    stem, _, rc_key, notices = ref
    extra = [k for k in (rc_key, notices) if k is not None]
    return [*(f"{stem}:{i}" for i in range(nchunks)), *extra]


class RedisChannel(Channel):
    """One rank's end of the Redis channel; see the module docstring."""

    name = "redis"
    spin = False

    def __init__(
        self,
        rank: int,
        size: int,
        job: str,
        cfg: RedisConfig,
        endpoint: RedisEndpoint,
        control: aioredis.Redis,
        cmd: RespConnection,
        blocking: RespConnection,
        bulk: list[RespConnection],
    ) -> None:
        super().__init__(rank, size)
        self.job = job
        self.endpoint = endpoint
        self._cfg = cfg
        self._base = f"{cfg.prefix}:{job}"
        self._ttl_ms = max(1, int(cfg.key_ttl * 1000))
        self._control = control
        self._cmd = cmd
        self._blocking = blocking
        self._bulk = bulk
        self._bulk_turn = itertools.cycle(range(len(bulk)))
        #: Done once the last chunked message's store has finished (see :meth:`_store`).
        self._stored: asyncio.Future[None] | None = None
        #: Chunk requests each bulk connection may have waiting for a reply, shared by
        #: this rank's stores and fetches (None: no window).
        window = self._window()
        self._slots = [asyncio.Semaphore(window) for _ in bulk] if window else None
        self._counter = itertools.count()
        self._receiver: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._fetching: dict[int, list[str]] = {}
        #: Idle connections for blocking on chunk notices of streamed messages.
        self._notifiers: list[RespConnection] = []
        self._order: dict[int, collections.deque[list[Any]]] = {}
        #: Barrier counters this rank has incremented and not yet seen released.
        self._counters: set[str] = set()
        self._closed = False
        self._failed = False
        self._stats = collections.Counter[str]()

    # -- opening --
    @classmethod
    async def open(cls, rank: int, size: int, job: str, cfg: RedisConfig) -> RedisChannel:
        """Connect to the server named by ``cfg.url`` and check it answers.

        Raises:
            ChannelError: unreachable server, wrong password or bad DB, naming the endpoint,
                within ``cfg.connect_timeout`` seconds.
        """
        endpoint = RedisEndpoint.from_url(cfg.url)
        control = endpoint.client(cfg.connect_timeout)
        conns: list[RespConnection] = []
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await control.ping()
                for _ in range(2 + cfg.fetch_connections):
                    conns.append(await endpoint.raw())
        except BaseException as exc:
            for c in conns:
                c.close()
            await control.aclose()
            if isinstance(exc, (TimeoutError, OSError, redis.exceptions.RedisError, RespError)):
                raise ChannelError(_explain(exc, endpoint, cfg.connect_timeout)) from exc
            raise
        return cls(rank, size, job, cfg, endpoint, control, conns[0], conns[1], conns[2:])

    def mailbox(self, rank: int) -> str:
        """Key of ``rank``'s mailbox."""
        return f"{self._base}:mb:{rank}"

    # -- sending --
    def _meta(self, msg: Message) -> list[Any]:
        sizes = [_flat(b).nbytes for b in msg.buffers]
        return [msg.context, msg.source, msg.tag, msg.seq, msg.header, sizes]

    def _inline_entry(self, msg: Message) -> bytes:
        data = b"".join(_flat(b) for b in msg.buffers)
        entry: bytes = msgpack.packb([*self._meta(msg), None, data])
        return entry

    async def send(self, dest: int, msg: Message) -> None:
        """Store ``msg`` for ``dest``; returns once Redis holds it (see the module docstring)."""
        self._check_open()
        if msg.nbytes - len(msg.header) > self._cfg.inline_bytes:
            await self.publish([dest], [msg])
            return
        mb = self.mailbox(dest)
        entry = self._inline_entry(msg)
        await self._run(self._cmd.pipeline((("RPUSH", mb, entry), ("PEXPIRE", mb, self._ttl_ms))))
        self._stats["messages_sent"] += 1
        self._stats["bytes_sent"] += msg.nbytes

    async def publish(self, dests: Sequence[int], msgs: Sequence[Message]) -> None:
        """Send one payload to several ranks, storing its chunks only once.

        ``msgs[i]`` goes to ``dests[i]``; all must share header and buffers
        (they differ in sequence number). Small payloads are copied into each
        mailbox; large ones are chunked once and read by every destination.
        """
        self._check_open()
        if not msgs:
            return
        first = msgs[0]
        payload = sum(_flat(b).nbytes for b in first.buffers)
        if payload <= self._cfg.inline_bytes:
            commands: list[tuple[Any, ...]] = []
            for dest, msg in zip(dests, msgs):
                mb = self.mailbox(dest)
                commands += [("RPUSH", mb, self._inline_entry(msg)), ("PEXPIRE", mb, self._ttl_ms)]
            await self._run(self._cmd.pipeline(commands))
        else:
            await self._send_chunked(dests, msgs, payload)
        self._stats["messages_sent"] += len(msgs)
        self._stats["bytes_sent"] += first.nbytes * len(msgs)

    async def _send_chunked(
        self, dests: Sequence[int], msgs: Sequence[Message], payload: int
    ) -> None:
        n = next(self._counter)
        stem = f"{self._base}:c:{self.rank}:{n}"
        views = [_flat(b) for b in msgs[0].buffers]
        offsets, laid_out = _layout([v.nbytes for v in views])
        size = _chunk_size(laid_out, self._cfg)
        values = _chunk_values(views, size, offsets)
        ttl = self._ttl_ms
        turn = next(self._bulk_turn)
        conn = self._bulk[turn]
        commands: list[tuple[Any, ...]] = []
        stream = self._cfg.stream_min_chunks
        if len(dests) == 1 and stream and len(values) >= stream:
            # Streamed: the descriptor goes first; after each chunk, its number is pushed
            # onto a notice list the receiver is blocked on, so writing and reading overlap.
            notices = f"{stem}:n"
            ref: list[Any] = [stem, size, None, notices]
            commands += self._entries(dests, msgs, ref)
            for i, value in enumerate(values):
                commands.append(("SET", f"{stem}:{i}", value, "PX", ttl))
                commands.append(("RPUSH", notices, i))
                commands.append(("PEXPIRE", notices, ttl))
        else:
            # Stored, then the descriptors (the default; for a payload published to
            # several ranks, the reader that brings the count to zero deletes the chunks).
            rc_key = f"{self._base}:rc:{self.rank}:{n}" if len(dests) > 1 else None
            for i, value in enumerate(values):
                commands.append(("SET", f"{stem}:{i}", value, "PX", ttl))
            if rc_key is not None:
                commands.append(("SET", rc_key, len(dests), "PX", ttl))
            ref = [stem, size, rc_key, None]
            commands += self._entries(dests, msgs, ref)
            if self._slots is not None:
                # Descriptors go out in send order: each waits for the one before it.
                before, mine = self._stored, asyncio.get_running_loop().create_future()
                self._stored = mine
                try:
                    await self._run(self._store(turn, commands, len(values), before))
                finally:
                    if not mine.done():
                        mine.set_result(None)
                self._stats["chunks_written"] += len(values)
                return
        self._stats["chunks_written"] += len(values)
        await self._run(conn.pipeline(commands))

    async def _store(
        self,
        turn: int,
        commands: list[tuple[Any, ...]],
        chunks: int,
        before: asyncio.Future[None] | None,
    ) -> None:
        """Run ``commands`` on bulk connection ``turn``: its first ``chunks`` store chunks,
        at most :meth:`_window` of them outstanding there (shared with the fetches); the
        rest, from the first ``RPUSH`` of a descriptor on, once ``before`` (the previous
        store's) is done, so that descriptors reach the mailboxes in send order.

        A store that fails or is cancelled before its descriptors are written deletes the
        keys it wrote (nothing points to them yet); once they are written, the message is
        on its way and the replies are only awaited."""
        assert self._slots is not None
        conn, slots = self._bulk[turn], self._slots[turn]
        asked: list[asyncio.Future[Any]] = []
        try:
            for i, command in enumerate(commands):
                if i < chunks:
                    fut = await _in_window(slots, functools.partial(conn.submit, *command))
                else:
                    if command[0] == "RPUSH" and before is not None:
                        await asyncio.shield(before)
                        before = None
                    fut = conn.submit(*command)
                asked.append(fut)
        except BaseException:
            for fut in asked:
                fut.cancel()  # frees its slot; the reply is still read and dropped
            stored = [c[1] for c in commands[: len(asked)] if c[0] == "SET"]
            if stored and not conn.closed:
                conn.submit("DEL", *stored)
            raise
        await conn.drain()
        await asyncio.gather(*asked)  # the first error reply, if any

    # -- counters --
    async def arrive(self, name: str, size: int) -> bool:
        """Count this rank in at the barrier counter ``name``; True if it arrived last.

        ``INCR`` (and ``PEXPIRE``) of the job-scoped key ``…:bar:{name}`` in one
        round trip. The rank that brings the count to ``size`` deletes the key
        (concurrently with whatever release its caller sends); the others call
        :meth:`released` once they are let through. Until then the key is
        remembered, and deleted when the channel closes, so a barrier that times
        out or is cancelled leaves nothing behind.
        """
        self._check_open()
        key = f"{self._base}:bar:{name}"
        self._counters.add(key)
        count, _ = await self._run(
            self._cmd.pipeline((("INCR", key), ("PEXPIRE", key, self._ttl_ms)))
        )
        self._stats["counter_increments"] += 1
        if int(count) < size:
            return False
        if count > size:
            raise ChannelError(
                f"barrier counter {key} at {self.endpoint} reached {count} of {size}: "
                "ranks of different jobs share this job name"
            )
        # Not awaited: the DEL rides in the same pipeline as the release that follows.
        self._cmd.submit("DEL", key).add_done_callback(functools.partial(self._deleted, key))
        return True

    def _deleted(self, key: str, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._counters.discard(key)

    def released(self, name: str) -> None:
        """The barrier ``name`` let this rank through (the last arriver deletes the counter)."""
        self._counters.discard(f"{self._base}:bar:{name}")

    def _entries(
        self, dests: Sequence[int], msgs: Sequence[Message], ref: list[Any]
    ) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for dest, msg in zip(dests, msgs):
            entry = msgpack.packb([*self._meta(msg), ref, None])
            commands.append(("RPUSH", self.mailbox(dest), entry))
            commands.append(("PEXPIRE", self.mailbox(dest), self._ttl_ms))
        return commands

    async def _run(self, aw: Any) -> Any:
        try:
            return await aw
        except (ConnectionError, RespError) as exc:
            err = ChannelError(f"Redis at {self.endpoint} failed: {exc}")
            self._report(err)
            raise err from exc

    # -- receiving --
    def start(self, on_message: Any, on_failure: Any) -> None:
        super().start(on_message, on_failure)
        self._receiver = asyncio.get_running_loop().create_task(
            self._receive(), name=f"afmi-redis-receiver-{self.rank}"
        )

    async def _receive(self) -> None:
        mailbox = self.mailbox(self.rank)
        try:
            while True:
                reply = await self._blocking.command("BLPOP", mailbox, 0)
                entry = reply[1]
                if entry == _STOP:
                    return
                self._handle(entry)
                # Let the receiver that this entry woke run (and, say, send its answer)
                # before this task writes its next BLPOP.
                await asyncio.sleep(0)
        except Exception as exc:  # noqa: BLE001 - any failure ends the channel, reported once
            if not self._closed:
                what = (
                    "lost the connection to"
                    if isinstance(exc, (ConnectionError, RespError))
                    else f"unreadable entry in {mailbox} at"
                )
                self._report(ChannelError(f"{what} Redis at {self.endpoint}: {exc!r}"))

    def _handle(self, entry: bytes) -> None:
        context, source, tag, seq, header, sizes, ref, data = msgpack.unpackb(entry)
        slot: list[Any] = [None]
        self._order.setdefault(source, collections.deque()).append(slot)
        if ref is None:
            mv = memoryview(bytearray(data))  # writable, like every received buffer
            buffers, pos = [], 0
            for n in sizes:
                buffers.append(mv[pos : pos + n])
                pos += n
            slot[0] = Message(context, source, tag, seq, header, buffers)
            self._flush(source)
            return
        msg = Message(context, source, tag, seq, header, [])
        claim = self.destination
        if claim is not None and len(sizes) == 1:
            # a posted recv(out=) that this message will match: fetch straight into it
            msg.landed = claim(context, source, tag, seq, sizes)
        task = asyncio.get_running_loop().create_task(self._fetch(slot, msg, sizes, ref))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, slot: list[Any], msg: Message, sizes: list[int], ref: list[Any]) -> None:
        stem, chunk, rc_key, notices = ref
        # One allocation laid out as the stored payload (_layout), every buffer a view
        # of it: memory of an earlier message nothing refers to any more (afmi.wire.pool),
        # else np.empty (no zero-fill of pages that the socket is about to overwrite).
        # A message of one buffer that a posted receive claimed goes into its array.
        offsets, total = _layout(sizes)
        if msg.landed is not None:
            whole = memoryview(msg.landed.into[0]).cast("B")
        else:
            whole = memoryview(self.new_buffer(total).data)
        buffers = [whole[start : start + n] for start, n in zip(offsets, sizes)]
        nchunks = -(-total // chunk)
        keys = _ref_keys(ref, nchunks)
        token = id(slot)
        self._fetching[token] = keys
        notifier: RespConnection | None = None
        try:
            targets = [whole[i * chunk : (i + 1) * chunk] for i in range(nchunks)]
            if notices is not None:
                notifier = await self._notifier()
                found = await self._fetch_streamed(notifier, stem, notices, targets)
                self._notifiers.append(notifier)
                notifier = None
            else:
                verb = "GET" if rc_key is not None else "GETDEL"
                found = await self._get_all(stem, targets, verb)
                if rc_key is not None and await self._cmd.command("DECR", rc_key) <= 0:
                    await self._cmd.command("DEL", *keys)
            if not all(found):
                raise RespError(
                    f"chunk {found.index(False)} of {stem} is missing: it expired before it "
                    f"was read (raise channels.redis.key_ttl, now {self._cfg.key_ttl} s)"
                )
        except Exception as exc:  # noqa: BLE001 - reported through on_failure
            if not self._closed:
                self._report(ChannelError(f"Redis at {self.endpoint} failed: {exc}", msg.source))
            return
        finally:
            if notifier is not None:
                notifier.close()  # it may still have blocked commands queued
            if not self._closed:
                self._fetching.pop(token, None)
        self._stats["chunks_read"] += nchunks
        self._stats["received_in_place"] += msg.landed is not None
        msg.buffers = buffers
        slot[0] = msg
        self._flush(msg.source)

    def _window(self) -> int:
        """Chunk requests one bulk connection may have waiting for a reply (0: no limit)."""
        window = self._cfg.window_bytes
        if window <= 0:
            return 0
        return max(window // (self._cfg.chunk_bytes * max(len(self._bulk), 1)), 1)

    async def _get_all(self, stem: str, targets: list[memoryview], verb: str) -> list[bool]:
        """``verb`` every chunk of ``stem`` into its target, spread over the bulk connections.

        Each connection has at most :meth:`_window` requests outstanding, over all of this
        rank's fetches: a chunk is asked for when an earlier one has arrived."""
        conns = self._bulk
        futs: list[asyncio.Future[Any]] = [None] * len(targets)  # type: ignore[list-item]
        if self._slots is None:
            for c, conn in enumerate(conns):
                mine = range(c, len(targets), len(conns))
                if not mine:
                    continue
                got = conn.submit_many(
                    [(verb, f"{stem}:{i}") for i in mine], [targets[i] for i in mine]
                )
                for i, fut in zip(mine, got):
                    futs[i] = fut
            return list(await asyncio.gather(*futs))

        async def ask(c: int, conn: RespConnection, slots: asyncio.Semaphore) -> None:
            for i in range(c, len(targets), len(conns)):
                get = functools.partial(conn.submit_get_into, f"{stem}:{i}", targets[i], verb)
                futs[i] = await _in_window(slots, get)

        try:
            await asyncio.gather(
                *(ask(c, conn, slots) for c, (conn, slots) in enumerate(zip(conns, self._slots)))
            )
        except BaseException:
            for fut in futs:
                if fut is not None:
                    fut.cancel()  # frees its slot; the reply is still read and dropped
            raise
        return list(await asyncio.gather(*futs))  # cancelled, it cancels them all

    async def _notifier(self) -> RespConnection:
        while self._notifiers:
            conn = self._notifiers.pop()
            if not conn.closed:
                return conn
        return await self.endpoint.raw()

    async def _fetch_streamed(
        self, notifier: RespConnection, stem: str, notices: str, targets: list[memoryview]
    ) -> list[bool]:
        """Read each chunk as soon as its notice arrives (the sender may still be writing)."""
        wait = f"{self._cfg.key_ttl:.3f}"
        pending = [notifier.submit("BLPOP", notices, wait) for _ in targets]
        gets = []
        for i, notice in enumerate(pending):
            if await notice is None:
                return [False] * len(targets)
            conn = self._bulk[i % len(self._bulk)]
            gets.append(conn.submit_get_into(f"{stem}:{i}", targets[i], "GETDEL"))
        return list(await asyncio.gather(*gets))

    def _flush(self, source: int) -> None:
        queue = self._order[source]
        while queue and queue[0][0] is not None:
            msg = queue.popleft()[0]
            self._stats["messages_received"] += 1
            self._stats["bytes_received"] += msg.nbytes
            if self._on_message is not None and not self._closed:
                self._on_message(msg)

    # -- failure and closing --
    def _report(self, err: ChannelError) -> None:
        if self._failed or self._closed:
            return
        self._failed = True
        if self._on_failure is not None:
            self._on_failure(err)

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelError(f"rank {self.rank}: the Redis channel is closed")

    async def aclose(self) -> None:
        """Stop the receiver, delete this rank's mailbox and the chunks it points to."""
        if self._closed:
            return
        self._closed = True
        mailbox = self.mailbox(self.rank)
        if self._receiver is not None:
            if not self._receiver.done() and not self._cmd.closed:
                with suppress(ConnectionError, RespError, TimeoutError):
                    async with asyncio.timeout(self._cfg.connect_timeout):
                        await self._cmd.command("LPUSH", mailbox, _STOP)
                        await asyncio.shield(self._receiver)
            self._receiver.cancel()
            with suppress(asyncio.CancelledError):
                await self._receiver
        for task in list(self._fetches):
            task.cancel()
        if self._fetches:
            await asyncio.gather(*self._fetches, return_exceptions=True)
        with suppress(ConnectionError, RespError, redis.exceptions.RedisError, TimeoutError):
            async with asyncio.timeout(self._cfg.connect_timeout):
                await self._cleanup(mailbox)
        for conn in [self._cmd, self._blocking, *self._bulk, *self._notifiers]:
            conn.close()
        await self._control.aclose()

    async def _cleanup(self, mailbox: str) -> None:
        """Delete the mailbox and whatever undelivered descriptors in it refer to."""
        if self._cmd.closed:
            return
        doomed = [k for keys in self._fetching.values() for k in keys]
        doomed += sorted(self._counters)
        for entry in await self._cmd.command("LRANGE", mailbox, 0, -1) or []:
            if entry == _STOP:
                continue
            _, _, _, _, _, sizes, ref, _ = msgpack.unpackb(entry)
            if ref is None:
                continue
            keys = _ref_keys(ref, _chunk_count(sizes, ref[1]))
            if ref[2] is None or await self._cmd.command("DECR", ref[2]) <= 0:  # shared
                doomed += keys
        await self._cmd.command("DEL", mailbox, *doomed)

    def stats(self) -> dict[str, Any]:
        """Messages and bytes sent and received, chunks written and read, barrier arrivals,
        and messages received straight into a posted receive's array."""
        keys = ("messages_sent", "bytes_sent", "messages_received", "bytes_received")
        out = {k: self._stats[k] for k in keys}
        out["chunks_written"] = self._stats["chunks_written"]
        out["chunks_read"] = self._stats["chunks_read"]
        out["counter_increments"] = self._stats["counter_increments"]
        #: chunked messages fetched straight into a posted receive's array (recv(out=))
        out["received_in_place"] = self._stats["received_in_place"]
        return out


def _explain(exc: BaseException, endpoint: RedisEndpoint, timeout: float) -> str:
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, TimeoutError) and not isinstance(exc, redis.exceptions.RedisError):
        return (
            f"Redis at {endpoint} did not answer within {timeout} s "
            "(channels.redis.connect_timeout)"
        )
    if isinstance(exc, redis.exceptions.AuthenticationError) or any(
        w in low for w in ("wrongpass", "noauth", "invalid password", "auth")
    ):
        return (
            f"Redis at {endpoint} refused the credentials: {text}. "
            "Put the right user and password in channels.redis.url (redis://user:pass@host:port/db)"
        )
    if "db index" in low or "invalid db" in low:
        return f"Redis at {endpoint} has no such database: {text}"
    return f"cannot reach Redis at {endpoint}: {text}"


class RedisDriver:
    """Driver for ``channel="redis"`` (configured by ``channels.redis``)."""

    name = "redis"

    def group(
        self, size: int, job: str, config: Config
    ) -> AbstractAsyncContextManager[list[Channel]]:
        """Open the channels of ranks ``0..size-1`` of ``job`` at once; close them all on exit."""
        cfg = config.channels.redis
        return open_group(size, lambda r: RedisChannel.open(r, size, job, cfg))

    async def connect(
        self, rank: int, size: int, job: str, config: Config, env: Mapping[str, str]
    ) -> Channel:
        """Open one rank's channel (``AFMI_REDIS_URL`` in ``env`` overrides the URL)."""
        cfg = config.channels.redis
        url = env.get("AFMI_REDIS_URL")
        if url:
            import dataclasses

            cfg = dataclasses.replace(cfg, url=url)
        return await RedisChannel.open(rank, size, job, cfg)
