"""S3 access for the watchers: HEAD, LIST, pinned streaming GET and PUT, with aioboto3.

One client per :class:`Endpoint` (profile, region, endpoint URL) is shared by every watcher that uses it,
so a daemon with fifty sections on one account keeps one connection pool. Every botocore/aiohttp error
is translated here into :class:`~s3deploy.errors.SourceError` naming the endpoint, bucket and key.

Download verification: the size always, plus one content checksum: the S3 full-object checksum
(CRC32, SHA256 or SHA1) when the revision carries one, else the MD5 when the ETag is a single-part MD5
(32 hex digits, object not SSE-KMS/SSE-C encrypted). One is enough to catch corruption, and CRC32 is
several times cheaper than MD5 on big bundles. Multipart objects without a full-object checksum are
verified by size only: their ETag is an MD5 of part MD5s, not checkable without the part size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions as bce
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from s3deploy.errors import RevisionChanged, SourceError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# Below this size `upload` does one PutObject, so the ETag is the MD5 the download can verify.
SINGLE_PUT_MAX_BYTES = 64 * 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to talk to S3. Hashable: the pool keeps one client per distinct value."""

    profile_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def describe(self) -> str:
        """Human name for messages: the endpoint URL (or "AWS") and the profile when set."""
        where = self.endpoint_url or _env_endpoint_url() or "AWS"
        return f"{where} (profile {self.profile_name})" if self.profile_name else where


@dataclass(frozen=True)
class Revision:
    """One version of one object as S3 described it (HEAD or LIST)."""

    bucket: str
    key: str
    etag: str  # without the surrounding quotes
    last_modified: datetime  # aware, UTC
    size: int
    version_id: str | None = None
    checksum_sha256: str | None = None  # base64, as S3 reports it (may end in "-N" for multipart)
    checksum_sha1: str | None = None
    checksum_crc32: str | None = None

    @property
    def identity(self) -> str:
        """What "changed" means (SPEC §5): the VersionId, else ETag plus LastModified."""
        if self.version_id:
            return self.version_id
        return f"{self.etag}@{self.last_modified.isoformat()}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def from_response(cls, bucket: str, key: str, resp: Mapping[str, Any]) -> Revision:
        """Build from a HeadObject response or a ListObjectsV2 ``Contents`` entry."""
        version = resp.get("VersionId")
        return cls(
            bucket=bucket,
            key=key,
            etag=str(resp.get("ETag", "")).strip('"'),
            last_modified=resp["LastModified"].astimezone(UTC),
            size=int(resp.get("ContentLength", resp.get("Size", 0))),
            # Unversioned buckets on AWS report the literal "null" version; treat it as none.
            version_id=version if version and version != "null" else None,
            checksum_sha256=resp.get("ChecksumSHA256"),
            checksum_sha1=resp.get("ChecksumSHA1"),
            checksum_crc32=resp.get("ChecksumCRC32"),
        )


def _env_endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


# S3 error code -> (what it means and what to do, retryable)
_HINTS: dict[str, tuple[str, bool]] = {
    "NoSuchBucket": ("the bucket does not exist; check s3_bucket, region and endpoint_url", False),
    "NoSuchKey": ("the object does not exist; check target_file_key or publish a bundle", False),
    "NoSuchVersion": ("that version of the object no longer exists", False),
    "AccessDenied": ("access denied; the credentials need s3:GetObject/s3:ListBucket on it", False),
    "AllAccessDisabled": ("access to the bucket is disabled", False),
    "ExpiredToken": ("the credentials have expired; refresh them (aws sso login, instance role)", False),
    "InvalidAccessKeyId": ("the access key id is not known to this endpoint; check the credentials", False),
    "SignatureDoesNotMatch": (
        "the secret key does not match the access key id; check the credentials",
        False,
    ),
    "PermanentRedirect": ("the bucket is in another region; set region for this section", False),
    "AuthorizationHeaderMalformed": ("wrong region for this bucket; set region for this section", False),
    "SlowDown": ("throttled by S3 (SlowDown); retrying with backoff", True),
    "ServiceUnavailable": ("S3 is unavailable (503); retrying with backoff", True),
    "InternalError": ("S3 internal error (500); retrying with backoff", True),
    "RequestTimeout": ("S3 timed out waiting for the request; retrying", True),
}
_CODE_ALIASES = {
    "404": "NoSuchKey",
    "NotFound": "NoSuchKey",
    "403": "AccessDenied",
    "Forbidden": "AccessDenied",
    "ExpiredTokenException": "ExpiredToken",
    "TokenRefreshRequired": "ExpiredToken",
    "301": "PermanentRedirect",
    "503": "ServiceUnavailable",
    "Throttling": "SlowDown",
    "ThrottlingException": "SlowDown",
    "500": "InternalError",
}


