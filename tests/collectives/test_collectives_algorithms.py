"""Every registered collective algorithm against a pure-Python/numpy reference.

Each test forces one algorithm (``registry.forced``) and runs it on 1..9
ranks, every root, several dtypes and shapes (0-d, empty, 2-d Fortran
order), every built-in op and non-commutative user ops whose result shows
the order in which ranks were combined. Every rank builds every rank's
input from its rank number, so each computes the reference itself.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
import pytest

import afmi
from afmi.collectives import registry
from afmi.collectives.linear import fold

SIZES = range(1, 10)
launch = functools.partial(afmi.launch_local, timeout=60)


#: Algorithms that run only on their own channel (tested in test_storage.py).
CHANNEL_BOUND = {"redis_counter"}


def names(collective: str) -> list[str]:
    return [a.name for a in registry.algorithms(collective) if a.name not in CHANNEL_BOUND]


# -- values and comparison --


def matmul_op() -> afmi.Op:
    return afmi.Op(lambda a, b: a @ b, commutative=False, name="matmul")


def concat_op() -> afmi.Op:
    return afmi.Op(lambda a, b: a + b, commutative=False, name="concat")


def batched_matmul_op() -> afmi.Op:
    return afmi.Op(np.matmul, commutative=False, name="batched_matmul")


def fortran(a: np.ndarray) -> np.ndarray:
    out = np.asfortranarray(a)
    assert out.flags.f_contiguous and (a.ndim < 2 or not out.flags.c_contiguous)
    return out


def _arr(r: int, dtype: str, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    base = (np.arange(n) * 7 + r * 3) % 5 + 1  # small positive integers: exact in any dtype
    if dtype == "bool":
        a = ((np.arange(n) + r) % 3 == 0).reshape(shape)
    elif dtype == "complex128":
        a = (base + 1j * ((base + r) % 3)).astype(dtype).reshape(shape)
    else:
        a = base.astype(dtype).reshape(shape)
    return fortran(a) if order == "F" else a


NUMERIC_SHAPES = [((), "C"), ((0,), "C"), ((7,), "C"), ((3, 4), "F"), ((11, 2), "C")]


def reduction_cases() -> list[tuple[str, Any, afmi.Op]]:
    """(id, make(rank) -> x, op) for every built-in op and two non-commutative ops."""
    cases: list[tuple[str, Any, afmi.Op]] = []
    for op in (afmi.SUM, afmi.PROD, afmi.MIN, afmi.MAX):
        for dtype in ("int32", "float64"):
            for shape, order in NUMERIC_SHAPES:
                cases.append((f"{op.name}-{dtype}-{shape}{order}", _maker(dtype, shape, order), op))
        cases.append((f"{op.name}-int", lambda r: r % 4 + 1, op))
    for op in (afmi.SUM, afmi.PROD):
        cases.append((f"{op.name}-complex", _maker("complex128", (3, 4), "F"), op))
        cases.append((f"{op.name}-complex-scalar", lambda r: complex(r % 3 + 1, r % 2), op))
    for op in (afmi.LAND, afmi.LOR, afmi.LXOR):
        cases.append((f"{op.name}-bool", _maker("bool", (3, 4), "F"), op))
        cases.append((f"{op.name}-bool1d", _maker("bool", (9,), "C"), op))
        cases.append((f"{op.name}-int32", _maker("int32", (5,), "C"), op))
        cases.append((f"{op.name}-pybool", lambda r: r % 3 != 1, op))
    for op in (afmi.BAND, afmi.BOR, afmi.BXOR):
        cases.append((f"{op.name}-int32", _maker("int32", (3, 4), "F"), op))
        cases.append((f"{op.name}-bool", _maker("bool", (6,), "C"), op))
        cases.append((f"{op.name}-int", lambda r: (r * 37) % 64 + 1, op))
    for op in (afmi.MAXLOC, afmi.MINLOC):
        cases.append((f"{op.name}-scalar", lambda r: ((r * 5) % 3, r), op))
        cases.append(
            (
                f"{op.name}-array",
                lambda r: (np.array([(r * 5) % 3, r % 2, 4 - r % 4]), np.full(3, r)),
                op,
            )
        )
    cases.append(("matmul", _matrix, matmul_op()))
    cases.append(("concat", lambda r: f"<{r}>", concat_op()))
    cases.append(("batched-matmul", _matrix_stack, batched_matmul_op()))
    return cases


def _maker(dtype: str, shape: tuple[int, ...], order: str) -> Any:
    return lambda r: _arr(r, dtype, shape, order)


def _matrix(r: int) -> np.ndarray:
    # Unimodular integer matrices: exact products that depend on the order.
    return np.array([[1, r + 1], [0, 1]], dtype=np.int64) @ np.array(
        [[1, 0], [r % 3, 1]], dtype=np.int64
    )


def _matrix_stack(r: int) -> np.ndarray:
    return np.stack([_matrix(r + k) for k in range(5)])


def assert_same(got: Any, want: Any, what: str = "") -> None:
    """Equal values and equal types (arrays: dtype and shape too)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{what}: got {type(got).__name__}, want ndarray"
        assert got.dtype == want.dtype and got.shape == want.shape, (what, got, want)
        assert np.array_equal(got, want), (what, got, want)
    elif isinstance(want, dict):
        assert type(got) is dict and list(got) == list(want), (what, got, want)
        for k in want:
            assert_same(got[k], want[k], f"{what}[{k!r}]")
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want), (what, got, want)
        for g, w in zip(got, want):
            assert_same(g, w, what)
    else:
        assert type(got) is type(want), (what, type(got), type(want))
        assert got == want or (got != got and want != want), (what, got, want)


