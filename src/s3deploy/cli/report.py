"""What `status` and `history` show: the SPEC's S objects and the rows of the human tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from s3deploy.cli.output import iso_ts, ts
from s3deploy.config import Section
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import Deployment, StateStore

STATUS_COLUMNS = ("section", "state", "suspended", "installed", "since", "last", "result", "error")
HISTORY_COLUMNS = ("id", "status", "started", "took", "revision", "event", "note")


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


def section_status(store: StateStore, section: Section, state_dir: Path) -> dict[str, Any]:
    """The SPEC's S object for one section (plus a few extra keys after the required ones)."""
    current = store.current(section.name)
    last = store.last_attempt(section.name)
    record = store.get_section(section.name)
    releases = StateLayout(state_dir).section_releases(section.name)
    return {
        "name": section.name,
        "bucket": section.s3_bucket,
        "key": section.target_file_key,
        "state": store.section_state(section.name),
        "current": current.to_json() if current else None,
        "last": last.to_json() if last else None,
        "suspended": record.suspended,
        "last_poll_at": record.last_poll_at.isoformat() if record.last_poll_at else None,
        "last_poll_error": record.last_error,
        "releases_bytes": dir_bytes(releases) if releases.is_dir() else 0,
    }


def status_row(s: dict[str, Any]) -> list[Any]:
    """One line of the human `status` table, from an S object."""
    cur, last = s["current"] or {}, s["last"] or {}
    error = last.get("error") if last.get("status") != "succeeded" else None
    if s["last_poll_error"]:
        error = f"S3: {s['last_poll_error']}" + (f"; {error}" if error else "")
    return [
        s["name"],
        s["state"],
        "yes" if s["suspended"] else "no",
        cur.get("restores") or cur.get("id"),
        iso_ts(cur.get("finished_at")),
        last.get("id"),
        last.get("status"),
        error,
    ]


def history_row(d: Deployment) -> list[Any]:
    """One line of the human `history` table."""
    note = d.error or ""
    if d.restores:
        note = f"rollback of {d.rollback_of or '-'}, restores {d.restores}" + (f": {note}" if note else "")
    elif d.forced:
        note = "forced" + (f": {note}" if note else "")
    took = f"{(d.finished_at - d.started_at).total_seconds():.1f}s" if d.finished_at else None
    return [d.id, d.status, ts(d.started_at), took, d.version_id or d.etag, d.failed_event, note]
