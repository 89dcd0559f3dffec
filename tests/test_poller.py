"""Shared bucket listing (poller.py): one LIST per poll for sections sharing a bucket, HEAD on change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from s3deploy.errors import SourceError
from s3deploy.source import poller
from s3deploy.source.s3 import Endpoint, S3Pool

MakeBucket = Callable[..., str]


async def _poll_all(pool: S3Pool, ep: Endpoint, bucket: str, keys: list[str]) -> list[Any]:
    return list(await asyncio.gather(*(pool.poll(ep, bucket, k) for k in keys)))


async def test_sections_sharing_a_bucket_cost_one_list_per_poll(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket()
    keys = [f"apps/app{i}/bundle.zip" for i in range(6)]
    for k in keys:
        s3_client.put_object(Bucket=bucket, Key=k, Body=k.encode())
    s3_client.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x")

    first = await _poll_all(pool, ep, bucket, keys)  # the first polls HEAD each key
    await _poll_all(pool, ep, bucket, keys)
    lister = pool.lister(ep, bucket)
    assert lister is not None
    heads_after_first = lister.heads
    for _ in range(3):
        again = await _poll_all(pool, ep, bucket, keys)
        assert [r.identity for r in again] == [r.identity for r in first]
        assert [r.checksum_crc32 for r in again] == [r.checksum_crc32 for r in first]
    assert lister.heads == heads_after_first  # nothing changed: no HEAD at all
    assert lister.lists == 5  # one per round (the first poll of k0 went alone), never one per key


async def test_a_changed_key_is_headed_and_seen(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket(versioned=True)  # VersionId is not in a LIST: the HEAD after the change gives it
    keys = ["a.zip", "b.zip", "c.zip"]
    for k in keys:
        s3_client.put_object(Bucket=bucket, Key=k, Body=b"v1")
    before = await _poll_all(pool, ep, bucket, keys)
    await _poll_all(pool, ep, bucket, keys)
    lister = pool.lister(ep, bucket)
    assert lister is not None
    heads = lister.heads

    put = s3_client.put_object(Bucket=bucket, Key="b.zip", Body=b"v2 longer")
    after = await _poll_all(pool, ep, bucket, keys)

    assert after[1].version_id == put["VersionId"] != before[1].version_id
    assert after[0].identity == before[0].identity and after[2].identity == before[2].identity
    assert lister.heads == heads + 1  # only the changed key


async def test_a_missing_key_fails_like_a_head(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="here.zip", Body=b"x")
    await pool.poll(ep, bucket, "here.zip")
    with pytest.raises(SourceError) as alone:
        await pool.head(ep, bucket, "gone.zip")
    results = await asyncio.gather(
        pool.poll(ep, bucket, "here.zip"), pool.poll(ep, bucket, "gone.zip"), return_exceptions=True
    )
    assert not isinstance(results[0], BaseException)
    shared = results[1]
    assert isinstance(shared, SourceError)
    assert shared.code == alone.value.code == "NoSuchKey"
    assert str(shared) == str(alone.value)
    lister = pool.lister(ep, bucket)
    assert lister is not None and lister.lists >= 1


async def test_a_bucket_too_big_to_list_is_polled_with_heads(
    pool: S3Pool,
    ep: Endpoint,
    s3_client: Any,
    make_bucket: MakeBucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poller, "MAX_LISTED", 3)
    bucket = make_bucket()
    keys = [f"k{i}" for i in range(5)]
    for k in keys:
        s3_client.put_object(Bucket=bucket, Key=k, Body=b"x")
    await _poll_all(pool, ep, bucket, keys)
    await _poll_all(pool, ep, bucket, keys)
    lister = pool.lister(ep, bucket)
    assert lister is not None
    lists = lister.lists
    revs = await _poll_all(pool, ep, bucket, keys)
    assert [r.key for r in revs] == keys
    assert lister.lists == lists == 1  # tried once, then HEADs only