def snapshot(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.copy(order="K")
    if isinstance(x, tuple):
        return tuple(snapshot(v) for v in x)
    return x


def applicable(collective: str, name: str, size: int, args: dict[str, Any]) -> bool:
    nbytes = registry.payload_nbytes(args.get("x", args.get("obj")))
    return registry.get(collective, name).applicable(size, nbytes, args)


async def finish(comm: afmi.Communicator) -> None:
    """Every message was consumed and no receive is left posted."""
    await comm.barrier()
    engine = comm.endpoint.engine
    assert engine.unexpected_count() == 0
    assert engine.posted_count() == 0
    assert engine.held_count() == 0


# -- reductions --


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("allreduce"))
async def test_allreduce(name, size):
    cases = reduction_cases()

    async def main(comm):
        ran = 0
        with registry.forced(allreduce=name):
            for cid, make, op in cases:
                x = make(comm.rank)
                if not applicable("allreduce", name, size, {"x": x, "op": op}):
                    continue
                before = snapshot(x)
                got = await comm.allreduce(x, op=op)
                assert_same(got, fold(op, [make(r) for r in range(size)]), cid)
                assert_same(x, before, f"{cid}: input modified")
                ran += 1
        await finish(comm)
        return ran

    ran = await launch(main, size)
    assert ran[0] > 10


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("reduce"))
async def test_reduce(name, size):
    cases = reduction_cases()

    async def main(comm):
        with registry.forced(reduce=name):
            for root in range(size):
                for cid, make, op in cases:
                    x = make(comm.rank)
                    before = snapshot(x)
                    got = await comm.reduce(x, op=op, root=root)
                    if comm.rank == root:
                        assert_same(got, fold(op, [make(r) for r in range(size)]), cid)
                    else:
                        assert got is None
                    assert_same(x, before, f"{cid}: input modified")
        await finish(comm)

    await launch(main, size)


def _prefixes(op: afmi.Op, values: list[Any]) -> list[Any]:
    return [fold(op, values[: i + 1]) for i in range(len(values))]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("collective", ["scan", "exscan"])
