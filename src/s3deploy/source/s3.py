"""The S3 client pool: HEAD, LIST, pinned streaming GET and PUT, with aioboto3.

One client per :class:`Endpoint` (profile, region, endpoint URL) is shared by every watcher that uses it,
so a daemon with fifty sections on one account keeps one connection pool. Every botocore/aiohttp error
is translated (:mod:`s3deploy.source.failures`) into :class:`~s3deploy.errors.SourceError` naming the
endpoint, bucket and key. Clients come from a lean session (:mod:`s3deploy.source.session`); downloads
are verified as they are written (:mod:`s3deploy.source.transfer`, :mod:`s3deploy.source.checksums`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aioboto3
import botocore.exceptions as bce

from s3deploy.common.text import bounded
from s3deploy.errors import SourceError
from s3deploy.source import session
from s3deploy.source.checksums import checksum_for
from s3deploy.source.failures import HINTS, translated
from s3deploy.source.failures import translate_error as translate_error  # re-exported for callers
from s3deploy.source.poller import BucketPoller
from s3deploy.source.revision import Endpoint, Revision, env_endpoint_url
from s3deploy.source.timestamps import server_time
from s3deploy.source.transfer import Download
from s3deploy.source.transfer import ProgressCallback as ProgressCallback  # re-exported for callers
from s3deploy.source.upload import check_metadata, put_file

__all__ = ["Endpoint", "Listing", "ProgressCallback", "Revision", "S3Pool", "translate_error"]

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Listing:
    """The objects under a prefix (keyed by key; no VersionId, checksums or user metadata in a LIST)
    and S3's clock when it answered (the ``Date`` of the last page)."""

    objects: dict[str, Revision]
    server_time: datetime


