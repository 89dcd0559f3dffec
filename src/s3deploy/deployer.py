"""One deployment of one section on this host: a revision from S3 or a release from disk.

The Deployer downloads (pinned, verified) and unpacks a revision into its release folder, runs the
lifecycle under the destination locks with ``deployment_timeout``, records every step in the state,
rolls back from disk when asked or when a deployment fails at or after Install, and prunes old releases
and records. It is called under the section lock its Watcher holds; it never polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from s3deploy.appspec import load_appspec
from s3deploy.bundle.extract import unpack
from s3deploy.common.backoff import backoff_delay
from s3deploy.config import Section
from s3deploy.errors import LockBusy, RevisionChanged, S3DeployError, SourceError
from s3deploy.install.release_modes import restrict_release
from s3deploy.lifecycle.deploylog import OutputSink
from s3deploy.lifecycle.pipeline import POST_INSTALL_EVENTS, Lifecycle, LifecycleResult, Release
from s3deploy.lifecycle.sessions import kill_leftover_hooks
from s3deploy.log import SectionAdapter, section_logger
from s3deploy.metrics import Observer
from s3deploy.source.s3 import Endpoint, ProgressCallback, Revision, S3Pool
from s3deploy.state.layout import StateLayout
from s3deploy.state.locks import SectionLocks
from s3deploy.state.store import Deployment, StateStore

logger = logging.getLogger(__name__)

#: How stale another process's state changes may be when an idle watcher decides it has nothing to do.
DATA_VERSION_TTL_S = 1.0
#: GETs of one bundle within one deployment before it fails (each after botocore's own retries).
DOWNLOAD_ATTEMPTS = 3


@dataclass
class Agent:
    """What every watcher and deployer of one process shares: state, the S3 client pool, the locks."""

    state_dir: Path
    state: StateStore
    pool: S3Pool
    locks: SectionLocks
    #: The daemon waits for a section lock held by a one-shot command; one-shot commands do not (exit 3).
    lock_wait: bool = True
    #: One-shot commands on a TTY: (what, total bytes) -> a callback per chunk downloaded, or None.
    progress: Callable[[str, int], ProgressCallback | None] | None = None
    #: Told about polls and deployments (metrics, systemd STATUS).
    observer: Observer | None = None
    _data_version: int = -1

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.state_dir)

    _data_version_at: float = float("-inf")

    async def state_token(self) -> tuple[int, int]:
        """Changes when another process or this one changed what deployment decisions read.

        Another process's changes are noticed within DATA_VERSION_TTL_S: one database call per second
        for the whole daemon instead of several per section and poll.
        """
        if time.monotonic() - self._data_version_at >= DATA_VERSION_TTL_S:
            self._data_version_at = time.monotonic()
            self._data_version = await asyncio.to_thread(self.state.data_version)
        return self._data_version, self.state.local_writes


def recover_interrupted(state: StateStore, sections: Sequence[str] | None = None) -> list[Deployment]:
    """Mark deployments left running by a dead process ``interrupted`` and remove their partial releases.

    Only safe under the locks that prove nobody runs them (the instance lock, or the section flocks).
    A release folder whose Install never completed (a partial download or unpack, or a bundle never
    installed) is deleted: nothing refers to it and the redeploy downloads the revision again.
    """
    # Hooks of a dead agent run on in their own sessions: stop them before anything is redeployed.
    kill_leftover_hooks(StateLayout(state.path.parent), sections)
    recovered = state.recover_interrupted(sections)
    for dep in recovered:
        logger.warning(
            "[%s] deployment %s was running when its process died: marked interrupted", dep.section, dep.id
        )
        if dep.release_dir and dep.install_completed_at is None:
            shutil.rmtree(dep.release_dir, ignore_errors=True)
            state.clear_release_dir(dep.id)
            logger.info("[%s] removed the partial release folder of %s", dep.section, dep.id)
    return recovered


class Deployer:
    """Deploys one section: a revision from S3, or a release from disk (rollback)."""

    def __init__(self, section: Section, agent: Agent, endpoint: Endpoint) -> None:
        self.section = section
        self.agent = agent
        self.endpoint = endpoint
        self.log = section_logger(logger, section.name)
        self.group_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3deploy:{section.name}"))

    def _release_dir(self, deployment_id: str) -> Path:
        return self.agent.layout.release_dir(self.section.name, deployment_id)

    def _log_path(self, deployment_id: str) -> Path:
        return self.agent.layout.log_file(self.section.name, deployment_id)

    @property
    def cleanup_list(self) -> Path:
        return self.agent.layout.cleanup_list(self.section.name)

    def _env(self, deployment_id: str, rev_like: Deployment | Revision) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DEPLOYMENT_ID=deployment_id,
            APPLICATION_NAME=self.section.name,
            DEPLOYMENT_GROUP_NAME=self.section.name,
            DEPLOYMENT_GROUP_ID=self.group_id,
            BUNDLE_BUCKET=rev_like.bucket,
            BUNDLE_KEY=rev_like.key,
            BUNDLE_VERSION=rev_like.version_id or "",
            BUNDLE_ETAG=rev_like.etag or "",
        )
        return env

    async def deploy(self, rev: Revision, *, forced: bool) -> Deployment:
        """Record, download, unpack and run the lifecycle of ``rev``; roll back if it fails at or after
        Install (with auto_rollback); prune. The caller holds the section lock."""
        state = self.agent.state
        dep_id = await asyncio.to_thread(state.new_deployment_id)
        release_dir = self._release_dir(dep_id)
        await self._start(dep_id, rev, release_dir=str(release_dir), forced=forced)
        log = section_logger(logger, self.section.name, deployment_id=dep_id)
        log.info("deployment %s of s3://%s/%s (%s) started", dep_id, rev.bucket, rev.key, rev.identity)
        sink = OutputSink(log, self._log_path(dep_id))
        started = time.monotonic()
        try:
            sink.open()
            try:
                release = await self._fetch(rev, release_dir, dep_id, log)
            except S3DeployError as e:
                log.error("DownloadBundle failed: %s", e)
                await asyncio.to_thread(shutil.rmtree, release_dir, True)
                await asyncio.shield(asyncio.to_thread(state.clear_release_dir, dep_id))
                # S3 trouble, not a bad bundle: the revision is tried again at the next poll.
                transient = isinstance(e, SourceError)
                return await self._finish(
                    dep_id, "failed", sink, failed_event="DownloadBundle", error=str(e), transient=transient
                )
            previous = await self.installed_release()
            result = await self._lifecycle(release, previous, self._env(dep_id, rev), sink)
            if result.ok:
                log.info("deployment %s succeeded in %.1fs", dep_id, time.monotonic() - started)
                done = await self._finish(dep_id, "succeeded", sink)
            else:
                done = await self._finish(
                    dep_id, "failed", sink, failed_event=result.failed_event, error=result.error
                )
                if self.section.auto_rollback and result.failed_event in POST_INSTALL_EVENTS:
                    await self._auto_rollback(done, release if result.install_completed else previous)
        except asyncio.CancelledError:
            log.warning("deployment %s interrupted", dep_id)
            await asyncio.shield(
                self._finish(
                    dep_id,
                    "interrupted",
                    sink,
                    error="cancelled: the agent was stopped during the deployment",
                )
            )
            raise
        finally:
            sink.close()
        await self.prune()
        return done

    async def _fetch(self, rev: Revision, release_dir: Path, dep_id: str, log: SectionAdapter) -> Release:
        """Download (pinned, verified) and unpack into the release folder; the archive is removed after."""
        await asyncio.to_thread(self.agent.layout.create_release_dir, self.section.name, dep_id)
        archive = release_dir / "bundle.download"
        started = time.monotonic()
        progress = self.agent.progress(rev.url, rev.size) if self.agent.progress else None
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                await self.agent.pool.download(rev, self.endpoint, archive, progress)
                break
            except SourceError as e:
                # botocore retries failed requests, not a body cut or corrupted mid-way: a fresh GET does.
                if not e.retryable or isinstance(e, RevisionChanged) or attempt == DOWNLOAD_ATTEMPTS:
                    raise
                delay = backoff_delay(attempt, cap_s=self.section.poll_interval_s)
                log.warning(
                    "DownloadBundle: attempt %d of %d failed, retrying in %.1fs: %s",
                    attempt,
                    DOWNLOAD_ATTEMPTS,
                    delay,
                    e,
                )
                await asyncio.sleep(delay)
        log.info("DownloadBundle: %d bytes in %.2fs", rev.size, time.monotonic() - started)
        started = time.monotonic()
        root = await asyncio.to_thread(
            unpack,
            archive,
            release_dir / "unpacked",
            max_files=self.section.max_files,
            max_unpacked_bytes=self.section.max_unpacked_bytes,
        )
        await asyncio.to_thread(archive.unlink)
        # The bundle root is always release_dir/bundle, hoisted or not.
        await asyncio.to_thread(os.rename, root, release_dir / "bundle")
        await asyncio.to_thread(shutil.rmtree, release_dir / "unpacked", True)
        await asyncio.to_thread(restrict_release, release_dir / "bundle")  # no group/other write
        log.info("DownloadBundle: unpacked in %.2fs", time.monotonic() - started)
        spec = await asyncio.to_thread(load_appspec, release_dir / "bundle")
        return Release(dep_id, release_dir / "bundle", spec)

    async def _lifecycle(
        self,
        release: Release,
        previous: Release | None,
        env: dict[str, str],
        sink: OutputSink,
        *,
        ignore_stop_failures: bool | None = None,
    ) -> LifecycleResult:
        async def install_completed() -> None:
            await asyncio.to_thread(self.agent.state.mark_install_completed, dep_id)

        dep_id = env["DEPLOYMENT_ID"]
        lifecycle = Lifecycle(
            section=self.section.name,
            release=release,
            previous=previous,
            env=env,
            default_destination=self.section.destination,
            cleanup_list=self.cleanup_list,
            ignore_application_stop_failures=(
                self.section.ignore_application_stop_failures
                if ignore_stop_failures is None
                else ignore_stop_failures
            ),
            on_line=sink.line,
            log=sink.log,
            on_install_completed=install_completed,
            hook_session_file=self.agent.layout.hook_session(self.section.name),
        )
        result = LifecycleResult()
        timeout = self.section.deployment_timeout_s
        destinations = self._destinations(release, previous)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            # Whatever section (or process) installs into an overlapping folder waits for this one, within
            # its own deployment_timeout: then it fails naming the holder.
            async with self.agent.locks.hold_destinations(
                self.section.name, destinations, wait=True, timeout_s=timeout
            ):
                remaining = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(lifecycle.run(result), max(0.0, remaining))
        except LockBusy as e:
            result.failed_event, result.error = "BeforeInstall", str(e)
            sink.log.error("%s", result.error)
        except TimeoutError:
            result.failed_event = result.current_event or "BeforeInstall"
            result.error = (
                f"deployment_timeout of {timeout:g}s reached during {result.failed_event}; hooks killed"
            )
            sink.log.error("%s", result.error)
        return result

    def _destinations(self, release: Release, previous: Release | None) -> list[Path]:
        """The folders this lifecycle writes to: the new release's destinations and the previous one's
        (its installed files are removed first)."""
        roots: list[Path] = []
        for rel in (release, previous):
            if rel is None:
                continue
            if rel.spec.files:
                roots += [Path(m.destination) for m in rel.spec.files]
            elif self.section.destination is not None:
                roots.append(self.section.destination)
        return roots

    async def _finish(
        self,
        dep_id: str,
        status: str,
        sink: OutputSink,
        *,
        failed_event: str | None = None,
        error: str | None = None,
        transient: bool = False,
    ) -> Deployment:
        """Record the end of a deployment; shielded so a shutdown cannot lose it."""
        done = await asyncio.shield(
            asyncio.to_thread(
                self.agent.state.finish,
                dep_id,
                status,
                failed_event=failed_event,
                error=error,
                output_tail=sink.text(),
                transient=transient,
            )
        )
        if self.agent.observer is not None:
            self.agent.observer.deployment_finished(done)
        return done

    async def _start(
        self,
        dep_id: str,
        source: Revision | Deployment,
        *,
        release_dir: str | None = None,
        forced: bool = False,
        rollback_of: str | None = None,
        restores: str | None = None,
    ) -> None:
        """Record deployment ``dep_id`` of ``source``'s revision as running, and tell the observer."""
        await asyncio.to_thread(
            self.agent.state.start,
            section=self.section.name,
            bucket=source.bucket,
            key=source.key,
            etag=source.etag,
            version_id=source.version_id,
            identity=source.identity,
            release_dir=release_dir,
            log_path=str(self._log_path(dep_id)),
            rollback_of=rollback_of,
            restores=restores,
            forced=forced,
            deployment_id=dep_id,
        )
        if self.agent.observer is not None:
            self.agent.observer.deployment_started(self.section.name, dep_id)

    # ------------------------------------------------------------------ releases and rollback
    def bundle_root(self, dep: Deployment) -> Path:
        return self._release_dir(dep.restores or dep.id) / "bundle"

    @staticmethod
    def _install_completed(dep: Deployment) -> bool:
        if dep.status == "succeeded" or dep.install_completed_at is not None:
            return True
        # Rows recorded before install_completed_at existed: a failure after Install implies it.
        return dep.status == "failed" and dep.failed_event in POST_INSTALL_EVENTS[1:]

    async def installed_release(self) -> Release | None:
        """The release whose Install last completed (its ApplicationStop knows how to stop what runs)."""
        history = await asyncio.to_thread(self.agent.state.history, self.section.name, 50)
        for dep in history:
            if dep.status == "running" or not self._install_completed(dep):
                continue
            return await self._load_release(dep)
        return None

    async def _load_release(self, dep: Deployment) -> Release | None:
        root = self.bundle_root(dep)
        if not root.is_dir():
            self.log.warning("release of %s is no longer on disk (%s)", dep.id, root)
            return None
        try:
            spec = await asyncio.to_thread(load_appspec, root)
        except S3DeployError as e:
            self.log.warning("release of %s cannot be used: %s", dep.id, e)
            return None
        return Release(dep.restores or dep.id, root, spec)

    async def _auto_rollback(self, failed: Deployment, stop_from: Release | None) -> Deployment | None:
        good = await asyncio.to_thread(self.agent.state.current, self.section.name)
        if good is None:
            self.log.warning("no successful release to roll back to")
            return None
        self.log.warning(
            "rolling back %s: redeploying the release of %s", failed.id, good.restores or good.id
        )
        return await self.rollback_to(good, rollback_of=failed.id, stop_from=stop_from)

    async def rollback_to(
        self, good: Deployment, *, rollback_of: str | None, stop_from: Release | None
    ) -> Deployment | None:
        """Redeploy ``good``'s release from disk as a new deployment (the caller holds the section lock)."""
        target = await self._load_release(good)
        if target is None:
            return None
        dep_id = await asyncio.to_thread(self.agent.state.new_deployment_id)
        await self._start(dep_id, good, rollback_of=rollback_of, restores=good.restores or good.id)
        log = section_logger(logger, self.section.name, deployment_id=dep_id)
        sink = OutputSink(log, self._log_path(dep_id))
        try:
            sink.open()
            release = Release(dep_id, target.bundle_root, target.spec)
            # What is stopped is the broken release: its failing ApplicationStop must not block recovery.
            result = await self._lifecycle(
                release, stop_from, self._env(dep_id, good), sink, ignore_stop_failures=True
            )
            status = "succeeded" if result.ok else "failed"
            log.log(logging.INFO if result.ok else logging.ERROR, "rollback %s %s", dep_id, status)
            return await self._finish(
                dep_id, status, sink, failed_event=result.failed_event, error=result.error
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(dep_id, "interrupted", sink, error="cancelled during rollback"))
            raise
        finally:
            sink.close()

    async def prune(self) -> None:
        """Delete release folders beyond keep_revisions, and records and logs beyond keep_history."""
        state = self.agent.state
        doomed = await asyncio.to_thread(
            state.releases_to_prune, self.section.name, self.section.keep_revisions
        )
        for dep in doomed:
            if dep.release_dir:
                await asyncio.to_thread(shutil.rmtree, dep.release_dir, True)
            await asyncio.to_thread(state.clear_release_dir, dep.id)
            self.log.debug("pruned release %s", dep.id)
        trimmed = await asyncio.to_thread(state.trim_history, self.section.name, self.section.keep_history)
        if trimmed:
            await asyncio.to_thread(_delete_logs, self.agent.layout.logs_root, trimmed)
            self.log.info("history: %d old deployment record(s) deleted (keep_history)", len(trimmed))


def _delete_logs(logs: Path, trimmed: list[tuple[str, str | None]]) -> None:
    """Delete the log files of deleted deployment records (only ever inside the state's logs folder)."""
    for _, log_path in trimmed:
        if log_path and Path(log_path).is_relative_to(logs):
            Path(log_path).unlink(missing_ok=True)