@pytest.mark.parametrize("name", names("scan"))
async def test_scan_exscan(collective, name, size):
    cases = reduction_cases()

    async def main(comm):
        call = comm.scan if collective == "scan" else comm.exscan
        with registry.forced(**{collective: name}):
            for cid, make, op in cases:
                x = make(comm.rank)
                got = await call(x, op=op)
                values = [make(r) for r in range(size)]
                if collective == "scan":
                    assert_same(got, _prefixes(op, values)[comm.rank], cid)
                elif comm.rank == 0:
                    assert got is None
                else:
                    assert_same(got, _prefixes(op, values)[comm.rank - 1], cid)
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("reduce_scatter"))
async def test_reduce_scatter(name, size):
    cases = [
        (cid, make, op)
        for cid, make, op in reduction_cases()
        if isinstance(make(0), np.ndarray) and make(0).ndim > 0
    ]
    cases.append(("rows<ranks", _maker("int32", (2, 3), "C"), afmi.SUM))
    cases.append(("big-rows", _maker("float64", (40, 3), "F"), afmi.MAX))

    async def main(comm):
        ran = 0
        with registry.forced(reduce_scatter=name):
            for cid, make, op in cases:
                x = make(comm.rank)
                if not applicable("reduce_scatter", name, size, {"x": x, "op": op}):
                    continue
                before = snapshot(x)
                got = await comm.reduce_scatter(x, op=op)
                want = np.array_split(fold(op, [make(r) for r in range(size)]), size)[comm.rank]
                assert_same(got, want, cid)
                assert_same(x, before, f"{cid}: input modified")
                ran += 1
        await finish(comm)
        return ran

    ran = await launch(main, size)
    assert ran[0] > 10


# -- data movement --


