"""Loader metrics: per epoch, where samples came from and how long training waited."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from afmi.data.model import KINDS

__all__ = ["EpochStats"]


def _zero() -> dict[str, int]:
    return {k: 0 for k in KINDS}


@dataclass
class EpochStats:
    """What one rank's loader did in one epoch.

    Attributes:
        epoch: epoch number.
        samples: samples delivered, by source kind (memory, disk, peer, origin).
        bytes: bytes delivered, by source kind.
        origin_requests: requests sent to the origin store (ranged parts count each).
        peer_requests: request messages sent to peers (each may carry many samples).
        peer_misses: samples a peer did not have ("not there yet": read from the origin).
        evictions: next-use cache evictions.
        stall_seconds: time the consumer waited inside ``async for`` for its batches.
        seconds: wall time from the first batch request to the end of the epoch.
    """

    epoch: int
    samples: dict[str, int] = field(default_factory=_zero)
    bytes: dict[str, int] = field(default_factory=_zero)
    origin_requests: int = 0
    peer_requests: int = 0
    peer_misses: int = 0
    evictions: int = 0
    stall_seconds: float = 0.0
    seconds: float = 0.0
    batches: int = 0

    def record(self, kind: str, nbytes: int) -> None:
        """Count one sample of ``nbytes`` delivered from ``kind``."""
        self.samples[kind] += 1
        self.bytes[kind] += nbytes

    @property
    def total_samples(self) -> int:
        """Samples delivered from all sources."""
        return sum(self.samples.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready)."""
        return {
            "epoch": self.epoch,
            "samples": dict(self.samples),
            "bytes": dict(self.bytes),
            "origin_requests": self.origin_requests,
            "peer_requests": self.peer_requests,
            "peer_misses": self.peer_misses,
            "evictions": self.evictions,
            "stall_seconds": self.stall_seconds,
            "seconds": self.seconds,
            "batches": self.batches,
        }
