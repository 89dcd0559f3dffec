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
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions as bce
from aiobotocore.session import AioSession
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.loaders import JSONFileLoader, create_loader

from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.source.poller import BucketLister
from s3deploy.source.transfer import Checksum, Download
from s3deploy.source.transfer import ProgressCallback as ProgressCallback  # re-exported for callers

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# Below this size `upload` does one PutObject, so the ETag is the MD5 the download can verify.
SINGLE_PUT_MAX_BYTES = 64 * 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


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
    "InvalidRange": ("the object is shorter than the size its revision declared; retrying", True),
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

# A HEAD response has no body, so S3 cannot name its error: only the status arrives. Say what it
# usually is instead of a bare "400: Bad Request".
_HEAD_HINTS = {
    "400": (
        "bad request, no detail (a HEAD response has no body); the usual causes are expired "
        "credentials (ExpiredToken) or the wrong region for this bucket"
    ),
    "503": "S3 is unavailable or throttling (SlowDown looks the same on a HEAD); retrying with backoff",
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
        if op == "HEAD" and raw in _HEAD_HINTS:
            hint = _HEAD_HINTS[raw]
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


class _LeanJSONFileLoader(JSONFileLoader):  # type: ignore[misc]  # botocore is untyped
    """botocore's model loader with the API documentation emptied.

    The docs are ~80% of S3's 1.2 MB service model and only ever feed docstrings; parsed, they cost the
    idle daemon several MiB (benchmark B3). Plain dicts instead of OrderedDict: ordered all the same.
    """

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            payload = fp.read().decode("utf-8")
        return json.loads(payload, object_pairs_hook=_without_docs)


def _without_docs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Emptied, not dropped: some botocore code indexes ["documentation"].
    return {k: "" if k in _DOC_KEYS else v for k, v in pairs}


_DOC_KEYS = frozenset({"documentation", "documentationUrl"})


def _lean_botocore_session(profile_name: str | None) -> AioSession:
    """A botocore session with the lean model loader (raises ProfileNotFound for an unknown profile)."""
    session = AioSession(profile=profile_name)
    loader = create_loader(session.get_config_variable("data_path"))
    loader.file_loader = _LeanJSONFileLoader()
    session.register_component("data_loader", loader)
    return session


class S3Pool:
    """One aioboto3 client per Endpoint, shared by all watchers; async context manager; close() closes all."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, Any] = {}
        self._listers: dict[tuple[Endpoint, str], BucketLister] = {}
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
            botocore_session = _lean_botocore_session(ep.profile_name)
            session = aioboto3.Session(botocore_session=botocore_session, profile_name=ep.profile_name)
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
        self,
        ep: Endpoint,
        bucket: str,
        prefix: str = "",
        *,
        page_size: int = 1000,
        max_objects: int | None = None,
    ) -> dict[str, Revision]:
        """List every object under ``prefix`` (one paginated ListObjectsV2), keyed by object key.

        The listing has no VersionId or checksums: callers HEAD the keys whose ETag/LastModified changed.
        More than ``max_objects`` objects raise SourceError(code="TooManyObjects") without listing on.
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
                if max_objects is not None and len(found) > max_objects:
                    raise SourceError(
                        f"LIST s3://{bucket}/{prefix}* at {ep.describe()}: more than {max_objects} objects",
                        code="TooManyObjects",
                        retryable=False,
                    )
        return found

    async def poll(self, ep: Endpoint, bucket: str, key: str) -> Revision:
        """What a watcher's poll sees: a HEAD, or a share of one LIST for sections sharing the bucket.

        See :mod:`s3deploy.source.poller`. Errors are the ones :meth:`head` raises for the key.
        """
        lister = self._listers.get((ep, bucket))
        if lister is None:
            lister = self._listers[(ep, bucket)] = BucketLister(self, ep, bucket)
        return await lister.revision(key)

    def lister(self, ep: Endpoint, bucket: str) -> BucketLister | None:
        """The lister of one bucket, once a poll created it (its counters are read by the benchmarks)."""
        return self._listers.get((ep, bucket))

    async def download(
        self, rev: Revision, ep: Endpoint, dest: Path, progress: ProgressCallback | None = None
    ) -> None:
        """Fetch exactly ``rev`` into ``dest`` (created or truncated) and verify size and checksum.

        Every GET is pinned (VersionId, else If-Match on the ETag), so a replaced object raises
        RevisionChanged instead of mixing revisions. Objects from ``transfer.RANGED_MIN_BYTES`` up are
        fetched in parallel ranges (see :mod:`s3deploy.source.transfer`). ``progress`` gets the byte count of
        each written block. On any error ``dest`` may hold partial data; the caller removes it.
        """
        client = await self.client(ep)
        pin = {"VersionId": rev.version_id} if rev.version_id else {"IfMatch": f'"{rev.etag}"'}
        started = time.monotonic()
        job = Download(
            client=client,
            bucket=rev.bucket,
            key=rev.key,
            pin=pin,
            size=rev.size,
            path=str(dest),
            checksum=_checksum_for(rev),
            where=f"GET {rev.url} at {ep.describe()}",
            progress=progress,
        )
        with _translated("GET", ep, rev.bucket, rev.key):
            await job.run()
        elapsed = time.monotonic() - started
        logger.info(
            "downloaded %s (%d bytes, %d part(s), %s verified) in %.2fs (%.1f MiB/s)",
            rev.url,
            rev.size,
            len(job.parts),
            job.checksum.name or "size",
            elapsed,
            rev.size / max(elapsed, 1e-6) / 2**20,
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


def _checksum_for(rev: Revision) -> Checksum:
    """The S3 full-object checksum when there is one (CRC32 first: cheapest), else a single-part MD5 ETag.

    A value ending in "-N" is a checksum of part checksums (multipart): not checkable here.
    """
    for name, value in (
        ("CRC32", rev.checksum_crc32),
        ("SHA256", rev.checksum_sha256),
        ("SHA1", rev.checksum_sha1),
    ):
        if value and "-" not in value:
            return Checksum(name, value)
    if _MD5_ETAG.match(rev.etag):
        return Checksum("MD5", rev.etag)
    return Checksum(None, None)
