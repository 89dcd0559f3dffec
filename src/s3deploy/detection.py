"""Detecting a new revision (SPEC §5): whether what S3 serves now must be deployed.

Pure: the watcher passes what it knows (the revision seen, the newest non-rollback attempt, the legacy
baseline) and gets a decision with its reason, which it logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from s3deploy.config import Section
from s3deploy.source.s3 import Revision
from s3deploy.state.store import Deployment


@dataclass(frozen=True)
class Decision:
    deploy: bool
    reason: str
    baseline: bool = False
    #: A retry of a download that failed on an S3 error (it backs off, see Watcher.poll_once).
    retry: bool = False


def decide(
    rev: Revision, last: Deployment | None, baseline_identity: str | None, section: Section
) -> Decision:
    """Whether ``rev`` must be deployed, given the newest non-rollback attempt and the recorded baseline."""
    if last is None:
        if baseline_identity == rev.identity:
            return Decision(False, "unchanged since the legacy last_fetch_time baseline")
        if (
            baseline_identity is None
            and section.last_fetch_time
            and rev.last_modified <= section.last_fetch_time
        ):
            return Decision(
                False, "not newer than last_fetch_time: recorded as already deployed", baseline=True
            )
        return Decision(True, "no deployment recorded for this section yet")
    if last.identity != rev.identity:
        return Decision(True, "the object changed")
    if last.status == "interrupted":
        return Decision(True, "the last deployment of this revision was interrupted")
    if last.status == "failed" and last.failed_event == "DownloadBundle" and last.transient:
        reason = f"the download in {last.id} failed on a transient S3 error: retrying"
        return Decision(True, reason, retry=True)
    if last.status == "failed":
        return Decision(
            False, f"revision failed in {last.id}; not retried until the object changes (or --force)"
        )
    if last.status == "running":
        # Either another process deploys it now (we will wait for its lock) or it died mid-way
        # (under the lock the row is marked interrupted). The check under the lock tells which.
        return Decision(True, f"deployment {last.id} of this revision is marked running")
    return Decision(False, "unchanged")
