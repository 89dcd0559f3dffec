"""The rows of the human `status` and `history` tables (the JSON forms are the SPEC's S and D objects)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s3deploy.cli.output import iso_ts, ts

if TYPE_CHECKING:
    from s3deploy.state.store import Deployment

STATUS_COLUMNS = ("section", "state", "suspended", "installed", "since", "last", "result", "error")
HISTORY_COLUMNS = ("id", "status", "started", "took", "revision", "event", "note")


def status_row(s: dict[str, Any]) -> list[Any]:
    """One line of the human `status` table, from an S object."""
    cur, last = s["current"] or {}, s["last"] or {}
    error = last.get("error") if last.get("status") != "succeeded" else None
    fleet = s.get("fleet") or {}
    if fleet.get("stopped"):
        error = f"rollout stopped: {fleet['stopped']}"
    if fleet.get("refused"):
        error = f"fleet: {fleet['refused']}"
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
    if d.signed_by is not None:
        signed = f"signed by {d.signed_by.principal} ({d.signed_by.fingerprint}, serial {d.signed_by.serial})"
        note = f"{signed}; {note}" if note else signed
    took = f"{(d.finished_at - d.started_at).total_seconds():.1f}s" if d.finished_at else None
    return [d.id, d.status, ts(d.started_at), took, d.version_id or d.etag, d.failed_event, note]
