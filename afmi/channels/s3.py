"""The S3 channel: one object per message in a bucket, adaptive polling.

Object keys (all under ``{prefix}/{job}/``):

* ``mb/{dest}/{src:06d}.{n:012d}.{kind}{data}`` — message number ``n`` from
  ``src`` to ``dest``. Keys sort by sender, then by the sender's counter for
  that destination, so one LIST of the mailbox gives each sender's messages
  in send order. ``kind`` is ``k`` when the whole message is encoded into
  ``data`` (the object is empty and needs no GET: barriers, small control
  messages), ``o`` when the body holds the message, ``p`` when the message
  points to a payload published once for several readers.
* ``sh/{src:06d}.{n:012d}`` and ``sh/{src:06d}.{n:012d}.r/{dest}`` — a
  payload published for several readers (from ``publish_min_bytes`` on;
  smaller ones go to every reader as a message of its own) and one marker
  per reader that has not read it yet. A
  reader deletes its marker after its GET, then lists the markers; whoever
  finds none left deletes the payload (S3 lists are strongly consistent, so
  the last reader always sees an empty list).

Each rank runs one poller that lists only its own mailbox prefix: it polls
every ``poll_min`` seconds, doubling the interval while nothing arrives up
to ``poll_max``, and drops back to ``poll_min`` as soon as something does,
or as soon as a receive of its rank begins to wait (:meth:`S3Channel.awaited`:
the backed-off poller lists at once).
Objects are deleted as soon as they are read, in the background: a
message is delivered once its body is read, and the receive does not wait for
the DELETE (nor, for a published payload, for the marker's DELETE and LIST);
on close a rank waits for those deletes, then deletes whatever is still in
its mailbox. Large bodies use multipart upload
(``multipart_threshold``); a failed or cancelled multipart upload is
aborted so no parts are left behind. Requests are counted by type in
:meth:`S3Channel.stats`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import itertools
import struct
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any

import msgpack
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from afmi.channels.base import Channel, open_group
from afmi.errors import ChannelError
from afmi.wire.message import Buffer, Message

if TYPE_CHECKING:
    from afmi.config import Config, S3Config

__all__ = ["S3Channel", "S3Driver"]

_LEN = struct.Struct("<I")
_REQUESTS = ("put", "get", "list", "delete", "head")
#: Longest encoded pointer that may ride in a key (S3 keys hold up to 1024 bytes).
_MAX_KEY_PAYLOAD = 700


def _flat(buf: Buffer) -> memoryview:
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _split(data: memoryview, sizes: Sequence[int]) -> list[Buffer]:
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos : pos + n])
        pos += n
    return out


class S3Channel(Channel):
    """One rank's end of the S3 channel; see the module docstring."""

    name = "s3"
    spin = False

    def __init__(
        self, rank: int, size: int, job: str, cfg: S3Config, client: Any, stack: AsyncExitStack
    ) -> None:
        super().__init__(rank, size)
        self.job = job
        self._cfg = cfg
        self._client = client
        self._stack = stack
        self._bucket = cfg.bucket
        self._root = f"{cfg.prefix}/{job}"
        self._counters: dict[int, itertools.count[int]] = {}
        self._shared = itertools.count()
        self._poller: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        #: Deletes of objects already delivered: off the receive path, awaited on close.
        self._tidying: set[asyncio.Task[None]] = set()
        #: Keys being read now, and keys deleted (with the number of the next LIST then):
        #: a LIST that started before a delete finished may still show the key.
        self._seen: set[str] = set()
        self._deleted: dict[str, int] = {}
        self._lists = 0
        self._order: dict[int, collections.deque[list[Any]]] = {}
        self._closed = False
        self._failed = False
        #: Set by :meth:`awaited` to cut a backed-off poll interval short.
        self._wake = asyncio.Event()
        self._interval = cfg.poll_min
        self.requests = collections.Counter[str]({k: 0 for k in _REQUESTS})
        self._stats = collections.Counter[str]()

    @property
    def endpoint(self) -> str:
        """``s3://bucket`` at the endpoint URL, for messages."""
        where = self._cfg.endpoint_url or "AWS"
        return f"s3://{self._bucket} at {where}"

    # -- opening --
    @classmethod
    async def open(cls, rank: int, size: int, job: str, cfg: S3Config) -> S3Channel:
        """Create the client and check the bucket is there and usable.

        Raises:
            ChannelError: unreachable endpoint, missing bucket, missing or wrong
                credentials, naming the endpoint, within ``cfg.connect_timeout``.
        """
        if not cfg.bucket:
            raise ChannelError("channels.s3.bucket is not set: name the bucket the job may use")
        stack = AsyncExitStack()
        where = f"s3://{cfg.bucket} at {cfg.endpoint_url or 'AWS'}"
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                client = await stack.enter_async_context(_client(cfg))
                await client.head_bucket(Bucket=cfg.bucket)
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, (TimeoutError, BotoCoreError, ClientError, OSError)):
                raise ChannelError(_explain(exc, where, cfg)) from exc
            raise
        channel = cls(rank, size, job, cfg, client, stack)
        channel.requests["head"] += 1
        return channel

    def mailbox(self, rank: int) -> str:
        """Key prefix of ``rank``'s mailbox (ends with ``/``)."""
        return f"{self._root}/mb/{rank}/"

    # -- sending --
    def _next_key(self, dest: int) -> str:
        counter = self._counters.setdefault(dest, itertools.count())
        return f"{self.mailbox(dest)}{self.rank:06d}.{next(counter):012d}."

    @staticmethod
    def _meta(msg: Message) -> list[Any]:
        sizes = [_flat(b).nbytes for b in msg.buffers]
        return [msg.context, msg.source, msg.tag, msg.seq, msg.header, sizes]

    def _key_payload(self, msg: Message) -> str | None:
        limit = self._cfg.key_payload_bytes
        if msg.nbytes > limit:
            return None
        raw = msgpack.packb([*self._meta(msg), b"".join(_flat(b) for b in msg.buffers)])
        text = _b64(raw)
        return text if len(text) <= limit and len(self._root) + len(text) < 950 else None

    async def send(self, dest: int, msg: Message) -> None:
        """Store ``msg`` as one object in ``dest``'s mailbox."""
        self._check_open()
        base = self._next_key(dest)
        inline = self._key_payload(msg)
        try:
            if inline is not None:
                await self._put(base + "k" + inline, b"")
            else:
                await self._put_body(base + "o", self._meta(msg), msg.buffers)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._broken(exc, dest) from exc
        self._stats["messages_sent"] += 1
        self._stats["bytes_sent"] += msg.nbytes

    async def publish(self, dests: Sequence[int], msgs: Sequence[Message]) -> None:
        """Send one payload to several ranks with a single upload of its body.

        ``msgs[i]`` goes to ``dests[i]``; all share header and buffers.
        Payloads below ``publish_min_bytes`` (and any that fit in a key) are
        sent one by one, an object per reader: a shared upload costs a marker
        and a pointer PUT per reader more, which only pays off when uploading
        the payload again for every reader takes longer. Larger ones are
        uploaded once under ``sh/`` and every destination gets a pointer.
        """
        self._check_open()
        if not msgs:
            return
        small = msgs[0].nbytes < self._cfg.publish_min_bytes
        if len(msgs) == 1 or small or self._key_payload(msgs[0]) is not None:
            await asyncio.gather(*(self.send(d, m) for d, m in zip(dests, msgs)))
            return
        name = f"{self.rank:06d}.{next(self._shared):012d}"
        data_key = f"{self._root}/sh/{name}"
        pointer_texts = [_b64(msgpack.packb([*self._meta(m)[:5], name])) for m in msgs]
        if max(len(t) for t in pointer_texts) > _MAX_KEY_PAYLOAD:  # huge header: no pointer
            await asyncio.gather(*(self.send(d, m) for d, m in zip(dests, msgs)))
            return
        try:
            await asyncio.gather(
                self._put_body(data_key, self._meta(msgs[0])[5], msgs[0].buffers),
                *(self._put(f"{data_key}.r/{d}", b"") for d in dests),
            )
            await asyncio.gather(
                *(self._put(self._next_key(d) + "p" + t, b"") for d, t in zip(dests, pointer_texts))
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._broken(exc, dests[0]) from exc
        self._stats["messages_sent"] += len(msgs)
        self._stats["bytes_sent"] += msgs[0].nbytes * len(msgs)

    async def _put(self, key: str, body: bytes) -> None:
        self.requests["put"] += 1
        await self._client.put_object(Bucket=self._bucket, Key=key, Body=body)

    async def _put_body(self, key: str, meta: list[Any], buffers: list[Buffer]) -> None:
        head = msgpack.packb(meta)
        views = [_LEN.pack(len(head)), head, *(_flat(b) for b in buffers)]
        total = sum(len(v) for v in views)
        body = bytearray(total)
        pos = 0
        for v in views:
            body[pos : pos + len(v)] = v
            pos += len(v)
        if total <= self._cfg.multipart_threshold:
            await self._put(key, bytes(body))
        else:
            await self._put_multipart(key, memoryview(body))

    async def _put_multipart(self, key: str, body: memoryview) -> None:
        part = self._cfg.multipart_part_bytes
        self.requests["put"] += 1
        upload = await self._client.create_multipart_upload(Bucket=self._bucket, Key=key)
        upload_id = upload["UploadId"]
        try:

            async def put_part(number: int, start: int) -> dict[str, Any]:
                self.requests["put"] += 1
                out = await self._client.upload_part(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(body[start : start + part]),
                )
                return {"PartNumber": number, "ETag": out["ETag"]}

            parts = await asyncio.gather(
                *(put_part(i + 1, s) for i, s in enumerate(range(0, len(body), part)))
            )
            self.requests["put"] += 1
            await self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.requests["delete"] += 1
            with suppress(BotoCoreError, ClientError, OSError, asyncio.CancelledError):
                await asyncio.shield(
                    self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=key, UploadId=upload_id
                    )
                )
            raise

    # -- receiving --
    def start(self, on_message: Any, on_failure: Any) -> None:
        super().start(on_message, on_failure)
        self._poller = asyncio.get_running_loop().create_task(
            self._poll(), name=f"afmi-s3-poller-{self.rank}"
        )

    async def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            self.requests["list"] += 1
            out = await self._client.list_objects_v2(**args)
            keys += [o["Key"] for o in out.get("Contents", ())]
            if not out.get("IsTruncated"):
                return keys
            token = out["NextContinuationToken"]

    async def _poll(self) -> None:
        prefix = self.mailbox(self.rank)
        try:
            while True:
                number = self._lists
                self._lists += 1
                listed = await self._list(prefix)
                fresh = [k for k in listed if k not in self._seen and k not in self._deleted]
                if self._deleted:
                    shown = set(listed)
                    for key, after in list(self._deleted.items()):
                        if number >= after and key not in shown:
                            del self._deleted[key]
                if fresh:
                    self._interval = self._cfg.poll_min
                    self._wake.clear()  # this LIST answers a wake-up that came during it
                    self._take(fresh)
                    continue
                self._stats["idle_polls"] += 1
                await self._idle()
        except Exception as exc:  # noqa: BLE001 - any failure ends the channel, reported once
            self._report(self._broken(exc, None))

    async def _idle(self) -> None:
        """Wait the current interval before the next LIST, or less if :meth:`awaited` says so.

        A full wait doubles the next interval (up to ``poll_max``); a wait cut
        short by a receive that began to wait drops it back to ``poll_min``. A
        wake-up that came while the last LIST was in flight (which may have been
        sent before the message was stored) ends this wait at once.
        """
        try:
            async with asyncio.timeout(self._interval):
                await self._wake.wait()
        except TimeoutError:
            self._interval = min(self._interval * 2, self._cfg.poll_max)
        else:
            self._wake.clear()
            self._stats["wakeups"] += 1
            self._interval = self._cfg.poll_min

    def awaited(self) -> None:
        """A receive of this rank began to wait: poll now if the poller is backing off.

        A rank that computed for a while has a poller that lists only every few
        hundred milliseconds (up to ``poll_max``); without this, its next receive
        would wait out that interval even when the message is already stored.
        While the poller lists every ``poll_min`` this does nothing, so a rank
        receiving in a loop pays no extra LISTs.
        """
        if self._interval > self._cfg.poll_min:
            self._wake.set()

    def _take(self, keys: list[str]) -> None:
        inline_done: list[str] = []
        for key in keys:
            self._seen.add(key)
            name = key.rsplit("/", 1)[1]
            src_text, _, rest = name.partition(".")
            kind, data = rest[13:14], rest[14:]
            source = int(src_text)
            slot: list[Any] = [None]
            self._order.setdefault(source, collections.deque()).append(slot)
            if kind == "k":
                context, src, tag, seq, header, sizes, raw = msgpack.unpackb(_unb64(data))
                body = memoryview(bytearray(raw))  # writable, like every received buffer
                slot[0] = Message(context, src, tag, seq, header, _split(body, sizes))
                inline_done.append(key)
                self._flush(source)
            else:
                self._spawn(self._fetches, self._fetch(key, kind, data, source, slot))
        if inline_done:
            self._tidy(self._delete(inline_done), None)

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _tidy(self, coro: Any, source: int | None) -> None:
        """Run ``coro`` (deletes of delivered objects) in the background.

        The message is already delivered, so its receiver does not wait for the
        deletes; :meth:`aclose` waits for them, and a failure fails the channel
        as a failed receive would.
        """

        async def tidy() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - reported through on_failure
                self._report(self._broken(exc, source))

        self._spawn(self._tidying, tidy())

    async def _get(self, key: str) -> bytes:
        self.requests["get"] += 1
        out = await self._client.get_object(Bucket=self._bucket, Key=key)
        async with out["Body"] as body:
            data: bytes = await body.read()
        return data

    async def _fetch(self, key: str, kind: str, data: str, source: int, slot: list[Any]) -> None:
        try:
            if kind == "o":
                body = memoryview(bytearray(await self._get(key)))
                (n,) = _LEN.unpack_from(body)
                context, src, tag, seq, header, sizes = msgpack.unpackb(body[4 : 4 + n])
                msg = Message(context, src, tag, seq, header, _split(body[4 + n :], sizes))
                self._tidy(self._delete([key]), source)
            else:
                context, src, tag, seq, header, name = msgpack.unpackb(_unb64(data))
                msg = await self._read_shared(key, name, (context, src, tag, seq, header))
                self._tidy(self._release_shared(key, f"{self._root}/sh/{name}"), source)
        except Exception as exc:  # noqa: BLE001 - reported through on_failure
            self._report(self._broken(exc, source))
            return
        slot[0] = msg
        self._flush(source)

    async def _read_shared(self, pointer: str, name: str, fields: tuple[Any, ...]) -> Message:
        """Read the payload ``pointer`` names (the caller releases it: :meth:`_release_shared`)."""
        data_key = f"{self._root}/sh/{name}"
        body = memoryview(bytearray(await self._get(data_key)))
        (n,) = _LEN.unpack_from(body)
        sizes = msgpack.unpackb(body[4 : 4 + n])
        context, src, tag, seq, header = fields
        return Message(context, src, tag, seq, header, _split(body[4 + n :], sizes))

    async def _release_shared(self, pointer: str, data_key: str) -> None:
        """Drop this rank's pointer and marker; the last reader deletes the payload."""
        await self._delete([pointer, f"{data_key}.r/{self.rank}"])
        if not await self._list(f"{data_key}.r/"):
            await self._delete([data_key])

    async def _delete(self, keys: list[str]) -> None:
        self.requests["delete"] += 1
        if len(keys) == 1:
            await self._client.delete_object(Bucket=self._bucket, Key=keys[0])
        else:
            await self._client.delete_objects(
                Bucket=self._bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        for k in keys:
            if k in self._seen:
                self._seen.discard(k)
                self._deleted[k] = self._lists

    def _flush(self, source: int) -> None:
        queue = self._order[source]
        while queue and queue[0][0] is not None:
            msg = queue.popleft()[0]
            self._stats["messages_received"] += 1
            self._stats["bytes_received"] += msg.nbytes
            if self._on_message is not None and not self._closed:
                self._on_message(msg)

    # -- failure and closing --
    def _broken(self, exc: BaseException, peer: int | None) -> ChannelError:
        return ChannelError(f"S3 {self.endpoint} failed: {_reason(exc)}", peer)

    def _report(self, err: ChannelError) -> None:
        if self._failed or self._closed:
            return
        self._failed = True
        if self._on_failure is not None:
            self._on_failure(err)

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelError(f"rank {self.rank}: the S3 channel is closed")

    async def aclose(self) -> None:
        """Stop polling and delete every object left in this rank's mailbox."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in [self._poller, *self._fetches] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with suppress(BotoCoreError, ClientError, OSError, TimeoutError):
            async with asyncio.timeout(self._cfg.connect_timeout):
                # Deletes of delivered objects finish (a release cut short could leave a
                # payload no pointer names any more), then whatever is left goes.
                await asyncio.gather(*self._tidying, return_exceptions=True)
                await self._cleanup()
        await self._stack.aclose()

    async def _cleanup(self) -> None:
        left = await self._list(self.mailbox(self.rank))
        pointers = [k for k in left if k.rsplit("/", 1)[1][20:21] == "p"]
        plain = [k for k in left if k not in pointers]
        for i in range(0, len(plain), 1000):
            await self._delete(plain[i : i + 1000])
        for key in pointers:
            meta = msgpack.unpackb(_unb64(key.rsplit("/", 1)[1][21:]))
            await self._release_shared(key, f"{self._root}/sh/{meta[5]}")

    def stats(self) -> dict[str, Any]:
        """Messages and bytes, and S3 requests by type (``put``, ``get``, ``list``, ...)."""
        keys = (
            "messages_sent",
            "bytes_sent",
            "messages_received",
            "bytes_received",
            "idle_polls",
            "wakeups",
        )
        out: dict[str, Any] = {k: self._stats[k] for k in keys}
        out["requests"] = dict(self.requests)
        return out


def _client(cfg: S3Config) -> Any:
    session = get_session()
    config = AioConfig(
        connect_timeout=cfg.connect_timeout,
        read_timeout=max(cfg.connect_timeout, 60.0),
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=cfg.max_connections,
    )
    return session.create_client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=cfg.secret_access_key,
        aws_session_token=cfg.session_token,
        config=config,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '') or exc}"
    return str(exc) or type(exc).__name__


def _explain(exc: BaseException, where: str, cfg: S3Config) -> str:
    if isinstance(exc, TimeoutError):
        return (
            f"S3 {where} did not answer within {cfg.connect_timeout} s "
            "(channels.s3.connect_timeout)"
        )
    if isinstance(exc, NoCredentialsError):
        return (
            f"no AWS credentials for S3 {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or channels.s3.access_key_id/secret_access_key"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            return (
                f"bucket {cfg.bucket!r} does not exist at S3 {where}: "
                "create it or fix channels.s3.bucket"
            )
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
            status == 403
        ):
            return (
                f"S3 {where} refused the credentials ({code or status}): check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or channels.s3.access_key_id"
            )
    return f"cannot use S3 {where}: {_reason(exc)}"


class S3Driver:
    """Driver for ``channel="s3"`` (configured by ``channels.s3``)."""

    name = "s3"

    def group(
        self, size: int, job: str, config: Config
    ) -> AbstractAsyncContextManager[list[Channel]]:
        """Open the channels of ranks ``0..size-1`` of ``job`` at once; close them all on exit."""
        cfg = config.channels.s3
        return open_group(size, lambda r: S3Channel.open(r, size, job, cfg))

    async def connect(
        self, rank: int, size: int, job: str, config: Config, env: Mapping[str, str]
    ) -> Channel:
        """Open one rank's channel.

        ``AFMI_S3_BUCKET`` and ``AFMI_S3_ENDPOINT_URL`` in ``env`` override
        ``channels.s3.bucket`` and ``channels.s3.endpoint_url``.
        """
        cfg = config.channels.s3
        bucket = env.get("AFMI_S3_BUCKET") or cfg.bucket
        endpoint_url = env.get("AFMI_S3_ENDPOINT_URL") or cfg.endpoint_url
        cfg = dataclasses.replace(cfg, bucket=bucket, endpoint_url=endpoint_url)
        return await S3Channel.open(rank, size, job, cfg)
