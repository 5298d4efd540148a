"""The receive-buffer pool: memory is reused only when nothing refers to it."""

import gc
import threading

import numpy as np
import pytest

import afmi
from afmi.config import Config
from afmi.wire.pool import (
    PER_CLASS,
    POOL_MIN_BYTES,
    BufferPool,
    current_pool,
    pool_supported,
    shared_pool,
    size_class,
)

pytestmark = pytest.mark.skipif(not pool_supported(), reason="needs exact reference counts")

N = 256 * 1024


def addr(a):
    return a.__array_interface__["data"][0]


def test_take_gives_a_writable_array_of_the_size_asked():
    pool = BufferPool(64 << 20)
    a = pool.take(N + 5)
    assert a.dtype == np.uint8 and a.shape == (N + 5,) and a.flags.writeable
    a[:] = 7
    assert int(a.sum()) == 7 * (N + 5)
    assert pool.stats()["allocated"] == 1


def test_small_requests_are_not_pooled():
    pool = BufferPool(64 << 20)
    a = pool.take(POOL_MIN_BYTES - 1)
    assert a.base is None and len(a) == POOL_MIN_BYTES - 1
    assert pool.stats()["unpooled"] == 1 and pool.stats()["slabs"] == 0


def test_memory_is_reused_once_dropped():
    pool = BufferPool(64 << 20)
    a = pool.take(N)
    where = addr(a)
    del a
    b = pool.take(N)
    assert addr(b) == where
    assert pool.stats()["reused"] == 1 and pool.stats()["allocated"] == 1


@pytest.mark.parametrize(
    "derive",
    [
        lambda a: a,
        lambda a: a[10:20],
        lambda a: a.view(np.float64)[3:],
        lambda a: a.reshape(2, -1),
        lambda a: np.frombuffer(a, dtype=np.int32),
        lambda a: memoryview(a),
        lambda a: memoryview(a)[100:],
        lambda a: memoryview(a).cast("d"),
        lambda a: np.asarray(memoryview(a)),
        lambda a: [a[:8]],
    ],
    ids=[
        "array",
        "slice",
        "view",
        "reshape",
        "frombuffer",
        "memoryview",
        "memoryview-slice",
        "cast",
        "asarray",
        "in-list",
    ],
)
def test_anything_derived_from_an_array_keeps_its_memory(derive):
    pool = BufferPool(64 << 20)
    a = pool.take(N)
    a[:] = 42
    kept = derive(a)
    where = addr(a)
    del a
    b = pool.take(N)
    assert addr(b) != where  # still referred to: a new slab
    b[:] = 0
    flat = np.frombuffer(memoryview(kept[0] if isinstance(kept, list) else kept), np.uint8)
    assert (flat == 42).all()  # the held memory was not touched
    del kept, flat
    gc.collect()
    b2 = pool.take(N)
    assert addr(b2) == where  # released: reused


def test_reuse_prefers_the_slab_used_last():
    pool = BufferPool(64 << 20)
    a, b = pool.take(N), pool.take(N)
    first, second = addr(a), addr(b)
    del a, b
    assert addr(pool.take(N)) == second
    assert first != second


def test_size_classes_waste_at_most_a_quarter():
    for n in [1, 4096, 4097, 65536, 65537, 100_000, 1 << 20, (1 << 20) + 1, 3_000_000, 1 << 30]:
        c = size_class(n)
        assert c >= n and c % 4096 == 0
        assert c <= (n * 1.25 if n >= POOL_MIN_BYTES else n + 4096)
    sizes = [size_class(n) for n in range(60_000, 300_000, 997)]
    assert sizes == sorted(sizes)


def test_sizes_of_one_class_share_slabs():
    pool = BufferPool(64 << 20)
    a = pool.take(N)
    where = addr(a)
    del a
    b = pool.take(N - 1000)
    assert size_class(N - 1000) == size_class(N) and addr(b) == where and len(b) == N - 1000


def test_the_limit_bounds_the_slabs_kept():
    pool = BufferPool(3 * N)
    held = [pool.take(N) for _ in range(5)]  # more than fit: the pool forgets held slabs
    st = pool.stats()
    assert st["held_bytes"] <= 3 * N and st["taken"] == 5
    for i, a in enumerate(held):
        a[:] = i
    assert [int(a[0]) for a in held] == list(range(5))  # all distinct memory
    assert len({addr(a) for a in held}) == 5