class S3Pool:
    """One aioboto3 client per Endpoint, shared by all watchers; async context manager; close() closes all."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, Any] = {}
        self._pollers: dict[tuple[Endpoint, str], BucketPoller] = {}
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
            for poller in self._pollers.values():
                poller.close()
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
            boto = aioboto3.Session(
                botocore_session=session.lean_session(ep.profile_name), profile_name=ep.profile_name
            )
        except bce.ProfileNotFound as e:
            raise SourceError(
                f"AWS profile {ep.profile_name!r} not found in the AWS config files "
                "(~/.aws/config, ~/.aws/credentials or AWS_CONFIG_FILE); check profile_name",
                code="ProfileNotFound",
                retryable=False,
            ) from e
        url = ep.endpoint_url or env_endpoint_url()
        region = ep.region or boto.region_name
        if region is None and url:
            region = "us-east-1"  # S3-compatible servers ignore it, but SigV4 needs one
        logger.debug("creating S3 client for %s (region %s)", ep.describe(), region)
        return await self._stack.enter_async_context(
            boto.client(
                "s3",
                region_name=region,
                endpoint_url=ep.endpoint_url,
                config=session.client_config(bool(url)),
            )
        )

    async def head(self, ep: Endpoint, bucket: str, key: str) -> Revision:
        """HEAD the object (with its S3 checksum and user metadata) and describe the current revision."""
        client = await self.client(ep)
        try:
            with translated("HEAD", ep, bucket, key):
                async with asyncio.timeout(session.REQUEST_TIMEOUT_S):
                    resp = await client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except SourceError as e:
            if e.code == "NoSuchKey":
                # A HEAD 404 has no body: ask the bucket to tell a missing bucket from a missing key.
                await self._check_bucket(client, ep, bucket, key)
            raise
        return Revision.from_response(bucket, key, resp)

    async def _check_bucket(self, client: Any, ep: Endpoint, bucket: str, key: str) -> None:
        try:
            with translated("HEAD bucket", ep, bucket):
                async with asyncio.timeout(session.REQUEST_TIMEOUT_S):
                    await client.head_bucket(Bucket=bucket)
        except SourceError as e:
            if e.code == "NoSuchKey":  # 404 on the bucket
                raise SourceError(
                    f"HEAD s3://{bucket}/{key} at {ep.describe()} failed: NoSuchBucket: "
                    f"{HINTS['NoSuchBucket'][0]}",
                    code="NoSuchBucket",
                    retryable=False,
                ) from e
            # Any other answer about the bucket tells nothing new: the original 404 stands.

    async def listing(
        self,
        ep: Endpoint,
        bucket: str,
        prefix: str = "",
        *,
        page_size: int = 1000,
        max_objects: int | None = None,
    ) -> Listing:
        """List every object under ``prefix`` (one paginated ListObjectsV2), with S3's clock.

        The listing has no VersionId, checksums or user metadata: callers HEAD the keys they need them
        for. More than ``max_objects`` objects raise SourceError(code="TooManyObjects") without listing on.
        """
        client = await self.client(ep)
        found: dict[str, Revision] = {}
        page: Mapping[str, Any] = {}
        where = f"LIST s3://{bucket}/{prefix}* at {ep.describe()}"
        loop = asyncio.get_running_loop()
        with translated("LIST", ep, bucket, prefix):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
            )
            async with asyncio.timeout(session.REQUEST_TIMEOUT_S) as per_page:
                async for page in pages:
                    per_page.reschedule(loop.time() + session.REQUEST_TIMEOUT_S)
                    for item in page.get("Contents", []):
                        key = item.get("Key")
                        if not isinstance(key, str) or not key:
                            raise SourceError(
                                f"{where}: S3 listed an object without a key", code="MalformedResponse"
                            )
                        found[key] = Revision.from_response(bucket, key, item)
                    if max_objects is not None and len(found) > max_objects:
                        raise SourceError(
                            f"{where}: more than {max_objects} objects",
                            code="TooManyObjects",
                            retryable=False,
                        )
        return Listing(found, server_time(page, where))

    async def list_objects(
        self,
        ep: Endpoint,
        bucket: str,
        prefix: str = "",
        *,
        page_size: int = 1000,
        max_objects: int | None = None,
    ) -> dict[str, Revision]:
        """:meth:`listing` without S3's clock: the objects under ``prefix`` keyed by object key."""
        found = await self.listing(ep, bucket, prefix, page_size=page_size, max_objects=max_objects)
        return found.objects

    async def poll(self, ep: Endpoint, bucket: str, key: str, *, not_before: float | None = None) -> Revision:
        """What a watcher's poll sees: a HEAD, or a share of the bucket's LIST (see
        :meth:`BucketPoller.read <s3deploy.source.poller.BucketPoller.read>` for ``not_before``).

        Errors are the ones :meth:`head` raises for the key.
        """
        return await self.poller(ep, bucket).read(key, not_before=not_before)

    def poller(self, ep: Endpoint, bucket: str) -> BucketPoller:
        """The poll schedule of one bucket (made on first use): watchers register with it and sleep
        until it says their next read is due (see :mod:`s3deploy.source.poller`)."""
        found = self._pollers.get((ep, bucket))
        if found is None:
            found = self._pollers[(ep, bucket)] = BucketPoller(self, ep, bucket)
        return found

    def lister(self, ep: Endpoint, bucket: str) -> BucketPoller | None:
        """The poller of one bucket, once a poll created it (its counters are read by the tests)."""
        return self._pollers.get((ep, bucket))

    async def download(
        self,
        rev: Revision,
        ep: Endpoint,
        dest: Path,
        progress: ProgressCallback | None = None,
        *,
        sha256: bool = False,
        expect_sha256: str | None = None,
    ) -> str | None:
        """Fetch exactly ``rev`` into ``dest`` (created or truncated) and verify size and checksum.

        Every GET is pinned (VersionId, else If-Match on the ETag), so a replaced object raises
        RevisionChanged instead of mixing revisions. Objects from ``transfer.RANGED_MIN_BYTES`` up are
        fetched in parallel ranges (see :mod:`s3deploy.source.transfer`). ``progress`` gets the byte count of
        each written block. With ``sha256``, returns the hex SHA-256 of the bytes written, computed while
        they are written (no second pass); else None. With ``expect_sha256`` (hex, e.g. from a signed
        manifest) the content is verified against it instead of S3's own checksum (one check is enough,
        and this one is the strongest): a mismatch raises SourceError(code="ChecksumMismatch"), retryable
        like any corrupt download; telling corruption in transit from a body that never matched is the
        caller's call. On any error ``dest`` may hold partial data; the caller removes it.
        """
        if expect_sha256 is not None and not _SHA256_HEX.fullmatch(expect_sha256):
            raise SourceError(
                f"GET {rev.url}: expected SHA-256 {bounded(repr(expect_sha256), 80)} is not 64 hex digits",
                code="InvalidRequest",
                retryable=False,
            )
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
            checksum=checksum_for(rev, expect_sha256),
            where=f"GET {rev.url} at {ep.describe()}",
            progress=progress,
            sha256=sha256 or expect_sha256 is not None,
        )
        with translated("GET", ep, rev.bucket, rev.key):
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
        return job.sha256_hex

    async def upload(
        self,
        ep: Endpoint,
        bucket: str,
        key: str,
        path: Path,
        progress: ProgressCallback | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Revision:
        """Upload ``path`` to s3://bucket/key and return the revision S3 now serves (for ``publish``).

        Files up to 64 MiB go in one PutObject so their ETag is a verifiable MD5; bigger ones multipart
        (see :mod:`s3deploy.source.upload`).
        ``metadata`` becomes the object's user metadata (``x-amz-meta-*``) either way; it must be printable
        ASCII within AWS's 2 KB limit (checked here: SeaweedFS and moto do not enforce it).
        """
        if metadata:
            check_metadata(metadata, f"PUT s3://{bucket}/{key}")
        client = await self.client(ep)
        with translated("PUT", ep, bucket, key):
            await put_file(client, path, bucket, key, metadata=metadata, progress=progress)
        rev = await self.head(ep, bucket, key)
        logger.info("uploaded %s to %s (%d bytes, etag %s)", path, rev.url, rev.size, rev.etag)
        return rev
