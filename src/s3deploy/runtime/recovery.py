"""Recovery of deployments left ``running`` by a process that died (SPEC §8)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence

from s3deploy.lifecycle.sessions import kill_leftover_hooks
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import Deployment, StateStore

logger = logging.getLogger(__name__)


def recover_interrupted(state: StateStore, sections: Sequence[str] | None = None) -> list[Deployment]:
    """Mark deployments left running by a dead process ``interrupted`` and remove their partial releases.

    Only safe under the locks that prove nobody runs them (the instance lock, or the section flocks).
    A release folder whose Install never completed (a partial download or unpack, or a bundle never
    installed) is deleted: nothing refers to it and the redeploy downloads the revision again.
    Blocking (SQLite, rmtree): async code calls it through ``asyncio.to_thread``.
    """
    # Hooks of a dead agent run on in their own sessions: stop them before anything is redeployed.
    kill_leftover_hooks(StateLayout(state.path.parent), sections)
    recovered = state.recover_interrupted(sections)
    for dep in recovered:
        where = {"section": dep.section, "deployment_id": dep.id}
        logger.warning(
            "deployment %s was running when its process died: marked interrupted", dep.id, extra=where
        )
        if dep.release_dir and dep.install_completed_at is None:
            shutil.rmtree(dep.release_dir, ignore_errors=True)
            state.clear_release_dir(dep.id)
            logger.info("removed the partial release folder of %s", dep.id, extra=where)
    return recovered
