"""The access plan: which rank reads which sample when, for every epoch.

Distributed SGD reads a seeded permutation of the data set every epoch and
cuts it into global batches; each rank takes a fixed slice of each batch.
Given ``(num_samples, world_size, global_batch_size, epochs, seed,
drop_last)`` every rank computes the same plan without communicating. This
is the access stream of HDMLP/NoPFS (SC'21):

* epoch ``e`` uses ``numpy.random.default_rng([seed, e]).permutation(F)``;
* local batch size ``nlb = ceil(B / N)``;
* batch ``j`` of rank ``i`` is ``perm[j*B + i*nlb : min(j*B + (i+1)*nlb, (j+1)*B, F)]``;
* ``drop_last`` gives ``F // B`` batches per epoch, otherwise ``ceil(F / B)``.

With these formulas some ranks may get an empty (or shorter) share of a batch
when ``B`` is not a multiple of ``N``; every rank still sees the same number of
batches per epoch, so ranks stay in lockstep.

Time is counted in *steps*: step ``e * batches_per_epoch + j`` is batch ``j``
of epoch ``e``. A rank reads a sample at most once per epoch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from afmi.errors import ArgumentError

__all__ = ["AccessPlan", "NEVER"]

IntArray = npt.NDArray[np.int64]

#: Step value meaning "no access" in :meth:`AccessPlan.first_steps` and friends.
NEVER = np.iinfo(np.int64).max


def _positive_int(value: Any, name: str, what: str) -> int:
    if type(value) is not int and not isinstance(value, np.integer):
        raise ArgumentError(f"{name} must be an int ({what}), got {type(value).__name__} {value!r}")
    if value < 1:
        raise ArgumentError(f"{name} must be >= 1 ({what}), got {value}")
    return int(value)


class AccessPlan:
    """Every rank's sample sequence for every epoch; see the module docstring.

    Args:
        num_samples: ``F``, samples in the data set (ids ``0..F-1``).
        world_size: ``N``, number of ranks reading.
        global_batch_size: ``B``, samples per global batch (all ranks together).
        epochs: number of epochs the plan covers (the lookahead).
        seed: non-negative int; with the epoch number it seeds each permutation.
        drop_last: drop the last incomplete global batch of every epoch.

    Raises:
        ArgumentError: an argument is not a positive int, ``seed`` is negative,
            or ``drop_last`` leaves no batch at all.
    """

    def __init__(
        self,
        num_samples: int,
        world_size: int,
        global_batch_size: int,
        epochs: int,
        seed: int,
        drop_last: bool = True,
    ) -> None:
        self.num_samples = _positive_int(num_samples, "num_samples", "samples in the data set")
        self.world_size = _positive_int(world_size, "world_size", "number of ranks")
        self.global_batch_size = _positive_int(
            global_batch_size, "global_batch_size", "samples per batch over all ranks"
        )
        self.epochs = _positive_int(epochs, "epochs", "number of epochs to plan")
        if (type(seed) is not int and not isinstance(seed, np.integer)) or seed < 0:
            raise ArgumentError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        if not isinstance(drop_last, bool):
            raise ArgumentError(f"drop_last must be True or False, got {drop_last!r}")
        self.drop_last = drop_last
        n, b = self.num_samples, self.global_batch_size
        if drop_last and b > n:
            raise ArgumentError(
                f"global_batch_size={b} is larger than num_samples={n}: with drop_last=True "
                "no batch would remain; use a smaller batch or drop_last=False"
            )
        #: Batches per epoch (every rank sees this many, some possibly empty).
        self.batches_per_epoch = n // b if drop_last else math.ceil(n / b)
        #: ``nlb``, the largest share of one batch any rank gets.
        self.local_batch_size = math.ceil(b / self.world_size)
        self._perms: dict[int, IntArray] = {}
        self._who: npt.NDArray[np.int32] | None = None
        self._when: IntArray | None = None

    def __repr__(self) -> str:
        return (
            f"AccessPlan(num_samples={self.num_samples}, world_size={self.world_size}, "
            f"global_batch_size={self.global_batch_size}, epochs={self.epochs}, "
            f"seed={self.seed}, drop_last={self.drop_last})"
        )

    @property
    def total_steps(self) -> int:
        """Number of steps (batches) over all epochs."""
        return self.epochs * self.batches_per_epoch

    # -- checks --
    def _epoch(self, epoch: Any) -> int:
        if type(epoch) is not int and not isinstance(epoch, np.integer):
            raise ArgumentError(f"epoch must be an int, got {type(epoch).__name__}")
        if not 0 <= epoch < self.epochs:
            raise ArgumentError(
                f"epoch={epoch} is out of range: the plan has epochs 0..{self.epochs - 1}"
            )
        return int(epoch)

    def _rank(self, rank: Any) -> int:
        if type(rank) is not int and not isinstance(rank, np.integer):
            raise ArgumentError(f"rank must be an int, got {type(rank).__name__}")
        if not 0 <= rank < self.world_size:
            raise ArgumentError(
                f"rank={rank} is out of range: the plan has ranks 0..{self.world_size - 1}"
            )
        return int(rank)

    def _sample(self, sample: Any) -> int:
        if type(sample) is not int and not isinstance(sample, np.integer):
            raise ArgumentError(f"sample must be an int id, got {type(sample).__name__}")
        if not 0 <= sample < self.num_samples:
            raise ArgumentError(
                f"sample={sample} is out of range: ids are 0..{self.num_samples - 1}"
            )
        return int(sample)

    # -- the stream --
    def permutation(self, epoch: int) -> IntArray:
        """The permutation of sample ids used in ``epoch`` (read-only)."""
        epoch = self._epoch(epoch)
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.num_samples).astype(np.int64)
            perm.flags.writeable = False
            if len(self._perms) < 4:  # keep a few; recomputing is cheap
                self._perms[epoch] = perm
        return perm

    def _share_bounds(self, rank: int, batch: int) -> tuple[int, int]:
        b, nlb = self.global_batch_size, self.local_batch_size
        start = batch * b + rank * nlb
        stop = min(batch * b + (rank + 1) * nlb, (batch + 1) * b, self.num_samples)
        return start, max(start, stop)

    def batch(self, rank: int, epoch: int, batch: int) -> IntArray:
        """Rank ``rank``'s share of batch ``batch`` of ``epoch`` (possibly empty)."""
        rank = self._rank(rank)
        perm = self.permutation(epoch)
        if type(batch) is not int or not 0 <= batch < self.batches_per_epoch:
            raise ArgumentError(
                f"batch={batch!r} is out of range: "
                f"epochs have batches 0..{self.batches_per_epoch - 1}"
            )
        start, stop = self._share_bounds(rank, batch)
        return perm[start:stop]

    def batches(self, rank: int, epoch: int) -> list[IntArray]:
        """Rank ``rank``'s share of every batch of ``epoch``, in order."""
        rank = self._rank(rank)
        perm = self.permutation(epoch)
        out = []
        for j in range(self.batches_per_epoch):
            start, stop = self._share_bounds(rank, j)
            out.append(perm[start:stop])
        return out

    def sequence(self, rank: int, epoch: int) -> IntArray:
        """Every sample rank ``rank`` reads in ``epoch``, in order."""
        parts = self.batches(rank, epoch)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    # -- lookahead over all epochs --
    def _build_index(self) -> tuple[npt.NDArray[np.int32], IntArray]:
        if self._who is not None and self._when is not None:
            return self._who, self._when
        n, b, nlb = self.num_samples, self.global_batch_size, self.local_batch_size
        used = self.batches_per_epoch * b if self.drop_last else n
        offsets = np.arange(used, dtype=np.int64)
        in_batch = offsets % b
        rank_of = (in_batch // nlb).astype(np.int32)
        step_of = offsets // b
        who = np.full((self.epochs, n), -1, dtype=np.int32)
        when = np.full((self.epochs, n), NEVER, dtype=np.int64)
        for e in range(self.epochs):
            perm = self.permutation(e)[:used]
            who[e, perm] = rank_of
            when[e, perm] = e * self.batches_per_epoch + step_of
        self._who, self._when = who, when
        return who, when

    def reader(self, epoch: int) -> npt.NDArray[np.int32]:
        """For each sample id, the rank that reads it in ``epoch`` (-1: nobody)."""
        who, _ = self._build_index()
        out: npt.NDArray[np.int32] = who[self._epoch(epoch)]
        return out

    def access_counts(self, rank: int) -> IntArray:
        """How often rank ``rank`` reads each sample over all epochs (array of length F)."""
        rank = self._rank(rank)
        who, _ = self._build_index()
        out: IntArray = (who == rank).sum(axis=0, dtype=np.int64)
        return out

    def first_steps(self, rank: int) -> IntArray:
        """The first step at which rank ``rank`` reads each sample (:data:`NEVER` if never)."""
        rank = self._rank(rank)
        who, when = self._build_index()
        out: IntArray = np.where(who == rank, when, NEVER).min(axis=0)
        return out

    def first_readers(self) -> tuple[npt.NDArray[np.int32], IntArray]:
        """For each sample, the rank reading it first over all epochs (-1: never) and the step."""
        who, when = self._build_index()
        first_epoch = np.argmax(who >= 0, axis=0)
        cols = np.arange(self.num_samples)
        rank = who[first_epoch, cols]
        step = when[first_epoch, cols]
        return rank, step

    def next_use(self, rank: int, sample: int, after_step: int) -> int | None:
        """The first step after ``after_step`` at which ``rank`` reads ``sample``, or None.

        Use ``after_step=-1`` for the first use.
        """
        rank, sample = self._rank(rank), self._sample(sample)
        who, when = self._build_index()
        steps = when[:, sample][(who[:, sample] == rank) & (when[:, sample] > after_step)]
        return int(steps.min()) if steps.size else None

    def step_of(self, epoch: int, batch: int) -> int:
        """The global step number of batch ``batch`` of ``epoch``."""
        return self._epoch(epoch) * self.batches_per_epoch + batch
