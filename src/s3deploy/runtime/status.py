"""What ``status`` reports of a section: the SPEC's S object, read from the state and the disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from s3deploy.config import Section
from s3deploy.state.fleet import FleetRecords
from s3deploy.state.layout import StateLayout
from s3deploy.state.signatures import accepted_serial
from s3deploy.state.store import StateStore


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks counted as themselves)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def section_status(store: StateStore, section: Section, layout: StateLayout) -> dict[str, Any]:
    """The SPEC's S object for one section (plus a few extra keys after the required ones). Blocking."""
    current = store.current(section.name)
    last = store.last_attempt(section.name)
    record = store.get_section(section.name)
    releases = layout.section_releases(section.name)
    state = store.section_state(section.name)
    fleet = None
    if section.max_concurrent is not None:
        row = FleetRecords(store).get(section.name)
        attempt = store.last_revision_attempt(section.name)
        deployed = attempt is not None and attempt.identity == row.skipped_identity
        # Stopped: the revision S3 serves was skipped, and this host has not deployed it since (forced).
        stopped = row.stopped_for(record.last_seen_identity) and not (
            deployed and attempt is not None and attempt.status != "interrupted"
        )
        if stopped and state != "deploying":
            state = "stopped"  # SPEC §10: the rollout of the revision S3 serves was stopped
        fleet = {
            "max_concurrent": str(section.max_concurrent),
            "max_failures": section.max_failures,
            "stopped": row.skipped_reason if stopped else None,
            "refused": row.refused,
        }
    return {
        "name": section.name,
        "bucket": section.s3_bucket,
        "key": section.target_file_key,
        "state": state,
        "current": current.to_json() if current else None,
        "last": last.to_json() if last else None,
        "suspended": record.suspended,
        "last_poll_at": record.last_poll_at.isoformat() if record.last_poll_at else None,
        "last_poll_error": record.last_error,
        "releases_bytes": dir_bytes(releases) if releases.is_dir() else 0,
        "signing": _signing(store, section),
        "fleet": fleet,
    }


def _signing(store: StateStore, section: Section) -> dict[str, Any] | None:
    """Signed bundles (SPEC §11): the signers file, and the serial the section accepted (the ratchet)."""
    if section.trusted_signers is None:
        return None
    accepted = accepted_serial(store, section.name)
    return {
        "trusted_signers": str(section.trusted_signers),
        "accepted": accepted.to_json() if accepted is not None else None,
    }
