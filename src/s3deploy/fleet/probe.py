"""The conditional-write check (SPEC §10): does this store honour ``If-None-Match: *`` and ``If-Match``?

Older SeaweedFS and MinIO releases, and proxies in front of a store, have ignored these headers and
written anyway. Slots would then have several owners, so before a coordinated section deploys, a fresh
probe key is created twice (the second create must be refused), replaced with a wrong ETag (must be
refused) and deleted. Four requests, once per store per process; a failed check is repeated after a
while (an operator may fix the store without restarting the agent).
"""

from __future__ import annotations

import asyncio
import logging
import time

from s3deploy.errors import SourceError
from s3deploy.fleet.errors import ConditionalWritesUnsupported
from s3deploy.fleet.keys import SectionKeys
from s3deploy.source.conditional import ObjectStore
from s3deploy.source.revision import Endpoint

logger = logging.getLogger(__name__)

_PROBE_BODY = b'{"probe":"s3deploy conditional-write check"}'


class ConditionalWriteCheck:
    """Remembers, per (endpoint, bucket), whether the store passed; :meth:`ensure` checks once."""

    def __init__(self, *, retry_s: float) -> None:
        self.retry_s = retry_s
        self._passed: set[tuple[Endpoint, str]] = set()
        self._failed: dict[tuple[Endpoint, str], tuple[float, str]] = {}
        self._lock = asyncio.Lock()

    async def ensure(self, store: ObjectStore, keys: SectionKeys, host: str) -> None:
        """Return when the store honours conditional writes; raise ConditionalWritesUnsupported if not.

        SourceError (the store cannot be reached) passes through and is not remembered.
        """
        where = (store.endpoint, store.bucket)
        if where in self._passed:
            return
        async with self._lock:
            if where in self._passed:
                return
            failed = self._failed.get(where)
            if failed is not None and time.monotonic() < failed[0]:
                raise ConditionalWritesUnsupported(failed[1])
            problem = await _probe(store, keys.probe(host))
            if problem is None:
                self._passed.add(where)
                self._failed.pop(where, None)
                logger.debug(
                    "s3://%s at %s honours conditional writes", store.bucket, store.endpoint.describe()
                )
                return
            message = (
                f"s3://{store.bucket} at {store.endpoint.describe()} does not honour conditional writes "
                f"({problem}): fleet slots would not have one owner each, so coordinated sections do not "
                "deploy; use a store that supports If-None-Match and If-Match on PutObject (AWS S3, "
                "SeaweedFS 4 or newer, a recent MinIO) or remove max_concurrent from the section"
            )
            self._failed[where] = (time.monotonic() + self.retry_s, message)
            logger.error("%s", message)
            raise ConditionalWritesUnsupported(message)


async def _probe(store: ObjectStore, key: str) -> str | None:
    """What the store got wrong about conditions on ``key``, or None when it refused both bad writes."""
    first = await store.create(key, _PROBE_BODY)
    try:
        if not first.won:
            return f"a first PUT with If-None-Match: * on the new key {key} was refused ({first.code})"
        second = await store.create(key, _PROBE_BODY + b" ")
        if second.won:
            first = second
            return f"a second PUT with If-None-Match: * on {key} succeeded"
        wrong = await store.replace(key, _PROBE_BODY + b"  ", etag="0" * 32)
        if wrong.won:
            first = wrong
            return f"a PUT with If-Match on a wrong ETag of {key} succeeded"
        return None
    finally:
        if first.won and first.etag:
            try:
                await store.delete(key, etag=first.etag)
            except SourceError as e:  # a leftover probe key harms nothing; the lifecycle rule expires it
                logger.warning("could not delete the probe key %s: %s", key, e)
