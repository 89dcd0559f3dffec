"""The slots of one rollout: read them in one LIST, take one, renew it, free it.

A slot is ``control/slot-<i>`` for ``0 <= i < k``. Taking one is a create with ``If-None-Match: *``: of
hosts racing for the same index exactly one wins, and with indices below k there are never more than k
holders. A slot whose LastModified is older than its lease (``deployment_timeout`` + 2 min) *by S3's
clock* (the ``Date`` of the same LIST answer) is stale: its holder died or lost S3. A waiting host takes
it over with a put ``If-Match`` on the ETag it listed; among several takers, and against a late renewal
of the holder, one wins. Every write carries a fresh nonce, so every write is a new ETag.

This host's own clock is used only in the safe direction: :attr:`Lease.confirmed_at` is taken *before*
the winning request was sent, so "less than a lease since then" by the monotonic clock means S3 has not
yet judged the slot stale.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from s3deploy.errors import SourceError
from s3deploy.fleet.errors import MalformedObject
from s3deploy.fleet.keys import RolloutKeys
from s3deploy.fleet.policy import MAX_SLOTS
from s3deploy.fleet.records import MAX_BODY_BYTES, SlotClaim, encode, iso, read_slot
from s3deploy.source.conditional import ObjectStore
from s3deploy.source.revision import Revision

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: control/ holds size, stop and the slots; a LIST that finds more was flooded by someone else.
MAX_CONTROL_OBJECTS = MAX_SLOTS + 16
#: Small GETs in flight at once when many objects are read (free_own, fleet status).
READ_CONCURRENCY = 16
#: A host tries at most this many free indices per look (the rest are left to the next look).
TRIES_PER_LOOK = 3


@dataclass(frozen=True)
class ControlView:
    """What one LIST of ``control/`` showed, with S3's clock when it answered."""

    server_time: datetime
    slots: dict[int, Revision]
    stop: bool
    size: bool

    def is_stale(self, slot: Revision, lease_s: float) -> bool:
        return (self.server_time - slot.last_modified).total_seconds() > lease_s

    def held(self, lease_s: float) -> int:
        """Slots whose lease is still running (any index: hosts with a larger k count too)."""
        return sum(1 for slot in self.slots.values() if not self.is_stale(slot, lease_s))


@dataclass(frozen=True)
class Lease:
    """A slot this host holds: its key, the ETag of the last write it won, and what it wrote."""

    index: int
    key: str
    etag: str
    claim: SlotClaim
    confirmed_at: float  # time.monotonic() just before the last winning write was sent
    taken_over: bool = False

    def remaining_s(self, lease_s: float) -> float:
        """Seconds for which S3 cannot yet judge this slot stale (by this host's monotonic clock)."""
        return lease_s - (time.monotonic() - self.confirmed_at)