def translate_error(exc: BaseException, op: str, ep: Endpoint, bucket: str, key: str = "") -> SourceError:
    """Turn a botocore/aiohttp exception into a SourceError that names endpoint, bucket, key and a hint."""
    where = f"{op} s3://{bucket}/{key} at {ep.describe()}"
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        raw = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = _CODE_ALIASES.get(raw, raw)
        if code in ("PreconditionFailed", "412") or status == 412:
            return RevisionChanged(
                f"{where}: object changed during download; will retry with the new revision"
            )
        hint, retryable = _HINTS.get(code, ("", status >= 500 or status in (0, 429)))
        if not hint:
            hint = (
                "server error; retrying with backoff"
                if retryable
                else (err.get("Message") or "request refused")
            )
        label = code if code == raw or not raw else f"{code} ({raw})"
        return SourceError(
            f"{where} failed: {label or status}: {hint}", code=code or str(status), retryable=retryable
        )
    if isinstance(exc, bce.EndpointConnectionError):
        return SourceError(
            f"{where} failed: cannot connect to {exc.kwargs.get('endpoint_url', ep.describe())}; "
            "check endpoint_url and the network",
            code="EndpointConnectionError",
        )
    if isinstance(exc, bce.IncompleteReadError):
        got, want = exc.kwargs.get("actual_bytes"), exc.kwargs.get("expected_bytes")
        return SourceError(
            f"{where} failed: truncated: got {got} of {want} bytes; retrying", code="Truncated"
        )
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError | TimeoutError):
        return SourceError(f"{where} failed: timed out talking to {ep.describe()}", code="Timeout")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError):
        return SourceError(
            f"{where} failed: no AWS credentials found (profile_name / env / instance role): {exc}",
            code="NoCredentials",
            retryable=False,
        )
    if isinstance(exc, bce.ProfileNotFound):
        return SourceError(
            f"{where} failed: AWS profile {ep.profile_name!r} not found in the AWS config files",
            code="ProfileNotFound",
            retryable=False,
        )
    if isinstance(exc, bce.ParamValidationError | bce.ValidationError | bce.NoRegionError):
        return SourceError(f"{where} failed: invalid request: {exc}", code="InvalidRequest", retryable=False)
    if isinstance(exc, bce.ResponseStreamingError | aiohttp.ClientError | bce.HTTPClientError):
        return SourceError(f"{where} failed: connection lost ({exc}); retrying", code="ConnectionLost")
    return SourceError(f"{where} failed: {type(exc).__name__}: {exc}", code=type(exc).__name__)


@contextlib.contextmanager
def _translated(op: str, ep: Endpoint, bucket: str, key: str = "") -> Iterator[None]:
    """Translate third-party errors raised inside the block; our own errors pass through."""
    try:
        yield
    except SourceError:
        raise
    except (bce.BotoCoreError, bce.ClientError, aiohttp.ClientError, TimeoutError) as e:
        raise translate_error(e, op, ep, bucket, key) from e


