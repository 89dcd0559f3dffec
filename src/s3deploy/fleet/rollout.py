"""One revision's rollout seen from one host: wait for a slot, report, stop the rollout when too many fail.

``async with rollout.slot(stop) as slot:`` is the whole protocol for the caller (SPEC §10):

1. the store is checked for conditional writes (once per process) and the heartbeat is refreshed if due;
2. the report says ``waiting``; one LIST of ``control/`` per look: a ``stop`` object means ``skipped``
   (:class:`RolloutStopped`); else a free slot below k is created (or a stale one taken over); none free:
   wait a few seconds on ``stop`` (setting it ends the wait at once: :class:`WaitAborted`);
3. with a slot: the stop object is read once more (a stop that came while this host raced is obeyed),
   the report says ``deploying``, and the slot's lease is renewed in the background while the body runs;
4. the body deploys and calls :meth:`Slot.finish` (``succeeded``, ``failed`` or ``rolled_back``): a
   failure is recorded and, past ``max_failures``, the ``stop`` object is created, all before the slot
   is freed, so no host starts in between;
5. leaving the block frees the slot (shielded from cancellation). A body that ends without ``finish``
   (cancelled, interrupted, an error before deploying) reports ``waiting`` again: it will deploy later.

The library never chooses what to deploy: it only delays or refuses the revision it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from s3deploy.common.backoff import backoff_delay
from s3deploy.errors import SourceError
from s3deploy.fleet.context import HostContext
from s3deploy.fleet.errors import MalformedObject, WaitAborted
from s3deploy.fleet.held import Slot
from s3deploy.fleet.keys import host_in, revision_id
from s3deploy.fleet.ledger import Ledger
from s3deploy.fleet.records import MAX_FLEET_HOSTS, FleetSize, StopOrder, encode, read_size
from s3deploy.fleet.slots import ControlView, Lease, SlotTable, safe_free
from s3deploy.source.revision import Revision

logger = logging.getLogger(__name__)


class Rollout:
    """The rollout of one revision of one section, as this host takes part in it."""

    def __init__(self, ctx: HostContext, revision: Revision) -> None:
        self.ctx = ctx
        self.revision = revision
        self.keys = ctx.settings.keys.rollout(revision.identity)
        self.lease_s = ctx.timing.lease_s(ctx.settings.deployment_timeout_s)
        self.table = SlotTable(ctx.store, self.keys, ctx.host, lease_s=self.lease_s)
        self.where = f"rollout of {revision.url} revision {revision_id(revision.identity)}"
        self.ledger = Ledger(ctx, self.keys, self.where)
        self._size: FleetSize | None = None
        self._size_known = False

    # ------------------------------------------------------------------ the slot
    @contextlib.asynccontextmanager
    async def slot(
        self, stop: asyncio.Event, *, deployment_id: str | None = None, force: bool = False
    ) -> AsyncIterator[Slot]:
        """Wait for a slot, yield it while the caller deploys, free it. ``force`` ignores a stop object
        (``deploy --force``) but still needs a slot. Raises RolloutStopped (reported ``skipped``),
        WaitAborted (``stop`` was set), ConditionalWritesUnsupported, SourceError (reports or checks)."""
        await self.ctx.prepare()
        await self.ledger.report("waiting", deployment_id)
        lease = await self._acquire(stop, deployment_id, force=force)
        renew_s = self.ctx.timing.renew_s(self.ctx.settings.deployment_timeout_s)
        held = Slot(self.table, self.ledger, lease, deployment_id, renew_s=renew_s, forced=force)
        try:
            held.start_renewing()
            await self.ledger.report("deploying", deployment_id, started_at=held.started_at)
            yield held
        finally:
            await held.release()

    async def _acquire(self, stop: asyncio.Event, deployment_id: str | None, *, force: bool) -> Lease:
        failures, said = 0, ""
        began = time.monotonic()  # paces this host's own looks only; leases are judged by S3's clock
        while True:
            if stop.is_set():
                raise WaitAborted(f"{self.where}: stopped waiting for a slot (shutting down)")
            try:
                view = await self.table.look()
                if view.stop and not force:
                    order = await self.ledger.stop_order()
                    if order is not None:  # else resumed between the LIST and the GET
                        await self.ledger.skip(order)
                k = await self.slots_allowed(view)
                lease = await self.table.try_take(view, k, deployment_id)
                if lease is not None and not force:
                    await self._confirm_not_stopped(lease)
            except SourceError as e:
                failures += 1
                if str(e) != said:
                    logger.warning("%s: S3 failed while waiting for a slot (will retry): %s", self.where, e)
                    said = str(e)
                delay = backoff_delay(failures, cap_s=self.ctx.timing.wait_max_s)
            else:
                if lease is not None:
                    logger.info("%s: took slot-%d (at most %d at once)", self.where, lease.index, k)
                    return lease
                if failures or not said:
                    logger.info(
                        "%s: waiting for a slot (%d of %d held)", self.where, view.held(self.lease_s), k
                    )
                failures, said = 0, "waiting"
                hosts = self._size.hosts if self._size else None
                delay = self.ctx.timing.wait_s(hosts, time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _confirm_not_stopped(self, lease: Lease) -> None:
        """A stop that came while this host raced for the slot is obeyed: free it and skip. Whatever
        interrupts this (S3 failing, cancellation) frees the slot too."""
        try:
            order = await self.ledger.stop_order()
        except BaseException:
            await asyncio.shield(safe_free(self.table, lease))
            raise
        if order is not None:
            await asyncio.shield(safe_free(self.table, lease))
            await self.ledger.skip(order)

    async def slots_allowed(self, view: ControlView | None = None, *, create: bool = True) -> int:
        """k: ``max_concurrent`` as a number, or its share of this rollout's fleet size (at least 1)."""
        limit = self.ctx.settings.max_concurrent
        return limit.slots(await self.fleet_size(view, create=create))

    async def fleet_size(self, view: ControlView | None = None, *, create: bool = True) -> int | None:
        """The fleet size this rollout uses: read from ``control/size``, which the first host to need it
        creates from the fresh heartbeats. None when the object is malformed (k is then 1 for a share).
        With ``create=False`` (``fleet status``) nothing is written: no size yet is counted, not kept."""
        if self._size_known:
            return self._size.hosts if self._size else None
        exists = view.size if view is not None else True
        found = await self.ctx.store.get(self.keys.size) if exists else None
        if found is None and not create:
            return await self.count_fleet()
        if found is None:
            record = FleetSize(await self.count_fleet(), self.ctx.host, revision_id(self.revision.identity))
            created = await self.ctx.store.create(self.keys.size, encode(record))
            if created.won:
                logger.info("%s: fleet of %d host(s) for this rollout", self.where, record.hosts)
                self._size, self._size_known = record, True
                return record.hosts
            found = await self.ctx.store.get(self.keys.size)
            if found is None:
                return None  # created and deleted meanwhile: read again at the next look
        try:
            self._size = read_size(found.body, self.ctx.url(self.keys.size))
        except MalformedObject as e:
            logger.warning("%s: %s; a share of the fleet now means one host at a time", self.where, e)
            self._size = None
        self._size_known = True
        return self._size.hosts if self._size else None

    async def count_fleet(self) -> int:
        """Hosts whose heartbeat is fresh by S3's clock (at least 1: this host is one)."""
        hosts = self.ctx.settings.keys.hosts
        store = self.ctx.store
        listing = await store.pool.listing(store.endpoint, store.bucket, hosts, max_objects=MAX_FLEET_HOSTS)
        fresh = self.ctx.timing.fresh_s
        alive = {
            host_in(hosts, key)
            for key, rev in listing.objects.items()
            if (listing.server_time - rev.last_modified).total_seconds() < fresh
        }
        alive.discard(None)
        return max(1, len(alive))

    # ------------------------------------------------------------------ stop, resume, recovery
    async def stop_order(self, *, max_age_s: float = 0.0) -> StopOrder | None:
        """The stop object (None: the rollout goes on); see :meth:`Ledger.stop_order`."""
        return await self.ledger.stop_order(max_age_s=max_age_s)

    async def stop(self, reason: str) -> bool:
        """``fleet stop``: create the stop object; False if the rollout was stopped already."""
        return await self.ledger.stop(reason)

    async def resume(self) -> bool:
        """``fleet resume``: delete the stop object; False if there was none."""
        return await self.ledger.resume()

    async def free_own_slots(self) -> int:
        """After a crash: free the slots of this rollout that still name this host; the number freed."""
        return await self.table.free_own()