class SlotTable:
    """Reading and writing the slots of one rollout for one host."""

    def __init__(self, store: ObjectStore, keys: RolloutKeys, host: str, *, lease_s: float) -> None:
        self.store = store
        self.keys = keys
        self.host = host
        self.lease_s = lease_s

    def _where(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"

    async def look(self) -> ControlView:
        """One LIST of control/ (slots, stop, size) and S3's clock. SourceError when S3 fails."""
        listing = await self.store.pool.listing(
            self.store.endpoint, self.store.bucket, self.keys.control, max_objects=MAX_CONTROL_OBJECTS
        )
        slots: dict[int, Revision] = {}
        for key, rev in listing.objects.items():
            index = self.keys.slot_index(key)
            if index is not None:
                slots[index] = rev
        names = listing.objects.keys()
        return ControlView(listing.server_time, slots, self.keys.stop in names, self.keys.size in names)

    async def try_take(self, view: ControlView, k: int, deployment_id: str | None) -> Lease | None:
        """Take a free slot below ``k`` (create if absent), else a stale one (If-Match); None if none."""
        if view.held(self.lease_s) >= k:
            return None
        free = [i for i in range(k) if i not in view.slots]
        random.shuffle(free)  # racing hosts spread over the free indices instead of all wanting slot-0
        for index in free[:TRIES_PER_LOOK]:
            claim = self._claim(deployment_id, since=iso(view.server_time))
            sent = time.monotonic()
            result = await self.store.create(self.keys.slot(index), encode(claim))
            if result.won and result.etag:
                return Lease(index, self.keys.slot(index), result.etag, claim, sent)
            logger.debug("slot-%d of %s: another host was first (%s)", index, self.keys.root, result.code)
        stale = [i for i, rev in view.slots.items() if i < k and view.is_stale(rev, self.lease_s)]
        random.shuffle(stale)
        for index in stale[:TRIES_PER_LOOK]:
            lease = await self._take_over(index, view.slots[index], view.server_time, deployment_id)
            if lease is not None:
                return lease
        return None

    async def _take_over(
        self, index: int, listed: Revision, now: datetime, deployment_id: str | None
    ) -> Lease | None:
        key = self.keys.slot(index)
        previous = await self._readable_claim(index)  # only to name it in the log
        claim = self._claim(deployment_id, since=iso(now))
        sent = time.monotonic()
        result = await self.store.replace(key, encode(claim), etag=listed.etag)
        if not (result.won and result.etag):
            logger.debug(
                "stale slot-%d of %s: another host took it first (%s)", index, self.keys.root, result.code
            )
            return None
        age = (now - listed.last_modified).total_seconds()
        holder = previous.host if previous is not None else "an unknown host"
        logger.warning(
            "took over slot-%d of %s from %s: not renewed for %.0fs by S3's clock (lease %.0fs)",
            index,
            self._where(self.keys.root),
            holder,
            age,
            self.lease_s,
        )
        return Lease(index, key, result.etag, claim, sent, taken_over=True)

    def _claim(self, deployment_id: str | None, *, since: str) -> SlotClaim:
        return SlotClaim(self.host, deployment_id, since, secrets.token_hex(8))

    async def renew(self, lease: Lease) -> Lease | None:
        """Rewrite the slot (If-Match its ETag) to restart its lease; None when it is no longer ours."""
        claim = replace(lease.claim, nonce=secrets.token_hex(8))
        sent = time.monotonic()
        result = await self.store.replace(lease.key, encode(claim), etag=lease.etag)
        if result.won and result.etag:
            return replace(lease, etag=result.etag, claim=claim, confirmed_at=sent)
        return None

    async def free(self, lease: Lease) -> bool:
        """Delete the slot if it is still ours (If-Match); False when another host holds it now."""
        result = await self.store.delete(lease.key, etag=lease.etag)
        if not result.won:
            logger.warning(
                "slot-%d of %s was no longer this host's when freed (%s)",
                lease.index,
                self._where(self.keys.root),
                result.code,
            )
        return result.won

    async def claim_of(self, index: int) -> SlotClaim | None:
        """Who claims slot ``index``, or None when it is free. MalformedObject when its content is not a
        claim s3deploy writes (too big included): such a slot is held by nobody this host can name."""
        key = self.keys.slot(index)
        try:
            found = await self.store.get(key, max_bytes=MAX_BODY_BYTES)
        except SourceError as e:
            if e.code != "TooLarge":
                raise
            raise MalformedObject(f"{self._where(key)}: more than {MAX_BODY_BYTES} bytes") from e
        return None if found is None else read_slot(found.body, self._where(key))

    async def _readable_claim(self, index: int) -> SlotClaim | None:
        try:
            return await self.claim_of(index)
        except MalformedObject as e:
            logger.warning("%s", e)
            return None

    async def free_own(self) -> int:
        """Delete every slot of this rollout that names this host (after a crash); the number freed.

        Only when the slot still has the ETag that was read: a slot taken over meanwhile stays.
        """
        view = await self.look()
        freed = 0
        indices = sorted(view.slots)
        claims = await gather_limited([functools.partial(self._readable_claim, i) for i in indices])
        for index, claim in zip(indices, claims, strict=True):
            if claim is None or claim.host != self.host:
                continue
            # The ETag listed: if the slot was taken over since, the GET above named another host.
            result = await self.store.delete(self.keys.slot(index), etag=view.slots[index].etag)
            if result.won:
                freed += 1
                logger.warning(
                    "freed slot-%d of %s, held by this host before it restarted",
                    index,
                    self._where(self.keys.root),
                )
        return freed


async def gather_limited(
    jobs: Sequence[Callable[[], Awaitable[T]]], limit: int = READ_CONCURRENCY
) -> list[T]:
    """Run the ``jobs`` with at most ``limit`` at once (many small GETs on one connection pool), results
    in order. The first failure cancels the rest and is raised as itself (not as an ExceptionGroup)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(job)) for job in jobs]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def safe_free(table: SlotTable, lease: Lease) -> None:
    """Free ``lease``, logging (not raising) an S3 failure: the lease then expires on its own."""
    try:
        await table.free(lease)
    except SourceError as e:
        logger.warning(
            "could not free slot-%d of %s (%s); it expires %.0fs after its last renewal",
            lease.index,
            table._where(table.keys.root),
            e,
            table.lease_s,
        )
