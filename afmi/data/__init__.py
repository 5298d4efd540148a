"""Clairvoyant data loading (HDMLP/NoPFS) for distributed training in functions.

The shuffle seed tells every rank which sample every rank reads when
(:class:`AccessPlan`). From it each rank computes every rank's placement of
samples in memory and disk tiers (:class:`Placement`), picks for each read the
cheapest of a local tier, the peer holding the sample, or the origin object
store (:class:`SourceModel`), and prefetches in plan order (:class:`Loader`).
See docs/loader.md.
"""

from afmi.data.loader import EpochIterator, Loader, default_collate
from afmi.data.model import KINDS, SourceCost, SourceModel, peer_cost_for_channel
from afmi.data.peers import PeerService
from afmi.data.placement import NextUseCache, Placement
from afmi.data.plan import NEVER, AccessPlan
from afmi.data.sources import (
    ArraySource,
    DirectorySource,
    Manifest,
    S3Source,
    SampleReadError,
    Source,
)
from afmi.data.stats import EpochStats
from afmi.data.tiers import DiskTier, MemoryTier, Tier, TierFullError

__all__ = [
    "AccessPlan",
    "ArraySource",
    "DirectorySource",
    "DiskTier",
    "EpochIterator",
    "EpochStats",
    "KINDS",
    "Loader",
    "Manifest",
    "MemoryTier",
    "NEVER",
    "NextUseCache",
    "PeerService",
    "Placement",
    "S3Source",
    "SampleReadError",
    "Source",
    "SourceCost",
    "SourceModel",
    "Tier",
    "TierFullError",
    "default_collate",
    "peer_cost_for_channel",
]
