"""Configuration: one :class:`Config` object, loaded from a dict, JSON or TOML.

Every key is validated: an unknown key, a value of the wrong type or a value
out of range raises :class:`~afmi.errors.ConfigError` naming the dotted key
(``channels.redis.url``) and what is expected.

Sources, in order of use by :meth:`Config.load`: an explicit ``Config``, a
``dict``, a path to a ``.json`` or ``.toml`` file, or, when nothing is given,
the file named by the ``AFMI_CONFIG`` environment variable, else defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from afmi.errors import ConfigError

__all__ = [
    "ChannelsConfig",
    "Config",
    "DirectConfig",
    "FaasConfig",
    "ChannelModelConfig",
    "ModelConfig",
    "RedisConfig",
    "S3Config",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DirectConfig:
    """``channels.direct``: TCP links between ranks, paired by a rendezvous service."""

    #: ``host:port`` of the rendezvous service for ``afmi.connect()`` (``AFMI_RENDEZVOUS``,
    #: which ``afmi run`` sets, takes precedence).
    rendezvous: str | None = None
    #: How links form: ``"listen"`` (each rank listens; the lower rank of a pair dials the
    #: higher), ``"punch"`` (behind NAT: both sides connect at once from their registered
    #: ports, TCP simultaneous open; relay when that fails) or ``"relay"`` (all traffic
    #: through the rendezvous service).
    mode: Literal["listen", "punch", "relay"] = "listen"
    #: Address this rank listens on for peers.
    listen_host: str = "127.0.0.1"
    #: Address peers should use to reach this rank (default: ``listen_host``).
    advertise_host: str | None = None
    #: Seconds to establish all links before giving up.
    connect_timeout: float = 30.0
    #: Seconds to wait for a TCP simultaneous open before relaying through the service.
    punch_timeout: float = 2.0
    #: Allow traffic to be relayed through the rendezvous service when no direct path forms.
    relay: bool = True
    #: Seconds a closing rank waits for its peers to acknowledge the goodbye.
    close_timeout: float = 2.0
    #: TCP congestion control of the links (Linux ``TCP_CONGESTION``; ``"system"`` or None:
    #: leave the system's, whatever it is).
    #: Reno by default: BBR, some systems' default, paces a link to the bandwidth it has
    #: estimated and made messages of 256 KiB-16 MiB 1.5-2.4x slower here between ranks
    #: with a core each (where ranks outnumber cores BBR did better); cubic made a 512 KiB
    #: ping-pong in one process 2.3x slower than reno and was no faster anywhere. Linux
    #: lets an unprivileged process choose reno by default, cubic only where it is the
    #: system's default (docs/direct.md).
    tcp_congestion: str | None = "reno"
    enabled: bool = True

    def __post_init__(self) -> None:
        for key in ("connect_timeout", "punch_timeout", "close_timeout"):
            _check_positive(getattr(self, key), f"channels.direct.{key}")
        name = self.tcp_congestion
        if name == "system":
            object.__setattr__(self, "tcp_congestion", None)
        elif name is not None and (
            not isinstance(name, str) or not name or not name.isascii() or not name.isprintable()
        ):
            raise ConfigError(
                f"channels.direct.tcp_congestion must be the name of a TCP congestion control "
                f"(such as 'cubic' or 'reno'), or 'system' to leave the system's, got {name!r}"
            )


@dataclass(frozen=True)
class RedisConfig:
    """``channels.redis``: per-rank mailboxes in a Redis server."""

    url: str = "redis://127.0.0.1:6379/0"
    #: Every key afmi writes expires after this many seconds at the latest.
    key_ttl: float = 600.0
    #: Payloads above this size are cut into chunks of this size.
    chunk_bytes: int = 1024 * 1024
    #: Payloads of at most ``2 * chunk_bytes * fetch_connections`` bytes are cut into
    #: chunks of this size instead (at most ``chunk_bytes``; 0: ``chunk_bytes``), so
    #: that each fetch connection gets two chunks or more to pipeline.
    small_chunk_bytes: int = 512 * 1024
    #: Prefix of every key (the job name follows it).
    prefix: str = "afmi"
    #: Payloads up to this size travel inside the mailbox entry; larger ones as chunks.
    inline_bytes: int = 64 * 1024
    #: Connections per rank that read chunks concurrently.
    fetch_connections: int = 2
    #: Bytes of chunks one rank has asked the server to store or to send and not yet
    #: had the reply for, over its fetch connections (at least a chunk per connection);
    #: 0: every chunk of a message at once. Redis copies every reply into its output
    #: buffers until the socket takes it, and Python 3.11's asyncio copies a whole
    #: pipeline into one buffer before it sends: many outstanding megabytes cost
    #: copies and fresh memory on both sides.
    window_bytes: int = 4 * 1024 * 1024
    #: Seconds to reach and authenticate with the server before giving up.
    connect_timeout: float = 10.0
    #: Stream messages of at least this many chunks (the receiver reads each chunk
    #: while later ones are still being written); 0: never.
    stream_min_chunks: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        for key in ("key_ttl", "chunk_bytes", "fetch_connections", "connect_timeout"):
            _check_positive(getattr(self, key), f"channels.redis.{key}")
        if self.stream_min_chunks < 0:
            raise ConfigError(
                f"channels.redis.stream_min_chunks must be >= 0, got {self.stream_min_chunks}"
            )
        if self.inline_bytes < 0:
            raise ConfigError(f"channels.redis.inline_bytes must be >= 0, got {self.inline_bytes}")
        if self.small_chunk_bytes < 0:
            raise ConfigError(
                "channels.redis.small_chunk_bytes must be >= 0 (0: chunk_bytes), got "
                f"{self.small_chunk_bytes}"
            )
        if self.window_bytes < 0:
            raise ConfigError(
                f"channels.redis.window_bytes must be >= 0 (0: no window), got {self.window_bytes}"
            )
        if not self.prefix or ":" in self.prefix:
            raise ConfigError(
                f"channels.redis.prefix must be a non-empty string without ':', got {self.prefix!r}"
            )


@dataclass(frozen=True)
class S3Config:
    """``channels.s3``: one object per message in an S3 (or S3-compatible) bucket."""

    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = "afmi"
    #: First polling interval, seconds; it doubles while nothing arrives ...
    poll_min: float = 0.005
    #: ... up to this cap, seconds.
    poll_max: float = 0.5
    #: Payloads above this size are uploaded with multipart upload.
    multipart_threshold: int = 8 * 1024 * 1024
    #: Size of each part of a multipart upload (S3 needs >= 5 MiB).
    multipart_part_bytes: int = 8 * 1024 * 1024
    #: Messages whose encoding fits in this many key characters ride in the object key
    #: itself (an empty object: no GET needed). 0 disables.
    key_payload_bytes: int = 600
    #: A payload sent to several ranks at once (bcast, an allreduce's result) is uploaded
    #: once, with a marker and a pointer per reader, from this size on; a smaller one is
    #: sent to every reader as an object of its own (fewer requests). 0: always once.
    publish_min_bytes: int = 4 * 1024 * 1024
    #: Seconds to reach the endpoint and check the bucket before giving up.
    connect_timeout: float = 10.0
    #: HTTP connections per rank.
    max_connections: int = 16
    #: Credentials (default: the usual AWS environment variables, profile or role).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        for key in ("poll_min", "poll_max", "connect_timeout", "max_connections"):
            _check_positive(getattr(self, key), f"channels.s3.{key}")
        if self.poll_min > self.poll_max:
            raise ConfigError(
                f"channels.s3.poll_min ({self.poll_min}) must be <= poll_max ({self.poll_max})"
            )
        if self.multipart_part_bytes < 5 * 1024 * 1024:
            raise ConfigError(
                "channels.s3.multipart_part_bytes must be >= 5 MiB (5242880), S3's smallest "
                f"part; got {self.multipart_part_bytes}"
            )
        if self.multipart_threshold < self.multipart_part_bytes:
            raise ConfigError(
                "channels.s3.multipart_threshold must be >= channels.s3.multipart_part_bytes"
            )
        if self.publish_min_bytes < 0:
            raise ConfigError(
                f"channels.s3.publish_min_bytes must be >= 0, got {self.publish_min_bytes}"
            )
        if not 0 <= self.key_payload_bytes <= 800:
            raise ConfigError(
                f"channels.s3.key_payload_bytes must be in 0..800, got {self.key_payload_bytes}"
            )
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(
                f"channels.s3.prefix must be non-empty without a leading or trailing '/', "
                f"got {self.prefix!r}"
            )


@dataclass(frozen=True)
class ChannelsConfig:
    """``channels``: one table per channel driver."""

    direct: DirectConfig = field(default_factory=DirectConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True)
class FaasConfig:
    """``faas``: the function platform, for cost accounting."""

    #: Memory of each function, MiB.
    memory_mb: int = 1024
    #: Price of one GiB-second of function time, dollars (AWS Lambda x86).
    gib_second_price: float = 0.0000166667


@dataclass(frozen=True)
class ChannelModelConfig:
    """``model.<channel>``: overrides of one channel's performance and price model.

    Every key left unset (None) keeps the value from ``model.file`` or, failing
    that, afmi's built-in default for the channel (see :mod:`afmi.model`).
    Units are in the names: seconds, bytes per second, US dollars.
    """

    #: One-way time of a one-byte message, seconds.
    latency_s: float | None = None
    #: Extra sender time for every further message in the same round, seconds.
    per_message_s: float | None = None
    #: Mean wait of a poller before it sees a new message is half of this, seconds.
    poll_interval_s: float | None = None
    #: Messages up to this size need no fetch of their own (S3: they ride in the object
    #: key); 0: every message is fetched, bytes.
    inline_max_bytes: float | None = None
    #: Extra one-way time of a message that needs a fetch (S3: its GET), seconds.
    fetch_s: float | None = None
    #: Bandwidth of one stream (one sender to one receiver), bytes per second.
    bandwidth_single_bytes_per_s: float | None = None
    #: Bandwidth of many concurrent streams of one rank together, bytes per second.
    bandwidth_aggregate_bytes_per_s: float | None = None
    #: Bytes of a message beyond this size move at ``bandwidth_large_bytes_per_s``
    #: (0: one bandwidth for all sizes), bytes.
    large_message_bytes: float | None = None
    #: Bandwidth for the bytes of a message beyond ``large_message_bytes``, bytes per second.
    bandwidth_large_bytes_per_s: float | None = None
    #: Bytes of a message beyond this size move at ``bandwidth_huge_bytes_per_s`` (0: the
    #: large rate goes on; a message outgrows one cache, then the next), bytes.
    huge_message_bytes: float | None = None
    #: Bandwidth for the bytes of a message beyond ``huge_message_bytes``, bytes per second.
    bandwidth_huge_bytes_per_s: float | None = None
    #: Fixed software cost of one collective call (setting up its rounds), seconds.
    call_overhead_s: float | None = None
    #: Extra fixed cost of a collective call that carries data (checking and wrapping the
    #: payload, allocating the result): every collective but a barrier, seconds.
    payload_overhead_s: float | None = None
    #: CPU time of one message (its sender's and receiver's software work together), seconds;
    #: it adds up over all ranks when they share CPUs (see ``parallel_ranks``).
    cpu_per_message_s: float | None = None
    #: Extra CPU time of one message for every further rank sharing the CPUs (their
    #: polling and scheduling), seconds.
    cpu_per_message_rank_s: float | None = None
    #: Extra CPU time of a message that carries a call's data (every collective's but a
    #: barrier's: its payload is serialized, copied and rebuilt), seconds.
    cpu_per_payload_message_s: float | None = None
    #: Extra CPU time of every read of a payload stored once for several readers (S3: the
    #: root's marker and pointer PUTs, the reader's DELETE and LIST of the markers), seconds.
    cpu_per_shared_read_s: float | None = None
    #: CPU time of every time a rank waits for messages (S3: a LIST of its mailbox; a
    #: linear gather's root waits once for all its messages), seconds.
    cpu_per_wait_s: float | None = None
    #: CPU time of every read of a message that needs a fetch of its own (a GET), where
    #: ranks share CPUs; unset: ``fetch_s`` (the fetches of several readers overlap, so
    #: one costs less CPU than its time), seconds.
    cpu_per_fetch_s: float | None = None
    #: Messages of more bytes than this cost ``cpu_per_split_message_s`` more CPU time
    #: (direct: their frame takes more than one TCP segment; 0: no such cost), bytes.
    split_message_bytes: float | None = None
    #: Extra time of every message larger than ``split_message_bytes`` on its way (direct:
    #: the rest of its frame comes in a TCP segment and a read of its own), seconds.
    split_latency_s: float | None = None
    #: Extra CPU time of every message larger than ``split_message_bytes``, seconds.
    cpu_per_split_message_s: float | None = None
    #: Where ranks share CPUs: time of every round of a collective's critical path in which
    #: all of them wait for its messages (with the channel's server or the kernel) and none
    #: has work to run, seconds; added to the shared CPU bound.
    wait_per_round_s: float | None = None
    #: Extra time of every round of a collective call after its first, seconds: a
    #: receiver that polls (S3) backs off while its rank waits through the first round.
    later_round_s: float | None = None
    #: How much sooner than a ping-pong message a collective's first round arrives,
    #: seconds: its receivers begin to poll with the call, where a ping-pong's
    #: receiver polled through its own send (S3).
    first_round_saving_s: float | None = None
    #: Payloads sent to several ranks are stored once from this size on, smaller ones sent
    #: to every reader alone (default: ``channels.s3.publish_min_bytes`` for s3, else 0), bytes.
    publish_min_bytes: float | None = None
    #: A payload small enough to ride inline, published to several ranks, costs as one
    #: write read by each (Redis pipelines an entry per reader), not a message per reader.
    publish_inline_once: bool | None = None
    #: Rate at which the CPUs copy and encode message bytes, bytes per second (0: not counted).
    cpu_bytes_per_s: float | None = None
    #: Bytes of one call's messages that the CPUs copy at ``cpu_bytes_per_s``; the rest go
    #: at ``cpu_bytes_large_per_s`` (0: one rate). What the caches hold, fitted by the bench.
    cpu_cache_bytes: float | None = None
    #: Copy rate of a call's bytes beyond ``cpu_cache_bytes``, bytes per second.
    cpu_bytes_large_per_s: float | None = None
    #: Rate of the reduction op (numpy ``SUM``), bytes of one input per second (0: not counted).
    reduce_bytes_per_s: float | None = None
    #: Bytes of one op's input that combine at ``reduce_bytes_per_s``; the rest of a larger
    #: input at ``reduce_bytes_large_per_s`` (0: one rate). What the caches hold, measured
    #: by the bench.
    reduce_cache_bytes: float | None = None
    #: Rate of the reduction op beyond ``reduce_cache_bytes`` of one input, bytes per second.
    reduce_bytes_large_per_s: float | None = None
    #: Ranks whose work can run at the same time: 0 every rank has its own CPU (functions),
    #: 1 all ranks share one event loop (in-process), k ranks share k cores.
    parallel_ranks: float | None = None
    #: Cores the ranks share (0: unknown); with ``crowding``, more ranks than this do their
    #: work more slowly: ``parallel_ranks`` times ``(shared_cpus / ranks) ** crowding``.
    shared_cpus: float | None = None
    #: How much slower ranks that outnumber ``shared_cpus`` work together (0: not at all).
    crowding: float | None = None
    #: Price of each message written (a PUT, a RPUSH), dollars.
    price_per_request_usd: float | None = None
    #: Price of each read or poll (a GET, a LIST), dollars.
    price_per_read_usd: float | None = None
    #: Reads (GETs) a consumer makes to get a message (one fewer for a message that needs
    #: no fetch of its own).
    reads_per_message: float | None = None
    #: Price of each poll that looks for messages (an S3 LIST), dollars.
    price_per_poll_usd: float | None = None
    #: Polls per message received (idle polls come on top; s3 counts them per wait).
    polls_per_message: float | None = None
    #: Polls per time a rank waits for messages: the one that finds them (one LIST finds
    #: every message stored by then, as a linear gather's root's do); idle polls on top.
    polls_per_wait: float | None = None
    #: First interval of a receiver's poller, which doubles while nothing arrives
    #: (default: ``channels.s3.poll_min`` for s3, else 0: no idle polls), seconds. A wait
    #: of ``w`` seconds makes about ``log2(1 + w / poll_backoff_s)`` polls that find nothing.
    poll_backoff_s: float | None = None
    #: The poller's longest interval (default: ``channels.s3.poll_max`` for s3), seconds.
    poll_backoff_max_s: float | None = None
    #: Seconds one poll (an S3 LIST) takes; the poller's next interval starts when it
    #: returns, so fewer idle polls fit in a wait (default 0; ``afmi bench --calibrate``
    #: fits it to the polls it counts).
    poll_request_s: float | None = None
    #: Of the messages after the first that one wait collects (a linear gather's root
    #: waits once for all of them), the share a poll finds on its own: each such find
    #: starts the poller's backoff again, so the wait polls more (0-1; default 0;
    #: ``afmi bench --calibrate`` fits it with ``poll_request_s``).
    finds_per_further_message: float | None = None
    #: Further requests, at ``price_per_request_usd``, of every read of a payload stored
    #: once for several readers (S3: a marker and a pointer PUT, a LIST of the markers).
    requests_per_shared_read: float | None = None
    #: Price of moving one gigabyte (10**9 bytes), dollars.
    price_per_gb_usd: float | None = None
    #: Price of the servers the channel needs (Redis instance, rendezvous VM), dollars/hour.
    infrastructure_usd_per_hour: float | None = None
    #: Requests the infrastructure serves per hour; its price is spread over them.
    requests_per_hour: float | None = None
    #: Count the infrastructure price at all (false: someone else pays for it).
    include_infrastructure: bool | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if value is not None and value < 0:
                raise ConfigError(f"model.<channel>.{f.name} must be >= 0, got {value!r}")
        for name in ("bandwidth_single_bytes_per_s", "bandwidth_aggregate_bytes_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model.<channel>.{name} must be > 0, got {value!r}")
        share = self.finds_per_further_message
        if share is not None and share > 1:
            raise ConfigError(
                "model.<channel>.finds_per_further_message is a share of messages, "
                f"from 0 to 1; got {share!r}"
            )

    def overrides(self) -> dict[str, Any]:
        """The keys that are set, as a dict."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the performance and cost model that picks channels (see docs/model.md)."""

    #: A model file (``.json``/``.toml``, e.g. from ``afmi bench --calibrate``); its
    #: ``model`` table is read first, then the keys below override it.
    file: str | None = None
    #: Let the model pick the algorithm too, from every registered algorithm's steps.
    #: False (default): the collectives registry picks the algorithm for each channel
    #: and the model picks the channel.
    choose_algorithm: bool = False
    #: For ``hint="weighted"``: dollars one second of the job's time is worth;
    #: the choice minimises ``dollars + usd_per_s * seconds``.
    usd_per_s: float = 0.01
    #: Where and when the values were calibrated (written by ``afmi bench --calibrate``).
    calibrated: str | None = None
    local: ChannelModelConfig = field(default_factory=ChannelModelConfig)
    direct: ChannelModelConfig = field(default_factory=ChannelModelConfig)
    redis: ChannelModelConfig = field(default_factory=ChannelModelConfig)
    s3: ChannelModelConfig = field(default_factory=ChannelModelConfig)

    def __post_init__(self) -> None:
        if self.usd_per_s < 0:
            raise ConfigError(f"model.usd_per_s must be >= 0, got {self.usd_per_s!r}")


