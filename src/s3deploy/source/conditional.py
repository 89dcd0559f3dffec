"""Small objects in one bucket written with S3 conditional requests: the primitives of coordination.

S3 is the only shared state of a fleet (SPEC §10), so everything rests on three atomic requests:

* :meth:`ObjectStore.create`: ``PutObject`` with ``If-None-Match: *``: exactly one of many racing writers
  creates the key;
* :meth:`ObjectStore.replace`: ``PutObject`` with ``If-Match: <etag>``: take over what was read, only if
  nobody changed it since;
* :meth:`ObjectStore.delete`: ``DeleteObject`` with ``If-Match: <etag>``: free it, only if still ours.

A condition that does not hold is an answer, not an error: the result says ``won=False`` with the reason
(412 PreconditionFailed; 409 ConditionalRequestConflict, which AWS sends under contention: re-read and
decide again; a missing key under ``If-Match``: SeaweedFS says 412, AWS and moto 404 NoSuchKey). Every
result carries S3's clock (the ``Date`` of its answer, :func:`~s3deploy.source.timestamps.server_time`):
leases are judged by it against LastModified, never by this host's clock. Any other failure raises
SourceError as every S3 call does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import botocore.exceptions as bce

from s3deploy.errors import SourceError
from s3deploy.source import session
from s3deploy.source.failures import error_code, translate_error, translated
from s3deploy.source.revision import Endpoint, Revision
from s3deploy.source.s3 import Listing, S3Pool, check_metadata
from s3deploy.source.timestamps import server_time

#: A coordination object bigger than this is refused by :meth:`ObjectStore.get` (they are a few hundred
#: bytes; a hostile writer must not make a host read megabytes).
MAX_OBJECT_BYTES = 256 * 1024

_LOST_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


@dataclass(frozen=True)
class WriteResult:
    """What a conditional write or delete did.

    ``won``: the request took effect. ``etag``: the new ETag of a put that won (None otherwise).
    ``server_time``: S3's clock when it answered. ``code``: why it was lost ("PreconditionFailed",
    "ConditionalRequestConflict" or "NoSuchKey"), empty when won.
    """

    won: bool
    etag: str | None
    server_time: datetime
    code: str = ""


@dataclass(frozen=True)
class StoredObject:
    """A small object read whole: its bytes, its revision (ETag, LastModified, user metadata) and S3's
    clock when it answered."""

    revision: Revision
    body: bytes
    server_time: datetime


class ObjectStore:
    """Conditional writes, small reads and listings of the small objects in one bucket."""

    def __init__(self, pool: S3Pool, endpoint: Endpoint, bucket: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.bucket = bucket

    async def create(
        self, key: str, body: bytes, *, metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        """Create ``key`` only if it does not exist (``If-None-Match: *``): one winner among racers."""
        extra = self._metadata("PUT", key, metadata)
        return await self._write(
            "PUT if absent",
            key,
            lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", **extra),
            missing_loses=False,
        )

    async def replace(
        self, key: str, body: bytes, *, etag: str, metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        """Overwrite ``key`` only if its ETag is still ``etag`` (``If-Match``); a missing key loses."""
        extra = self._metadata("PUT", key, metadata)
        return await self._write(
            "PUT if match",
            key,
            lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=body, IfMatch=_quoted(etag), **extra),
            missing_loses=True,
        )

    async def delete(self, key: str, *, etag: str) -> WriteResult:
        """Delete ``key`` only if its ETag is still ``etag`` (``If-Match``); a missing key loses."""
        return await self._write(
            "DELETE if match",
            key,
            lambda c: c.delete_object(Bucket=self.bucket, Key=key, IfMatch=_quoted(etag)),
            missing_loses=True,
        )

    async def get(self, key: str, *, max_bytes: int = MAX_OBJECT_BYTES) -> StoredObject | None:
        """Read a small object whole, or None when there is no such key (the bucket must exist)."""
        where = f"GET s3://{self.bucket}/{key} at {self.endpoint.describe()}"
        client = await self.pool.client(self.endpoint)
        with translated("GET", self.endpoint, self.bucket, key):
            try:
                async with asyncio.timeout(session.REQUEST_TIMEOUT_S):
                    resp = await client.get_object(Bucket=self.bucket, Key=key)
                    async with resp["Body"] as stream:
                        if int(resp.get("ContentLength") or 0) > max_bytes:
                            raise _too_big(where, max_bytes)
                        body = await _read_capped(stream.content, max_bytes, where)
            except bce.ClientError as e:
                if error_code(e)[0] == "NoSuchKey":
                    return None
                raise
        return StoredObject(Revision.from_response(self.bucket, key, resp), body, server_time(resp, where))

    async def list(self, prefix: str) -> Listing:
        """The objects under ``prefix`` (ETag, LastModified) and S3's clock (see S3Pool.listing)."""
        return await self.pool.listing(self.endpoint, self.bucket, prefix)

    def _metadata(self, op: str, key: str, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        if not metadata:
            return {}
        check_metadata(metadata, f"{op} s3://{self.bucket}/{key}")
        return {"Metadata": dict(metadata)}

    async def _write(
        self, op: str, key: str, call: Callable[[Any], Awaitable[Any]], *, missing_loses: bool
    ) -> WriteResult:
        where = f"{op} s3://{self.bucket}/{key} at {self.endpoint.describe()}"
        client = await self.pool.client(self.endpoint)
        with translated(op, self.endpoint, self.bucket, key):
            try:
                async with asyncio.timeout(session.REQUEST_TIMEOUT_S):
                    resp = await call(client)
            except bce.ClientError as e:
                code, status = error_code(e)
                if code in _LOST_CODES or status == 412 or (missing_loses and code == "NoSuchKey"):
                    return WriteResult(False, None, server_time(e.response, where), code)
                raise translate_error(e, op, self.endpoint, self.bucket, key) from e
        etag = resp.get("ETag")
        return WriteResult(True, str(etag).strip('"') if etag else None, server_time(resp, where))


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _too_big(where: str, max_bytes: int) -> SourceError:
    return SourceError(
        f"{where}: the object is bigger than {max_bytes} bytes; not a coordination object",
        code="TooLarge",
        retryable=False,
    )


async def _read_capped(content: Any, max_bytes: int, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise _too_big(where, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
