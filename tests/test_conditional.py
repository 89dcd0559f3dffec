"""conditional.py: create-if-absent, replace/delete-if-match, small gets and listings, judged by S3's clock.

Against SeaweedFS; moto where it answers differently (IfMatch on a missing key: 404, as AWS); a fault
proxy for AWS's 409 ConditionalRequestConflict; a hostile server to prove the time is S3's Date header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from s3deploy.errors import SourceError
from s3deploy.source.conditional import ObjectStore
from s3deploy.source.s3 import Endpoint, S3Pool
from tests.faults import HTTP_DATE, Answer, HostileS3
from tests.s3server import Fault, FaultProxy, sync_client

MakeBucket = Callable[..., str]


def _aware(when: datetime) -> bool:
    return when.tzinfo is not None and when.utcoffset() == UTC.utcoffset(None)


async def test_create_if_absent_has_one_winner_and_says_who_lost(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    store = ObjectStore(pool, ep, make_bucket())
    first = await store.create("slots/0", b"host-a", metadata={"s3deploy-host": "a"})
    assert first.won and first.code == "" and _aware(first.server_time)
    head = s3_client.head_object(Bucket=store.bucket, Key="slots/0")
    assert first.etag == head["ETag"].strip('"') and head["Metadata"] == {"s3deploy-host": "a"}

    second = await store.create("slots/0", b"host-b")
    assert (second.won, second.etag, second.code) == (False, None, "PreconditionFailed")
    assert _aware(second.server_time)
    assert s3_client.get_object(Bucket=store.bucket, Key="slots/0")["Body"].read() == b"host-a"


async def test_eight_racing_creators_make_exactly_one_winner(
    pool: S3Pool, ep: Endpoint, make_bucket: MakeBucket
) -> None:
    store = ObjectStore(pool, ep, make_bucket())
    results = await asyncio.gather(*(store.create("lock", f"host-{i}".encode()) for i in range(8)))
    assert sum(r.won for r in results) == 1
    winner = next(i for i, r in enumerate(results) if r.won)
    got = await store.get("lock")
    assert got is not None and got.body == f"host-{winner}".encode()
    assert got.revision.etag == results[winner].etag


async def test_replace_and_delete_only_while_the_etag_matches(
    pool: S3Pool, ep: Endpoint, make_bucket: MakeBucket
) -> None:
    store = ObjectStore(pool, ep, make_bucket())
    created = await store.create("slot", b"v1")
    assert created.etag is not None

    taken = await store.replace("slot", b"v2", etag=created.etag)
    assert taken.won and taken.etag not in (None, created.etag)
    stale = await store.replace("slot", b"v3", etag=created.etag)  # someone else's read
    assert (stale.won, stale.code) == (False, "PreconditionFailed")

    kept = await store.delete("slot", etag=created.etag)
    assert (kept.won, kept.code) == (False, "PreconditionFailed")
    assert taken.etag is not None
    freed = await store.delete("slot", etag=taken.etag)
    assert freed.won and freed.etag is None and _aware(freed.server_time)
    assert await store.get("slot") is None

    # SeaweedFS answers If-Match on a missing key with 412: lost, not an error.
    gone = await store.delete("slot", etag=taken.etag)
    assert (gone.won, gone.code) == (False, "PreconditionFailed")
    assert not (await store.replace("slot", b"v4", etag=taken.etag)).won


async def test_if_match_on_a_missing_key_is_lost_on_moto_too(pool: S3Pool, moto_server: str) -> None:
    """moto and AWS say 404 NoSuchKey where SeaweedFS says 412: the same answer for the caller."""
    sync_client(moto_server).create_bucket(Bucket="fleet")
    store = ObjectStore(pool, Endpoint(endpoint_url=moto_server), "fleet")
    created = await store.create("slot", b"v1")
    assert created.won and created.etag
    assert not (await store.create("slot", b"again")).won
    assert (await store.delete("slot", etag=created.etag)).won
    for result in (
        await store.delete("slot", etag=created.etag),
        await store.replace("slot", b"v2", etag=created.etag),
    ):
        assert (result.won, result.code) == (False, "NoSuchKey")
        assert _aware(result.server_time)


async def test_a_conflict_under_contention_is_lost_not_an_error(
    pool: S3Pool, s3_client: Any, make_bucket: MakeBucket, fault_proxy: FaultProxy
) -> None:
    """AWS may answer 409 ConditionalRequestConflict to racing conditional writes: re-read and decide."""
    bucket = make_bucket()
    store = ObjectStore(pool, Endpoint(endpoint_url=fault_proxy.endpoint_url), bucket)
    fault_proxy.add(Fault("PUT", times=1, status=409, code="ConditionalRequestConflict"))
    lost = await store.create("slot", b"x")
    assert (lost.won, lost.code) == (False, "ConditionalRequestConflict")
    assert (await store.create("slot", b"x")).won  # the next try goes through


async def test_other_failures_are_errors_not_lost_races(
    pool: S3Pool, make_bucket: MakeBucket, fault_proxy: FaultProxy, moto_server: str
) -> None:
    bucket = make_bucket()
    store = ObjectStore(pool, Endpoint(endpoint_url=fault_proxy.endpoint_url), bucket)
    for method in ("PUT", "DELETE", "GET"):
        fault_proxy.add(Fault(method, times=1, status=403, code="AccessDenied"))
    with pytest.raises(SourceError, match=rf"PUT if absent s3://{bucket}/slot .*AccessDenied") as info:
        await store.create("slot", b"x")
    assert not info.value.retryable
    with pytest.raises(SourceError, match=rf"DELETE if match s3://{bucket}/slot .*AccessDenied"):
        await store.delete("slot", etag="abc")
    with pytest.raises(SourceError, match=rf"GET s3://{bucket}/slot .*AccessDenied"):
        await store.get("slot")

    sync_client(moto_server)  # moto refuses a missing bucket (SeaweedFS creates it on the first PUT)
    missing = ObjectStore(pool, Endpoint(endpoint_url=moto_server), "no-such-bucket")
    with pytest.raises(SourceError, match=r"PUT if absent s3://no-such-bucket/slot .*NoSuchBucket"):
        await missing.create("slot", b"x")
    with pytest.raises(SourceError, match="NoSuchBucket"):
        await missing.get("slot")
    with pytest.raises(SourceError, match="NoSuchBucket"):
        await missing.list("hosts/")


async def test_get_and_list_carry_etags_last_modified_and_s3s_clock(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    store = ObjectStore(pool, ep, make_bucket())
    for host in ("a", "b", "c"):
        await store.create(f"fleet/hosts/{host}", f'{{"host": "{host}"}}'.encode(), metadata={"v": "1"})
    await store.create("fleet/stop", b"")
    got = await store.get("fleet/hosts/b")
    assert got is not None and got.body == b'{"host": "b"}'
    assert dict(got.revision.metadata) == {"v": "1"} and _aware(got.revision.last_modified)
    assert _aware(got.server_time)

    listing = await store.list("fleet/hosts/")
    assert sorted(listing.objects) == ["fleet/hosts/a", "fleet/hosts/b", "fleet/hosts/c"]
    assert listing.objects["fleet/hosts/b"].etag == got.revision.etag
    assert listing.objects["fleet/hosts/b"].last_modified == got.revision.last_modified
    assert _aware(listing.server_time)
    assert await store.get("fleet/hosts/nobody") is None


async def test_get_refuses_an_object_too_big_for_coordination(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    store = ObjectStore(pool, ep, make_bucket())
    s3_client.put_object(Bucket=store.bucket, Key="huge", Body=b"x" * 5000)
    with pytest.raises(SourceError, match=r"GET s3://.*/huge .*bigger than 4096 bytes") as info:
        await store.get("huge", max_bytes=4096)
    assert info.value.code == "TooLarge"


async def test_the_time_is_s3s_date_header_never_this_hosts_clock(pool: S3Pool) -> None:
    def answer(method: str, path: str) -> Answer:
        if method == "PUT":
            return Answer(headers={"ETag": '"abc"'})
        return Answer(status=412, body=b"<Error><Code>PreconditionFailed</Code></Error>")

    with HostileS3(answer) as server:
        store = ObjectStore(pool, Endpoint(endpoint_url=server.endpoint_url), "bucket")
        won = await store.create("slot", b"x")
        lost = await store.delete("slot", etag="abc")
    s3_clock = datetime(2026, 10, 21, 7, 28, tzinfo=UTC)  # HTTP_DATE, far from now
    assert HTTP_DATE == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert (won.won, won.etag, won.server_time) == (True, "abc", s3_clock)
    assert (lost.won, lost.server_time) == (False, s3_clock)

    def no_date(method: str, path: str) -> Answer:
        return Answer(headers={"ETag": '"abc"'}, date=None)

    with HostileS3(no_date) as server:
        store = ObjectStore(pool, Endpoint(endpoint_url=server.endpoint_url), "bucket")
        with pytest.raises(SourceError, match=r"PUT if absent s3://bucket/slot .*no valid Date header"):
            await store.create("slot", b"x")
