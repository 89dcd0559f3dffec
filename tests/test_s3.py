"""s3.py against a real SeaweedFS (and moto / a fault-injecting proxy where a fault is needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import free_port
from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.source import upload
from s3deploy.source.s3 import Endpoint, Revision, S3Pool, translate_error
from tests.faults import Answer, HostileS3, object_headers
from tests.s3server import Fault, FaultProxy, sync_client

MakeBucket = Callable[..., str]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def test_head_unversioned_identity_is_etag_at_last_modified(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=b"hello")
    rev = await pool.head(ep, bucket, "app.zip")
    assert (rev.bucket, rev.key, rev.size, rev.version_id) == (bucket, "app.zip", 5, None)
    assert rev.etag == _md5(b"hello")
    assert rev.last_modified.tzinfo is not None and rev.last_modified.utcoffset() == UTC.utcoffset(None)
    assert rev.identity == f"{rev.etag}@{rev.last_modified.isoformat()}"
    assert rev.checksum_crc32  # boto3 sends CRC32 on put; download() verifies it

    await asyncio.sleep(
        1.1
    )  # LastModified has 1 s resolution: the same bytes uploaded later are a new revision
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=b"hello")
    again = await pool.head(ep, bucket, "app.zip")
    assert again.etag == rev.etag
    assert again.identity != rev.identity


async def test_head_versioned_identity_is_version_id(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket(versioned=True)
    put = s3_client.put_object(Bucket=bucket, Key="k", Body=b"v1")
    rev = await pool.head(ep, bucket, "k")
    assert rev.version_id == put["VersionId"]
    assert rev.identity == put["VersionId"]
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"v1")
    assert (await pool.head(ep, bucket, "k")).identity not in ("", rev.identity)


async def test_list_objects_paginates_and_returns_etags(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket()
    bodies = {f"env/{n}.zip": os.urandom(10 + n) for n in range(5)}
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    s3_client.put_object(Bucket=bucket, Key="other/x.zip", Body=b"x")

    found = await pool.list_objects(ep, bucket, "env/", page_size=2)
    assert sorted(found) == sorted(bodies)
    for key, body in bodies.items():
        assert found[key].etag == _md5(body)
        assert found[key].size == len(body)
        assert found[key].last_modified.tzinfo is not None
    assert set(await pool.list_objects(ep, bucket)) == {*bodies, "other/x.zip"}


async def test_download_streams_exact_bytes_and_reports_progress(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    data = os.urandom(3 * 1024 * 1024 + 123)
    s3_client.put_object(Bucket=bucket, Key="b.zip", Body=data)
    rev = await pool.head(ep, bucket, "b.zip")
    dest = tmp_path / "bundle.download"
    dest.write_bytes(b"old junk that must be truncated" * 100_000)
    chunks: list[int] = []

    await pool.download(rev, ep, dest, progress=chunks.append)

    assert dest.read_bytes() == data
    assert sum(chunks) == len(data) and len(chunks) > 1


async def test_download_of_multipart_object_checks_size(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key="mp")
    done = [
        {
            "ETag": s3_client.upload_part(
                Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=n, Body=body
            )["ETag"],
            "PartNumber": n,
        }
        for n, body in enumerate(parts, start=1)
    ]
    s3_client.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    rev = await pool.head(ep, bucket, "mp")
    assert rev.etag.endswith("-2")
    await pool.download(rev, ep, tmp_path / "mp")
    assert (tmp_path / "mp").read_bytes() == b"".join(parts)

    with pytest.raises(SourceError, match=r"truncated: got \d+ of \d+ bytes") as info:
        await pool.download(dataclasses.replace(rev, size=rev.size + 1), ep, tmp_path / "mp")
    assert info.value.code == "Truncated"


async def test_replaced_object_raises_revision_changed(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"first")
    rev = await pool.head(ep, bucket, "k")
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"second")
    with pytest.raises(RevisionChanged, match="object changed during download") as info:
        await pool.download(rev, ep, tmp_path / "out")
    assert f"s3://{bucket}/k" in str(info.value)


async def test_versioned_download_gets_the_pinned_version(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket(versioned=True)
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"old bytes")
    old = await pool.head(ep, bucket, "k")
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"new bytes!")
    await pool.download(old, ep, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"old bytes"


async def test_md5_mismatch_is_refused(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    # Versioned: the GET is pinned by VersionId, so a wrong (well-formed) ETag reaches the MD5 check.
    bucket = make_bucket(versioned=True)
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"content")
    md5_only = dataclasses.replace(await pool.head(ep, bucket, "k"), checksum_crc32=None)
    await pool.download(md5_only, ep, tmp_path / "out")  # the right MD5 passes
    with pytest.raises(SourceError, match="checksum mismatch: content MD5") as info:
        await pool.download(dataclasses.replace(md5_only, etag="0" * 32), ep, tmp_path / "out")
    assert info.value.code == "ChecksumMismatch"


async def test_crc32_mismatch_is_refused(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"content")
    rev = dataclasses.replace(await pool.head(ep, bucket, "k"), checksum_crc32="AAAAAA==")
    with pytest.raises(SourceError, match="checksum mismatch: content CRC32"):
        await pool.download(rev, ep, tmp_path / "out")


async def test_corrupted_body_is_refused(
    pool: S3Pool, s3_client: Any, make_bucket: MakeBucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k", Body=os.urandom(4096))
    ep = Endpoint(endpoint_url=fault_proxy.endpoint_url)
    rev = await pool.head(ep, bucket, "k")
    fault_proxy.add(Fault("GET", times=1, corrupt=True))
    with pytest.raises(SourceError, match="checksum mismatch"):
        await pool.download(rev, ep, tmp_path / "out")
    await pool.download(rev, ep, tmp_path / "out")  # the next, clean GET passes


async def test_connection_dropped_mid_body_is_a_source_error(
    pool: S3Pool, s3_client: Any, make_bucket: MakeBucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k", Body=os.urandom(200_000))
    ep = Endpoint(endpoint_url=fault_proxy.endpoint_url)
    rev = await pool.head(ep, bucket, "k")
    fault_proxy.add(Fault("GET", times=1, truncate_to=50_000))
    with pytest.raises(SourceError) as info:
        await pool.download(rev, ep, tmp_path / "out")
    assert info.value.code in ("ConnectionLost", "Truncated")
    assert f"s3://{bucket}/k" in str(info.value)


async def test_throttling_is_retried_by_botocore_then_reported(
    pool: S3Pool, s3_client: Any, make_bucket: MakeBucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"data")
    ep = Endpoint(endpoint_url=fault_proxy.endpoint_url)
    rev = await pool.head(ep, bucket, "k")

    fault_proxy.add(Fault("GET", times=1, status=503, code="SlowDown"))
    await pool.download(rev, ep, tmp_path / "out")  # one 503, then the retry succeeds
    assert fault_proxy.count("GET") == 2

    fault_proxy.add(Fault("HEAD", times=3, status=500, code="InternalError"))
    with pytest.raises(SourceError, match="InternalError") as info:
        await pool.head(ep, bucket, "k")
    assert info.value.retryable and info.value.code == "InternalError"
    assert fault_proxy.count("HEAD") == 1 + 3  # three attempts in all, then the error


async def test_missing_key_and_bucket_are_named(
    pool: S3Pool, ep: Endpoint, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket()
    with pytest.raises(SourceError, match=f"s3://{bucket}/nope.zip.*NoSuchKey") as info:
        await pool.head(ep, bucket, "nope.zip")
    assert info.value.code == "NoSuchKey" and not info.value.retryable

    with pytest.raises(SourceError, match="s3://no-such-bucket-xyz/app.zip.*NoSuchBucket") as info:
        await pool.head(ep, "no-such-bucket-xyz", "app.zip")
    assert info.value.code == "NoSuchBucket"

    stale = Revision(bucket, "gone", "0" * 32, datetime.now(UTC), 1)
    with pytest.raises(SourceError, match=f"GET s3://{bucket}/gone.*NoSuchKey"):
        await pool.download(stale, ep, tmp_path / "out")
    with pytest.raises(SourceError, match="LIST s3://no-such-bucket-xyz/.*NoSuchBucket"):
        await pool.list_objects(ep, "no-such-bucket-xyz")


async def test_unreachable_endpoint_fails_quickly(pool: S3Pool, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(SourceError, match=f"cannot connect to {url}") as info:
        await pool.head(Endpoint(endpoint_url=url), "bucket", "key")
    assert time.monotonic() - started < 10
    assert info.value.retryable and "s3://bucket/key" in str(info.value)


async def test_missing_credentials_say_so(
    pool: S3Pool, ep: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceError, match=r"no AWS credentials found \(profile_name / env / instance role\)"):
        await pool.head(ep, "bucket", "key")


async def test_missing_profile_is_named(pool: S3Pool) -> None:
    with pytest.raises(SourceError, match="AWS profile 'nosuchprofile' not found") as info:
        await pool.head(Endpoint(profile_name="nosuchprofile"), "bucket", "key")
    assert info.value.code == "ProfileNotFound"


async def test_one_client_per_endpoint_even_under_concurrency(pool: S3Pool, ep: Endpoint) -> None:
    clients = await asyncio.gather(*(pool.client(Endpoint(endpoint_url=ep.endpoint_url)) for _ in range(20)))
    assert all(c is clients[0] for c in clients)
    other = await pool.client(Endpoint(endpoint_url=ep.endpoint_url, region="eu-west-1"))
    assert other is not clients[0]
    assert other.meta.region_name == "eu-west-1"
    assert clients[0].meta.region_name == "us-east-1"


async def test_closed_pool_refuses_new_clients(ep: Endpoint) -> None:
    pool = S3Pool()
    await pool.client(ep)
    await pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.client(ep)


async def test_upload_returns_the_revision_head_sees(
    pool: S3Pool, ep: Endpoint, make_bucket: MakeBucket, tmp_path: Path
) -> None:
    bucket = make_bucket(versioned=True)
    src = tmp_path / "bundle.zip"
    src.write_bytes(os.urandom(300_000))
    progress: list[int] = []
    rev = await pool.upload(ep, bucket, "rel/bundle.zip", src, progress=progress.append)
    assert rev == await pool.head(ep, bucket, "rel/bundle.zip")
    assert rev.etag == _md5(src.read_bytes()) and rev.size == 300_000 and rev.version_id
    assert sum(progress) == 300_000
    await pool.download(rev, ep, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


async def test_sha256_checksum_verified_on_moto(pool: S3Pool, moto_server: str, tmp_path: Path) -> None:
    client = sync_client(moto_server)
    client.create_bucket(Bucket="sums")
    client.put_object(Bucket="sums", Key="k", Body=b"payload", ChecksumAlgorithm="SHA256")
    ep = Endpoint(endpoint_url=moto_server)
    rev = await pool.head(ep, "sums", "k")
    assert rev.checksum_sha256
    await pool.download(rev, ep, tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == b"payload"
    bad = dataclasses.replace(rev, checksum_sha256="A" * 43 + "=")
    with pytest.raises(SourceError, match="checksum mismatch: content SHA256"):
        await pool.download(bad, ep, tmp_path / "bad")


def test_revision_identity_and_null_version() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rev = Revision.from_response(
        "b", "k", {"ETag": '"abc"', "LastModified": when, "ContentLength": 3, "VersionId": "null"}
    )
    assert rev.version_id is None
    assert rev.identity == "abc@2026-01-02T03:04:05+00:00"
    assert dataclasses.replace(rev, version_id="v1").identity == "v1"
    assert hash(Endpoint(region="x")) == hash(Endpoint(region="x"))


def test_translate_error_maps_codes_and_names_the_object() -> None:
    from botocore.exceptions import ClientError

    def err(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )

    ep = Endpoint(endpoint_url="http://s3.test")
    changed = translate_error(err("PreconditionFailed", 412), "GET", ep, "b", "k")
    assert isinstance(changed, RevisionChanged)
    denied = translate_error(err("AccessDenied", 403), "GET", ep, "b", "k")
    assert "GET s3://b/k at http://s3.test" in str(denied) and "access denied" in str(denied)
    assert not denied.retryable
    expired = translate_error(err("ExpiredToken", 400), "HEAD", Endpoint(profile_name="prod"), "b", "k")
    assert "AWS (profile prod)" in str(expired) and "expired" in str(expired)
    assert translate_error(err("SlowDown", 503), "GET", ep, "b", "k").retryable
    assert translate_error(err("WeirdThing", 502), "GET", ep, "b", "k").retryable
    # A HEAD error has no body: botocore reports the bare status as the code. Say what it usually is.
    bare = translate_error(err("400", 400), "HEAD", ep, "b", "k")
    assert "failed: 400: bad request, no detail" in str(bare) and "wrong region" in str(bare)
    assert "SlowDown looks the same" in str(translate_error(err("503", 503), "HEAD", ep, "b", "k"))
    # A GET does carry the body, so its own message is kept.
    assert "bad request, no detail" not in str(translate_error(err("400", 400), "GET", ep, "b", "k"))


async def test_a_connection_reset_is_reported_as_a_reset_not_as_cannot_connect(
    pool: S3Pool, tmp_path: Path
) -> None:
    size = 200_000
    rev = Revision("bucket", "k", "0123456789abcdef0123456789abcdef", datetime.now(UTC), size)

    def reset_before_headers(method: str, path: str) -> Answer:
        return Answer(mode="reset_before_headers")

    with HostileS3(reset_before_headers) as server:
        with pytest.raises(SourceError) as info:
            await pool.download(rev, Endpoint(endpoint_url=server.endpoint_url), tmp_path / "out")
    assert "cannot connect" not in str(info.value)
    assert "connection was reset by" in str(info.value) and "s3://bucket/k" in str(info.value)
    assert info.value.code == "ConnectionLost" and info.value.retryable

    def reset_mid_body(method: str, path: str) -> Answer:
        body = os.urandom(size)
        return Answer(headers=object_headers(size), body=body, mode="reset_mid_body", reset_after=50_000)

    with HostileS3(reset_mid_body) as server:
        with pytest.raises(SourceError) as info:
            await pool.download(rev, Endpoint(endpoint_url=server.endpoint_url), tmp_path / "out")
    assert "cannot connect" not in str(info.value)
    assert "connection lost" in str(info.value) and "s3://bucket/k" in str(info.value)
    assert info.value.code == "ConnectionLost"


async def test_head_exposes_user_metadata_and_a_listing_does_not(
    pool: S3Pool, ep: Endpoint, s3_client: Any, make_bucket: MakeBucket
) -> None:
    bucket = make_bucket()
    meta = {"s3deploy-manifest": "eyJ2IjogMX0=", "s3deploy-signature": "U1NIU0lH" * 40}
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=b"x", Metadata=meta)
    s3_client.put_object(Bucket=bucket, Key="other.zip", Body=b"y")
    rev = await pool.head(ep, bucket, "app.zip")
    assert dict(rev.metadata) == meta
    assert dict((await pool.head(ep, bucket, "other.zip")).metadata) == {}
    listed = await pool.list_objects(ep, bucket)
    assert dict(listed["app.zip"].metadata) == {}  # LIST carries none: HEAD when it matters
    with pytest.raises(TypeError):
        rev.metadata["s3deploy-serial"] = "1"  # type: ignore[index]
    assert hash(rev) == hash(dataclasses.replace(rev))


@pytest.mark.parametrize("multipart", [False, True])
async def test_upload_with_user_metadata_single_put_and_multipart(
    pool: S3Pool,
    ep: Endpoint,
    make_bucket: MakeBucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    multipart: bool,
) -> None:
    if multipart:
        monkeypatch.setattr(upload, "SINGLE_PUT_MAX_BYTES", 5 * 1024 * 1024)
        monkeypatch.setattr(upload, "PART_BYTES", 5 * 1024 * 1024)
    bucket = make_bucket()
    src = tmp_path / "bundle.zip"
    src.write_bytes(os.urandom(6 * 1024 * 1024))
    meta = {"s3deploy-manifest": "bWFuaWZlc3Q=", "s3deploy-signature": "c2ln"}
    rev = await pool.upload(ep, bucket, "b.zip", src, metadata=meta)
    assert rev.etag.endswith("-2") == multipart  # 5 MiB + 1 MiB
    assert dict(rev.metadata) == meta
    assert dict((await pool.head(ep, bucket, "b.zip")).metadata) == meta
    await pool.download(rev, ep, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"s3deploy-signature": "x" * 2100}, "takes 2118 bytes; S3 allows at most 2048"),
        ({"note": "caf\u00e9"}, "printable ASCII"),
        ({"note": "line\nbreak"}, "printable ASCII"),
        ({"bad name": "x"}, "an HTTP token"),
    ],
)
async def test_metadata_s3_would_refuse_or_mangle_is_refused_before_uploading(
    pool: S3Pool,
    ep: Endpoint,
    make_bucket: MakeBucket,
    tmp_path: Path,
    metadata: dict[str, str],
    problem: str,
) -> None:
    bucket = make_bucket()
    src = tmp_path / "bundle.zip"
    src.write_bytes(b"data")
    with pytest.raises(SourceError, match=f"PUT s3://{bucket}/b.zip: user metadata") as info:
        await pool.upload(ep, bucket, "b.zip", src, metadata=metadata)
    assert problem in str(info.value) and not info.value.retryable
    with pytest.raises(SourceError, match="NoSuchKey"):
        await pool.head(ep, bucket, "b.zip")  # nothing was uploaded


async def test_a_failed_multipart_upload_is_aborted(
    pool: S3Pool,
    s3_client: Any,
    make_bucket: MakeBucket,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload, "SINGLE_PUT_MAX_BYTES", 5 * 1024 * 1024)
    monkeypatch.setattr(upload, "PART_BYTES", 5 * 1024 * 1024)
    bucket = make_bucket()
    src = tmp_path / "bundle.zip"
    src.write_bytes(os.urandom(11 * 1024 * 1024))
    fault_proxy.add(Fault("PUT", times=1, status=403, code="AccessDenied"))  # one part refused
    ep = Endpoint(endpoint_url=fault_proxy.endpoint_url)
    with pytest.raises(SourceError, match=f"PUT s3://{bucket}/b.zip .*AccessDenied"):
        await pool.upload(ep, bucket, "b.zip", src, metadata={"s3deploy-serial": "1"})
    assert fault_proxy.count("DELETE") == 1  # AbortMultipartUpload
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
