"""One section's watcher: detect a new revision in S3 and have it deployed, under the section's locks.

``poll_once()`` is one check (what ``run --once``, the ``deploy`` command and the tests call); ``run()``
loops it with the poll interval, backing off with jitter on S3 errors. The deploying itself (download,
unpack, lifecycle, rollback, pruning) is the Deployer's. A deployment failure never leaves the watcher;
only cancellation does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from s3deploy.common.backoff import backoff_delay
from s3deploy.config import Section
from s3deploy.deployer import Agent, Deployer, recover_interrupted
from s3deploy.detection import Decision, decide
from s3deploy.errors import S3DeployError, SourceError
from s3deploy.log import section_logger
from s3deploy.source.s3 import Endpoint, Revision
from s3deploy.state.store import Deployment

logger = logging.getLogger(__name__)

#: An idle watcher still records "last polled" this often (status shows it).
POLL_RECORD_INTERVAL_S = 240.0
#: Longest wait between retries of a download that keeps failing on S3 errors.
MAX_DOWNLOAD_BACKOFF_S = 900.0


class Watcher:
    """Watches one section's S3 object and deploys it when it changes."""

    def __init__(self, section: Section, agent: Agent, *, lock_names: Sequence[str] = ()) -> None:
        self.section = section
        self.agent = agent
        #: Sections locked together when this one deploys: itself and those whose destinations overlap
        #: with it (daemon.overlapping_groups), sorted.
        self.lock_names = list(lock_names) or [section.name]
        self.endpoint = Endpoint(section.profile_name, section.region, section.endpoint_url)
        self.log = section_logger(logger, section.name)
        self.deployer = Deployer(section, agent, self.endpoint)
        # Downloads failing on S3 errors while HEAD works: retried with exponential backoff, so a long
        # GET-only outage adds a failed row every few minutes at most, not one per poll.
        self._download_failures = 0
        self._download_retry_at = 0.0
        # What the last quiet poll saw (identity, state token); a poll seeing the same skips the database.
        self._quiet: tuple[str, tuple[int, int]] | None = None
        self._quiet_until = 0.0

    # ------------------------------------------------------------------ polling
    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. S3 errors back off with jitter, capped at the interval."""
        interval = self.section.poll_interval_s
        failures = 0
        last_error = ""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.poll_once()
            except SourceError as e:
                self._quiet = None  # the next good poll records that S3 answers again
                if self.agent.observer is not None:
                    self.agent.observer.polled(self.section.name, str(e))
                failures += 1
                if str(e) != last_error:
                    self.log.warning("S3 check failed (will retry): %s", e)
                    last_error = str(e)
                await asyncio.to_thread(
                    self.agent.state.record_poll, self.section.name, identity=None, error=str(e)
                )
                delay = backoff_delay(failures, cap_s=interval)
            except S3DeployError as e:
                self.log.error("%s", e)
                delay = interval
            else:
                if self.agent.observer is not None:
                    self.agent.observer.polled(self.section.name, None)
                if failures:
                    self.log.info("S3 reachable again after %d failed checks", failures)
                failures, last_error = 0, ""
                delay = max(0.0, interval - (time.monotonic() - started))
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    async def poll_once(self, *, force: bool = False) -> Deployment | None:
        """One check: HEAD (or a shared LIST), deploy if it changed. Returns the deployment made, if any."""
        sec = self.section
        rev = await self.agent.pool.poll(self.endpoint, sec.s3_bucket, sec.target_file_key)
        if not force and self._quiet == (rev.identity, await self.agent.state_token()):
            if time.monotonic() < self._quiet_until:
                return None  # same object, same state: the same decision as last time
        state = self.agent.state
        await asyncio.to_thread(state.record_poll, sec.name, identity=rev.identity, error=None)
        self._quiet = None
        record = await asyncio.to_thread(state.get_section, sec.name)
        if record.suspended and not force:
            self.log.debug("suspended: not deploying %s", rev.identity)
            return await self._stay_quiet(rev, None)
        if not force:
            decision = await self._decide(rev)
            if not decision.deploy:
                return await self._stay_quiet(rev, await self._resume_rollback())
            if decision.retry and time.monotonic() < self._download_retry_at:
                return None
        async with self.agent.locks.hold(self.lock_names, wait=self.agent.lock_wait):
            # Holding the section's flock, nothing else deploys it: a "running" row is a dead process's.
            await asyncio.to_thread(recover_interrupted, state, [sec.name])
            # Another process (a one-shot `deploy`) may have deployed it while we waited for the lock.
            if not force and not (await self._decide(rev, quiet=True)).deploy:
                return None
            done = await self.deployer.deploy(rev, forced=force)
        if done.transient:
            self._download_failures += 1
            backoff = backoff_delay(
                self._download_failures,
                base_s=sec.poll_interval_s,
                cap_s=MAX_DOWNLOAD_BACKOFF_S,
                jitter=False,
            )
            self._download_retry_at = time.monotonic() + backoff
            self.log.warning("download will be retried in %.0fs", backoff)
        else:
            self._download_failures = 0
        return done

    async def _stay_quiet(self, rev: Revision, done: Deployment | None) -> Deployment | None:
        """Remember a poll that had nothing to do, so the next identical one skips the database."""
        if done is None:
            self._quiet = (rev.identity, await self.agent.state_token())
            self._quiet_until = time.monotonic() + POLL_RECORD_INTERVAL_S
        return done

    async def _resume_rollback(self) -> Deployment | None:
        """A rollback cut short (crash, shutdown) left the host between two releases: run it again."""
        state = self.agent.state
        last = await asyncio.to_thread(state.last_attempt, self.section.name)
        if last is None or last.restores is None or last.status not in ("interrupted", "running"):
            return None
        async with self.agent.locks.hold(self.lock_names, wait=self.agent.lock_wait):
            await asyncio.to_thread(recover_interrupted, state, [self.section.name])
            last = await asyncio.to_thread(state.last_attempt, self.section.name)
            if last is None or last.restores is None or last.status != "interrupted":
                return None  # another process finished it while we waited for the lock
            good = await asyncio.to_thread(state.get, last.restores)
            if good is None:
                return None
            self.log.warning(
                "rollback %s was interrupted: reinstalling the release of %s again", last.id, good.id
            )
            stop_from = await self.deployer.installed_release()
            return await self.deployer.rollback_to(good, rollback_of=last.rollback_of, stop_from=stop_from)

    async def _decide(self, rev: Revision, *, quiet: bool = False) -> Decision:
        state = self.agent.state
        last = await asyncio.to_thread(state.last_revision_attempt, self.section.name)
        record = await asyncio.to_thread(state.get_section, self.section.name)
        decision = decide(rev, last, record.baseline_identity, self.section)
        if decision.baseline:
            await asyncio.to_thread(state.set_baseline, self.section.name, rev.identity)
            self.log.info("%s %s", rev.identity, decision.reason)
        elif decision.deploy and not quiet:
            self.log.info("new revision %s: %s", rev.identity, decision.reason)
        else:
            self.log.debug("%s: %s", rev.identity, decision.reason)
        return decision

    # ------------------------------------------------------------------ manual rollback
    async def manual_rollback(self, to: str | None = None) -> Deployment:
        """``s3deploy rollback``: reinstall the previous successful release (or ``to``) from disk."""
        state = self.agent.state
        name = self.section.name
        async with self.agent.locks.hold(self.lock_names, wait=self.agent.lock_wait):
            await asyncio.to_thread(recover_interrupted, state, [name])
            current = await asyncio.to_thread(state.current, name)
            history = await asyncio.to_thread(state.history, name, None)
            good = _rollback_target(name, current, history, to)
            if not self.deployer.bundle_root(good).is_dir():
                raise S3DeployError(
                    f"[{name}] the release of {good.restores or good.id} is no longer on disk "
                    f"(pruned by keep_revisions); deploy it from S3 instead"
                )
            stop_from = await self.deployer.installed_release()
            done = await self.deployer.rollback_to(
                good, rollback_of=current.id if current else None, stop_from=stop_from
            )
        if done is None:
            raise S3DeployError(f"[{name}] the release of {good.id} cannot be loaded from disk")
        return done


def _rollback_target(
    section: str, current: Deployment | None, history: list[Deployment], to: str | None
) -> Deployment:
    """The deployment whose release a manual rollback reinstalls."""
    if to is not None:
        for dep in history:
            if dep.id == to:
                if dep.status != "succeeded":
                    raise S3DeployError(
                        f"[{section}] {to} did not succeed ({dep.status}); pick a succeeded one "
                        f"from `s3deploy history {section}`"
                    )
                return dep
        raise S3DeployError(
            f"[{section}] no deployment {to} in this section; see `s3deploy history {section}`"
        )
    if current is None:
        raise S3DeployError(
            f"[{section}] nothing was deployed successfully yet: there is nothing to roll back to"
        )
    installed = current.restores or current.id
    for dep in history:
        if dep.status == "succeeded" and (dep.restores or dep.id) != installed:
            return dep
    raise S3DeployError(f"[{section}] no earlier successful release than {installed} to roll back to")
