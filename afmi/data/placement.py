"""Which rank keeps which sample in which tier, computed identically by every rank.

**Static placement** (:class:`Placement`). HDMLP ranks the samples a rank
reads by access frequency over all epochs, then by first access, and packs
them greedily into tier 1 (memory), then tier 2 (disk). Done independently
per rank, that keeps popular samples on several ranks and leaves others on
none, and every uncovered sample goes back to the origin each epoch. afmi
first gives each sample one *home*: the rank that reads it first (that rank
fetches it from the origin anyway, so filling its tier costs nothing extra).
Each rank then packs its home samples in HDMLP order (frequency, then first
access) into memory, then disk. When the aggregate capacity holds the data
set, every sample has a home and the origin is read about once per sample
over the whole run. Because the plan and the capacities are known to all
ranks, every rank knows every home without asking.

**Next-use cache** (:class:`NextUseCache`). Capacity a rank's home samples
leave free is used for samples the rank reads again soon: on admission, when
space is short, the entry whose next use (known from the plan) is farthest
away is evicted, and a sample whose next use is farther than every entry's is
not admitted (Belady's rule, which the plan makes exact). A sample with no
further use leaves at once. These entries are private: peers never ask for
them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from afmi.data.plan import AccessPlan
from afmi.errors import ArgumentError

__all__ = ["NextUseCache", "Placement", "TIER_NAMES"]

#: Tier index -> name.
TIER_NAMES = ("memory", "disk")


class Placement:
    """Every rank's home samples per tier; see the module docstring.

    Args:
        plan: the access plan.
        sizes: size in bytes of each sample (length ``plan.num_samples``).
        capacities: per rank, the byte budget of each tier ``[memory, disk]``.
    """

    def __init__(
        self, plan: AccessPlan, sizes: Sequence[int], capacities: Sequence[Sequence[int]]
    ) -> None:
        if len(sizes) != plan.num_samples:
            raise ArgumentError(
                f"the manifest has {len(sizes)} samples but the plan has {plan.num_samples}: "
                "build the plan with num_samples=len(source)"
            )
        if len(capacities) != plan.world_size:
            raise ArgumentError(
                f"capacities for {len(capacities)} ranks given, the plan has {plan.world_size}"
            )
        self.plan = plan
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.capacities = [list(map(int, c)) for c in capacities]
        ntiers = len(TIER_NAMES)
        for r, caps in enumerate(self.capacities):
            if len(caps) != ntiers or any(c < 0 for c in caps):
                raise ArgumentError(
                    f"rank {r}: capacities must be {ntiers} byte budgets >= 0 (memory, disk)"
                )
        n = plan.num_samples
        #: Home rank of each sample (-1: none).
        self.home_rank: npt.NDArray[np.int32] = np.full(n, -1, dtype=np.int32)
        #: Home tier index of each sample (-1: none).
        self.home_tier: npt.NDArray[np.int8] = np.full(n, -1, dtype=np.int8)
        #: Bytes of home samples per rank and tier.
        self.reserved = [[0] * ntiers for _ in range(plan.world_size)]
        first_rank, first_step = plan.first_readers()
        #: Step at which each sample's home rank first reads it.
        self.fill_step = first_step
        for r in range(plan.world_size):
            self._pack(r, np.flatnonzero(first_rank == r), first_step)

    def _pack(
        self, rank: int, samples: npt.NDArray[np.int64], first_step: npt.NDArray[np.int64]
    ) -> None:
        if samples.size == 0:
            return
        counts = self.plan.access_counts(rank)[samples]
        order = np.lexsort((first_step[samples], -counts))  # frequency, then first access
        ranked = samples[order]
        sizes = self.sizes[ranked]
        smallest = int(sizes.min())
        pos = 0
        for tier, capacity in enumerate(self.capacities[rank]):
            free = capacity
            # fast path: the prefix that fits as a whole
            if pos < len(ranked):
                fits = int(np.searchsorted(np.cumsum(sizes[pos:]), free, side="right"))
                chosen = ranked[pos : pos + fits]
                self.home_rank[chosen] = rank
                self.home_tier[chosen] = tier
                free -= int(sizes[pos : pos + fits].sum())
                pos += fits
            # then greedily skip samples that do not fit
            rest: list[int] = []
            for i in range(pos, len(ranked)):
                if free < smallest:
                    rest.extend(range(i, len(ranked)))
                    break
                s, n = int(ranked[i]), int(sizes[i])
                if n <= free:
                    self.home_rank[s] = rank
                    self.home_tier[s] = tier
                    free -= n
                else:
                    rest.append(i)
            self.reserved[rank][tier] = capacity - free
            ranked, sizes = ranked[rest], sizes[rest]
            pos = 0

    def holder(self, sample: int) -> tuple[int, int] | None:
        """``(rank, tier)`` of ``sample``'s home, or None when it has none."""
        r = int(self.home_rank[sample])
        return None if r < 0 else (r, int(self.home_tier[sample]))

    def homes(self, rank: int, tier: int) -> npt.NDArray[np.int64]:
        """Ids of the samples at home in ``rank``'s ``tier``."""
        return np.flatnonzero((self.home_rank == rank) & (self.home_tier == tier))

    def coverage(self) -> float:
        """Fraction of the samples read at all that have a home."""
        read = self.fill_step != np.iinfo(np.int64).max
        total = int(read.sum())
        return float((self.home_rank[read] >= 0).sum()) / total if total else 1.0