@dataclass(frozen=True)
class Config:
    """Settings shared by every rank of a job.

    Build it with keyword arguments, :meth:`from_dict`, :meth:`from_file`,
    or :meth:`load`, which accepts any of those forms.
    """

    #: Default timeout of every blocking operation, seconds (None: wait forever).
    timeout: float | None = 300.0
    #: Channel selection hint: ``"fast"`` minimises time, ``"cheap"`` minimises dollars,
    #: ``"weighted"`` minimises ``dollars + model.usd_per_s * seconds``.
    hint: Literal["fast", "cheap", "weighted"] = "fast"
    #: Seconds a waiting receive keeps the event loop polling before it blocks
    #: (lower latency on virtual machines, at the price of that much CPU; 0: never).
    #: Only where some channel of the rank polls: ``direct`` does, the storage channels
    #: and ``local`` (tasks of one event loop) do not.
    spin: float = 0.0002
    #: Allow pickled payloads (only between trusted ranks).
    pickle: bool = False
    #: Bytes of memory a process keeps for large received messages (64 KiB and up) and
    #: reuses once nothing refers to a message's arrays any more (fresh memory costs
    #: the kernel a page fault and zeroing per page; :mod:`afmi.wire.pool`). Shared
    #: by every channel and rank of the process; 0: every message gets fresh memory.
    recv_pool_bytes: int = 128 * 1024 * 1024
    #: Default channel for ``afmi.connect`` when neither argument nor ``AFMI_CHANNEL`` names one:
    #: a driver name, ``"auto"`` (every configured channel) or several names, comma-separated.
    channel: str | None = None
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    faas: FaasConfig = field(default_factory=FaasConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        _check_positive(self.timeout, "timeout", allow_none=True)
        if not 0 <= self.spin <= 1:
            raise ConfigError(f"spin must be between 0 and 1 second, got {self.spin!r}")
        if self.recv_pool_bytes < 0:
            raise ConfigError(
                f"recv_pool_bytes must be >= 0 (0 turns the pool off), got {self.recv_pool_bytes!r}"
            )
        _check_positive(self.faas.memory_mb, "faas.memory_mb")
        if self.faas.gib_second_price < 0:
            raise ConfigError("faas.gib_second_price must be >= 0")

    # -- constructors --
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a Config from nested dicts, validating every key."""
        return _build(cls, data, "")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """Load a ``.json`` or ``.toml`` file."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        try:
            if p.suffix == ".toml":
                data = tomllib.loads(text.decode())
            elif p.suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(f"config file {p} must end in .json or .toml")
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"config file {p} is not valid {p.suffix[1:].upper()}: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a table/object at the top level")
        return cls.from_dict(data)

    @classmethod
    def load(cls, source: Config | dict[str, Any] | str | os.PathLike[str] | None = None) -> Config:
        """Return a Config from ``source``, or from ``$AFMI_CONFIG``, or the defaults."""
        if isinstance(source, Config):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        if isinstance(source, (str, os.PathLike)):
            return cls.from_file(source)
        if source is not None:
            raise ConfigError(
                f"config must be a Config, a dict or a file path, not {type(source).__name__}"
            )
        env = os.environ.get("AFMI_CONFIG")
        if env:
            return cls.from_file(env)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)


def _check_positive(value: Any, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def _build(cls: type[T], data: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key {prefix + key!r}; known keys here: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value in {where}: {exc}") from exc


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {'; '.join(errors)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"
            )
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table/object")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list")
        return list(value)
    if hint is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {hint!r}")
