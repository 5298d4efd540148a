"""Placement (homes per rank and tier) and the next-use cache."""

import numpy as np
import pytest

import afmi
from afmi.data import AccessPlan, NextUseCache, Placement


def test_every_sample_has_one_home_when_aggregate_capacity_fits():
    plan = AccessPlan(120, 4, 12, 3, seed=3, drop_last=False)
    sizes = [100] * 120
    pl = Placement(plan, sizes, [[100 * 30, 0]] * 4)
    assert pl.coverage() == 1.0
    assert (pl.home_rank >= 0).all()
    first_rank, _ = plan.first_readers()
    assert (pl.home_rank == first_rank).all()  # the first reader is the home
    for r in range(4):
        assert pl.reserved[r][0] <= 100 * 30
        assert pl.homes(r, 0).size * 100 == pl.reserved[r][0]


def test_packing_respects_budgets_and_spills_to_disk():
    plan = AccessPlan(60, 2, 6, 4, seed=5)
    sizes = list(np.random.default_rng(0).integers(50, 150, 60))
    pl = Placement(plan, [int(s) for s in sizes], [[500, 700], [300, 0]])
    for r, caps in enumerate([[500, 700], [300, 0]]):
        for t in range(2):
            held = pl.homes(r, t)
            assert sum(sizes[s] for s in held) == pl.reserved[r][t] <= caps[t]
    assert pl.homes(1, 1).size == 0  # no disk on rank 1
    assert 0 < pl.coverage() < 1


def test_hdmlp_order_frequency_then_first_access():
    # one rank: every sample is its own; capacity for 5 of 20 equal samples
    plan = AccessPlan(20, 1, 4, 3, seed=8, drop_last=True)
    pl = Placement(plan, [10] * 20, [[50, 0]])
    counts = plan.access_counts(0)
    first = plan.first_steps(0)
    key = sorted(range(20), key=lambda s: (-counts[s], first[s]))
    assert sorted(pl.homes(0, 0).tolist()) == sorted(key[:5])


def test_tiny_capacity_places_nothing():
    plan = AccessPlan(20, 2, 4, 2, seed=1)
    pl = Placement(plan, [10] * 20, [[1, 0], [9, 5]])
    assert (pl.home_rank == -1).all() and pl.coverage() == 0.0


def test_every_rank_computes_the_same_placement():
    async def main(comm):
        plan = AccessPlan(90, comm.size, 9, 3, seed=4)
        pl = Placement(plan, [64] * 90, [[64 * 20, 64 * 5]] * comm.size)
        mine = (pl.home_rank.tobytes(), pl.home_tier.tobytes())
        return await comm.allgather(mine)

    res = afmi.run_local(main, 3, timeout=30)
    assert len({x for r in res for x in r}) == 1


def test_placement_argument_errors():
    plan = AccessPlan(10, 2, 4, 1, 0)
    with pytest.raises(afmi.ArgumentError, match="manifest has 9 samples"):
        Placement(plan, [1] * 9, [[1, 1]] * 2)
    with pytest.raises(afmi.ArgumentError, match="capacities for 1 ranks"):
        Placement(plan, [1] * 10, [[1, 1]])


def test_next_use_cache_is_belady():
    c = NextUseCache(30)
    assert c.offer(1, 10, next_step=5) == []
    assert c.offer(2, 10, next_step=9) == []
    assert c.offer(3, 10, next_step=7) == []
    # full: a sample used at 6 evicts the farthest (2, next use 9)
    assert c.offer(4, 10, next_step=6) == [2]
    assert 2 not in c and 4 in c and c.evictions == 1
    # a sample used later than everything cached is not admitted
    assert c.offer(5, 10, next_step=50) is None
    assert 5 not in c and c.used == 30
    # touching updates the key; no further use leaves at once
    assert c.touch(1, None) is True and 1 not in c and c.used == 20
    c.touch(3, 100)
    assert c.offer(6, 20, next_step=8) == [3]
    assert sorted([s for s in (3, 4, 6) if s in c]) == [4, 6]
    # no next use or too large: rejected
    assert c.offer(7, 5, None) is None
    assert c.offer(8, 31, 1) is None


def test_next_use_cache_rejection_keeps_entries():
    c = NextUseCache(20)
    c.offer(1, 10, 10)
    c.offer(2, 10, 3)
    # needs 20 bytes: would have to evict 1 (10) and 2 (3 < 5): rejected, nothing lost
    assert c.offer(3, 20, 5) is None
    assert 1 in c and 2 in c and c.used == 20
    assert c.offer(4, 10, 4) == [1]