def payload(r: int, k: int = 0) -> Any:
    """A nested payload of many types that depends on ``r`` and ``k``."""
    return {
        "r": r,
        "k": (k, f"s{r}", b"\x00" * (r % 3)),
        "f": fortran(np.arange(6, dtype=np.float64).reshape(2, 3) + r),
        "z": np.array(r + 1j, dtype=np.complex128),
        "e": np.empty((0, r % 3), dtype=np.int32),
        "b": np.array([r % 2 == 0, True]),
        "n": None,
        "l": [np.int32(r), 1.5],
    }


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("bcast"))
async def test_bcast(name, size):
    async def main(comm):
        with registry.forced(bcast=name):
            for root in range(size):
                mine = payload(root, 1) if comm.rank == root else None
                got = await comm.bcast(mine, root=root)
                assert_same(got, payload(root, 1), "bcast")
                got = await comm.bcast(np.arange(5) if comm.rank == root else None, root=root)
                assert_same(got, np.arange(5))
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
async def test_bcast_scatter_allgather_splits_payloads_from_its_threshold(size, monkeypatch):
    from afmi.collectives import scatter_allgather

    monkeypatch.setattr(scatter_allgather, "BCAST_SCATTER_MIN_BYTES", 0)
    big = np.arange(1001, dtype=np.int16).reshape(7, 143)[:, ::2]  # not contiguous

    async def main(comm):
        with registry.forced(bcast="scatter_allgather"):
            for root in range(size):
                for value in (payload(root, 2), big + root, "no buffers", np.empty(0)):
                    got = await comm.bcast(value if comm.rank == root else None, root=root)
                    assert_same(got, value, "bcast")
                    if isinstance(got, dict):
                        assert got["f"].flags.aligned and got["z"].flags.aligned
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("gather"))
async def test_gather(name, size):
    async def main(comm):
        with registry.forced(gather=name):
            for root in range(size):
                got = await comm.gather(payload(comm.rank, root), root=root)
                if comm.rank == root:
                    assert_same(got, [payload(r, root) for r in range(size)], "gather")
                else:
                    assert got is None
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("scatter"))
async def test_scatter(name, size):
    async def main(comm):
        with registry.forced(scatter=name):
            for root in range(size):
                seq = [payload(r, root) for r in range(size)] if comm.rank == root else None
                got = await comm.scatter(seq, root=root)
                assert_same(got, payload(comm.rank, root), "scatter")
                # any sequence type on the root
                seq2 = tuple(range(100, 100 + size)) if comm.rank == root else None
                assert await comm.scatter(seq2, root=root) == 100 + comm.rank
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("allgather"))
async def test_allgather(name, size):
    async def main(comm):
        with registry.forced(allgather=name):
            got = await comm.allgather(payload(comm.rank))
            assert_same(got, [payload(r) for r in range(size)], "allgather")
            # items of different sizes on different ranks
            got = await comm.allgather("x" * (comm.rank * 1000))
            assert got == ["x" * (r * 1000) for r in range(size)]
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("alltoall"))
async def test_alltoall(name, size):
    async def main(comm):
        with registry.forced(alltoall=name):
            seq = [(comm.rank, i, np.full(i, comm.rank)) for i in range(size)]
            got = await comm.alltoall(seq)
            assert_same(got, [(r, comm.rank, np.full(comm.rank, r)) for r in range(size)])
        await finish(comm)

    await launch(main, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", names("barrier"))
async def test_barrier(name, size):
    entered: list[int] = []

    async def main(comm):
        with registry.forced(barrier=name):
            for k in range(3):
                entered.append(comm.rank)
                await comm.barrier()
                # nobody leaves round k before everyone entered it
                assert len(entered) >= size * (k + 1)
                await comm.barrier()
        await finish(comm)

    await launch(main, size)


# -- the choosers --


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 16])
async def test_default_choices(size):
    from afmi.collectives import algorithms as builtins
    from afmi.collectives.base import CollectiveContext

    big = np.zeros(builtins.RING_ALLREDUCE_MIN_BYTES // 8, dtype=np.float64)
    small = np.zeros(4)

    async def main(comm):
        ctx = CollectiveContext(comm, 0, "test")

        def pick(collective: str, **args: Any) -> str:
            return registry.select(collective, ctx, args).name

        tree = "binomial" if size >= builtins.TREE_MIN_SIZE else "linear"
        # these ranks are on the local channel, which has rules of its own (the tests
        # below): no scatter_allgather, linear gather and reduce_scatter, linear
        # reduce below 64 KiB arrays, and linear allreduce, scan and exscan
        # from 8 ranks (512 KiB is below the ring)
        assert pick("bcast", obj=1, root=0) == tree
        assert pick("gather", obj=1, root=0) == "linear"
        assert pick("scatter", seq=None, root=0) == tree
        assert pick("reduce", x=1, op=afmi.SUM, root=0) == "linear"
        assert pick("reduce", x=small, op=afmi.SUM, root=0) == "linear"
        edge = np.zeros(builtins.LOCAL_REDUCE_TREE_MIN_BYTES // 8)
        assert pick("reduce", x=edge[:-1], op=afmi.SUM, root=0) == "linear"
        assert pick("reduce", x=edge, op=afmi.SUM, root=0) == tree
        assert pick("reduce", x=big, op=matmul_op(), root=0) == tree
        many = size > 1
        assert pick("barrier") == ("dissemination" if many else "linear")
        wider = size >= builtins.LOCAL_LINEAR_ALLGATHER_MIN_SIZE
        assert pick("allgather", obj=1) == ("ring" if many and not wider else "linear")
        wide = size >= builtins.LOCAL_LINEAR_MIN_SIZE
        doubling = "recursive_doubling" if many else "linear"
        for prefix in ("scan", "exscan"):
            assert pick(prefix, x=small, op=afmi.SUM) == ("linear" if wide else doubling)
        assert pick("allreduce", x=small, op=afmi.SUM) == ("linear" if wide else doubling)
        assert pick("allreduce", x=big, op=afmi.SUM) == ("linear" if wide else doubling)
        assert pick("allreduce", x=big, op=matmul_op()) == ("linear" if wide else doubling)
        # on 2 ranks reduce_scatter keeps the network rule (the ring was faster)
        assert pick("reduce_scatter", x=big, op=afmi.SUM) == ("ring" if size == 2 else "linear")
        assert pick("reduce_scatter", x=big, op=batched_matmul_op()) == "linear"
        assert pick("alltoall", seq=[]) == ("pairwise" if many else "linear")

    await launch(main, size)


class _OnChannel:
    """A collective context that reports ``channel`` (the choosers read nothing else of it)."""

    def __init__(self, channel: str, size: int) -> None:
        self.channel = channel
        self.size = size
        self.rank = 0


MiB = 1 << 20


@pytest.mark.parametrize(
    ("channel", "size", "nbytes", "expected"),
    [
        # a network channel: recursive doubling, the ring from 512 KiB (8 MiB on 2 ranks)
        ("direct", 2, 8, "recursive_doubling"),
        ("direct", 2, 4 * MiB, "recursive_doubling"),
        ("direct", 2, 8 * MiB, "ring"),
        ("direct", 4, MiB // 4, "recursive_doubling"),
        ("direct", 4, MiB // 2, "ring"),
        ("direct", 16, MiB, "ring"),
        ("direct", 16, 8, "recursive_doubling"),
        # local, one thread: the least work of all ranks together
        ("local", 2, 8, "recursive_doubling"),
        ("local", 2, 16 * MiB, "recursive_doubling"),
        ("local", 4, MiB, "recursive_doubling"),
        ("local", 4, 2 * MiB, "ring"),
        ("local", 7, 2 * MiB, "ring"),
        ("local", 8, 8, "linear"),
        ("local", 8, 2 * MiB, "linear"),
        ("local", 16, 4 * MiB - 8, "linear"),
        ("local", 16, 4 * MiB, "ring"),
    ],
)
def test_allreduce_choice_per_channel(channel, size, nbytes, expected):
    x = np.zeros(nbytes // 8, dtype=np.float64)
    ctx: Any = _OnChannel(channel, size)
    assert registry.select("allreduce", ctx, {"x": x, "op": afmi.SUM}).name == expected
    # a non-commutative op never runs the ring: the rule's choice below the ring's sizes
    below_ring = "linear" if channel == "local" and size >= 8 else "recursive_doubling"
    chosen = registry.select("allreduce", ctx, {"x": x, "op": matmul_op()}).name
    assert chosen == (below_ring if expected == "ring" else expected)


@pytest.mark.parametrize(
    ("channel", "size", "expected"),
    [
        ("direct", 4, "binomial"),
        ("direct", 15, "binomial"),
        ("direct", 16, "scatter_allgather"),
        ("local", 16, "binomial"),
        ("local", 32, "binomial"),
    ],
)
def test_bcast_choice_per_channel(channel, size, expected):
    ctx: Any = _OnChannel(channel, size)
    payload = np.zeros((1 << 20) // 8)
    assert registry.select("bcast", ctx, {"obj": payload, "root": 0}).name == expected


@pytest.mark.parametrize("size", [2, 4, 8, 16])
def test_network_rules_where_local_has_its_own(size):
    ctx: Any = _OnChannel("direct", size)
    x = np.zeros(MiB // 8)

    def pick(collective: str, **args: Any) -> str:
        return registry.select(collective, ctx, args).name

    tree = "binomial" if size >= 4 else "linear"
    assert pick("gather", obj=x, root=0) == tree
    assert pick("scatter", seq=[x] * size, root=0) == tree
    for payload in (1, np.zeros(4), x):  # reduce keeps the tree whatever the size
        assert pick("reduce", x=payload, op=afmi.SUM, root=0) == tree
    assert pick("reduce_scatter", x=x, op=afmi.SUM) == "ring"
    assert pick("reduce_scatter", x=x, op=batched_matmul_op()) == (
        "reduce_scatter_tree" if size >= 4 else "linear"
    )
    for prefix in ("scan", "exscan"):
        assert pick(prefix, x=x, op=afmi.SUM) == "recursive_doubling"
    assert pick("allgather", obj=x) == "bruck"
    assert pick("alltoall", seq=[x] * size) == ("pairwise" if size >= 16 else "linear")


@pytest.mark.parametrize(
    ("size", "nbytes", "expected"),
    [
        (2, 8, "recursive_doubling"),
        (4, MiB - 8, "recursive_doubling"),
        (4, MiB, "linear"),
        (7, 8, "recursive_doubling"),
        (8, 8, "linear"),
        (16, 16 * MiB, "linear"),
    ],
)
def test_local_scan_choice(size, nbytes, expected):
    ctx: Any = _OnChannel("local", size)
    x = np.zeros(nbytes // 8)
    for prefix in ("scan", "exscan"):
        assert registry.select(prefix, ctx, {"x": x, "op": afmi.SUM}).name == expected
    # a payload that is not an array never steers by size
    assert registry.select("scan", ctx, {"x": 1, "op": afmi.SUM}).name == (
        "linear" if size >= 8 else "recursive_doubling"
    )


def test_every_algorithm_has_a_model():
    for algorithm in registry.algorithms():
        for size in (1, 2, 5, 8):
            for step in algorithm.steps(size, 1 << 20):
                assert step.rounds >= 1 and step.nbytes >= 0 and step.messages >= 0
    assert len(registry.algorithms()) >= 25


async def test_big_arrays_take_the_ring_and_match():
    """Several segments per chunk: the segmented pipeline reassembles exactly."""
    from afmi.collectives import ring

    n = 3 * ring.SEGMENT_BYTES // 8 + 13

    async def main(comm):
        x = np.arange(n, dtype=np.float64) * (comm.rank + 1)
        with registry.forced(allreduce="ring", reduce_scatter="ring"):
            got = await comm.allreduce(x)
            blocks = await comm.reduce_scatter(x, op=afmi.MAX)
        assert np.array_equal(got, np.arange(n, dtype=np.float64) * 10)
        want = np.array_split(np.arange(n, dtype=np.float64) * 4, 4)[comm.rank]
        assert np.array_equal(blocks, want)
        await finish(comm)

    await launch(main, 4)


async def test_wide_bcast_of_a_large_array_is_split_into_pieces_by_default():
    from afmi.collectives import algorithms as builtins
    from afmi.collectives import scatter_allgather

    size = builtins.BCAST_SCATTER_MIN_SIZE + 1
    n = scatter_allgather.BCAST_SCATTER_MIN_BYTES // 8 + 3

    async def main(comm):
        x = np.arange(n, dtype=np.float64) if comm.rank == 5 else None
        got = await comm.bcast(x, root=5)
        assert np.array_equal(got, np.arange(n, dtype=np.float64))
        await finish(comm)

    await launch(main, size)


async def test_string_arrays_are_never_reduced_in_place():
    """np.add on '<U2' arrays gives '<U4': an in-place result would be truncated."""

    async def main(comm):
        x = np.array(["ab", "cd"]) if comm.rank == 0 else np.array(["ef", "gh"])
        out = []
        for name in ("recursive_doubling", "linear"):
            with registry.forced(allreduce=name):
                out.append(await comm.allreduce(x, op=afmi.Op(np.add, commutative=False)))
                out.append(await comm.allreduce(x))
        with registry.forced(reduce="binomial"):
            out.append(await comm.reduce(x, op=afmi.Op(np.add, commutative=False), root=1))
        return out

    results = await launch(main, 2)
    for got in results[0][:-1] + results[1]:
        assert got.tolist() == ["abef", "cdgh"]
    assert not registry.get("allreduce", "ring").applicable(
        2, 16, {"x": np.array(["ab"] * 100_000), "op": afmi.SUM}
    )


async def test_a_lone_send_or_receive_of_the_root_runs_in_the_calling_task():
    # A 2-rank bcast's root has one send: with a task of its own to run it, a 2-rank
    # bcast in one process took 104 us instead of 60 on `local` (session 13).
    from afmi.collectives.linear import together

    async def where(value):
        await asyncio.sleep(0)
        return value, asyncio.current_task()

    me = asyncio.current_task()
    [(got, task)] = await together([where(1)])
    assert got == 1 and task is me
    pairs = await together([where(1), where(2)])
    assert [v for v, _ in pairs] == [1, 2]
    assert all(t is not me for _, t in pairs)  # several still run side by side

    async def fails():
        raise KeyError("x")

    with pytest.raises(KeyError):
        await together([fails()])
