"""Where to read a sample from: latency, bandwidth and price per source.

HDMLP/NoPFS predicts the time to read ``s`` bytes, fastest first:

* a local tier ``j`` read by ``p`` concurrent readers: ``s / (r_j(p) / p)``;
* a peer's tier over the network: ``s / min(b_c, r_j(p) / p)``;
* the origin (their parallel file system, our object store) with ``g``
  concurrent clients: ``s / min(b_fs, t(g) / g)``;

ties go local > peer > origin. afmi adds a fixed per-request latency to each
(object stores cost tens of milliseconds per GET) and a price: per request,
per byte, plus the function time the read keeps a function waiting (GiB-s
price x memory). Hint ``"fast"`` picks the smallest time, ``"cheap"`` the
smallest price.

Every parameter can be overridden (:meth:`SourceModel.with_cost`) or fitted
from measured reads (:meth:`SourceModel.calibrate`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from afmi.errors import ArgumentError

__all__ = ["KINDS", "SourceCost", "SourceModel", "peer_cost_for_channel"]

#: The kinds of source, in tie-break order.
KINDS = ("memory", "disk", "peer", "origin")


@dataclass(frozen=True)
class SourceCost:
    """Model parameters of one kind of source (seconds, bytes per second, dollars).

    Attributes:
        latency: fixed time per request, seconds.
        bandwidth: bytes/s one reader gets (``b_c``, ``b_fs``; for a tier its ``r_j``).
        aggregate_bandwidth: bytes/s all concurrent readers share (``r_j(p)``, ``t(g)``);
            None: unlimited.
        request_price: dollars per request.
        byte_price: dollars per byte transferred.
    """

    latency: float
    bandwidth: float
    aggregate_bandwidth: float | None = None
    request_price: float = 0.0
    byte_price: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency", "request_price", "byte_price"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ArgumentError(f"SourceCost.{name} must be a number >= 0, got {value!r}")
        for name in ("bandwidth", "aggregate_bandwidth"):
            value = getattr(self, name)
            if value is None and name == "aggregate_bandwidth":
                continue
            if not isinstance(value, (int, float)) or not value > 0:
                raise ArgumentError(f"SourceCost.{name} must be a number > 0, got {value!r}")

    def rate(self, concurrency: int = 1) -> float:
        """Bytes/s one of ``concurrency`` readers gets: ``min(bandwidth, aggregate / p)``."""
        if self.aggregate_bandwidth is None:
            return self.bandwidth
        return min(self.bandwidth, self.aggregate_bandwidth / max(1, concurrency))

    def time(self, nbytes: int, concurrency: int = 1) -> float:
        """Predicted seconds to read ``nbytes``."""
        return self.latency + nbytes / self.rate(concurrency)

    def price(self, nbytes: int) -> float:
        """Dollars for one read of ``nbytes`` (requests and transfer only)."""
        return self.request_price + nbytes * self.byte_price


def peer_cost_for_channel(channel: str) -> SourceCost:
    """Default peer parameters for a channel driver (FMI's measured figures)."""
    table = {
        "local": SourceCost(latency=50e-6, bandwidth=2e9),
        "direct": SourceCost(latency=0.34e-3, bandwidth=400e6),
        "redis": SourceCost(latency=5.2e-3, bandwidth=100e6, aggregate_bandwidth=400e6),
        "s3": SourceCost(latency=2 * 40.4e-3, bandwidth=50e6, request_price=5.4e-6 + 4.3e-7 * 2),
    }
    return table.get(channel, SourceCost(latency=1e-3, bandwidth=100e6))


class SourceModel:
    """Predicts time and price of reading a sample from each kind of source.

    Args:
        costs: a :class:`SourceCost` for each of ``"memory"``, ``"disk"``,
            ``"peer"`` and ``"origin"``; missing kinds take defaults.
        hint: ``"fast"`` (least time) or ``"cheap"`` (least dollars).
        function_price_per_second: dollars one waiting function costs per second
            (GiB-s price x memory in GiB); added to every price.
        concurrency: concurrent readers per kind (``p``, ``g``) used in the formulas.
    """

    def __init__(
        self,
        costs: Mapping[str, SourceCost] | None = None,
        *,
        hint: Literal["fast", "cheap"] = "fast",
        function_price_per_second: float = 0.0000166667,
        concurrency: Mapping[str, int] | None = None,
    ) -> None:
        if hint not in ("fast", "cheap"):
            raise ArgumentError(f'hint must be "fast" or "cheap", got {hint!r}')
        defaults = {
            "memory": SourceCost(latency=1e-6, bandwidth=5e9),
            "disk": SourceCost(latency=1e-4, bandwidth=1e9, aggregate_bandwidth=1.5e9),
            "peer": peer_cost_for_channel("local"),
            "origin": SourceCost(
                latency=40.4e-3, bandwidth=50e6, aggregate_bandwidth=10e9, request_price=4.3e-7
            ),
        }
        for kind, cost in (costs or {}).items():
            self._check_kind(kind)
            if not isinstance(cost, SourceCost):
                raise ArgumentError(f"cost of {kind!r} must be a SourceCost, got {cost!r}")
            defaults[kind] = cost
        self.costs: dict[str, SourceCost] = defaults
        self.hint = hint
        self.function_price_per_second = float(function_price_per_second)
        self.concurrency: dict[str, int] = {k: 1 for k in KINDS}
        for kind, p in (concurrency or {}).items():
            self._check_kind(kind)
            self.concurrency[kind] = int(p)

    def __repr__(self) -> str:
        return f"SourceModel(hint={self.hint!r}, costs={self.costs!r})"

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ArgumentError(f"unknown source kind {kind!r}; use one of {', '.join(KINDS)}")

    def with_cost(self, kind: str, **changes: float | None) -> SourceModel:
        """A copy with some parameters of ``kind`` replaced (``latency=``, ``bandwidth=``, ...)."""
        self._check_kind(kind)
        costs = dict(self.costs)
        try:
            costs[kind] = dataclasses.replace(costs[kind], **changes)  # type: ignore[arg-type]
        except TypeError as exc:
            fields = ", ".join(f.name for f in dataclasses.fields(SourceCost))
            raise ArgumentError(f"with_cost: {exc}; parameters are {fields}") from None
        return SourceModel(
            costs,
            hint=self.hint,  # type: ignore[arg-type]
            function_price_per_second=self.function_price_per_second,
            concurrency=self.concurrency,
        )

    def time(self, kind: str, nbytes: int) -> float:
        """Predicted seconds to read ``nbytes`` from ``kind``.

        For ``"peer"`` the rate is also capped by the remote tier (HDMLP's
        ``min(b_c, r_j(p)/p)``, taking the memory tier).
        """
        self._check_kind(kind)
        cost = self.costs[kind]
        p = self.concurrency[kind]
        if kind == "peer":
            rate = min(cost.rate(p), self.costs["memory"].rate(self.concurrency["memory"]))
            return cost.latency + nbytes / rate
        return cost.time(nbytes, p)

    def price(self, kind: str, nbytes: int) -> float:
        """Predicted dollars to read ``nbytes`` from ``kind``, function time included."""
        cost = self.costs[kind]
        return cost.price(nbytes) + self.time(kind, nbytes) * self.function_price_per_second

    def choose(self, nbytes: int, candidates: Iterable[str]) -> str:
        """The best kind among ``candidates`` for the hint; ties go in :data:`KINDS` order."""
        kinds = sorted(set(candidates), key=KINDS.index)
        if not kinds:
            raise ArgumentError("choose() needs at least one candidate source")
        key = self.time if self.hint == "fast" else self.price
        return min(kinds, key=lambda k: (key(k, nbytes), KINDS.index(k)))

    def calibrate(self, kind: str, observations: Iterable[tuple[int, float]]) -> SourceModel:
        """Fit latency and bandwidth of ``kind`` to measured ``(nbytes, seconds)`` reads.

        Least squares of ``seconds = latency + nbytes / bandwidth``; needs at least
        two distinct sizes to fit the bandwidth (with one size only the latency
        is refitted). Returns a new model; prices are kept.
        """
        self._check_kind(kind)
        obs = [(float(n), float(t)) for n, t in observations]
        if not obs:
            raise ArgumentError(f"calibrate({kind!r}) needs at least one (nbytes, seconds) pair")
        cost = self.costs[kind]
        n_mean = sum(n for n, _ in obs) / len(obs)
        t_mean = sum(t for _, t in obs) / len(obs)
        var = sum((n - n_mean) ** 2 for n, _ in obs)
        if var > 0:
            slope = sum((n - n_mean) * (t - t_mean) for n, t in obs) / var
            if slope > 0:
                bandwidth = 1.0 / slope
                latency = max(0.0, t_mean - slope * n_mean)
                return self.with_cost(kind, latency=latency, bandwidth=bandwidth)
        latency = max(0.0, t_mean - n_mean / cost.bandwidth)
        return self.with_cost(kind, latency=latency)
