"""A coordinated section's side of a fleet rollout (SPEC §10): the watcher deploys only through a slot.

The watcher decides alone whether revision R must be deployed (detection.py); for a section with
``max_concurrent`` the :class:`FleetGate` then stands between that decision and the deployment:

1. a revision this host skipped because its rollout was stopped stays skipped (``status``: ``stopped``)
   until the stop object is gone, which is looked at again at most every ``stop_recheck_s`` (5 min);
2. it waits for a slot of R's rollout *before* the section lock, so a waiting section never blocks the
   others, on an event that the daemon's stop sets (SIGTERM ends the wait at once) and that a look at the
   bundle sets when R is replaced while it waits;
3. with the slot it deploys R (the watcher's own code, under the section lock, where the slot is
   checked once more right before the deployment starts), reports ``succeeded``, ``failed`` or
   ``rolled_back`` (a rollback is a failure of R), then frees the slot.

The coordination objects can only delay or refuse R: the revision deployed is always the one the
watcher's own poll saw and decided on. A store that does not honour conditional writes is refused (the
log and ``status`` say why). Every section also keeps its heartbeat (:meth:`FleetGate.keep_alive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from s3deploy.common.backoff import backoff_delay
from s3deploy.common.procgroup import proc_stat
from s3deploy.config import Section
from s3deploy.errors import S3DeployError, SourceError
from s3deploy.fleet.coordinator import Coordinator
from s3deploy.fleet.errors import ConditionalWritesUnsupported, RolloutStopped, SlotLost, WaitAborted
from s3deploy.fleet.held import Slot
from s3deploy.fleet.ledger import Outcome
from s3deploy.fleet.policy import FleetSettings
from s3deploy.runtime.context import AgentContext
from s3deploy.source.revision import Endpoint, Revision
from s3deploy.state.fleet import FleetRecords
from s3deploy.state.store import Deployment

logger = logging.getLogger(__name__)

#: What the watcher runs once the slot is held: deploy under the section lock with this deployment id,
#: calling the check right before the deployment starts; None when there was nothing to deploy after all.
DeployLocked = Callable[[str, Callable[[], None]], Awaitable[Deployment | None]]


def _this_process() -> str:
    """This process as a slot record names its holder: ``pid:start ticks`` (a reused pid differs)."""
    me = proc_stat(os.getpid())
    return f"{os.getpid()}:{me.start_ticks if me is not None else 0}"


def _alive(holder: str | None) -> bool:
    """Whether the process a slot record names still runs."""
    try:
        pid, ticks = (int(part) for part in (holder or "").split(":"))
    except ValueError:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat.running and stat.start_ticks == ticks


def fleet_settings(section: Section, endpoint: Endpoint) -> FleetSettings:
    """The coordination settings of a section with ``max_concurrent`` (ValueError without it)."""
    if section.max_concurrent is None:
        raise ValueError(f"[{section.name}] is not a coordinated section (no max_concurrent)")
    return FleetSettings(
        section=section.name,
        bucket=section.s3_bucket,
        key=section.target_file_key,
        endpoint=endpoint,
        max_concurrent=section.max_concurrent,
        max_failures=section.max_failures,
        prefix=section.fleet_prefix,
        deployment_timeout_s=section.deployment_timeout_s,
    )


class FleetGate:
    """One coordinated section of one watcher: heartbeats, the wait for a slot, reports, skips."""

    def __init__(self, section: Section, ctx: AgentContext, endpoint: Endpoint) -> None:
        self.section = section
        self.ctx = ctx
        self.endpoint = endpoint
        self.records = FleetRecords(ctx.state)
        self._coordinator: Coordinator | None = None
        self._recovered = False
        #: Revision identity -> when this process last read its stop object (monotonic).
        self._stop_checked: dict[str, float] = {}
        self._refused: str | None = None
        self._refused_known = False  # a previous process may have left a refusal in the state
        #: After a poll that must stay quiet (a stopped rollout): seconds until the stop is looked at.
        self.quiet_s: float | None = None

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            fleet = self.ctx.host_fleet()
            self._coordinator = fleet.coordinator(fleet_settings(self.section, self.endpoint))
        return self._coordinator

    @property
    def name(self) -> str:
        return self.section.name

    # ------------------------------------------------------------------ heartbeat
    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Until ``stop``: check the store (once; again every 10 min after a refusal) and keep this host's
        heartbeat (one PUT every 10 minutes). Failures are logged and retried, never raised."""
        timing = self.ctx.host_fleet().timing
        failures = 0
        while not stop.is_set():
            try:
                await self.coordinator.check_conditional_writes()
                await self._set_refused(None)
                await self.coordinator.heartbeat()  # writes only when due
                failures, delay = 0, timing.heartbeat_s / 2
            except ConditionalWritesUnsupported as e:
                await self._set_refused(str(e))
                delay = timing.probe_retry_s
            except S3DeployError as e:
                failures += 1
                delay = backoff_delay(failures, cap_s=timing.heartbeat_s)
                logger.warning("fleet heartbeat failed (retrying in %.0fs): %s", delay, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _set_refused(self, reason: str | None) -> None:
        if self._refused_known and reason == self._refused:
            return
        self._refused, self._refused_known = reason, True
        await asyncio.to_thread(self.records.set_refused, self.name, reason)

    # ------------------------------------------------------------------ recovery
    async def recover(self, rev: Revision) -> None:
        """Once per process, before anything else: if this host died holding a slot of ``rev``'s rollout,
        free it, and report the outcome its deployment had recorded (if it ended) before the crash."""
        if self._recovered:
            return
        held = await asyncio.to_thread(self.records.get, self.name)
        if held.slot_identity is not None and _alive(held.slot_holder):
            self._recovered = True  # held by a live process: this one after a reload, or a one-shot
            return
        if held.slot_identity is not None and held.slot_identity == rev.identity:
            freed = await self.coordinator.free_own_slots(rev)
            logger.warning(
                "this host held %d slot(s) of the rollout of %s when it stopped: freed them", freed, rev.url
            )
            dep = await asyncio.to_thread(self.ctx.state.get, held.slot_deployment_id or "")
            if dep is not None and dep.status in ("succeeded", "failed") and not dep.transient:
                outcome, error = await self._outcome(dep)
                rollout = self.coordinator.rollout(rev)
                iso = dep.started_at.isoformat(timespec="milliseconds")
                await rollout.ledger.record_outcome(outcome, dep.id, iso, error)
        if held.slot_identity is not None:
            await asyncio.to_thread(self.records.release_slot, self.name)
        self._recovered = True

    # ------------------------------------------------------------------ deploying through a slot
    async def deploy(
        self, rev: Revision, *, force: bool, stop: asyncio.Event | None, locked: DeployLocked
    ) -> Deployment | None:
        """Deploy ``rev`` through a slot of its rollout; None when it was not deployed (stopped rollout,
        refused store, the wait ended, the slot lost). ``force`` ignores a stop but still needs a slot.

        ``stop`` is the daemon's stop event; None for a one-shot check (`deploy`, `run --once`: SIGTERM
        cancels it), which raises ConditionalWritesUnsupported instead of returning None."""
        self.quiet_s = None
        one_shot = stop is None
        stop = stop or asyncio.Event()
        if not force and await self._held_back(rev):
            return None
        dep_id = await asyncio.to_thread(self.ctx.state.new_deployment_id)
        wake = asyncio.Event()
        guard = asyncio.create_task(self._watch(rev, stop, wake, force=force), name=f"fleet-wait:{self.name}")
        try:
            async with self._slot(rev, wake, dep_id, force=force, guard=guard) as slot:
                done = await locked(dep_id, slot.ensure_held)
                await self._finish(slot, rev, done)
                return done
        except RolloutStopped as e:
            await self._skipped(rev, e)
        except WaitAborted:
            why = "shutting down" if stop.is_set() else "the revision was replaced or the section suspended"
            logger.info("stopped waiting for a slot of the rollout of %s (%s)", rev.identity, why)
        except ConditionalWritesUnsupported as e:
            await self._set_refused(str(e))
            if one_shot:
                raise
            logger.error("not deploying %s: %s", rev.identity, e)
            self.quiet_s = self.ctx.host_fleet().timing.probe_retry_s
        except SlotLost as e:
            logger.error("%s", e)
        finally:
            guard.cancel()
            await asyncio.gather(guard, return_exceptions=True)
        return None

    @contextlib.asynccontextmanager
    async def _slot(
        self, rev: Revision, wake: asyncio.Event, dep_id: str, *, force: bool, guard: asyncio.Task[None]
    ) -> AsyncIterator[Slot]:
        """The library's slot, with this host's local record of holding it (freed first after a crash)."""
        rollout = self.coordinator.rollout(rev)
        holding = False
        try:
            async with rollout.slot(wake, deployment_id=dep_id, force=force) as slot:
                guard.cancel()  # from here on the deployment runs; the revision is pinned
                holding = True
                holder = _this_process()
                await asyncio.to_thread(self.records.hold_slot, self.name, rev.identity, dep_id, holder)
                await self._set_refused(None)
                record = await asyncio.to_thread(self.records.get, self.name)
                if record.skipped_identity is not None:
                    await asyncio.to_thread(self.records.clear_skip, self.name)
                yield slot
        finally:
            if holding:  # the slot is freed (or left to expire) by now
                await asyncio.shield(asyncio.to_thread(self.records.release_slot, self.name))

    async def _watch(self, rev: Revision, stop: asyncio.Event, wake: asyncio.Event, *, force: bool) -> None:
        """While waiting for a slot: end the wait when ``stop`` is set (at once), when the bundle is
        replaced, or (without ``force``) when the section is suspended; looked at every poll interval."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.section.poll_interval_s)
                if stop.is_set():
                    return
                try:
                    now = await self.ctx.pool.poll(self.endpoint, rev.bucket, rev.key)
                except SourceError as e:
                    logger.debug("while waiting for a slot: S3 check failed: %s", e)
                    continue
                if now.identity != rev.identity:
                    logger.info(
                        "%s replaced %s while this host waited for a slot", now.identity, rev.identity
                    )
                    return
                if not force and (await asyncio.to_thread(self.ctx.state.get_section, self.name)).suspended:
                    return
        finally:
            wake.set()

    async def _finish(self, slot: Slot, rev: Revision, done: Deployment | None) -> None:
        """Report how the deployment ended (before the slot is freed). A transient download failure is
        not an outcome: the revision is tried again, so the report goes back to ``waiting``."""
        if done is None:  # another process of this host deployed it while this one waited for the lock
            last = await asyncio.to_thread(self.ctx.state.last_revision_attempt, self.name)
            if last is None or last.identity != rev.identity or last.status not in ("succeeded", "failed"):
                return
            done = last
        if done.transient:
            return
        outcome, error = await self._outcome(done)
        try:
            await slot.finish(outcome, deployment_id=done.id, error=error)
        except S3DeployError as e:  # SourceError: the slot is left to expire; FleetError: same
            logger.error("could not report %s of %s to the fleet: %s", outcome, done.id, e)

    async def _outcome(self, done: Deployment) -> tuple[Outcome, str | None]:
        """``succeeded``, or ``rolled_back`` when a rollback of it restored the previous release, else
        ``failed``; with the error as the report shows it."""
        if done.status == "succeeded":
            return "succeeded", None
        error = done.error or ""
        if done.failed_event and not error.startswith(done.failed_event):
            error = f"{done.failed_event}: {error}"
        last = await asyncio.to_thread(self.ctx.state.last_attempt, self.name)
        if last is not None and last.rollback_of == done.id and last.status == "succeeded":
            return "rolled_back", error
        return "failed", error

    # ------------------------------------------------------------------ stopped rollouts
    async def _held_back(self, rev: Revision) -> bool:
        """True while ``rev`` is skipped and its rollout still stopped (the stop object is read again at
        most every ``stop_recheck_s``, and at the first poll of a process)."""
        record = await asyncio.to_thread(self.records.get, self.name)
        if record.skipped_identity != rev.identity:
            return False
        recheck_s = self.ctx.host_fleet().timing.stop_recheck_s
        checked = self._stop_checked.get(rev.identity)
        if checked is not None and time.monotonic() - checked < recheck_s:
            self.quiet_s = recheck_s - (time.monotonic() - checked)
            return True
        order = await self.coordinator.rollout(rev).stop_order()
        self._stop_checked = {rev.identity: time.monotonic()}
        if order is not None:
            self.quiet_s = recheck_s
            level = logging.DEBUG if checked is not None else logging.INFO  # said once per process
            logger.log(
                level, "not deploying %s: its rollout is still stopped (%s)", rev.identity, order.reason
            )
            return True
        logger.info("the rollout of %s was resumed: deploying it", rev.identity)
        await asyncio.to_thread(self.records.clear_skip, self.name)
        return False

    async def _skipped(self, rev: Revision, stopped: RolloutStopped) -> None:
        reason = f"{stopped.reason} (by {stopped.by})"
        await asyncio.to_thread(self.records.record_skip, self.name, rev.identity, reason)
        recheck_s = self.ctx.host_fleet().timing.stop_recheck_s
        self._stop_checked = {rev.identity: time.monotonic()}
        self.quiet_s = recheck_s
        logger.warning(
            "not deploying %s: its rollout is stopped: %s; looking again every %.0fs "
            "(`s3deploy fleet resume %s`, a new revision or `deploy --force` deploy it)",
            rev.identity,
            reason,
            recheck_s,
            self.name,
        )
