"""Values that describe where an object lives and which version of it was seen: no I/O, no botocore.

:class:`Endpoint` says where and as whom to talk to S3; :class:`Revision` is one version of one object
as a HEAD or a LIST described it. Both are cheap to import (the CLI and the watcher name them without
loading aioboto3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from s3deploy.common.text import bounded
from s3deploy.errors import SourceError

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


def env_endpoint_url() -> str | None:
    """The endpoint the standard AWS variables name for S3, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to talk to S3. Hashable: the pool keeps one client per distinct value."""

    profile_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def describe(self) -> str:
        """Human name for messages: the endpoint URL (or "AWS") and the profile when set."""
        where = self.endpoint_url or env_endpoint_url() or "AWS"
        return f"{where} (profile {self.profile_name})" if self.profile_name else where


@dataclass(frozen=True)
class Revision:
    """One version of one object as S3 described it (HEAD or LIST).

    ``metadata`` is the object's user metadata (``x-amz-meta-*``, keys lower-case). Only a HEAD (or a
    GET) carries it: a revision built from a LIST has none, so callers that need it (signed bundles)
    must HEAD the object.
    """

    bucket: str
    key: str
    etag: str  # without the surrounding quotes
    last_modified: datetime  # aware, UTC
    size: int
    version_id: str | None = None
    checksum_sha256: str | None = None  # base64, as S3 reports it (may end in "-N" for multipart)
    checksum_sha1: str | None = None
    checksum_crc32: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA, hash=False)

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
        """Build from a HeadObject/GetObject response or a ListObjectsV2 ``Contents`` entry.

        A field S3 should have sent but did not (or sent as something else) raises SourceError naming
        the object: the answer came from the network and may be hostile.
        """
        version = resp.get("VersionId")
        metadata = resp.get("Metadata")
        try:
            return cls(
                bucket=bucket,
                key=key,
                etag=str(resp.get("ETag", "")).strip('"'),
                last_modified=_utc(resp["LastModified"]),
                size=int(resp.get("ContentLength", resp.get("Size", 0))),
                # Unversioned buckets on AWS report the literal "null" version; treat it as none.
                version_id=version if version and version != "null" else None,
                checksum_sha256=resp.get("ChecksumSHA256"),
                checksum_sha1=resp.get("ChecksumSHA1"),
                checksum_crc32=resp.get("ChecksumCRC32"),
                metadata=MappingProxyType(dict(metadata)) if metadata else _NO_METADATA,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            detail = (
                f"no {e.args[0]}" if isinstance(e, KeyError) else f"{type(e).__name__}: {bounded(e, 120)}"
            )
            raise SourceError(
                f"s3://{bucket}/{key}: S3's description of the object is malformed ({detail}); "
                "expected LastModified, ETag and a size",
                code="MalformedResponse",
            ) from e


def _utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"LastModified is {type(value).__name__}, not a timestamp")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
