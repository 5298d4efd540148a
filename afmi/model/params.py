"""Per-channel model parameters: :class:`ChannelModel` and where its values come from.

Values are resolved in this order (later wins): the built-in defaults below
(AWS figures from FMI, ICS'23), the ``model`` table of ``Config.model.file``,
then the keys set in ``Config.model.<channel>``. Units are in every name:
seconds (``_s``), bytes per second, US dollars (``_usd``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afmi.config import ChannelModelConfig, Config, FaasConfig
from afmi.errors import ConfigError
from afmi.model.work import Work

__all__ = [
    "DEFAULTS",
    "ChannelModel",
    "FunctionPrice",
    "channel_models",
    "function_price",
    "load_model_file",
    "model_for",
]


def _rates(nbytes: float, rate: float, *steps: tuple[float, float]) -> float:
    """Seconds for ``nbytes`` at ``rate``, the bytes past each step's ``(limit, beyond)``
    limit at its ``beyond`` rate (a step whose limit or rate is 0 is left out); bytes
    at a rate of 0 are not counted."""
    seconds, done, current = 0.0, 0.0, rate
    for limit, beyond in sorted(s for s in steps if s[0] > 0 and s[1] > 0):
        if nbytes <= limit:
            break
        seconds += (limit - done) / current if current > 0 else 0.0
        done, current = limit, beyond
    return seconds + ((nbytes - done) / current if current > 0 and nbytes > done else 0.0)


@dataclass(frozen=True)
class ChannelModel:
    """Latency, bandwidth and prices of one channel.

    One message of ``n`` bytes needs ``x(n) = min(n, L) / bandwidth_single_bytes_per_s
    + max(min(n, H) - L, 0) / bandwidth_large_bytes_per_s
    + max(n - H, 0) / bandwidth_huge_bytes_per_s`` seconds on the wire, with
    ``L = large_message_bytes`` (0: one bandwidth for all sizes) and
    ``H = huge_message_bytes`` (0: no third rate; a message's bytes outgrow one
    cache, then the next), and arrives
    ``l(n) = latency_s + poll_interval_s / 2`` after it is sent, plus
    ``fetch_s`` when it is larger than ``inline_max_bytes`` (S3: a small message
    rides in its object's key and needs no GET; :meth:`message_latency_s`), plus
    ``split_latency_s`` when it is larger than ``split_message_bytes`` (direct: its
    frame takes more than one TCP segment, and the rest comes in a read of its own). A
    round in which a rank sends ``m`` messages of ``n`` bytes takes ``l(n) +
    (m - 1) * per_message_s + x(n) * s`` seconds, where
    ``s = 1`` for a lone message and ``s = m * single / min(m * single,
    bandwidth_aggregate_bytes_per_s)`` otherwise; a collective call adds
    :meth:`call_s` once (``call_overhead_s``, plus ``payload_overhead_s`` for
    a call that carries data, every one but a barrier), every round after
    its first ``later_round_s`` (a receiver that polls backs off while its
    rank waits through the first round: S3), and its first round takes
    ``first_round_saving_s`` less than a ping-pong message (its receivers
    begin to poll with the call, where a ping-pong's receiver polled through
    its own send; the calibration keeps it at most ``l(0)``). Every message costs
    ``price_per_request_usd`` to write, ``reads_per_message *
    price_per_read_usd`` to read (one read less when it needs no fetch of its
    own, see :meth:`fetches`) and ``polls_per_message * price_per_poll_usd``
    to find, every time a rank waits for messages ``polls_per_wait`` polls (S3:
    the LIST that finds them, all that are stored by then) plus :meth:`idle_polls`
    (each poll takes ``poll_request_s`` before the next interval starts; a
    wait lasts the call's predicted time over its rounds, or over the waits
    per round where there are more of those: they end one after another; a
    wait for several messages, as a linear gather's root's, has
    ``finds_per_further_message`` more polls that find some of them for every
    message after its first, and each such find starts the backoff again),
    every read of a payload stored once for several readers
    ``requests_per_shared_read`` more requests, every byte moved ``price_per_gb_usd / 1e9``,
    and when ``include_infrastructure`` is set the servers' hourly price is
    spread over ``requests_per_hour`` requests.

    The CPU side (see :func:`afmi.model.predict.predict`): one message costs
    ``cpu_per_message_s`` of software work (sender and receiver together), plus
    ``cpu_per_message_rank_s`` for every further rank sharing the CPUs, plus
    ``cpu_per_payload_message_s`` when it carries the call's data (every
    collective's messages but a barrier's: the payload is serialized, copied
    and rebuilt as an object), plus
    its bytes at ``cpu_bytes_per_s`` (a call's bytes beyond ``cpu_cache_bytes`` at
    ``cpu_bytes_large_per_s``, when both are set: they no longer fit in the
    CPU's caches); every read of a payload stored once for
    several readers costs ``cpu_per_shared_read_s`` more (S3's markers and
    pointers), every read of a message that needs a fetch of its own
    ``cpu_per_fetch_s`` (unset: ``fetch_s``; the fetches of several readers
    overlap, so on a shared CPU one costs less than its time), every read of a
    message larger than ``split_message_bytes`` ``cpu_per_split_message_s`` more
    (:meth:`split_deliveries`: a direct link's frame that takes more than one TCP
    segment, docs/direct.md "Messages longer than a TCP segment"), every time a
    rank waits for messages ``cpu_per_wait_s``
    (``Work.receive_waits``; S3: a LIST of its mailbox, at least), a reduction
    runs at ``reduce_bytes_per_s`` (the part of one op's input beyond
    ``reduce_cache_bytes`` at ``reduce_bytes_large_per_s``, when both are set),
    and ``parallel_ranks`` says how many ranks' work runs at the same time
    (0: each rank has its own CPU; 1: every rank shares one event loop). Where
    ranks share CPUs, every round of a collective's critical path adds
    ``wait_per_round_s`` to that work: while the round's messages are with the
    channel (its server, the kernel) every rank waits for them and none has
    work to run.
    """

    name: str
    latency_s: float
    bandwidth_single_bytes_per_s: float
    bandwidth_aggregate_bytes_per_s: float
    per_message_s: float = 0.0
    poll_interval_s: float = 0.0
    inline_max_bytes: float = 0.0
    fetch_s: float = 0.0
    large_message_bytes: float = 0.0
    bandwidth_large_bytes_per_s: float = 0.0
    huge_message_bytes: float = 0.0
    bandwidth_huge_bytes_per_s: float = 0.0
    call_overhead_s: float = 0.0
    payload_overhead_s: float = 0.0
    cpu_per_message_s: float = 0.0
    cpu_per_message_rank_s: float = 0.0
    cpu_per_payload_message_s: float = 0.0
    cpu_per_shared_read_s: float = 0.0
    cpu_per_wait_s: float = 0.0
    cpu_per_fetch_s: float | None = None
    split_message_bytes: float = 0.0
    split_latency_s: float = 0.0
    cpu_per_split_message_s: float = 0.0
    wait_per_round_s: float = 0.0
    later_round_s: float = 0.0
    first_round_saving_s: float = 0.0
    publish_min_bytes: float = 0.0
    publish_inline_once: bool = False
    cpu_bytes_per_s: float = 0.0
    cpu_cache_bytes: float = 0.0
    cpu_bytes_large_per_s: float = 0.0
    reduce_bytes_per_s: float = 0.0
    reduce_cache_bytes: float = 0.0
    reduce_bytes_large_per_s: float = 0.0
    parallel_ranks: float = 0.0
    shared_cpus: float = 0.0
    crowding: float = 0.0
    price_per_request_usd: float = 0.0
    price_per_read_usd: float = 0.0
    reads_per_message: float = 1.0
    price_per_poll_usd: float = 0.0
    polls_per_message: float = 0.0
    polls_per_wait: float = 0.0
    poll_backoff_s: float = 0.0
    poll_backoff_max_s: float = 0.0
    poll_request_s: float = 0.0
    finds_per_further_message: float = 0.0
    requests_per_shared_read: float = 0.0
    price_per_gb_usd: float = 0.0
    infrastructure_usd_per_hour: float = 0.0
    requests_per_hour: float = 0.0
    include_infrastructure: bool = True

    def wire_time_s(self, nbytes: int) -> float:
        """Seconds one message of ``nbytes`` spends on a single stream (no latency)."""
        return _rates(
            max(int(nbytes), 0),
            self.bandwidth_single_bytes_per_s,
            (self.large_message_bytes, self.bandwidth_large_bytes_per_s),
            (self.huge_message_bytes, self.bandwidth_huge_bytes_per_s),
        )

    def cpu_bytes_s(self, nbytes: float) -> float:
        """CPU seconds to copy and encode ``nbytes`` of one call's messages: the first
        ``cpu_cache_bytes`` at ``cpu_bytes_per_s``, the rest at ``cpu_bytes_large_per_s``
        when both of those are set (a rate of 0 is not counted)."""
        return _rates(
            max(nbytes, 0.0),
            self.cpu_bytes_per_s,
            (self.cpu_cache_bytes, self.cpu_bytes_large_per_s),
        )

    def reduce_s(self, nbytes: float, op_bytes: float) -> float:
        """Seconds to combine ``nbytes`` of input in op applications of ``op_bytes`` each:
        the first ``reduce_cache_bytes`` of every op's input at ``reduce_bytes_per_s``, the
        rest at ``reduce_bytes_large_per_s`` when both of those are set (0: not counted).
        Numpy's ``SUM`` here ran at 20-25 GB/s on inputs up to 512 KiB and 7-9 GB/s from
        1 MiB, where its three arrays no longer fit in a core's 4 MiB cache."""
        if nbytes <= 0 or self.reduce_bytes_per_s <= 0:
            return 0.0
        if op_bytes <= 0 or op_bytes <= self.reduce_cache_bytes:
            return nbytes / self.reduce_bytes_per_s
        per_op = _rates(
            op_bytes,
            self.reduce_bytes_per_s,
            (self.reduce_cache_bytes, self.reduce_bytes_large_per_s),
        )
        return nbytes / op_bytes * per_op

    def reductions_s(self, work: Work, nbytes: int) -> tuple[float, float]:
        """Seconds of the reductions of ``work`` (a call moving ``nbytes`` per rank):
        ``(on the critical path, all of them)``, each op combining ``work.reduce_op_bytes``
        (the call's ``nbytes`` when that is 0) at :meth:`reduce_s`."""
        op_bytes = work.reduce_op_bytes or nbytes
        return (
            self.reduce_s(work.path_reduce_bytes, op_bytes),
            self.reduce_s(work.reduce_bytes, op_bytes),
        )

    def fetch_cpu_s(self) -> float:
        """CPU seconds of one fetch where ranks share CPUs: ``cpu_per_fetch_s``, or
        ``fetch_s`` when that is unset (a fetch as much work as its time)."""
        return self.fetch_s if self.cpu_per_fetch_s is None else self.cpu_per_fetch_s

    def split_deliveries(self, work: Work, nbytes: int, size: int) -> int:
        """Deliveries of ``work`` (a call of ``size`` ranks moving ``nbytes`` per rank) whose
        message is larger than ``split_message_bytes`` (0: none): over TCP, a frame longer
        than one segment. Only calls of more than two ranks count them: the extra cost
        appeared where several links carried such frames at once, not on one link; and
        none of a call whose receivers are busy sending when their messages arrive
        (``Work.receivers_busy``: a ring's, which showed no such cost across processes)."""
        limit = self.split_message_bytes
        if limit <= 0 or size <= 2 or work.receivers_busy:
            return 0
        return sum(count for count, each in work.sized_deliveries(nbytes) if each > limit)

    def fetches(self, nbytes: int) -> bool:
        """Whether a message of ``nbytes`` needs a fetch of its own: it is larger than
        ``inline_max_bytes``, or the channel sends nothing inline (``inline_max_bytes`` 0)."""
        return self.inline_max_bytes <= 0 or nbytes > self.inline_max_bytes

    def message_latency_s(self, nbytes: int) -> float:
        """Seconds from sending a message of ``nbytes`` until it arrives, without its bytes."""
        fetch = self.fetch_s if self.fetches(nbytes) else 0.0
        limit = self.split_message_bytes
        split = self.split_latency_s if 0 < limit < nbytes else 0.0
        return self.latency_s + self.poll_interval_s / 2 + fetch + split

    def round_time_s(self, messages: int, nbytes: int) -> float:
        """Seconds for one round in which one rank sends ``messages`` messages of ``nbytes``."""
        m = max(int(messages), 1)
        single = self.bandwidth_single_bytes_per_s
        share = 1.0
        if m > 1:
            share = m * single / min(m * single, self.bandwidth_aggregate_bytes_per_s)
        return (
            self.message_latency_s(nbytes)
            + (m - 1) * self.per_message_s
            + self.wire_time_s(nbytes) * share
        )

    def stores_once(self, nbytes: int) -> bool:
        """Whether a payload of ``nbytes`` sent to several readers costs as one stored once
        and read by each (else the channel sends it to every reader alone: it is below
        ``publish_min_bytes``, or it rides inline and ``publish_inline_once`` is not set)."""
        once = self.fetches(nbytes) or self.publish_inline_once
        return once and nbytes >= self.publish_min_bytes

    def channel_work(self, work: Work) -> Work:
        """``work`` as this channel does it: payloads published for several readers that it
        does not store once (:meth:`stores_once`) go as one message per reader; those it
        writes once but inline (``publish_inline_once``: Redis pipelines an entry per
        reader) are one message whose bytes are copied for every reader."""
        if work.shared_deliveries <= 0:
            return work
        extra = work.shared_deliveries - work.shared_uploads
        if self.stores_once(work.shared_bytes):
            if self.fetches(work.shared_bytes):
                return work
            # one write, but the payload is copied into every reader's entry
            return dataclasses.replace(work, bytes_sent=work.bytes_sent + extra * work.shared_bytes)
        return dataclasses.replace(
            work,
            messages=work.messages + extra,
            bytes_sent=work.bytes_sent + extra * work.shared_bytes,
            shared_deliveries=0,
            shared_uploads=0,
        )

    def fetched_reads(self, work: Work, nbytes: int) -> int:
        """Reads of ``work`` (a call moving ``nbytes`` per rank) that fetch their message:
        where the channel has a fetch step, its deliveries of messages above the inline
        size (:meth:`Work.sized_deliveries`: a binomial gather's upper rounds carry
        several items), else none."""
        if self.fetch_s <= 0:
            return 0
        return sum(count for count, size in work.sized_deliveries(nbytes) if self.fetches(size))

    def shared_read_cpu_s(self, work: Work) -> float:
        """Extra CPU seconds of the shared reads of ``work`` (after :meth:`channel_work`):
        ``cpu_per_shared_read_s`` each."""
        return float(work.shared_deliveries * self.cpu_per_shared_read_s)

    def call_s(self, op: str) -> float:
        """Fixed software cost of one call of collective ``op`` on one rank."""
        if op == "send":
            return 0.0
        return self.call_overhead_s + (0.0 if op in NO_PAYLOAD else self.payload_overhead_s)

    def parallelism(self, size: int) -> float:
        """How many of ``size`` ranks do their work at the same time: ``parallel_ranks``
        at most, and where more ranks than the ``shared_cpus`` cores share them, that
        times ``(shared_cpus / size) ** crowding`` (processes that take turns on a core
        also evict each other's caches and pay for the switches)."""
        if self.parallel_ranks <= 0:
            return float(max(size, 1))
        share = float(max(min(size, self.parallel_ranks), 1))
        if self.crowding > 0 and 0 < self.shared_cpus < size:
            share *= (self.shared_cpus / size) ** self.crowding
        return share

    def idle_polls(self, wait_s: float) -> float:
        """Polls that find nothing while one receive waits ``wait_s`` seconds: the poller
        lists after ``poll_backoff_s``, doubling the interval while nothing arrives, up to
        ``poll_backoff_max_s`` (then one poll per such interval); 0 without a backoff.

        Every interval starts when the poll before it returned, so each poll also
        takes ``poll_request_s``: the ``k``-th poll that finds nothing ends
        ``poll_backoff_s * (2**k - 1) + k * poll_request_s`` into the wait. The count
        is continuous (the ``k`` whose poll ends at ``wait_s``), as the model
        prices averages; with ``poll_request_s`` 0 it is ``log2(1 + wait_s /
        poll_backoff_s)``.
        """
        start = self.poll_backoff_s
        if start <= 0 or wait_s <= 0:
            return 0.0
        each = self.poll_request_s
        top = self.poll_backoff_max_s
        # the interval reaches its cap after this many polls (unbounded without a cap)
        doublings = math.log2(top / start) if top > start else math.inf

        def ends(k: float) -> float:
            return start * (math.pow(2.0, k) - 1.0) + k * each

        if doublings < math.inf and wait_s > ends(doublings):
            return doublings + (wait_s - ends(doublings)) / (top + each)
        if each <= 0:
            return math.log2(1.0 + wait_s / start)
        low, high = 0.0, min(doublings, math.log2(1.0 + wait_s / start))
        for _ in range(50):  # ends() rises with k: bisect for ends(k) == wait_s
            mid = (low + high) / 2
            if ends(mid) < wait_s:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    def requests_usd(self, writes: float, reads: float, polls: float) -> float:
        """Dollars of storage requests: writes at ``price_per_request_usd``, reads at
        ``price_per_read_usd``, polls at ``price_per_poll_usd``."""
        return (
            writes * self.price_per_request_usd
            + reads * self.price_per_read_usd
            + polls * self.price_per_poll_usd
        )

    def infrastructure_usd_per_request(self) -> float:
        """Share of the hourly server price charged to one request (0 if not included)."""
        if not self.include_infrastructure or self.infrastructure_usd_per_hour == 0:
            return 0.0
        if self.requests_per_hour <= 0:
            return 0.0
        return self.infrastructure_usd_per_hour / self.requests_per_hour

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a dict without ``name`` (the keys of ``model.<channel>``)."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return d


#: Built-in defaults. ``direct``, ``redis`` and ``s3`` are the AWS figures of
#: FMI's model (ms and MB/s converted to s and bytes/s, 1 MB = 10**6 bytes).
#: ``local`` (in-process queues) is an estimate for one machine; calibrate it.
#: Its ranks share one event loop (``parallel_ranks=1``); the other channels'
#: ranks are functions with a CPU each. The reduction rate is a typical
#: numpy ``SUM`` on one core.
DEFAULTS: dict[str, ChannelModel] = {
    "local": ChannelModel(
        name="local",
        latency_s=20e-6,
        per_message_s=10e-6,
        bandwidth_single_bytes_per_s=5e9,
        bandwidth_aggregate_bytes_per_s=5e9,
        cpu_per_message_s=20e-6,
        cpu_bytes_per_s=5e9,
        reduce_bytes_per_s=2e9,
        parallel_ranks=1.0,
    ),
    "direct": ChannelModel(
        name="direct",
        reduce_bytes_per_s=2e9,
        latency_s=0.34e-3,
        per_message_s=20e-6,
        bandwidth_single_bytes_per_s=400e6,
        bandwidth_aggregate_bytes_per_s=400e6,
        infrastructure_usd_per_hour=0.0134,  # rendezvous VM
        requests_per_hour=1e6,
    ),
    "redis": ChannelModel(
        name="redis",
        reduce_bytes_per_s=2e9,
        latency_s=5.2e-3,
        per_message_s=0.1e-3,
        bandwidth_single_bytes_per_s=100e6,
        bandwidth_aggregate_bytes_per_s=400e6,
        # inline_max_bytes is channels.redis.inline_bytes; a payload that small published
        # to several ranks goes as one pipelined write of an entry per reader
        publish_inline_once=True,
        infrastructure_usd_per_hour=0.038,  # cache.t3.small-class instance
        requests_per_hour=1e6,
    ),
    "s3": ChannelModel(
        name="s3",
        reduce_bytes_per_s=2e9,
        # FMI's 40.4 ms is a PUT, the polls and a GET. afmi's messages up to about
        # 400 bytes ride in the object key (channels.s3.key_payload_bytes) and need
        # no GET: a third of the overhead is put on the fetch (an estimate).
        latency_s=27e-3,
        inline_max_bytes=400,
        fetch_s=13.4e-3,
        per_message_s=1e-3,
        poll_interval_s=5e-3,
        bandwidth_single_bytes_per_s=50e6,
        bandwidth_aggregate_bytes_per_s=400e6,
        publish_min_bytes=4 * 1024 * 1024,  # channels.s3.publish_min_bytes
        price_per_request_usd=5.4e-6,  # PUT
        price_per_read_usd=4.3e-7,  # GET
        reads_per_message=1.0,
        price_per_poll_usd=5.4e-6,  # LIST, billed like a PUT
        polls_per_wait=1.0,  # the LIST that finds a wait's messages (idle polls on top)
        poll_backoff_s=0.005,  # channels.s3.poll_min: idle LISTs while a receive waits
        poll_backoff_max_s=0.5,  # channels.s3.poll_max
        requests_per_shared_read=3.0,  # marker and pointer PUTs, the LIST of the markers
    ),
}

#: Collectives whose calls carry no data (no ``payload_overhead_s``).
NO_PAYLOAD = frozenset({"barrier"})

_FIELDS = [f.name for f in dataclasses.fields(ChannelModelConfig)]


@dataclass(frozen=True)
class FunctionPrice:
    """What function time costs: every participating function pays for the whole operation."""

    gib_second_usd: float
    memory_gib: float

    def usd(self, seconds: float, functions: int) -> float:
        """Dollars for ``functions`` functions each running ``seconds``."""
        return self.gib_second_usd * self.memory_gib * seconds * functions


def function_price(faas: FaasConfig) -> FunctionPrice:
    """The function price of ``Config.faas`` (memory in MiB converted to GiB)."""
    return FunctionPrice(gib_second_usd=faas.gib_second_price, memory_gib=faas.memory_mb / 1024)


def load_model_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read the per-channel tables of a model file (the ``model`` table of a config file).

    The file is validated as a config file, so a typo in a key is an error
    that names it.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read model file {p} (config key model.file): {exc.strerror}"
        ) from exc
    try:
        data = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"model file {p} is not valid JSON/TOML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(
            f"model file {p} must hold a 'model' table (as afmi bench --calibrate writes)"
        )
    table = dict(data["model"])
    if "file" in table:
        raise ConfigError(f"model file {p} must not name another model file (model.file)")
    cfg = Config.from_dict({"model": table})
    return {name: getattr(cfg.model, name).overrides() for name in DEFAULTS if name in table}


