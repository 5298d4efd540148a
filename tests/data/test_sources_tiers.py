"""Sources (in-memory, directory, a real S3-compatible server) and tiers."""

import asyncio
import os

import numpy as np
import pytest

import afmi
from afmi.data import (
    ArraySource,
    DirectorySource,
    DiskTier,
    Manifest,
    MemoryTier,
    S3Source,
    SampleReadError,
    TierFullError,
)


async def test_array_source_round_trip():
    arr = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    src = ArraySource(arr)
    assert len(src) == 6 and src.size(3) == 16
    data = await src.read(4)
    assert (src.decode(4, data) == arr[4]).all()
    assert await src.read_range(4, 4, 8) == arr[4].tobytes()[4:8]
    with pytest.raises(SampleReadError, match="sample 9 could not be read"):
        await src.read(9)
    with pytest.raises(afmi.ArgumentError, match="numpy array"):
        ArraySource([1, 2, 3])


async def test_directory_source(tmp_path):
    for i in range(5):
        (tmp_path / f"s{i}.bin").write_bytes(bytes([i]) * (10 + i))
    src = DirectorySource(tmp_path)
    assert src.manifest.keys == tuple(f"s{i}.bin" for i in range(5))
    assert src.manifest.sizes == (10, 11, 12, 13, 14)
    assert await src.read(2) == b"\x02" * 12
    assert await src.read_range(3, 2, 5) == b"\x03" * 3
    os.unlink(tmp_path / "s1.bin")
    with pytest.raises(SampleReadError) as info:
        await src.read(1)
    assert "sample 1" in str(info.value) and str(tmp_path / "s1.bin") in str(info.value)
    with pytest.raises(afmi.ArgumentError, match="is not a directory"):
        DirectorySource(tmp_path / "nope")


def test_manifest_json_and_errors():
    m = Manifest(("a", "b"), (3, 4))
    assert Manifest.from_json(m.to_json()) == m and m.total_bytes == 7
    with pytest.raises(afmi.ArgumentError, match="2 keys but 1 sizes"):
        Manifest(("a", "b"), (3,))
    with pytest.raises(afmi.ArgumentError, match="not a manifest"):
        Manifest.from_json("[1]")


async def _put_objects(s3, prefix, blobs):
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region
    ) as client:
        for name, data in blobs.items():
            await client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{name}", Body=data)


async def test_s3_source_lists_reads_and_ranges(s3):
    blobs = {f"{i:03d}": os.urandom(1000 + i) for i in range(8)}
    await _put_objects(s3, "src1", blobs)
    src = await S3Source.open(
        s3.bucket, "src1/", endpoint_url=s3.endpoint_url, region=s3.region, part_bytes=300
    )
    try:
        assert len(src) == 8 and src.manifest.sizes[7] == 1007
        datas = await asyncio.gather(*(src.read(i) for i in range(8)))
        assert datas == [blobs[f"{i:03d}"] for i in range(8)]
        assert src.requests == sum(-(-(1000 + i) // 300) for i in range(8))  # ranged GETs
        assert src.requests == sum(src.requests_for(i) for i in range(8))
        assert await src.read_range(5, 10, 20) == blobs["005"][10:20]
        bad = S3Source(
            s3.bucket,
            Manifest(("src1/missing",), (10,)),
            endpoint_url=s3.endpoint_url,
            region=s3.region,
        )
        with pytest.raises(SampleReadError) as info:
            await bad.read(0)
        assert f"s3://{s3.bucket}/src1/missing" in str(info.value) and "sample 0" in str(info.value)
        await bad.aclose()
    finally:
        await src.aclose()
    with pytest.raises(afmi.ArgumentError, match="no objects under"):
        await S3Source.open(s3.bucket, "empty/", endpoint_url=s3.endpoint_url, region=s3.region)


async def test_memory_tier_budget():
    t = MemoryTier(100, concurrency=2)
    await t.put(1, b"x" * 60)
    with pytest.raises(TierFullError, match="do not fit"):
        await t.put(2, b"y" * 41)
    await t.put(2, b"y" * 40)
    assert t.used == 100 and t.free == 0 and await t.get(2) == b"y" * 40
    t.remove(1)
    assert t.used == 40 and await t.get(1) is None
    await t.aclose()
    assert t.used == 0 and len(t) == 0


async def test_disk_tier_files_and_cleanup(tmp_path):
    t = DiskTier(tmp_path, 50, concurrency=2)
    writing = asyncio.create_task(t.put(7, b"abc"))
    await asyncio.sleep(0)
    assert 7 not in t and await t.get(7) is None and t.used == 3  # reserved, not readable yet
    await writing
    assert (t.path / "7.bin").read_bytes() == b"abc"
    assert await t.get(7) == b"abc" and 7 in t
    with pytest.raises(TierFullError):
        await t.put(8, b"z" * 48)
    await t.aclose()
    assert not t.path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(afmi.ArgumentError, match="capacity must be an int >= 0"):
        MemoryTier(-1)
    with pytest.raises(afmi.ArgumentError, match="concurrency must be an int >= 1"):
        DiskTier(tmp_path, 10, concurrency=0)
