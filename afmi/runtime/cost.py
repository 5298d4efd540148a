"""What one job of functions cost: function time, storage requests, infrastructure.

Units are in every name: seconds (``_s``), milliseconds (``_ms``), GiB-seconds,
US dollars (``_usd``). The report follows AWS's billing rules:

* **Functions**: every function is billed for its duration rounded up to the
  next millisecond, times its memory in GiB (``faas.memory_mb / 1024``), at
  ``faas.gib_second_price`` dollars per GiB-second, plus a price per request.
  All functions of the job count, not just one.
* **Storage requests**: S3 requests counted by the channel (``stats()``),
  priced per request type (writes: PUT/POST/LIST; reads: GET/HEAD; DELETE is free).
* **Infrastructure**: servers the job needs while it runs (the Redis instance for
  ``redis``, the rendezvous VM for ``direct``), priced per hour and charged for the
  job's wall time, as if they served only this job (an upper bound when they are shared).

Prices are AWS list prices (us-east-1, x86) as used by FMI (ICS'23); change
them by passing your own :class:`Prices`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from afmi.config import Config

__all__ = ["CostReport", "Prices", "billed_ms", "cost_report"]

_S3_WRITES = ("put", "post", "list", "copy", "multipart", "create", "complete", "upload")
_S3_READS = ("get", "head", "select")
_S3_FREE = ("delete",)


@dataclass(frozen=True)
class Prices:
    """Unit prices in US dollars."""

    #: Dollars per function request (AWS Lambda: $0.20 per million).
    function_request_usd: float = 0.2e-6
    #: Dollars per S3 write-class request (PUT, POST, LIST: $0.005 per 1000).
    s3_write_usd: float = 5.0e-6
    #: Dollars per S3 read-class request (GET, HEAD: $0.0004 per 1000).
    s3_read_usd: float = 0.4e-6
    #: Dollars per hour of the Redis server (FMI: cache.t3.small-class instance).
    redis_usd_per_hour: float = 0.038
    #: Dollars per hour of the VM running the rendezvous service (FMI: t3.micro-class).
    rendezvous_usd_per_hour: float = 0.0134


def billed_ms(duration_s: float) -> int:
    """Billed milliseconds of one function run: its duration rounded up to 1 ms (minimum 1)."""
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {duration_s!r}")
    return max(1, math.ceil(round(duration_s * 1000.0, 6)))


@dataclass
class CostReport:
    """Cost of one job; :meth:`format` renders it as a table, :meth:`to_dict` as JSON."""

    job: str
    channel: str
    functions: int
    memory_mb: int
    wall_s: float
    billed_ms_total: int
    gib_seconds: float
    function_time_usd: float
    function_requests_usd: float
    storage_requests: dict[str, int] = field(default_factory=dict)
    storage_usd: float = 0.0
    #: name -> {"hours": ..., "usd_per_hour": ..., "usd": ...}
    infrastructure: dict[str, dict[str, float]] = field(default_factory=dict)
    infrastructure_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        """Everything together, dollars."""
        return (
            self.function_time_usd
            + self.function_requests_usd
            + self.storage_usd
            + self.infrastructure_usd
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), including ``total_usd``."""
        out = asdict(self)
        out["total_usd"] = self.total_usd
        return out

    def format(self) -> str:
        """A human-readable table with units."""
        rows = [
            (
                "function time",
                f"{self.billed_ms_total} ms billed x {self.memory_mb / 1024:g} GiB"
                f" = {self.gib_seconds:.6f} GiB-s",
                self.function_time_usd,
            ),
            ("function requests", f"{self.functions} requests", self.function_requests_usd),
        ]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.storage_requests.items()))
        rows.append(("storage requests", counts or "none", self.storage_usd))
        for name, item in sorted(self.infrastructure.items()):
            rows.append(
                (
                    name,
                    f"{item['hours'] * 3600:.3f} s x ${item['usd_per_hour']}/h",
                    item["usd"],
                )
            )
        rows.append(("total", "", self.total_usd))
        width = max(len(r[1]) for r in rows)
        lines = [
            f"cost of job {self.job}: {self.functions} functions x {self.memory_mb} MiB, "
            f"channel {self.channel}, wall time {self.wall_s:.3f} s (US dollars)"
        ]
        lines += [f"  {label:<18} {what:<{width}}  ${usd:.9f}" for label, what, usd in rows]
        return "\n".join(lines)


def _s3_requests(stats: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rank_stats in stats:
        s3 = rank_stats.get("s3") if isinstance(rank_stats, Mapping) else None
        requests = s3.get("requests") if isinstance(s3, Mapping) else None
        if not isinstance(requests, Mapping):
            continue
        for kind, n in requests.items():
            if isinstance(n, int) and n:
                counts[f"s3 {kind}"] = counts.get(f"s3 {kind}", 0) + n
    return counts


def _request_price(kind: str, prices: Prices) -> float:
    op = kind.split()[-1].lower()
    if op.startswith(_S3_FREE):
        return 0.0
    if op.startswith(_S3_READS):
        return prices.s3_read_usd
    return prices.s3_write_usd  # writes and anything unknown: the dearer class


def cost_report(
    job: str,
    channel: str,
    durations_s: Iterable[float],
    *,
    wall_s: float,
    config: Config | None = None,
    stats: Iterable[Mapping[str, Any]] = (),
    prices: Prices | None = None,
) -> CostReport:
    """Price one job.

    Args:
        job: job name.
        channel: channel the ranks used (decides the infrastructure).
        durations_s: each function's run time, seconds (one entry per function).
        wall_s: the job's wall time, seconds (infrastructure is charged for it).
        config: supplies ``faas.memory_mb`` and ``faas.gib_second_price``.
        stats: each rank's channel stats (``{channel name: channel.stats()}``).
        prices: unit prices (default: :class:`Prices`).
    """
    cfg = config or Config()
    prices = prices or Prices()
    billed = [billed_ms(d) for d in durations_s]
    gib = cfg.faas.memory_mb / 1024.0
    gib_seconds = sum(billed) / 1000.0 * gib
    requests = _s3_requests(stats)
    storage_usd = sum(n * _request_price(k, prices) for k, n in requests.items())
    infrastructure: dict[str, dict[str, float]] = {}
    hourly = {"redis": ("redis server", prices.redis_usd_per_hour)}
    hourly["direct"] = ("rendezvous VM", prices.rendezvous_usd_per_hour)
    if channel in hourly:
        name, per_hour = hourly[channel]
        hours = wall_s / 3600.0
        infrastructure[name] = {"hours": hours, "usd_per_hour": per_hour, "usd": hours * per_hour}
    return CostReport(
        job=job,
        channel=channel,
        functions=len(billed),
        memory_mb=cfg.faas.memory_mb,
        wall_s=wall_s,
        billed_ms_total=sum(billed),
        gib_seconds=gib_seconds,
        function_time_usd=gib_seconds * cfg.faas.gib_second_price,
        function_requests_usd=len(billed) * prices.function_request_usd,
        storage_requests=requests,
        storage_usd=storage_usd,
        infrastructure=infrastructure,
        infrastructure_usd=sum(i["usd"] for i in infrastructure.values()),
    )