class NextUseCache:
    """Admission and eviction by next use for one tier's spare capacity (pure logic).

    :meth:`offer` decides; the caller moves the bytes.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ArgumentError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self._entries: dict[int, tuple[int, int]] = {}  # sample -> (size, next step)
        self._heap: list[tuple[int, int]] = []  # (-next step, sample), lazily invalidated
        #: Samples evicted so far.
        self.evictions = 0

    def __contains__(self, sample: int) -> bool:
        return sample in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def _top(self) -> tuple[int, int] | None:
        while self._heap:
            neg, sample = self._heap[0]
            entry = self._entries.get(sample)
            if entry is not None and entry[1] == -neg:
                return sample, -neg
            heapq.heappop(self._heap)
        return None

    def offer(self, sample: int, size: int, next_step: int | None) -> list[int] | None:
        """Try to admit ``sample``; return the samples to evict first, or None if rejected."""
        if sample in self._entries:
            self.touch(sample, next_step)
            return []
        if next_step is None or size > self.capacity:
            return None
        victims: list[tuple[int, int]] = []
        freed = 0
        while self.used - freed + size > self.capacity:
            top = self._top()
            if top is None or top[1] <= next_step:
                for victim in victims:  # put them back: admission rejected
                    heapq.heappush(self._heap, (-victim[1], victim[0]))
                return None
            heapq.heappop(self._heap)
            victims.append(top)
            freed += self._entries[top[0]][0]
        for victim_id, _ in victims:
            self.discard(victim_id)
            self.evictions += 1
        self._entries[sample] = (size, next_step)
        self.used += size
        heapq.heappush(self._heap, (-next_step, sample))
        return [v for v, _ in victims]

    def touch(self, sample: int, next_step: int | None) -> bool:
        """Record that ``sample`` was used; its next use is ``next_step``.

        Returns True when the sample left the cache (no further use).
        """
        entry = self._entries.get(sample)
        if entry is None:
            return False
        if next_step is None:
            self.discard(sample)
            return True
        self._entries[sample] = (entry[0], next_step)
        heapq.heappush(self._heap, (-next_step, sample))
        return False

    def discard(self, sample: int) -> None:
        """Forget ``sample`` (no-op if absent)."""
        entry = self._entries.pop(sample, None)
        if entry is not None:
            self.used -= entry[0]
