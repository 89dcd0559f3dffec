"""The entry points of fleet coordination: one :class:`HostFleet` per process, one :class:`Coordinator`
per coordinated section.

Wiring (stage 2 of issue 11)::

    fleet = HostFleet(pool, host_id)                       # once, with the agent's S3Pool
    coord = fleet.coordinator(settings)                    # per section with max_concurrent
    await coord.heartbeat()                                # every poll: writes only when due (10 min)
    rollout = coord.rollout(revision)                      # the revision the watcher decided to deploy
    async with rollout.slot(stop, deployment_id=...) as slot:
        slot.ensure_held()
        ...deploy...
        await slot.finish("succeeded" | "failed" | "rolled_back", error=...)

``RolloutStopped`` means "record skipped, do not deploy"; ``WaitAborted`` means the stop event was set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from s3deploy import __version__
from s3deploy.common.backoff import backoff_delay
from s3deploy.errors import SourceError
from s3deploy.fleet.context import HostContext
from s3deploy.fleet.errors import FleetError
from s3deploy.fleet.keys import check_host_id
from s3deploy.fleet.owned import OwnedObjects
from s3deploy.fleet.policy import FleetSettings, Timing
from s3deploy.fleet.probe import ConditionalWriteCheck
from s3deploy.fleet.records import Heartbeat, encode
from s3deploy.fleet.rollout import Rollout
from s3deploy.fleet.view import FleetView, read_view
from s3deploy.source.conditional import ObjectStore
from s3deploy.source.revision import Revision
from s3deploy.source.s3 import S3Pool

logger = logging.getLogger(__name__)


class HostFleet:
    """This host in every fleet it takes part in: its id, the S3 pool, the conditional-write checks."""

    def __init__(
        self, pool: S3Pool, host_id: str, *, agent_version: str = __version__, timing: Timing | None = None
    ) -> None:
        try:
            self.host_id = check_host_id(host_id)
        except ValueError as e:
            raise FleetError(f"--host-id / S3DEPLOY_HOST_ID: {e}") from e
        self.pool = pool
        self.agent_version = agent_version
        self.timing = timing or Timing()
        self.checks = ConditionalWriteCheck(retry_s=self.timing.probe_retry_s)

    def coordinator(self, settings: FleetSettings) -> Coordinator:
        return Coordinator(self, settings)


class Coordinator:
    """One coordinated section on this host: heartbeats, rollouts, status, stop and resume."""

    def __init__(self, fleet: HostFleet, settings: FleetSettings) -> None:
        self.fleet = fleet
        self.settings = settings
        store = ObjectStore(fleet.pool, settings.endpoint, settings.bucket)
        self.ctx = HostContext(
            settings, fleet.timing, fleet.host_id, store, OwnedObjects(store), self._prepare
        )
        self._rollout: Rollout | None = None
        self._heartbeat_at: float | None = None

    @property
    def host_id(self) -> str:
        return self.fleet.host_id

    async def check_conditional_writes(self) -> None:
        """Raise ConditionalWritesUnsupported unless the section's store honours conditional writes
        (checked once per store and process; SourceError when it cannot be reached)."""
        await self.fleet.checks.ensure(self.ctx.store, self.settings.keys, self.host_id)

    async def heartbeat(self, *, force: bool = False) -> bool:
        """Rewrite this host's heartbeat if ``heartbeat_s`` passed since the last one (or ``force``):
        one PUT every 10 minutes, nothing in between. True when it wrote. SourceError when S3 fails."""
        due = (
            self._heartbeat_at is None
            or time.monotonic() - self._heartbeat_at >= self.fleet.timing.heartbeat_s
        )
        if not (due or force):
            return False
        body = encode(Heartbeat(self.host_id, self.fleet.agent_version, self.settings.section))
        await self.ctx.owned.put(self.settings.keys.heartbeat(self.host_id), body)
        self._heartbeat_at = time.monotonic()
        return True

    async def keep_heartbeat(self, stop: asyncio.Event) -> None:
        """Write the heartbeat every ``heartbeat_s`` until ``stop`` is set; S3 failures are logged and
        retried with backoff (a missed heartbeat only ages this host out of the next rollout's count)."""
        failures = 0
        while not stop.is_set():
            try:
                await self.heartbeat()
                failures, delay = 0, self.fleet.timing.heartbeat_s
            except SourceError as e:
                failures += 1
                delay = backoff_delay(failures, cap_s=self.fleet.timing.heartbeat_s)
                logger.warning(
                    "[%s] heartbeat failed (retrying in %.0fs): %s", self.settings.section, delay, e
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def rollout(self, revision: Revision) -> Rollout:
        """The rollout of ``revision`` (the same object while the revision stays the same)."""
        if self._rollout is None or self._rollout.revision.identity != revision.identity:
            self._rollout = Rollout(self.ctx, revision)
        return self._rollout

    async def free_own_slots(self, revision: Revision) -> int:
        """After a crash: free the slots of ``revision``'s rollout that still name this host."""
        return await self.rollout(revision).free_own_slots()

    async def view(self, revision: Revision) -> FleetView:
        """``fleet status``: the rollout of ``revision`` as the bucket shows it (reads only)."""
        return await read_view(self.ctx, self.rollout(revision))

    async def stop(self, revision: Revision, reason: str | None = None) -> bool:
        """``fleet stop``: stop the rollout of ``revision``; False if it was stopped already."""
        return await self.rollout(revision).stop(reason or f"stopped by hand (fleet stop on {self.host_id})")

    async def resume(self, revision: Revision) -> bool:
        """``fleet resume``: let the rollout of ``revision`` go on; False if it was not stopped."""
        return await self.rollout(revision).resume()

    async def _prepare(self) -> None:
        await self.check_conditional_writes()
        await self.heartbeat()
