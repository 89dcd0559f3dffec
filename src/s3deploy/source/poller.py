"""One poll schedule per bucket: the sections that share a bucket cost one LIST per poll interval.

Every watcher reads its object through the :class:`BucketPoller` of its (endpoint, bucket). The poller
keeps the bucket's schedule: a *round* is one ListObjectsV2 under the longest prefix common to the
watched keys, and the next round is due one interval (the shortest ``poll_interval`` among the bucket's
watchers) after the last one started. Watchers sleep until :meth:`BucketPoller.due` and then
:meth:`~BucketPoller.read` their key: the first to ask starts the round, the others share it, whenever
each of them last deployed, so the bucket is listed once per interval whatever the watchers' phase.

The listing's ETag and LastModified stand in for a HEAD each; a key whose pair changed since its last
HEAD (or never HEADed) is HEADed, because only a HEAD carries the VersionId of a versioned bucket and the
checksum the download verifies. A key missing from the listing is HEADed, so it fails with exactly the
NoSuchKey (or NoSuchBucket) error a HEAD gives.

Errors back off with jitter, capped at the interval, without knocking on S3 once per section: a failed
LIST is retried once for the whole bucket (every watcher of the bucket is due at the same retry time),
and a key that fails on its own (missing, access denied, a failed HEAD) is retried with a HEAD of that
key only, on its own backoff, while the others keep their schedule. Each bucket has its own poller, so
a failing or slow bucket never delays another.

HEADs only (no LIST) when one key of the bucket is watched, when the credentials may not list it
(s3:ListBucket missing), or when the common prefix holds more than ``MAX_LISTED`` objects (listing would
cost more than the HEADs it saves); each key then keeps its own schedule.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from s3deploy.common.backoff import backoff_delay
from s3deploy.errors import SourceError
from s3deploy.source.revision import Endpoint, Revision

logger = logging.getLogger(__name__)

#: More objects than this under the common prefix: HEAD each key instead of listing.
MAX_LISTED = 5000
#: The backoff cap of a key read only by one-shot commands (no watcher, so no poll interval).
_ONE_SHOT_CAP_S = 60.0


class RevisionSource(Protocol):
    """What the poller needs from the client pool (:class:`~s3deploy.source.s3.S3Pool` is one)."""

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


@dataclass
class _Key:
    """What the poller knows of one key: who watches it, its last HEAD, its own failures."""

    intervals: list[float] = field(default_factory=list)  # one per watcher (none: one-shot reads)
    seen: _Seen | None = None
    read_at: float = -math.inf  # when the last HEAD of this key started
    failures: int = 0  # HEADs of this key failed in a row
    retry_at: float = -math.inf

    @property
    def interval_s(self) -> float:
        return min(self.intervals, default=_ONE_SHOT_CAP_S)


@dataclass
class _Round:
    """One LIST of the bucket: when it started, and its answer (shared by every reader)."""

    started: float
    listing: asyncio.Future[dict[str, Revision]]


class BucketPoller:
    """The poll schedule and the shared LIST of one (endpoint, bucket)."""

    def __init__(self, source: RevisionSource, endpoint: Endpoint, bucket: str) -> None:
        self.source = source
        self.endpoint = endpoint
        self.bucket = bucket
        self.lists = 0  # LIST requests made (for the benchmarks and the tests)
        self.heads = 0
        self._keys: dict[str, _Key] = {}
        self._interval_s = _ONE_SHOT_CAP_S  # the shortest interval of the watchers (kept by watch/unwatch)
        self._round: _Round | None = None
        self._failures = 0  # LISTs failed in a row
        self._retry_at = -math.inf
        self._listing_disabled = ""

    # ------------------------------------------------------------------ who watches what
    def watch(self, key: str, interval_s: float) -> None:
        """A watcher polls ``key`` every ``interval_s`` from now on (until :meth:`unwatch`)."""
        self._keys.setdefault(key, _Key()).intervals.append(interval_s)
        self._interval_s = self._shortest()

    def unwatch(self, key: str, interval_s: float) -> None:
        """Undo one :meth:`watch`; a key nobody watches any more leaves the listing."""
        known = self._keys.get(key)
        if known is None or interval_s not in known.intervals:
            return
        known.intervals.remove(interval_s)
        if not known.intervals:
            del self._keys[key]
        self._interval_s = self._shortest()

    @property
    def interval_s(self) -> float:
        """The bucket's round interval: the shortest poll interval of its watchers."""
        return self._interval_s

    def _shortest(self) -> float:
        return min((i for k in self._keys.values() for i in k.intervals), default=_ONE_SHOT_CAP_S)

    def due(self, key: str) -> float:
        """When (``time.monotonic()``) the next read of ``key`` is due: the bucket's next round, the
        retry of a failed LIST, or, for a key failing on its own or read with HEADs, its own time."""
        known = self._keys.get(key)
        if known is None:
            return time.monotonic()
        if not self._listing():
            return known.retry_at if known.failures else known.read_at + known.interval_s
        if self._failures:
            return self._retry_at
        if known.failures:
            return known.retry_at
        started = self._round.started if self._round is not None else -math.inf
        return started + self.interval_s

    # ------------------------------------------------------------------ reading
    async def read(self, key: str, *, not_before: float | None = None) -> Revision:
        """The current revision of ``key``, as a HEAD would describe it.

        ``not_before`` (``time.monotonic()``): share a round only if it started at or after that time
        (a scheduled read passes the time it was due, a wake-up the time of the wake), else start one.
        None (one-shot checks, a watcher's first read): share a round still in flight, else start one.
        """
        known = self._keys.setdefault(key, _Key())
        if not self._listing():
            return await self._head(key, known)
        latest = self._round
        fresh = latest is not None and (
            not latest.listing.done() if not_before is None else latest.started >= not_before
        )
        if known.failures and not self._failures and not fresh:
            return await self._head(key, known)  # one failing key costs its own HEAD, not a LIST
        listing = await asyncio.shield(
            latest.listing if fresh and latest is not None else self._start_round(not_before)
        )
        item = listing.get(key)
        if item is None:
            known.seen = None
            return await self._head(key, known)  # raises the same NoSuchKey/NoSuchBucket a lone HEAD does
        seen = known.seen
        if seen is not None and (seen.etag, seen.last_modified) == (item.etag, item.last_modified):
            return seen.revision
        rev = await self._head(key, known)
        known.seen = _Seen(item.etag, item.last_modified, rev)
        return rev

    def close(self) -> None:
        """Cancel a round in flight (the pool is closing)."""
        if self._round is not None:
            self._round.listing.cancel()

    def _listing(self) -> bool:
        return len(self._keys) >= 2 and not self._listing_disabled

    async def _head(self, key: str, known: _Key) -> Revision:
        self.heads += 1
        known.read_at = time.monotonic()
        try:
            rev = await self.source.head(self.endpoint, self.bucket, key)
        except SourceError:
            known.failures += 1
            known.retry_at = time.monotonic() + backoff_delay(known.failures, cap_s=known.interval_s)
            raise
        known.failures = 0
        return rev

    def _start_round(self, not_before: float | None) -> asyncio.Future[dict[str, Revision]]:
        # A round a reader starts at its due time counts as started then (a timer may fire a hair
        # early), so the watchers due at the same time all share it.
        started = max(time.monotonic(), not_before or -math.inf)
        listing = asyncio.ensure_future(self._list())
        listing.add_done_callback(_retrieve)
        self._round = _Round(started, listing)
        return listing

    async def _list(self) -> dict[str, Revision]:
        prefix = os.path.commonprefix(sorted(self._keys))
        self.lists += 1
        try:
            found = await self.source.list_objects(self.endpoint, self.bucket, prefix, max_objects=MAX_LISTED)
        except SourceError as e:
            if e.code in ("AccessDenied", "TooManyObjects"):
                # Not an S3 outage: this bucket is polled with HEADs from now on.
                self._listing_disabled = e.code
                logger.info(
                    "s3://%s: polling with a HEAD per section instead of one LIST (%s)", self.bucket, e
                )
                return {}  # every key is then HEADed, which reports its own errors
            self._failures += 1
            self._retry_at = time.monotonic() + backoff_delay(self._failures, cap_s=self.interval_s)
            raise
        self._failures = 0
        return found


def _retrieve(listing: asyncio.Future[dict[str, Revision]]) -> None:
    """Mark a round's error as seen: its readers got it (or are gone, the daemon stopping)."""
    if not listing.cancelled():
        listing.exception()
