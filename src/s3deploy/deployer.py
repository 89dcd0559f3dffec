"""One deployment of one section on this host: a revision from S3 or a release from disk.

The Deployer downloads (pinned, verified) and unpacks a revision into its release folder, runs the
lifecycle under the destination locks, records every step in the state, rolls back from disk when asked
or when a deployment fails at or after Install, and prunes old releases and records. The whole
deployment, download included, is bounded by ``deployment_timeout``. Whatever goes wrong, an
``S3DeployError`` or not, the deployment ends recorded (``failed``, or ``interrupted`` when cancelled):
none is left ``running``. It is called under the section lock its Watcher holds; it never polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from s3deploy.common.text import printable
from s3deploy.config import Section
from s3deploy.errors import S3DeployError, describe
from s3deploy.fetch import Fetcher, fetch_failure
from s3deploy.install.activated import ReleaseActivation
from s3deploy.lifecycle.deploylog import OutputSink
from s3deploy.lifecycle.pipeline import POST_INSTALL_EVENTS, Lifecycle, LifecycleResult, Release
from s3deploy.log import log_context
from s3deploy.releases import Releases
from s3deploy.runtime.context import AgentContext
from s3deploy.source.s3 import Endpoint, Revision
from s3deploy.state.signatures import record_signed_by
from s3deploy.state.store import Deployment

logger = logging.getLogger(__name__)

#: A destination lock wait gives up this long before deployment_timeout, so its error names the holder.
_NAME_HOLDER_MARGIN_S = 0.25


class Deployer:
    """Deploys one section: a revision from S3, or a release from disk (rollback)."""

    def __init__(self, section: Section, ctx: AgentContext, endpoint: Endpoint) -> None:
        self.section = section
        self.ctx = ctx
        self.endpoint = endpoint
        self.releases = Releases(section.name, ctx.layout, ctx.state, destination=section.destination)
        gate = None
        if section.trusted_signers is not None:  # signed bundles (SPEC §11); else no signing code runs
            from s3deploy.signature_gate import SignatureGate

            gate = SignatureGate(section, ctx.state, ctx.pool, endpoint)
        self.fetcher = Fetcher(section, ctx.pool, endpoint, ctx.layout, ctx.progress, gate=gate)
        self.group_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3deploy:{section.name}"))

    def _log_path(self, deployment_id: str) -> Path:
        return self.ctx.layout.log_file(self.section.name, deployment_id)

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
            S3DEPLOY_HOST_ID=self.ctx.host_id,
        )
        return env

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.section.deployment_timeout_s

    async def deploy(self, rev: Revision, *, forced: bool, deployment_id: str | None = None) -> Deployment:
        """Record, download, unpack and run the lifecycle of ``rev``; roll back if it fails at or after
        Install (with auto_rollback); prune. The caller holds the section lock. ``deployment_id``: an id
        chosen beforehand (a coordinated section names it in its fleet report while it waits)."""
        if deployment_id is None:
            deployment_id = await asyncio.to_thread(self.ctx.state.new_deployment_id)
        dep_id = deployment_id
        release_dir = self.ctx.layout.release_dir(self.section.name, dep_id)
        with log_context(deployment_id=dep_id):
            await self._start(dep_id, rev, release_dir=str(release_dir), forced=forced)
            logger.info("deployment %s of s3://%s/%s (%s) started", dep_id, rev.bucket, rev.key, rev.identity)
            sink = OutputSink(logger, self._log_path(dep_id))
            try:
                done = await self._deploy(rev, dep_id, release_dir, sink)
            finally:
                sink.close()
            try:
                await self.releases.prune(self.section.keep_revisions, self.section.keep_history)
            except Exception as e:  # the deployment is recorded; old releases go at the next one
                logger.warning("pruning old releases failed: %s", describe(e))
        return done

    async def _deploy(self, rev: Revision, dep_id: str, release_dir: Path, sink: OutputSink) -> Deployment:
        """The deployment's steps; its end is recorded whatever happens (``interrupted`` if cancelled)."""
        started = time.monotonic()
        deadline = self._deadline()
        done: Deployment | None = None
        try:
            await asyncio.to_thread(sink.open)
            try:
                release = await self.fetcher.fetch(rev, dep_id, release_dir, deadline)
            except Exception as e:
                error, transient = fetch_failure(e, self.section.deployment_timeout_s)
                logger.error("DownloadBundle failed: %s", error)
                await asyncio.to_thread(shutil.rmtree, release_dir, True)
                await asyncio.shield(asyncio.to_thread(self.ctx.state.clear_release_dir, dep_id))
                done = await self._finish(
                    dep_id, "failed", sink, failed_event="DownloadBundle", error=error, transient=transient
                )
                return done
            try:
                previous = await self.releases.installed()
            except Exception as e:
                result = LifecycleResult(failed_event="BeforeInstall", error=describe(e))
                logger.error("%s failed: %s", result.failed_event, result.error)
                previous = None
            else:
                env = self._env(dep_id, rev)
                activation = self._activation(dep_id, fresh=True)
                result = await self._lifecycle(
                    release, previous, env, sink, deadline=deadline, activation=activation
                )
            if result.ok:
                logger.info("deployment %s succeeded in %.1fs", dep_id, time.monotonic() - started)
                done = await self._finish(dep_id, "succeeded", sink)
                return done
            done = await self._finish(
                dep_id, "failed", sink, failed_event=result.failed_event, error=result.error
            )
            if self.section.auto_rollback and result.failed_event in POST_INSTALL_EVENTS:
                await self._auto_rollback(done, release if result.install_completed else previous)
            return done
        except asyncio.CancelledError:
            if done is None:
                logger.warning("deployment %s interrupted", dep_id)
                error = "cancelled: the agent was stopped during the deployment"
                # Its end may be being recorded already (a shielded write the cancellation cut short).
                with contextlib.suppress(S3DeployError):
                    await asyncio.shield(self._finish(dep_id, "interrupted", sink, error=error))
            raise

    async def _lifecycle(
        self,
        release: Release,
        previous: Release | None,
        env: dict[str, str],
        sink: OutputSink,
        *,
        deadline: float,
        ignore_stop_failures: bool | None = None,
        activation: ReleaseActivation | None = None,
    ) -> LifecycleResult:
        """Run the lifecycle under the destination locks until ``deadline``; every failure (a timeout,
        an unexpected error) comes back in the result with the event it happened in."""

        async def install_completed() -> None:
            await asyncio.to_thread(self.ctx.state.mark_install_completed, dep_id)

        dep_id = env["DEPLOYMENT_ID"]
        lifecycle = Lifecycle(
            section=self.section.name,
            release=release,
            previous=previous,
            env=env,
            default_destination=self.section.destination,
            cleanup_list=self.ctx.layout.cleanup_list(self.section.name),
            ignore_application_stop_failures=(
                self.section.ignore_application_stop_failures
                if ignore_stop_failures is None
                else ignore_stop_failures
            ),
            on_line=sink.line,
            on_install_completed=install_completed,
            hook_session_file=self.ctx.layout.hook_session(self.section.name),
            activation=activation,
        )
        result = LifecycleResult()
        waiting = True
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                # Whatever section (or process) installs into an overlapping folder waits for this one:
                # the wait counts against this deployment's deployment_timeout.
                destinations = self._destinations(release, previous)
                # A holder still there just before the deadline is named (LockBusy) rather than timed out.
                wait_s = max(0.0, deadline - asyncio.get_running_loop().time() - _NAME_HOLDER_MARGIN_S)
                async with self.ctx.locks.hold_destinations(
                    self.section.name, destinations, wait=True, timeout_s=wait_s
                ):
                    waiting = False
                    await lifecycle.run(result)
        except Exception as e:
            result.failed_event = result.current_event or "BeforeInstall"
            if scope.expired():
                timeout = self.section.deployment_timeout_s
                during = "waiting for the destination locks" if waiting else f"during {result.failed_event}"
                result.error = f"deployment_timeout of {timeout:g}s reached {during}; hooks killed"
            else:
                result.error = describe(e)
            logger.error("%s failed: %s", result.failed_event, result.error)
        return result

    def _activation(self, release_id: str, *, fresh: bool) -> ReleaseActivation | None:
        """With ``activation = symlink``, how Install activates the release ``release_id`` (SPEC §12)."""
        if self.section.activation != "symlink" or self.section.destination is None:
            return None
        record_of = functools.partial(self.ctx.layout.activation_record, self.section.name)
        return ReleaseActivation(self.section.destination, release_id, record_of, fresh=fresh)

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
                self.ctx.state.finish,
                dep_id,
                status,
                failed_event=failed_event,
                # Escaped: a message may quote an archive entry name that is not valid UTF-8.
                error=None if error is None else printable(error, keep_newlines=True),
                output_tail=sink.text(),
                transient=transient,
            )
        )
        if self.ctx.observer is not None:
            self.ctx.observer.deployment_finished(done)
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
            self.ctx.state.start,
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
        if self.ctx.observer is not None:
            self.ctx.observer.deployment_started(self.section.name, dep_id)

    # ------------------------------------------------------------------ rollback from disk
    async def _auto_rollback(self, failed: Deployment, stop_from: Release | None) -> Deployment | None:
        good = await asyncio.to_thread(self.ctx.state.current, self.section.name)
        if good is None:
            logger.warning("no successful release to roll back to")
            return None
        logger.warning("rolling back %s: redeploying the release of %s", failed.id, good.restores or good.id)
        return await self.rollback_to(good, rollback_of=failed.id, stop_from=stop_from)

    async def rollback_to(
        self, good: Deployment, *, rollback_of: str | None, stop_from: Release | None
    ) -> Deployment | None:
        """Redeploy ``good``'s release from disk as a new deployment (the caller holds the section lock).
        None when that release cannot be loaded any more."""
        target = await self.releases.load(good)
        if target is None:
            return None
        dep_id = await asyncio.to_thread(self.ctx.state.new_deployment_id)
        with log_context(deployment_id=dep_id):
            await self._start(dep_id, good, rollback_of=rollback_of, restores=good.restores or good.id)
            if good.signed_by is not None:  # verified when downloaded; a release on disk is not re-checked
                await asyncio.to_thread(record_signed_by, self.ctx.state, dep_id, good.signed_by)
            sink = OutputSink(logger, self._log_path(dep_id))
            try:
                await asyncio.to_thread(sink.open)
                release = Release(dep_id, target.bundle_root, target.spec)
                # What is stopped is the broken release: its failing ApplicationStop must not block recovery.
                env = self._env(dep_id, good)
                result = await self._lifecycle(
                    release,
                    stop_from,
                    env,
                    sink,
                    deadline=self._deadline(),
                    ignore_stop_failures=True,
                    activation=self._activation(target.deployment_id, fresh=False),
                )
                status = "succeeded" if result.ok else "failed"
                logger.log(logging.INFO if result.ok else logging.ERROR, "rollback %s %s", dep_id, status)
                return await self._finish(
                    dep_id, status, sink, failed_event=result.failed_event, error=result.error
                )
            except asyncio.CancelledError:
                error = "cancelled during rollback"
                await asyncio.shield(self._finish(dep_id, "interrupted", sink, error=error))
                raise
            finally:
                sink.close()
