"""One LIST per poll for the sections that share a bucket, instead of one HEAD each.

Every watcher polls through :meth:`S3Pool.poll`. Per (endpoint, bucket) a :class:`BucketLister`
gathers the polls that arrive within ``WINDOW_S`` of each other (watchers with the same interval poll
in step) into one round: one ListObjectsV2 under the longest prefix common to the watched keys. The
listing's ETag and LastModified stand in for a HEAD each; a key whose pair changed since its last HEAD
(or never HEADed) is HEADed, because only a HEAD carries the VersionId of a versioned bucket and the
checksum the download verifies. Nothing changing: one LIST per bucket per poll interval.

Falls back to a plain HEAD per poll when only one watched key is in the bucket, when the credentials
may not list it (s3:ListBucket missing), or when the common prefix holds more than ``MAX_LISTED``
objects (listing would cost more than the HEADs it saves). A key missing from the listing is HEADed, so
it fails with exactly the NoSuchKey (or NoSuchBucket) error a HEAD gives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from s3deploy.errors import SourceError
from s3deploy.source.revision import Endpoint, Revision

logger = logging.getLogger(__name__)

#: Polls arriving within this many seconds of the first one share its LIST.
WINDOW_S = 0.2
#: More objects than this under the common prefix: HEAD each key instead of listing.
MAX_LISTED = 5000


class RevisionSource(Protocol):
    """What the lister needs from the client pool (:class:`~s3deploy.source.s3.S3Pool` is one)."""

    async def head(self, ep: Endpoint, bucket: str, key: str) -> Revision: ...

    async def list_objects(
        self, ep: Endpoint, bucket: str, prefix: str = "", *, max_objects: int | None = None
    ) -> dict[str, Revision]: ...


@dataclass(frozen=True)
class _Seen:
    """A key's ETag/LastModified in the listing when it was last HEADed, and what that HEAD said."""

    etag: str
    last_modified: datetime
    revision: Revision


class BucketLister:
    """Coalesces the polls of every watcher of one bucket into one ListObjectsV2 per round."""

    def __init__(self, pool: RevisionSource, endpoint: Endpoint, bucket: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.bucket = bucket
        self.keys: set[str] = set()
        self.lists = 0  # LIST requests made (for the benchmarks and the tests)
        self.heads = 0
        self._seen: dict[str, _Seen] = {}
        self._round: asyncio.Future[dict[str, Revision]] | None = None
        self._listing_disabled = ""

    async def revision(self, key: str) -> Revision:
        """The current revision of ``key``, as a HEAD would describe it."""
        self.keys.add(key)
        if len(self.keys) < 2 or self._listing_disabled:
            return await self._head(key)
        listing = await asyncio.shield(self._join_round())
        item = listing.get(key)
        if item is None:
            self._seen.pop(key, None)
            return await self._head(key)  # raises the same NoSuchKey/NoSuchBucket a lone HEAD does
        seen = self._seen.get(key)
        if seen is not None and (seen.etag, seen.last_modified) == (item.etag, item.last_modified):
            return seen.revision
        rev = await self._head(key)
        self._seen[key] = _Seen(item.etag, item.last_modified, rev)
        return rev

    async def _head(self, key: str) -> Revision:
        self.heads += 1
        return await self.pool.head(self.endpoint, self.bucket, key)

    def _join_round(self) -> asyncio.Future[dict[str, Revision]]:
        if self._round is None:
            self._round = asyncio.ensure_future(self._list_after_window())
        return self._round

    async def _list_after_window(self) -> dict[str, Revision]:
        try:
            await asyncio.sleep(WINDOW_S)
        finally:
            self._round = None  # later polls start the next round
        prefix = os.path.commonprefix(sorted(self.keys))
        self.lists += 1
        try:
            return await self.pool.list_objects(self.endpoint, self.bucket, prefix, max_objects=MAX_LISTED)
        except SourceError as e:
            if e.code in ("AccessDenied", "TooManyObjects"):
                # Not an S3 outage: this bucket is polled with HEADs from now on.
                self._listing_disabled = e.code
                logger.info(
                    "s3://%s: polling with a HEAD per section instead of one LIST (%s)", self.bucket, e
                )
                return {}  # every key is then HEADed, which reports its own errors
            raise
