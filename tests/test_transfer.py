"""Ranged parallel downloads (transfer.py) against a real SeaweedFS, with the thresholds made small."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.source import transfer
from s3deploy.source.checksums import Follower, Span, crc32_combine
from s3deploy.source.s3 import Endpoint, Revision, S3Pool
from s3deploy.source.transfer import split
from tests.faults import Answer, HostileS3, object_headers
from tests.s3server import sync_client

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


async def test_a_trickling_body_fails_the_download_as_stalled(
    pool: S3Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 B/s never leaves the socket silent for botocore's read_timeout: the pace guard ends it."""
    monkeypatch.setattr(transfer, "STALL_WINDOW_S", 1.0)
    size = 200_000

    def trickle(method: str, path: str) -> Answer:
        return Answer(headers=object_headers(size), body=os.urandom(size), mode="trickle")

    rev = Revision("bucket", "k", "0123456789abcdef0123456789abcdef", datetime.now(UTC), size)
    with HostileS3(trickle) as server:
        ep_trickle = Endpoint(endpoint_url=server.endpoint_url)
        with pytest.raises(SourceError, match=r"GET s3://bucket/k at .*: stalled: less than 64 KiB") as info:
            await asyncio.wait_for(pool.download(rev, ep_trickle, tmp_path / "out"), 60)
    assert info.value.code == "Stalled" and info.value.retryable


async def test_a_slow_but_steady_body_is_not_a_stall(
    pool: S3Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "STALL_WINDOW_S", 2.0)
    monkeypatch.setattr(transfer, "STALL_MIN_BYTES", 100)  # the server sends ~10x that per window
    data = os.urandom(6000)

    def slow(method: str, path: str) -> Answer:
        return Answer(headers=object_headers(len(data)), body=data, mode="trickle", trickle_bytes=500)

    rev = Revision("bucket", "k", "0123456789abcdef0123456789abcdef", datetime.now(UTC), len(data))
    rev = dataclasses.replace(rev, etag="x")  # not an MD5: verified by size only
    with HostileS3(slow) as server:
        await pool.download(rev, Endpoint(endpoint_url=server.endpoint_url), tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize(
    ("size", "verify"),
    [(300_000, "CRC32"), (300_000, "MD5"), (5 * PART + 777, "CRC32"), (4 * PART + 5, "MD5")],
)
async def test_sha256_of_the_bytes_written_single_and_ranged(
    pool: S3Pool,
    ep: Endpoint,
    s3_client: Any,
    make_bucket: MakeBucket,
    tmp_path: Path,
    size: int,
    verify: str,
) -> None:
    bucket = make_bucket(versioned=True)  # pinned by VersionId, so an MD5-only revision is fine
    data = os.urandom(size)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    rev = await pool.head(ep, bucket, "big")
    if verify == "MD5":
        rev = dataclasses.replace(rev, checksum_crc32=None)
    progress: list[int] = []
    digest = await pool.download(rev, ep, tmp_path / "out", progress=progress.append, sha256=True)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out").read_bytes() == data and sum(progress) == size
    assert await pool.download(rev, ep, tmp_path / "out") is None  # not asked: not computed
    with pytest.raises(SourceError, match=f"checksum mismatch: content {verify}"):
        bad = {"CRC32": {"checksum_crc32": "AAAAAA=="}, "MD5": {"etag": "0" * 32}}[verify]
        await pool.download(dataclasses.replace(rev, **bad), ep, tmp_path / "bad", sha256=True)


async def test_one_hash_serves_both_when_s3s_checksum_is_sha256(
    pool: S3Pool, moto_server: str, tmp_path: Path
) -> None:
    client = sync_client(moto_server)
    client.create_bucket(Bucket="sums")
    data = os.urandom(4 * PART + 3)
    client.put_object(Bucket="sums", Key="big", Body=data, ChecksumAlgorithm="SHA256")
    ep = Endpoint(endpoint_url=moto_server)
    rev = await pool.head(ep, "sums", "big")
    assert rev.checksum_sha256 and not rev.checksum_crc32
    assert await pool.download(rev, ep, tmp_path / "out", sha256=True) == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceError, match="checksum mismatch: content SHA256"):
        await pool.download(
            dataclasses.replace(rev, checksum_sha256="A" * 43 + "="), ep, tmp_path / "x", sha256=True
        )


def test_the_follower_hashes_in_order_whatever_order_the_writers_finish(tmp_path: Path) -> None:
    data = os.urandom(3 * 100_000 + 17)
    spans = [Span(off, min(100_000, len(data) - off)) for off in range(0, len(data), 100_000)]
    path = tmp_path / "f"
    path.write_bytes(b"\0" * len(data))
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    follower = Follower(spans, [sha, md5])
    fd = os.open(path, os.O_RDWR)
    try:
        reader = threading.Thread(target=follower.run, args=(fd,))
        reader.start()
        blocks = [(span, pos) for span in spans for pos in range(0, span.length, 7_000)]
        # Parts progress side by side, each front to back; which part moves first varies block by block.
        order = random.Random(7)
        blocks.sort(key=lambda b: (b[1], order.random()))
        for span, pos in blocks:
            n = min(7_000, span.length - pos)
            os.pwrite(fd, data[span.offset + pos : span.offset + pos + n], span.offset + pos)
            follower.advance(span, n)
        reader.join(10)
        assert not reader.is_alive()
    finally:
        os.close(fd)
    assert sha.digest() == hashlib.sha256(data).digest()
    assert md5.digest() == hashlib.md5(data, usedforsecurity=False).digest()


def test_a_stopped_follower_returns_without_hashing_the_rest(tmp_path: Path) -> None:
    spans = [Span(0, 10), Span(10, 10)]
    follower = Follower(spans, [hashlib.sha256()])
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        reader = threading.Thread(target=follower.run, args=(fd,))
        reader.start()
        follower.stop()  # e.g. the download failed: nothing more will be written
        reader.join(10)
        assert not reader.is_alive()
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [300_000, 4 * PART + 5])
async def test_an_expected_sha256_is_the_one_content_check(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path, size: int
) -> None:
    """A signed manifest's sha256 is the strongest check: it replaces S3's checksum, not adds to it."""
    bucket = make_bucket()
    data = os.urandom(size)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    rev = await pool.head(ep, bucket, "big")
    want = hashlib.sha256(data).hexdigest()
    wrong_crc = dataclasses.replace(rev, checksum_crc32="AAAAAA==")  # not looked at any more
    assert await pool.download(wrong_crc, ep, tmp_path / "out", expect_sha256=want.upper()) == want
    assert (tmp_path / "out").read_bytes() == data

    other = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(
        SourceError, match=f"checksum mismatch: content SHA256 {want} != expected {other}"
    ) as info:
        await pool.download(rev, ep, tmp_path / "bad", expect_sha256=other)
    assert info.value.code == "ChecksumMismatch" and info.value.retryable

    with pytest.raises(SourceError, match="is not 64 hex digits") as info:
        await pool.download(rev, ep, tmp_path / "bad", expect_sha256="12ab")
    assert info.value.code == "InvalidRequest" and not info.value.retryable