class S3Pool:
    """One aioboto3 client per Endpoint, shared by all watchers; async context manager; close() closes all."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> S3Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every client (and its connection pool)."""
        async with self._lock:
            self._closed = True
            self._clients.clear()
            await self._stack.aclose()

    async def client(self, ep: Endpoint) -> Any:
        """The shared client for ``ep``, created on first use (concurrent callers get the same one)."""
        found = self._clients.get(ep)
        if found is not None:
            return found
        async with self._lock:
            if self._closed:
                raise RuntimeError("S3Pool is closed")
            found = self._clients.get(ep)
            if found is None:
                found = await self._create(ep)
                self._clients[ep] = found
            return found

    async def _create(self, ep: Endpoint) -> Any:
        try:
            session = aioboto3.Session(profile_name=ep.profile_name)
        except bce.ProfileNotFound as e:
            raise SourceError(
                f"AWS profile {ep.profile_name!r} not found in the AWS config files "
                "(~/.aws/config, ~/.aws/credentials or AWS_CONFIG_FILE); check profile_name",
                code="ProfileNotFound",
                retryable=False,
            ) from e
        url = ep.endpoint_url or _env_endpoint_url()
        region = ep.region or session.region_name
        if region is None and url:
            region = "us-east-1"  # S3-compatible servers ignore it, but SigV4 needs one
        config = Config(
            # botocore counts "max_attempts" as retries; total_max_attempts=3 is three tries in all.
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if url else None,
            # download() verifies checksums itself, against the revision it was pinned to.
            response_checksum_validation="when_required",
        )
        logger.debug("creating S3 client for %s (region %s)", ep.describe(), region)
        return await self._stack.enter_async_context(
            session.client("s3", region_name=region, endpoint_url=ep.endpoint_url, config=config)
        )

    async def head(self, ep: Endpoint, bucket: str, key: str) -> Revision:
        """HEAD the object (with its S3 checksum) and describe the current revision."""
        client = await self.client(ep)
        try:
            with _translated("HEAD", ep, bucket, key):
                resp = await client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except SourceError as e:
            if e.code == "NoSuchKey":
                # A HEAD 404 has no body: ask the bucket to tell a missing bucket from a missing key.
                await self._check_bucket(client, ep, bucket, key)
            raise
        return Revision.from_response(bucket, key, resp)

    async def _check_bucket(self, client: Any, ep: Endpoint, bucket: str, key: str) -> None:
        try:
            with _translated("HEAD bucket", ep, bucket):
                await client.head_bucket(Bucket=bucket)
        except SourceError as e:
            if e.code == "NoSuchKey":  # 404 on the bucket
                raise SourceError(
                    f"HEAD s3://{bucket}/{key} at {ep.describe()} failed: NoSuchBucket: "
                    f"{_HINTS['NoSuchBucket'][0]}",
                    code="NoSuchBucket",
                    retryable=False,
                ) from e
            # Any other answer about the bucket tells nothing new: the original 404 stands.

    async def list_objects(
        self, ep: Endpoint, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> dict[str, Revision]:
        """List every object under ``prefix`` (one paginated ListObjectsV2), keyed by object key.

        The listing has no VersionId or checksums: callers HEAD the keys whose ETag/LastModified changed.
        """
        client = await self.client(ep)
        found: dict[str, Revision] = {}
        with _translated("LIST", ep, bucket, prefix):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"]] = Revision.from_response(bucket, item["Key"], item)
        return found

    async def download(
        self, rev: Revision, ep: Endpoint, dest: Path, progress: ProgressCallback | None = None
    ) -> None:
        """Stream exactly ``rev`` into ``dest`` (created or truncated) and verify size and checksums.

        The GET is pinned (VersionId, else If-Match on the ETag), so a replaced object raises
        RevisionChanged instead of mixing revisions. ``progress`` gets the byte count of each written chunk.
        On any error ``dest`` may hold partial data; the caller removes it.
        """
        client = await self.client(ep)
        pin = {"VersionId": rev.version_id} if rev.version_id else {"IfMatch": f'"{rev.etag}"'}
        started = time.monotonic()
        sink = _FileSink(dest, progress)
        try:
            with _translated("GET", ep, rev.bucket, rev.key):
                resp = await client.get_object(Bucket=rev.bucket, Key=rev.key, **pin)
                # SSE-KMS and SSE-C objects have ETags that are not the MD5 of the content.
                encrypted = resp.get("ServerSideEncryption", "").startswith("aws:kms") or bool(
                    resp.get("SSECustomerAlgorithm")
                )
                digests = _Digests(md5=not encrypted and bool(_MD5_ETAG.match(rev.etag)), rev=rev)
                body = resp["Body"]
                async with body:  # releases the connection even when verification fails midway
                    written = await _stream(body, sink, digests)
        finally:
            sink.close()
        where = f"GET {rev.url} at {ep.describe()}"
        if written != rev.size:
            raise SourceError(f"{where}: truncated: got {written} of {rev.size} bytes", code="Truncated")
        digests.verify(where)
        elapsed = time.monotonic() - started
        logger.info(
            "downloaded %s (%d bytes) in %.2fs (%.1f MiB/s)",
            rev.url,
            written,
            elapsed,
            written / max(elapsed, 1e-6) / 2**20,
        )

    async def upload(
        self, ep: Endpoint, bucket: str, key: str, path: Path, progress: ProgressCallback | None = None
    ) -> Revision:
        """Upload ``path`` to s3://bucket/key and return the revision S3 now serves (for ``publish``).

        Files up to 64 MiB go in one PutObject so their ETag is a verifiable MD5; bigger ones multipart.
        """
        client = await self.client(ep)
        transfer = TransferConfig(multipart_threshold=SINGLE_PUT_MAX_BYTES, multipart_chunksize=16 * 2**20)
        with _translated("PUT", ep, bucket, key):
            await client.upload_file(str(path), bucket, key, Callback=progress, Config=transfer)
        rev = await self.head(ep, bucket, key)
        logger.info("uploaded %s to %s (%d bytes, etag %s)", path, rev.url, rev.size, rev.etag)
        return rev


class _Digests:
    """The hashes a download must match, updated chunk by chunk (in a worker thread)."""

    def __init__(self, *, md5: bool, rev: Revision) -> None:
        self.rev = rev
        # A value ending in "-N" is a checksum of part checksums (multipart): not checkable here.
        self.expected: tuple[str, str] | None = None
        for name, value in (
            ("CRC32", rev.checksum_crc32),
            ("SHA256", rev.checksum_sha256),
            ("SHA1", rev.checksum_sha1),
        ):
            if value and "-" not in value:
                self.expected = (name, value)
                break
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 and self.expected is None else None
        self.sha = (
            hashlib.new(self.expected[0].lower()) if self.expected and self.expected[0] != "CRC32" else None
        )
        self.crc = 0

    def update(self, data: bytes | bytearray) -> None:
        if self.md5 is not None:
            self.md5.update(data)
        if self.sha is not None:
            self.sha.update(data)
        elif self.expected is not None:
            self.crc = zlib.crc32(data, self.crc)

    def verify(self, where: str) -> None:
        if self.md5 is not None and self.md5.hexdigest() != self.rev.etag:
            raise SourceError(
                f"{where}: checksum mismatch: content MD5 {self.md5.hexdigest()} "
                f"!= ETag {self.rev.etag}; the download is corrupt",
                code="ChecksumMismatch",
            )
        if self.expected is not None:
            name, want = self.expected
            raw = self.sha.digest() if self.sha is not None else self.crc.to_bytes(4, "big")
            got = base64.b64encode(raw).decode()
            if got != want:
                raise SourceError(
                    f"{where}: checksum mismatch: content {name} {got} != S3's {want}; "
                    "the download is corrupt",
                    code="ChecksumMismatch",
                )


async def _stream(body: Any, sink: _FileSink, digests: _Digests) -> int:
    """Copy the response body into ``sink`` in ~1 MiB blocks; returns the byte count."""
    buf = bytearray()
    while True:
        chunk = await body.read(CHUNK_BYTES)
        if chunk:
            buf += chunk
        if buf and (len(buf) >= CHUNK_BYTES or not chunk):
            await sink.write(bytes(buf), digests)
            buf.clear()
        if not chunk:
            await sink.drain()
            return sink.written


class _FileSink:
    """Writes blocks to a file in a worker thread, one block in flight while the next is read.

    Hashing and writing a block overlaps with receiving the next one; blocks stay in order because
    each write waits for the previous one. At most two blocks are in memory.
    """

    def __init__(self, path: Path, progress: ProgressCallback | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.progress = progress
        self.written = 0
        self._pending: asyncio.Future[int] | None = None

    async def write(self, data: bytes, digests: _Digests) -> None:
        await self.drain()
        self._pending = asyncio.ensure_future(asyncio.to_thread(_write_block, self.fd, data, digests))

    async def drain(self) -> None:
        if self._pending is not None:
            done = await self._pending
            self._pending = None
            self.written += done
            if self.progress is not None:
                self.progress(done)

    def close(self) -> None:
        """Close now, or, if a block is still being written (cancellation), as soon as it is done."""
        pending, self._pending = self._pending, None
        if pending is None or pending.done():
            os.close(self.fd)
        else:
            # Closing under a running os.write could hand the fd number to someone else mid-write.
            pending.add_done_callback(lambda _: os.close(self.fd))


def _write_block(fd: int, data: bytes, digests: _Digests) -> int:
    digests.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)
