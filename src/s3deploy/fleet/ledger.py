"""A rollout's record beside its slots: this host's report, its failure marker, and the stop object.

Reports (``reports/<host>``) and failure markers (``failed/<host>``) are written by their host only. A
failure is counted by one LIST of ``failed/`` (keys only, no GET per host, however big the fleet): past
``max_failures``, the failing host creates ``control/stop`` (``If-None-Match: *``; racing failures make
one). The stop object's presence is what stops a rollout; its content is only shown.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from s3deploy.errors import SourceError
from s3deploy.fleet.context import HostContext
from s3deploy.fleet.errors import MalformedObject, RolloutStopped
from s3deploy.fleet.keys import RolloutKeys, host_in
from s3deploy.fleet.records import (
    FAILED_STATES,
    MAX_FLEET_HOSTS,
    MAX_NAMED_FAILED,
    HostState,
    Report,
    StopOrder,
    encode,
    error_text,
    now_iso,
    read_stop,
)

logger = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "rolled_back"]


class Ledger:
    """Reports, failures and the stop object of one rollout, for one host."""

    def __init__(self, ctx: HostContext, keys: RolloutKeys, where: str) -> None:
        self.ctx = ctx
        self.keys = keys
        self.where = where
        self._stop_checked: tuple[float, StopOrder | None] | None = None

    async def report(
        self,
        state: HostState,
        deployment_id: str | None,
        *,
        started_at: str | None = None,
        finished_at: str | None = None,
        error: str | None = None,
    ) -> None:
        """Write this host's report (SourceError when S3 fails)."""
        report = Report(self.ctx.host, state, deployment_id, started_at, finished_at, error)
        await self.ctx.owned.put(self.keys.report(self.ctx.host), encode(report))

    async def record_outcome(
        self,
        outcome: Outcome,
        deployment_id: str | None,
        started_at: str | None,
        error: str | None,
        *,
        retried: bool = False,
    ) -> None:
        """Report ``outcome``; a failure is counted (``failed/<host>``) and may stop the rollout. A success
        with ``retried`` (a forced redeploy: the only way a host retries a revision it failed) removes
        this host's failure marker, so it no longer counts."""
        finished = now_iso()
        text = error_text(error) if error else None
        await self.report(outcome, deployment_id, started_at=started_at, finished_at=finished, error=text)
        failure = self.keys.failure(self.ctx.host)
        if outcome not in FAILED_STATES:
            if retried:
                await self.ctx.owned.delete(failure)
            return
        marker = Report(self.ctx.host, outcome, deployment_id, started_at, finished, None)
        await self.ctx.owned.put(failure, encode(marker))
        failed, count = await self._failed_hosts()
        limit = self.ctx.settings.max_failures
        logger.warning("%s: %d host(s) failed this revision (max_failures %d)", self.where, count, limit)
        if count > limit:
            reason = f"{count} host(s) failed this revision, more than max_failures = {limit}"
            await self.stop(reason, tuple(failed))

    async def _failed_hosts(self) -> tuple[list[str], int]:
        store = self.ctx.store
        try:
            listing = await store.pool.listing(
                store.endpoint, store.bucket, self.keys.failed, max_objects=MAX_FLEET_HOSTS
            )
        except SourceError as e:
            if e.code != "TooManyObjects":
                raise
            return [], MAX_FLEET_HOSTS + 1  # flooded: more than any max_failures
        failed = sorted(h for h in (host_in(self.keys.failed, k) for k in listing.objects) if h)
        return failed, len(failed)

    async def stop_order(self, *, max_age_s: float = 0.0) -> StopOrder | None:
        """The stop object, or None when the rollout goes on. A malformed one still stops. With
        ``max_age_s``, an answer that old is reused (a skipped revision re-checks every few minutes)."""
        cached = self._stop_checked
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        found = await self.ctx.store.get(self.keys.stop)
        order: StopOrder | None = None
        if found is not None:
            try:
                order = read_stop(found.body, self.ctx.url(self.keys.stop))
            except MalformedObject as e:
                order = StopOrder(reason=f"unreadable stop object ({e})", by="unknown", failed=())
        self._stop_checked = (time.monotonic(), order)
        return order

    async def stop(self, reason: str, failed: tuple[str, ...] = ()) -> bool:
        """Create the stop object (``fleet stop``, or too many failures); False if it existed already."""
        order = StopOrder(error_text(reason), self.ctx.host, failed[:MAX_NAMED_FAILED])
        result = await self.ctx.store.create(self.keys.stop, encode(order))
        self._stop_checked = None
        if result.won:
            logger.error("%s: rollout stopped: %s", self.where, order.reason)
        return result.won

    async def resume(self) -> bool:
        """Delete the stop object (``fleet resume``); False if there was none."""
        found = await self.ctx.store.get(self.keys.stop)
        self._stop_checked = None
        if found is None:
            return False
        result = await self.ctx.store.delete(self.keys.stop, etag=found.revision.etag)
        if result.won:
            logger.warning("%s: rollout resumed by %s", self.where, self.ctx.host)
        return result.won

    async def skip(self, order: StopOrder) -> None:
        """Report ``skipped`` (best effort) and raise RolloutStopped with the stop object's reason."""
        try:
            error = f"rollout stopped: {order.reason}"
            await self.report("skipped", None, finished_at=now_iso(), error=error_text(error))
        except SourceError as e:
            logger.warning("%s: could not report skipped: %s", self.where, e)
        raise RolloutStopped(
            f"{self.where} is stopped ({order.reason}; by {order.by}): not deploying it until a new "
            "revision, `s3deploy fleet resume` or `deploy --force`",
            reason=order.reason,
            by=order.by,
        )