def _s3_inline_bytes(key_payload_bytes: int) -> int:
    """Payload bytes that ride in an S3 object key of ``key_payload_bytes`` characters
    (``channels.s3.key_payload_bytes``), about: base64 takes 4 characters for 3 bytes,
    and the message's envelope and header about a ninth of those (600 characters hold
    450 bytes, 394-434 of them payload for headers of 0-40 bytes); 0: none."""
    return key_payload_bytes * 2 // 3 if key_payload_bytes > 0 else 0


def _mtime(config: Config) -> float:
    if not config.model.file:
        return 0.0
    try:
        return Path(config.model.file).stat().st_mtime
    except OSError:
        return -1.0  # reported by load_model_file


def _resolve(config: Config, mtime: float) -> dict[str, ChannelModel]:
    try:
        return _resolve_cached(config, mtime)
    except TypeError:  # a config holding unhashable values: resolve without the cache
        return _resolve_uncached(config)


@functools.lru_cache(maxsize=64)
def _resolve_cached(config: Config, mtime: float) -> dict[str, ChannelModel]:
    return _resolve_uncached(config)


def _resolve_uncached(config: Config) -> dict[str, ChannelModel]:
    # What the S3 and Redis channels are configured to do is what their models predict
    # (lowest layer): S3 stores a payload once for several readers from publish_min_bytes
    # on, and sends one in the object key when its encoding fits in key_payload_bytes
    # characters, and its receivers poll from poll_min, doubling up to poll_max; Redis
    # sends payloads up to inline_bytes inside the mailbox entry, larger ones as chunks
    # that the receiver fetches.
    s3 = config.channels.s3
    layers: list[dict[str, dict[str, Any]]] = [
        {
            "s3": {
                "publish_min_bytes": float(s3.publish_min_bytes),
                "inline_max_bytes": float(_s3_inline_bytes(s3.key_payload_bytes)),
                "poll_backoff_s": float(s3.poll_min),
                "poll_backoff_max_s": float(s3.poll_max),
            },
            "redis": {"inline_max_bytes": float(config.channels.redis.inline_bytes)},
        }
    ]
    if config.model.file:
        layers.append(load_model_file(config.model.file))
    layers.append({name: getattr(config.model, name).overrides() for name in DEFAULTS})
    out: dict[str, ChannelModel] = {}
    for name, base in DEFAULTS.items():
        values: dict[str, Any] = {}
        for layer in layers:
            values.update(layer.get(name, {}))
        model = dataclasses.replace(base, **values)
        if not (math.isfinite(model.latency_s) and model.bandwidth_single_bytes_per_s > 0):
            raise ConfigError(f"model.{name}: latency and bandwidth must be finite and > 0")
        out[name] = model
    return out


def channel_models(config: Config | None = None) -> dict[str, ChannelModel]:
    """Every known channel's model for ``config`` (defaults, model file, overrides)."""
    config = config if config is not None else Config()
    return dict(_resolve(config, _mtime(config)))


def model_for(name: str, config: Config | None = None) -> ChannelModel:
    """The model of channel ``name``; a channel afmi does not know gets ``direct``'s figures."""
    models = channel_models(config)
    if name in models:
        return models[name]
    return dataclasses.replace(models["direct"], name=name)
