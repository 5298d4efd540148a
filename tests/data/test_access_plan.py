"""The access plan: the HDMLP formula, identical on every rank, lookahead queries."""

import hashlib

import numpy as np
import pytest

import afmi
from afmi.data import NEVER, AccessPlan


def reference_batches(f, n, b, seed, drop_last, rank, epoch):
    """The HDMLP access-stream formula, written out directly."""
    perm = np.random.default_rng([seed, epoch]).permutation(f)
    nlb = -(-b // n)
    nb = f // b if drop_last else -(-f // b)
    return [
        perm[j * b + rank * nlb : min(j * b + (rank + 1) * nlb, (j + 1) * b, f)] for j in range(nb)
    ]


CASES = [
    # F, N, B, epochs, seed, drop_last
    (100, 4, 16, 3, 0, True),
    (100, 4, 16, 2, 7, False),
    (37, 3, 10, 2, 1, False),
    (50, 4, 5, 2, 3, True),  # nlb=2: rank 3 gets empty shares
    (10, 1, 3, 3, 9, False),
    (64, 8, 64, 2, 2, True),
]


@pytest.mark.parametrize("f,n,b,epochs,seed,drop_last", CASES)
def test_plan_matches_formula(f, n, b, epochs, seed, drop_last):
    F, N, B, E = f, n, b, epochs
    plan = AccessPlan(F, N, B, E, seed, drop_last=drop_last)
    for e in range(E):
        for r in range(N):
            ref = reference_batches(F, N, B, seed, drop_last, r, e)
            got = plan.batches(r, e)
            assert len(got) == len(ref) == plan.batches_per_epoch
            for g, x in zip(got, ref):
                assert g.tolist() == x.tolist()
            assert plan.sequence(r, e).tolist() == np.concatenate(ref).tolist()
        # every batch is split across the ranks without overlap
        for j in range(plan.batches_per_epoch):
            parts = np.concatenate([plan.batch(r, e, j) for r in range(N)])
            B_j = min(B, F - j * B)
            assert len(parts) == B_j and len(set(parts.tolist())) == B_j


def test_empty_shares_follow_formula():
    plan = AccessPlan(50, 4, 5, 1, 3)
    assert plan.local_batch_size == 2
    assert all(len(b) == 0 for b in plan.batches(3, 0))
    assert all(len(b) == 1 for b in plan.batches(2, 0))


def _digest(plan, rank):
    h = hashlib.sha256()
    for e in range(plan.epochs):
        for r in range(plan.world_size):
            h.update(plan.sequence(r, e).tobytes())
    h.update(plan.access_counts(rank).tobytes())
    return h.hexdigest()


def test_plans_equal_across_ranks():
    async def main(comm):
        plan = AccessPlan(200, comm.size, 24, 3, seed=42, drop_last=False)
        mine = _digest(plan, 0)
        return await comm.allgather(mine)

    results = afmi.run_local(main, 4, timeout=30)
    assert len({d for res in results for d in res}) == 1


def test_different_seeds_and_epochs_differ():
    a = AccessPlan(100, 2, 10, 2, seed=1)
    b = AccessPlan(100, 2, 10, 2, seed=2)
    assert a.permutation(0).tolist() != b.permutation(0).tolist()
    assert a.permutation(0).tolist() != a.permutation(1).tolist()
    assert sorted(a.permutation(1).tolist()) == list(range(100))


def test_lookahead_queries_match_brute_force():
    plan = AccessPlan(30, 3, 6, 4, seed=11, drop_last=False)
    uses = {}  # (rank, sample) -> steps
    for e in range(plan.epochs):
        for j in range(plan.batches_per_epoch):
            for r in range(3):
                for s in plan.batch(r, e, j).tolist():
                    uses.setdefault((r, s), []).append(plan.step_of(e, j))
    for r in range(3):
        counts = plan.access_counts(r)
        firsts = plan.first_steps(r)
        for s in range(30):
            steps = uses.get((r, s), [])
            assert counts[s] == len(steps)
            assert firsts[s] == (steps[0] if steps else NEVER)
            assert plan.next_use(r, s, -1) == (steps[0] if steps else None)
            for i, t in enumerate(steps):
                nxt = steps[i + 1] if i + 1 < len(steps) else None
                assert plan.next_use(r, s, t) == nxt
    total = sum(plan.access_counts(r) for r in range(3))
    assert (total == plan.epochs).all()  # drop_last=False: every sample once per epoch
    first_rank, first_step = plan.first_readers()
    for s in range(30):
        candidates = [(uses[(r, s)][0], r) for r in range(3) if (r, s) in uses]
        assert (first_step[s], first_rank[s]) == min(candidates)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(num_samples=1.5), "num_samples must be an int"),
        (dict(world_size=0), "world_size must be >= 1"),
        (dict(global_batch_size=-1), "global_batch_size must be >= 1"),
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(seed=-3), "seed must be a non-negative int"),
        (dict(seed="x"), "seed must be a non-negative int"),
        (dict(global_batch_size=200), "larger than num_samples"),
        (dict(drop_last="yes"), "drop_last must be True or False"),
    ],
)
def test_bad_arguments_are_explained(kwargs, match):
    args = dict(num_samples=100, world_size=2, global_batch_size=10, epochs=1, seed=0)
    args.update(kwargs)
    with pytest.raises(afmi.ArgumentError, match=match):
        AccessPlan(**args)


def test_bad_queries_are_explained():
    plan = AccessPlan(10, 2, 4, 2, 0)
    with pytest.raises(afmi.ArgumentError, match="epoch=2 is out of range"):
        plan.sequence(0, 2)
    with pytest.raises(afmi.ArgumentError, match="rank=2 is out of range"):
        plan.batches(2, 0)
    with pytest.raises(afmi.ArgumentError, match="sample=10 is out of range"):
        plan.next_use(0, 10, 0)
    with pytest.raises(afmi.ArgumentError, match="batch=5 is out of range"):
        plan.batch(0, 0, 5)