def test_free_slabs_make_room_for_another_size():
    pool = BufferPool(2 * N)
    a, b = pool.take(N), pool.take(N)
    del a, b
    c = pool.take(2 * N)  # needs both slabs' room: the free ones are forgotten
    assert len(c) == 2 * N
    st = pool.stats()
    assert st["held_bytes"] == 2 * N and st["slabs"] == 1


def test_a_size_in_use_keeps_its_slabs_while_stale_sizes_make_room():
    # a size used every "call", three arrays of it held at a time, in a pool filled to
    # its limit with free slabs of a size used once (session 22: the pool forgot held
    # slabs of the size in use before any free one, so it took fresh memory every call)
    pool = BufferPool(8 * N)
    held = [pool.take(N), pool.take(N)]  # the size in use, made first
    stale = [pool.take(2 * N) for _ in range(3)]  # the pool is full
    del stale
    for _ in range(20):
        held.append(pool.take(N))  # a third beside the two
        held.pop(0)
    st = pool.stats()
    assert st["allocated"] == 2 + 3 + 1, st  # one stale slab made room for a third
    assert st["reused"] == 19
    assert st["held_bytes"] <= 8 * N


def test_the_size_used_least_recently_is_forgotten_first():
    pool = BufferPool(3 * N)
    small, medium = size_class(N), size_class(N + N // 2)
    a, b = pool.take(N), pool.take(N + N // 2)
    del a, b  # two free slabs: the small size made first, the medium one after
    c = pool.take(N)  # the small size is now the more recently used
    del c
    pool.take(N + N // 2 + N // 4)  # a third size needs room: the medium slab goes
    assert small in pool._classes and medium not in pool._classes


def test_each_size_keeps_a_bounded_number_of_slabs():
    pool = BufferPool(1 << 30)
    held = [pool.take(N) for _ in range(PER_CLASS + 3)]
    assert pool.stats()["slabs"] == PER_CLASS
    del held
    assert pool.stats()["free_bytes"] == PER_CLASS * size_class(N)


def test_no_pool_when_the_limit_is_zero_or_too_small():
    assert BufferPool(0).take(N).base is None
    pool = BufferPool(N // 2)
    assert pool.take(N).base is None and pool.stats()["unpooled"] == 1
    with pytest.raises(ValueError, match="limit_bytes must be >= 0"):
        BufferPool(-1)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        pool.take(-1)


def test_clear_forgets_every_slab():
    pool = BufferPool(64 << 20)
    a = pool.take(N)
    pool.clear()
    assert pool.stats()["slabs"] == 0 and pool.stats()["held_bytes"] == 0
    a[:] = 1  # the holder's memory stays valid
    assert int(a[-1]) == 1


def test_threads_never_share_memory_they_hold():
    pool = BufferPool(16 * N)
    errors = []

    def work(k):
        for i in range(300):
            a = pool.take(N)
            a[:] = k
            b = pool.take(N)
            b[:] = 255 - k
            if not (a == k).all() or not (b == 255 - k).all():
                errors.append((k, i))
            del a, b

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pool.stats()["reused"] > 0


def test_the_shared_pool_is_one_per_process():
    assert shared_pool(0) is None
    p = shared_pool(1 << 20)
    assert p is not None and shared_pool(1) is p and current_pool() is p
    before = p.limit_bytes
    assert shared_pool(before + 1) is p and p.limit_bytes == before + 1


def test_config_rejects_a_negative_pool():
    with pytest.raises(afmi.ConfigError, match="recv_pool_bytes must be >= 0"):
        Config(recv_pool_bytes=-1)
    assert Config.from_dict({"recv_pool_bytes": 0}).recv_pool_bytes == 0


async def _drop_each(comm, count, nbytes):
    if comm.rank == 0:
        for i in range(count):
            await comm.send(np.full(nbytes, i, np.uint8), 1)
        return None
    total = 0
    for _ in range(count):
        total += int((await comm.recv(0))[-1])  # dropped at once
    return total, comm._ep.pool is not None


@pytest.mark.parametrize("channel", ["local", "direct"])
async def test_a_job_reuses_the_memory_of_dropped_messages(channel):
    before = current_pool().stats() if current_pool() else {"reused": 0}
    out = await afmi.launch_local(_drop_each, 2, 20, 600_000, channel=channel, timeout=60)
    assert out[1] == (sum(range(20)), True)
    assert current_pool().stats()["reused"] - before["reused"] >= 15


async def test_a_job_without_a_pool_allocates_as_before():
    out = await afmi.launch_local(
        _drop_each, 2, 3, 600_000, channel="direct", config={"recv_pool_bytes": 0}, timeout=60
    )
    assert out[1] == (3, False)
