"""One section's watcher: detect a new revision in S3 and have it deployed, under the section's locks.

``poll_once()`` is one check (what ``run --once``, the ``deploy`` command and the tests call); ``run()``
loops it on the schedule of the section's bucket (:mod:`s3deploy.source.poller`: one LIST per interval
for every section of the bucket), backing off with jitter on errors; ``wake()`` (a push wake-up,
SIGUSR1) makes it poll now. The deploying itself (download,
unpack, lifecycle, rollback, pruning) is the Deployer's. A deployment failure never leaves the watcher;
only cancellation does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence

from s3deploy.common.backoff import backoff_delay
from s3deploy.config import Section
from s3deploy.deployer import Deployer
from s3deploy.detection import Decision, decide
from s3deploy.errors import S3DeployError, SourceError, describe
from s3deploy.fleet_gate import FleetGate
from s3deploy.log import log_context
from s3deploy.runtime.context import AgentContext
from s3deploy.runtime.recovery import recover_interrupted
from s3deploy.source.s3 import Endpoint, Revision
from s3deploy.state.store import Deployment

logger = logging.getLogger(__name__)

#: An idle watcher still records "last polled" this often (status shows it).
POLL_RECORD_INTERVAL_S = 240.0
#: Longest wait between retries of a download that keeps failing on S3 errors.
MAX_DOWNLOAD_BACKOFF_S = 900.0
#: Polls made for wake-ups start at least this far apart (a later wake waits, and is never lost).
WAKE_MIN_GAP_S = 1.0


class Watcher:
    """Watches one section's S3 object and deploys it when it changes."""

    def __init__(self, section: Section, ctx: AgentContext, *, lock_names: Sequence[str] = ()) -> None:
        self.section = section
        self.ctx = ctx
        #: Sections locked together when this one deploys: itself and those whose destinations overlap
        #: with it (runtime.agent.overlapping_groups), sorted.
        self.lock_names = list(lock_names) or [section.name]
        self.endpoint = Endpoint(section.profile_name, section.region, section.endpoint_url)
        self.deployer = Deployer(section, ctx, self.endpoint)
        #: A coordinated section (max_concurrent, SPEC §10) deploys only through a slot of its fleet.
        self.gate = FleetGate(section, ctx, self.endpoint) if section.max_concurrent is not None else None
        #: The daemon's stop event (None in one-shot checks): also ends a wait for a fleet slot at once.
        self._stop: asyncio.Event | None = None
        # Downloads failing on S3 errors while HEAD works: retried with exponential backoff, so a long
        # GET-only outage adds a failed row every few minutes at most, not one per poll.
        self._download_failures = 0
        self._download_retry_at = 0.0
        # S3 checks failed in a row; logged (once) by the next check S3 answers, before it deploys.
        self._failed_checks = 0
        # What the last quiet poll saw (identity, state token); a poll seeing the same skips the database.
        self._quiet: tuple[str, tuple[int, int]] | None = None
        self._quiet_until = 0.0
        # Wake-ups: the time of the latest one not yet polled for, and the pause they end early.
        self._woken_at: float | None = None
        self._pausing: asyncio.Future[None] | None = None
        self._read_at = -math.inf

    def wake(self) -> None:
        """Poll now (a push wake-up, SIGUSR1): only a hint, every check of a poll still applies. Polls
        for wake-ups start at least WAKE_MIN_GAP_S apart: a sooner wake is delayed, never lost."""
        self._woken_at = time.monotonic()
        self._resume()

    def _resume(self) -> None:
        """End the current pause, if any (a wake-up, or the stop)."""
        if self._pausing is not None and not self._pausing.done():
            self._pausing.set_result(None)

    # ------------------------------------------------------------------ polling
    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. Errors back off with jitter, capped at the interval; none leaves
        the loop (a bug in one poll is logged, and the next poll tries again)."""
        self._stop = stop
        with log_context(section=self.section.name):
            async with self._heartbeat(stop):
                await self._run(stop)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """A coordinated section keeps its fleet heartbeat while the watcher runs."""
        if self.gate is None:
            yield
            return
        task = asyncio.create_task(self.gate.keep_alive(stop), name=f"heartbeat:{self.section.name}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, stop: asyncio.Event) -> None:
        sec = self.section
        interval = sec.poll_interval_s
        poller = self.ctx.pool.poller(self.endpoint, sec.s3_bucket)
        poller.watch(sec.target_file_key, interval)
        relay = asyncio.ensure_future(_relay(stop, self._resume))
        failures = 0
        last_error = ""
        not_before: float | None = None  # the first poll shares a LIST in flight, or starts one
        try:
            while not stop.is_set():
                self._read_at = time.monotonic()
                try:
                    await self._poll_once(False, not_before)
                except SourceError as e:
                    self._quiet = None  # the next good poll records that S3 answers again
                    if self.ctx.observer is not None:
                        self.ctx.observer.polled(sec.name, str(e))
                    failures += 1
                    self._failed_checks += 1
                    if str(e) != last_error:
                        logger.warning("S3 check failed (will retry): %s", e)
                        last_error = str(e)
                    await asyncio.to_thread(self.ctx.state.record_poll, sec.name, identity=None, error=str(e))
                    due = poller.due(sec.target_file_key)  # the retry, backed off by the poller
                except Exception as e:
                    self._quiet = None
                    failures += 1
                    logger.error("%s", describe(e), exc_info=logger.isEnabledFor(logging.DEBUG))
                    due = time.monotonic() + backoff_delay(failures, cap_s=interval)
                else:
                    if self.ctx.observer is not None:
                        self.ctx.observer.polled(sec.name, None)
                    failures, last_error = 0, ""
                    due = poller.due(sec.target_file_key)
                not_before = await self._pause(due, stop)
        finally:
            relay.cancel()
            poller.unwatch(sec.target_file_key, interval)

    async def _pause(self, due: float, stop: asyncio.Event) -> float | None:
        """Sleep until ``due`` (``time.monotonic()``) or a wake-up; returns the ``not_before`` of the
        next read (the time it was due, or of the wake), None once ``stop`` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            now = time.monotonic()
            if self._woken_at is not None:
                until = self._read_at + WAKE_MIN_GAP_S
                if now >= until:
                    woken_at, self._woken_at = self._woken_at, None
                    logger.debug("woken up: polling now")
                    return woken_at
            elif now >= due:
                return due
            else:
                until = due
            # One future and one timer per pause (no task, no exception): the idle daemon pauses
            # every watcher once per interval.
            self._pausing = loop.create_future()
            timer = loop.call_later(until - now, self._resume)
            try:
                await self._pausing
            finally:
                timer.cancel()
                self._pausing = None
        return None

    async def poll_once(self, *, force: bool = False) -> Deployment | None:
        """One check: HEAD (or a shared LIST), deploy if it changed. Returns the deployment made, if any."""
        with log_context(section=self.section.name):
            return await self._poll_once(force, None)

    async def _poll_once(self, force: bool, not_before: float | None) -> Deployment | None:
        sec = self.section
        rev = await self.ctx.pool.poll(
            self.endpoint, sec.s3_bucket, sec.target_file_key, not_before=not_before
        )
        if self._failed_checks:  # said now, not after the deployment this answer may start
            logger.info("S3 reachable again after %d failed checks", self._failed_checks)
            self._failed_checks = 0
        if not force and self._quiet == (rev.identity, await self.ctx.state_token()):
            if time.monotonic() < self._quiet_until:
                return None  # same object, same state: the same decision as last time
        state = self.ctx.state
        await asyncio.to_thread(state.record_poll, sec.name, identity=rev.identity, error=None)
        self._quiet = None
        if self.gate is not None:
            await self.gate.recover(rev)  # a slot this host held when it died is freed first
        record = await asyncio.to_thread(state.get_section, sec.name)
        if record.suspended and not force:
            logger.debug("suspended: not deploying %s", rev.identity)
            return await self._stay_quiet(rev, None)
        if not force:
            decision = await self._decide(rev)
            if not decision.deploy:
                return await self._stay_quiet(rev, await self._resume_rollback())
            if decision.retry and time.monotonic() < self._download_retry_at:
                return None
        if self.gate is not None:
            done = await self.gate.deploy(
                rev,
                force=force,
                stop=self._stop,
                locked=lambda dep_id, check: self._deploy(rev, force, dep_id, check),
            )
            if done is None and self.gate.quiet_s is not None:  # a stopped rollout: look again later
                return await self._stay_quiet(rev, None, for_s=self.gate.quiet_s)
            return done
        return await self._deploy(rev, force)

    async def _deploy(
        self, rev: Revision, force: bool, dep_id: str | None = None, check: Callable[[], None] | None = None
    ) -> Deployment | None:
        """Deploy ``rev`` under the section lock (``check``, if given, right before it starts)."""
        sec, state = self.section, self.ctx.state
        async with self.ctx.locks.hold(self.lock_names, wait=self.ctx.lock_wait):
            # Holding the section's flock, nothing else deploys it: a "running" row is a dead process's.
            await asyncio.to_thread(recover_interrupted, state, [sec.name])
            # Another process (a one-shot `deploy`) may have deployed it while we waited for the lock.
            if not force and not (await self._decide(rev, quiet=True)).deploy:
                return None
            if check is not None:
                check()
            done = await self.deployer.deploy(rev, forced=force, deployment_id=dep_id)
        if done.transient:
            self._download_failures += 1
            backoff = backoff_delay(
                self._download_failures,
                base_s=sec.poll_interval_s,
                cap_s=MAX_DOWNLOAD_BACKOFF_S,
                jitter=False,
            )
            self._download_retry_at = time.monotonic() + backoff
            logger.warning("download will be retried in %.0fs", backoff)
        else:
            self._download_failures = 0
        return done

    async def _stay_quiet(
        self, rev: Revision, done: Deployment | None, *, for_s: float = POLL_RECORD_INTERVAL_S
    ) -> Deployment | None:
        """Remember a poll that had nothing to do, so the next identical one skips the database."""
        if done is None:
            self._quiet = (rev.identity, await self.ctx.state_token())
            self._quiet_until = time.monotonic() + min(for_s, POLL_RECORD_INTERVAL_S)
        return done

    async def _resume_rollback(self) -> Deployment | None:
        """A rollback cut short (crash, shutdown) left the host between two releases: run it again."""
        state = self.ctx.state
        last = await asyncio.to_thread(state.last_attempt, self.section.name)
        if last is None or last.restores is None or last.status not in ("interrupted", "running"):
            return None
        async with self.ctx.locks.hold(self.lock_names, wait=self.ctx.lock_wait):
            await asyncio.to_thread(recover_interrupted, state, [self.section.name])
            last = await asyncio.to_thread(state.last_attempt, self.section.name)
            if last is None or last.restores is None or last.status != "interrupted":
                return None  # another process finished it while we waited for the lock
            good = await asyncio.to_thread(state.get, last.restores)
            if good is None:
                return None
            logger.warning(
                "rollback %s was interrupted: reinstalling the release of %s again", last.id, good.id
            )
            stop_from = await self.deployer.releases.installed()
            return await self.deployer.rollback_to(good, rollback_of=last.rollback_of, stop_from=stop_from)

    async def _decide(self, rev: Revision, *, quiet: bool = False) -> Decision:
        state = self.ctx.state
        last = await asyncio.to_thread(state.last_revision_attempt, self.section.name)
        record = await asyncio.to_thread(state.get_section, self.section.name)
        decision = decide(rev, last, record.baseline_identity, self.section)
        if decision.baseline:
            await asyncio.to_thread(state.set_baseline, self.section.name, rev.identity)
            logger.info("%s %s", rev.identity, decision.reason)
        elif decision.deploy and not quiet:
            logger.info("new revision %s: %s", rev.identity, decision.reason)
        else:
            logger.debug("%s: %s", rev.identity, decision.reason)
        return decision

    # ------------------------------------------------------------------ manual rollback
    async def manual_rollback(self, to: str | None = None) -> Deployment:
        """``s3deploy rollback``: reinstall the previous successful release (or ``to``) from disk."""
        name = self.section.name
        with log_context(section=name):
            async with self.ctx.locks.hold(self.lock_names, wait=self.ctx.lock_wait):
                await asyncio.to_thread(recover_interrupted, self.ctx.state, [name])
                current = await asyncio.to_thread(self.ctx.state.current, name)
                good = await self.deployer.releases.rollback_target(to)
                stop_from = await self.deployer.releases.installed()
                done = await self.deployer.rollback_to(
                    good, rollback_of=current.id if current else None, stop_from=stop_from
                )
        if done is None:
            raise S3DeployError(f"[{name}] the release of {good.id} cannot be loaded from disk")
        return done


async def _relay(stop: asyncio.Event, resume: Callable[[], None]) -> None:
    """Call ``resume`` once ``stop`` is set: a watcher's pause waits on one future, not two."""
    await stop.wait()
    resume()
