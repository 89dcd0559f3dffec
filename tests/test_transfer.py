"""Ranged parallel downloads (transfer.py) against a real SeaweedFS, with the thresholds made small."""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.source import transfer
from s3deploy.source.s3 import Endpoint, S3Pool
from s3deploy.source.transfer import crc32_combine, split

MakeBucket = Callable[..., str]
PART = 256 * 1024


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects from 1 MiB up go in 256 KiB ranges, 3 at a time: the ranged path on small test objects."""
    monkeypatch.setattr(transfer, "RANGED_MIN_BYTES", 1024 * 1024)
    monkeypatch.setattr(transfer, "PART_BYTES", PART)
    monkeypatch.setattr(transfer, "PARALLEL_PARTS", 3)
    monkeypatch.setattr(transfer, "WRITE_BYTES", 64 * 1024)


def test_crc32_combine_matches_zlib_for_any_split() -> None:
    data = os.urandom(300_001)
    for cut in (0, 1, 7, 65_536, 150_000, 299_999, 300_001):
        a, b = data[:cut], data[cut:]
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)
    crc = 0
    for off in range(0, len(data), 4096):  # folding many parts left to right, as download does
        part = data[off : off + 4096]
        crc = crc32_combine(crc, zlib.crc32(part), len(part))
    assert crc == zlib.crc32(data)


def test_small_objects_are_one_get_and_big_ones_ranges() -> None:
    assert [(p.offset, p.length, p.ranged) for p in split(1000)] == [(0, 1000, False)]
    parts = split(4 * PART + 10)
    assert [p.range_header for p in parts][-2:] == [
        f"bytes={3 * PART}-{4 * PART - 1}",
        f"bytes={4 * PART}-{4 * PART + 9}",
    ]
    assert all(p.ranged for p in parts) and sum(p.length for p in parts) == 4 * PART + 10


async def test_ranged_download_is_exact_and_crc32_verified(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    data = os.urandom(5 * PART + 777)  # 6 ranges, the last one short
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    rev = await pool.head(ep, bucket, "big")
    assert rev.checksum_crc32
    dest = tmp_path / "out"
    dest.write_bytes(b"stale" * 1_000_000)  # longer than the object: must end up exactly the object
    progress: list[int] = []

    await pool.download(rev, ep, dest, progress=progress.append)

    assert dest.read_bytes() == data
    assert sum(progress) == len(data)
    with pytest.raises(SourceError, match="checksum mismatch: content CRC32") as info:
        await pool.download(dataclasses.replace(rev, checksum_crc32="AAAAAA=="), ep, tmp_path / "bad")
    assert info.value.code == "ChecksumMismatch"


async def test_ranged_download_verifies_md5_by_following_the_writers(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket(versioned=True)  # pinned by VersionId, so a forged ETag reaches the MD5 check
    data = os.urandom(4 * PART + 5)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    md5_only = dataclasses.replace(await pool.head(ep, bucket, "big"), checksum_crc32=None)

    await pool.download(md5_only, ep, tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == data

    with pytest.raises(SourceError, match="checksum mismatch: content MD5"):
        await pool.download(dataclasses.replace(md5_only, etag="0" * 32), ep, tmp_path / "bad")


async def test_every_range_is_pinned_to_the_revision_seen(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="big", Body=os.urandom(4 * PART))
    rev = await pool.head(ep, bucket, "big")
    s3_client.put_object(Bucket=bucket, Key="big", Body=os.urandom(4 * PART))  # same size, other bytes
    with pytest.raises(RevisionChanged, match="object changed during download"):
        await pool.download(rev, ep, tmp_path / "out")


async def test_versioned_ranged_download_gets_the_pinned_version(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket(versioned=True)
    old = os.urandom(4 * PART + 1)
    s3_client.put_object(Bucket=bucket, Key="big", Body=old)
    rev = await pool.head(ep, bucket, "big")
    s3_client.put_object(Bucket=bucket, Key="big", Body=os.urandom(4 * PART + 1))
    await pool.download(rev, ep, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == old


async def test_a_size_that_does_not_match_is_refused(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="big", Body=os.urandom(4 * PART))
    rev = await pool.head(ep, bucket, "big")
    with pytest.raises(SourceError) as info:
        await pool.download(dataclasses.replace(rev, size=rev.size + 10), ep, tmp_path / "out")
    assert info.value.code in ("InvalidRange", "RangeNotSatisfied", "Truncated")
    assert "shorter than" in str(info.value) or "truncated" in str(info.value)
    assert f"s3://{bucket}/big" in str(info.value)
