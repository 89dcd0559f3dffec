"""The CodeDeploy in-place lifecycle, in order, stopping at the first failure.

ApplicationStop (from the release whose Install last completed) → BeforeInstall → Install →
AfterInstall → ApplicationStart → ValidateService. The pipeline takes values (releases, environment,
paths) and returns a :class:`LifecycleResult`; it never reads config or state. Cancellation (the
deployment timeout, a shutdown) travels down into :func:`hooks.run_hook`, which kills the hook's
process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from s3deploy.appspec import TRAFFIC_EVENTS, AppSpec, HookScript
from s3deploy.errors import HookFailed, S3DeployError
from s3deploy.install.activated import ReleaseActivation, install_copy
from s3deploy.lifecycle.hooks import run_hook

logger = logging.getLogger(__name__)

#: Events after Install: a failure here (or in Install) leaves new files on disk, so it triggers rollback.
POST_INSTALL_EVENTS = ("Install", "AfterInstall", "ApplicationStart", "ValidateService")
#: Events that run from the previous release, before anything of the new one runs.
STOP_EVENTS = ("BeforeBlockTraffic", "ApplicationStop", "AfterBlockTraffic")
#: Events that run from the new release, after ApplicationStop, in CodeDeploy's order.
START_EVENTS = (
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "BeforeAllowTraffic",
    "AfterAllowTraffic",
    "ValidateService",
)


@dataclass(frozen=True)
class Release:
    """An unpacked bundle on disk and its parsed appspec."""

    deployment_id: str
    bundle_root: Path
    spec: AppSpec


@dataclass
class LifecycleResult:
    """What happened: ``failed_event`` is None on success."""

    failed_event: str | None = None
    error: str | None = None
    current_event: str | None = None
    install_completed: bool = False

    @property
    def ok(self) -> bool:
        return self.failed_event is None


@dataclass(frozen=True)
class Lifecycle:
    """Everything one run of the lifecycle needs, as values."""

    section: str
    release: Release
    previous: Release | None
    env: Mapping[str, str]
    default_destination: Path | None
    cleanup_list: Path
    ignore_application_stop_failures: bool
    on_line: Callable[[str, str], None]
    #: Awaited (shielded) the moment Install has completed, before AfterInstall starts: if the process dies
    #: in a later hook, the caller still knows whose files are on disk.
    on_install_completed: Callable[[], Awaitable[None]] | None = None
    #: Where a running hook's session is recorded, so that a restarted agent can stop it (sessions.py).
    hook_session_file: Path | None = None
    #: ``activation = symlink``: Install stages a release beside the destination and switches to it; hooks
    #: see S3DEPLOY_RELEASE_DIR and S3DEPLOY_PREVIOUS_RELEASE_DIR (None: ``activation = copy``).
    activation: ReleaseActivation | None = None

    async def run(self, result: LifecycleResult | None = None) -> LifecycleResult:
        """Run every event in order; return at the first failure (with the event's name).

        ``result`` is filled in as the run goes, so a caller that times the run out can still tell
        which event was running (``current_event``).
        """
        result = result if result is not None else LifecycleResult()
        if self.activation is not None:
            await asyncio.to_thread(self.activation.begin)
        if self.previous is None:
            logger.info("ApplicationStop: skipped, first deployment of this section")
        else:
            for event in STOP_EVENTS:
                try:
                    await self._run_event(event, self.previous, result)
                except S3DeployError as e:
                    if event == "ApplicationStop" and self.ignore_application_stop_failures:
                        logger.warning("%s failed, ignored (ignore_application_stop_failures): %s", event, e)
                        continue
                    return self._failed(result, event, e)
        for event in START_EVENTS:
            try:
                if event == "Install":
                    result.current_event = event
                    await self._install(result)
                else:
                    await self._run_event(event, self.release, result)
            except S3DeployError as e:
                return self._failed(result, event, e)
        return result

    def _failed(self, result: LifecycleResult, event: str, error: S3DeployError) -> LifecycleResult:
        result.failed_event = event
        result.error = str(error)
        logger.error("%s failed: %s", event, error)
        return result

    async def _install(self, result: LifecycleResult) -> None:
        """Run Install in a thread. Cancelled (deployment_timeout, shutdown), it tells the thread to stop
        and waits for it before the cancellation goes on: the destination locks stay held and no rollback
        starts while a file is still being copied."""
        started = time.monotonic()
        cancel = threading.Event()
        if self.activation is not None:
            installing = functools.partial(
                self.activation.install,
                installed_before=self.previous.deployment_id if self.previous else None,
            )
        else:
            installing = functools.partial(install_copy, default_destination=self.default_destination)
        work = asyncio.ensure_future(
            asyncio.to_thread(
                installing,
                self.release.bundle_root,
                self.release.spec,
                cleanup_list=self.cleanup_list,
                cancel=cancel,
            )
        )
        try:
            report = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            logger.warning("Install: cancelled, waiting for the copy to stop")
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([work])
            logger.warning("Install: stopped (%s)", work.exception() or "it had finished")
            raise
        result.install_completed = True
        logger.info("Install: %d files in %.2fs", len(report.files), time.monotonic() - started)
        if self.on_install_completed is not None:
            await asyncio.shield(self.on_install_completed())

    async def _run_event(self, event: str, release: Release, result: LifecycleResult) -> None:
        scripts = release.spec.hooks.get(event, ())
        if not scripts:
            return
        if event in TRAFFIC_EVENTS:
            logger.info("%s: skipped, s3deploy does not manage load balancer traffic", event)
            return
        result.current_event = event
        env = dict(self.env)
        env["LIFECYCLE_EVENT"] = event
        env["S3DEPLOY_BUNDLE_DIR"] = str(release.bundle_root)
        if self.activation is not None:
            env.update(self.activation.hook_env())
        for script in scripts:
            await self._run_script(event, release, script, env)

    async def _run_script(
        self, event: str, release: Release, script: HookScript, env: dict[str, str]
    ) -> None:
        path = resolve_script(release.bundle_root, script.location, event)
        started = time.monotonic()
        await run_hook(
            path,
            event=event,
            cwd=release.bundle_root,
            env=env,
            timeout_s=script.timeout_s,
            runas=script.runas,
            on_line=lambda line: self.on_line(event, line),
            session_file=self.hook_session_file,
        )
        logger.info("%s: %s succeeded in %.2fs", event, script.location, time.monotonic() - started)


def resolve_script(bundle_root: Path, location: str, event: str) -> Path:
    """The absolute path of a hook script, refusing one that leaves the bundle (also through a symlink)."""
    root = bundle_root.resolve()
    path = (root / location.lstrip("/")).resolve()
    if not path.is_relative_to(root):
        raise HookFailed(
            f"{event}: script location {location!r} points outside the bundle", event=event, script=location
        )
    return path
