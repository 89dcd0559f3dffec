"""What a broken or hostile S3 answers becomes: a SourceError naming the object, never a crash.

The server is :class:`tests.faults.HostileS3`, a raw socket that sends exactly the bytes a test wants
(no HTTP framework fixes a bad header up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from s3deploy.errors import SourceError
from s3deploy.source import session
from s3deploy.source.s3 import Endpoint, Revision, S3Pool
from tests.faults import Answer, HostileS3, list_xml, object_headers

Answerer = Callable[[str, str], Answer]
ETAG = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def hostile() -> Iterator[Callable[[Answerer], Endpoint]]:
    """Factory: ``hostile(answer)`` starts a HostileS3 answering with ``answer``; its Endpoint."""
    servers: list[HostileS3] = []

    def start(answer: Answerer) -> Endpoint:
        server = HostileS3(answer).__enter__()
        servers.append(server)
        return Endpoint(endpoint_url=server.endpoint_url)

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _object(**headers: str) -> Answerer:
    return lambda method, path: Answer(headers=object_headers(5, **headers), body=b"hello")


def _listing(*entries: tuple[str, str]) -> Answerer:
    return lambda method, path: Answer(
        headers={"Content-Type": "application/xml"}, body=list_xml("bucket", list(entries))
    )


@pytest.mark.parametrize(
    "last_modified",
    ["garbage", "", "Wed, 32 Oct 2026 07:28:00 GMT", "9999-12-31T23:59:59-14:00", "\x1b]0;pwned\x07"],
)
async def test_an_invalid_last_modified_on_head_is_a_clear_source_error(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint], last_modified: str
) -> None:
    ep = hostile(_object(**{"Last-Modified": last_modified}))
    with pytest.raises(SourceError, match=r"s3://bucket/app\.zip.*malformed") as info:
        await pool.head(ep, "bucket", "app.zip")
    assert info.value.code == "MalformedResponse"
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)
    # The watcher polls through poll(): the same error, so it logs and retries instead of crashing.
    with pytest.raises(SourceError, match=r"s3://bucket/app\.zip"):
        await pool.poll(ep, "bucket", "app.zip")


async def test_an_invalid_last_modified_in_a_listing_is_a_clear_source_error(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint]
) -> None:
    ep = hostile(_listing(("a.zip", "2026-10-21T07:28:00.000Z"), ("b.zip", "yesterday-ish")))
    with pytest.raises(SourceError, match=r"LIST s3://bucket/apps/ at .*malformed.*'yesterday-ish'") as info:
        await pool.list_objects(ep, "bucket", "apps/")
    assert info.value.code == "MalformedResponse"


async def test_a_listing_entry_without_a_key_is_a_clear_source_error(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint]
) -> None:
    body = list_xml("bucket", [("a.zip", "2026-10-21T07:28:00.000Z")]).replace(b"<Key>a.zip</Key>", b"")
    ep = hostile(lambda method, path: Answer(headers={"Content-Type": "application/xml"}, body=body))
    with pytest.raises(SourceError, match=r"LIST s3://bucket/\* at .*: S3 listed an object without a key"):
        await pool.list_objects(ep, "bucket")


async def test_a_good_listing_parses_with_the_fast_parser(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint]
) -> None:
    ep = hostile(_listing(("a.zip", "2026-10-21T07:28:00.000Z"), ("b.zip", "2026-10-21T07:28:01.500+02:00")))
    listing = await pool.listing(ep, "bucket")
    assert listing.objects["a.zip"].last_modified == datetime(2026, 10, 21, 7, 28, tzinfo=UTC)
    assert listing.objects["b.zip"].last_modified == datetime(2026, 10, 21, 5, 28, 1, 500000, tzinfo=UTC)
    assert listing.objects["b.zip"].last_modified.tzinfo == UTC
    assert listing.server_time == datetime(2026, 10, 21, 7, 28, tzinfo=UTC)  # the Date header


async def test_broken_xml_and_a_bad_content_length_are_source_errors(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint]
) -> None:
    ep = hostile(
        lambda method, path: Answer(
            headers={"Content-Type": "application/xml"}, body=b"<ListBucketResult><Con"
        )
    )
    with pytest.raises(SourceError, match=r"LIST s3://bucket/"):
        await pool.list_objects(ep, "bucket")
    ep = hostile(_object(**{"Content-Length": "five"}))
    with pytest.raises(SourceError, match=r"HEAD s3://bucket/app\.zip.*invalid HTTP answer") as info:
        await pool.head(ep, "bucket", "app.zip")
    assert info.value.code == "MalformedResponse"


async def test_a_missing_last_modified_is_named(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint]
) -> None:
    headers = object_headers(5)
    del headers["Last-Modified"]
    ep = hostile(lambda method, path: Answer(headers=headers))
    with pytest.raises(SourceError, match=r"s3://bucket/app\.zip: .*malformed \(no LastModified\)"):
        await pool.head(ep, "bucket", "app.zip")


async def test_an_invalid_last_modified_on_the_get_fails_the_download(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint], tmp_path: Path
) -> None:
    ep = hostile(_object(**{"Last-Modified": "not a date"}))
    rev = Revision("bucket", "app.zip", ETAG, datetime.now(UTC), 5)
    with pytest.raises(SourceError, match=r"GET s3://bucket/app\.zip at .*malformed") as info:
        await pool.download(rev, ep, tmp_path / "out")
    assert info.value.code == "MalformedResponse"


async def test_a_trickled_head_or_listing_is_bounded(
    pool: S3Pool, hostile: Callable[[Answerer], Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's read_timeout only fires on silence: 100 B/s of XML would never end it."""
    monkeypatch.setattr(session, "REQUEST_TIMEOUT_S", 1.5)
    body = list_xml("bucket", [(f"k{i}", "2026-10-21T07:28:00.000Z") for i in range(200)])
    ep = hostile(
        lambda method, path: Answer(headers={"Content-Type": "application/xml"}, body=body, mode="trickle")
    )
    with pytest.raises(SourceError, match=r"LIST s3://bucket/ at .* timed out") as info:
        await asyncio.wait_for(pool.list_objects(ep, "bucket"), 60)
    assert info.value.code == "Timeout"
