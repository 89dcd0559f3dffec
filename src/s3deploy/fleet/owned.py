"""Objects that one host owns (its heartbeat, its reports, its failure markers): written and removed
with the conditional primitives, remembering the ETag of the last write.

Only the owner writes these, so the ETag it wrote last is normally still current: a rewrite is one
``If-Match`` PUT. After a restart (nothing remembered) it is a create; when the key exists, a GET for its
ETag and an ``If-Match`` PUT. Whatever someone else wrote there is overwritten: the key is this host's.
"""

from __future__ import annotations

import logging

from s3deploy.fleet.errors import FleetError
from s3deploy.source.conditional import ObjectStore

logger = logging.getLogger(__name__)

#: Rounds of create / read / replace before giving up (another writer keeps changing the key).
_ROUNDS = 3


class OwnedObjects:
    """Writes and deletes of the keys this host owns in one bucket. Not shared between hosts."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._etags: dict[str, str] = {}

    async def put(self, key: str, body: bytes) -> None:
        """Make ``key`` hold ``body``. SourceError when S3 fails; FleetError when the key keeps changing."""
        for _ in range(_ROUNDS):
            etag = self._etags.get(key)  # kept when S3 fails: the next try is still one request
            if etag is not None:
                result = await self.store.replace(key, body, etag=etag)
            else:
                result = await self.store.create(key, body)
            if result.won and result.etag:
                self._etags[key] = result.etag
                return
            self._etags.pop(key, None)
            if etag is not None:
                logger.warning("s3://%s/%s was changed by someone else; rewriting it", self.store.bucket, key)
            found = await self.store.get(key)
            if found is not None:
                self._etags[key] = found.revision.etag
        raise FleetError(
            f"s3://{self.store.bucket}/{key}: changed by another writer during each of {_ROUNDS} rewrites; "
            "only this host should write it (is another agent running with the same --host-id?)"
        )

    async def delete(self, key: str) -> None:
        """Remove ``key`` if it exists (a GET for its ETag unless this host wrote it last)."""
        for _ in range(_ROUNDS):
            etag = self._etags.get(key)
            if etag is None:
                found = await self.store.get(key)
                if found is None:
                    return
                etag = found.revision.etag
            result = await self.store.delete(key, etag=etag)
            self._etags.pop(key, None)
            if result.won or result.code == "NoSuchKey":
                return
        raise FleetError(
            f"s3://{self.store.bucket}/{key}: changed by another writer during each of {_ROUNDS} deletes"
        )
