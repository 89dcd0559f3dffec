"""A section's releases on disk: which one is installed, loading one, choosing one to roll back to, and
pruning the old ones (folders beyond keep_revisions, records and logs beyond keep_history)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from s3deploy.appspec import load_appspec
from s3deploy.errors import S3DeployError
from s3deploy.install import activation
from s3deploy.install.activation import release_root_for
from s3deploy.install.release_modes import check_release
from s3deploy.lifecycle.pipeline import POST_INSTALL_EVENTS, Release
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import Deployment, StateStore

logger = logging.getLogger(__name__)

#: How far back the installed release is looked for.
_INSTALLED_LOOKBACK = 50


def install_completed(dep: Deployment) -> bool:
    """Whether ``dep``'s Install finished (its files are, or were, on disk)."""
    if dep.status == "succeeded" or dep.install_completed_at is not None:
        return True
    # Rows recorded before install_completed_at existed: a failure after Install implies it.
    return dep.status == "failed" and dep.failed_event in POST_INSTALL_EVENTS[1:]


class Releases:
    """The release folders of one section and what the state says about them."""

    def __init__(
        self, section: str, layout: StateLayout, state: StateStore, *, destination: Path | None = None
    ) -> None:
        self.section = section
        self.layout = layout
        self.state = state
        #: The section's destination: its release folders beside it (activation = symlink) are pruned
        #: with the state's.
        self.destination = destination

    def bundle_root(self, dep: Deployment) -> Path:
        """Where ``dep``'s bundle is unpacked (a rollback reuses the release it restores)."""
        return self.layout.release_dir(self.section, dep.restores or dep.id) / "bundle"

    async def installed(self) -> Release | None:
        """The release whose Install last completed (its ApplicationStop knows how to stop what runs)."""
        history = await asyncio.to_thread(self.state.history, self.section, _INSTALLED_LOOKBACK)
        for dep in history:
            if dep.status == "running" or not install_completed(dep):
                continue
            return await self.load(dep)
        return None

    async def load(self, dep: Deployment) -> Release | None:
        """``dep``'s release from disk with its appspec, or None (logged) when it is gone or unusable."""
        root = self.bundle_root(dep)
        if not await asyncio.to_thread(root.is_dir):
            logger.warning("release of %s is no longer on disk (%s)", dep.id, root)
            return None
        try:
            await asyncio.to_thread(check_release, root)  # its hooks ran as root in it: still closed?
            spec = await asyncio.to_thread(load_appspec, root)
        except S3DeployError as e:
            logger.warning("release of %s cannot be used: %s", dep.id, e)
            return None
        return Release(dep.restores or dep.id, root, spec)

    async def rollback_target(self, to: str | None) -> Deployment:
        """The deployment whose release a manual rollback reinstalls: ``to``, else the newest succeeded
        one installing another release than the current one. S3DeployError says why there is none."""
        name = self.section
        current = await asyncio.to_thread(self.state.current, name)
        history = await asyncio.to_thread(self.state.history, name, None)
        good = _rollback_target(name, current, history, to)
        if not await asyncio.to_thread(self.bundle_root(good).is_dir):
            raise S3DeployError(
                f"[{name}] the release of {good.restores or good.id} is no longer on disk "
                f"(pruned by keep_revisions); deploy it from S3 instead"
            )
        return good

    async def prune(self, keep_revisions: int, keep_history: int) -> None:
        """Delete release folders beyond ``keep_revisions``, and records and logs beyond ``keep_history``."""
        state = self.state
        doomed = await asyncio.to_thread(state.releases_to_prune, self.section, keep_revisions)
        for dep in doomed:
            if dep.release_dir:
                await asyncio.to_thread(shutil.rmtree, dep.release_dir, True)
            await asyncio.to_thread(state.clear_release_dir, dep.id)
            logger.debug("pruned release %s", dep.id)
        trimmed = await asyncio.to_thread(state.trim_history, self.section, keep_history)
        if trimmed:
            await asyncio.to_thread(_delete_logs, self.layout.logs_root, trimmed)
            logger.info("history: %d old deployment record(s) deleted (keep_history)", len(trimmed))
        if self.destination is not None:
            await asyncio.to_thread(self._prune_activated, self.destination)

    def _prune_activated(self, destination: Path) -> None:
        """Delete the release folders beside ``destination`` whose release the state no longer keeps;
        never the live one (activation.prune), nor the last successful one (the state keeps it)."""
        try:
            if not os.path.lexists(release_root_for(destination)):
                return  # never activated: nothing to open (copy sections pay nothing)
        except S3DeployError:
            return  # destination = / (copy only): it has no releases folder
        history = self.state.history(self.section, None)
        keep = {d.id for d in history if d.release_dir}
        current = next((d for d in history if d.status == "succeeded"), None)
        if current is not None:
            keep.add(current.restores or current.id)
        activation.prune(destination, keep)


def _rollback_target(
    section: str, current: Deployment | None, history: list[Deployment], to: str | None
) -> Deployment:
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


def _delete_logs(logs: Path, trimmed: list[tuple[str, str | None]]) -> None:
    """Delete the log files of deleted deployment records (only ever inside the state's logs folder)."""
    for _, log_path in trimmed:
        if log_path and Path(log_path).is_relative_to(logs):
            Path(log_path).unlink(missing_ok=True)
