"""A slot this host holds while it deploys: renewed in the background, its outcome recorded, then freed.

Renewal is a put ``If-Match`` on the slot's last ETag every third of the lease. A renewal that loses
means another host took the slot over (this host's lease had expired by S3's clock): :attr:`Slot.lost`
is set and renewing stops. Freeing is a delete ``If-Match``, shielded from cancellation, and waits for a
renewal in flight to end first (a delete with an ETag that a renewal just replaced would leave the slot
held until its lease ran out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from s3deploy.common.backoff import backoff_delay
from s3deploy.errors import SourceError
from s3deploy.fleet.errors import SlotLost
from s3deploy.fleet.ledger import Ledger, Outcome
from s3deploy.fleet.records import now_iso
from s3deploy.fleet.slots import Lease, SlotTable, safe_free

logger = logging.getLogger(__name__)

#: A slot counts as held by :meth:`Slot.ensure_held` only with this much of its lease left (or a quarter
#: of a short lease).
HELD_MARGIN_S = 5.0
#: Releases still running after their caller was cancelled (kept referenced until they end).
_RELEASING: set[asyncio.Task[None]] = set()
#: Tries to record an outcome before the slot is left to expire instead of freed.
_OUTCOME_TRIES = 3


class Slot:
    """A slot held by this host for the body of ``Rollout.slot``; its lease is renewed meanwhile."""

    def __init__(
        self,
        table: SlotTable,
        ledger: Ledger,
        lease: Lease,
        deployment_id: str | None,
        *,
        renew_s: float,
        forced: bool = False,
    ) -> None:
        self.table = table
        self.ledger = ledger
        self.lease = lease
        self.deployment_id = deployment_id
        self.renew_s = renew_s
        self.forced = forced
        self.started_at = now_iso()
        #: Set when a renewal found the slot taken over: this host no longer holds it.
        self.lost = asyncio.Event()
        self._done = asyncio.Event()
        self._finished = False
        self._keep = False  # an outcome could not be recorded: leave the slot to expire, do not free it
        self._renewer: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None

    @property
    def index(self) -> int:
        return self.lease.index

    @property
    def since(self) -> str:
        """When the slot was taken, by S3's clock (ISO 8601)."""
        return self.lease.claim.since

    @property
    def taken_over(self) -> bool:
        """True when this host took the slot over from a holder whose lease had expired."""
        return self.lease.taken_over

    @property
    def where(self) -> str:
        return self.ledger.where

    def ensure_held(self) -> None:
        """Raise SlotLost unless the slot is surely still this host's (call it right before deploying)."""
        left = self.lease.remaining_s(self.table.lease_s)
        if self.lost.is_set() or left < min(HELD_MARGIN_S, self.table.lease_s / 4):
            why = "taken over" if self.lost.is_set() else f"lease not renewed, {left:.0f}s left"
            raise SlotLost(
                f"{self.where}: slot-{self.index} may be another host's now ({why}); not deploying"
            )

    async def finish(
        self, outcome: Outcome, *, deployment_id: str | None = None, error: object = None
    ) -> None:
        """Report the outcome (and count a failure, stopping the rollout past ``max_failures``) before the
        slot is freed. S3 failures are retried a few times; if they persist the slot is left to expire
        rather than freed (a failure that could not be counted must not let the next host start at once)
        and SourceError is raised."""
        self._finished = True
        self.deployment_id = deployment_id or self.deployment_id
        text = None if error is None else str(error)
        for attempt in range(1, _OUTCOME_TRIES + 1):
            try:
                await self.ledger.record_outcome(
                    outcome, self.deployment_id, self.started_at, text, retried=self.forced
                )
                return
            except SourceError as e:
                if attempt == _OUTCOME_TRIES:
                    self._keep = True
                    logger.error(
                        "%s: could not record %s (%s); slot-%d is left to expire",
                        self.where,
                        outcome,
                        e,
                        self.index,
                    )
                    raise
                await asyncio.sleep(backoff_delay(attempt, cap_s=5.0))

    def start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew(), name=f"renew slot-{self.index}")

    async def _renew(self) -> None:
        delay, failures = self.renew_s, 0
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), delay)
            if self._done.is_set():
                return
            try:
                renewed = await self.table.renew(self.lease)
            except SourceError as e:
                failures += 1
                delay = min(self.renew_s, backoff_delay(failures, cap_s=self.renew_s))
                logger.warning(
                    "%s: could not renew slot-%d (retrying in %.0fs): %s", self.where, self.index, delay, e
                )
                continue
            if renewed is None:
                self.lost.set()
                logger.error(
                    "%s: slot-%d was taken over by another host: its lease had expired",
                    self.where,
                    self.index,
                )
                return
            self.lease, delay, failures = renewed, self.renew_s, 0

    async def release(self) -> None:
        """Stop renewing and free the slot; shielded so that a cancelled caller still frees it."""
        if self._releaser is None:
            self._releaser = asyncio.create_task(self._release(), name=f"free slot-{self.index}")
            _RELEASING.add(self._releaser)  # the loop keeps only weak references to tasks
            self._releaser.add_done_callback(_RELEASING.discard)
        await asyncio.shield(self._releaser)

    async def _release(self) -> None:
        self._done.set()
        if self._renewer is not None:
            try:
                await self._renewer
            except Exception as e:  # a bug in renewing must not keep the slot from being freed
                logger.error("%s: renewing slot-%d failed: %r", self.where, self.index, e)
                logger.debug("renewal failure", exc_info=True)
        if not self._finished:
            try:
                await self.ledger.report("waiting", self.deployment_id)
            except SourceError as e:
                logger.warning("%s: could not report waiting: %s", self.where, e)
        if not self.lost.is_set() and not self._keep:
            await safe_free(self.table, self.lease)
