"""The state's values: a deployment row (the SPEC's ``D``) and what is remembered about a section.

Plain frozen dataclasses built from SQLite rows; timestamps are timezone-aware UTC and stored as ISO 8601
text with milliseconds.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

STATUSES = ("running", "succeeded", "failed", "interrupted")
FINAL_STATUSES = frozenset({"succeeded", "failed", "interrupted"})
INTERRUPTED_ERROR = "the agent stopped while this deployment was running"
OUTPUT_TAIL_MAX_BYTES = 8192
_ID_ALPHABET = string.ascii_uppercase + string.digits


def random_deployment_id() -> str:
    """A CodeDeploy-style id: ``d-`` and 9 of A-Z0-9 (the store makes sure it is unused)."""
    return "d-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    """``value`` as stored and shown: ISO 8601 in UTC, milliseconds."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def tail_of(text: str) -> str:
    """The last OUTPUT_TAIL_MAX_BYTES of ``text`` (UTF-8), never splitting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= OUTPUT_TAIL_MAX_BYTES:
        return text
    return raw[-OUTPUT_TAIL_MAX_BYTES:].decode("utf-8", "ignore")


@dataclass(frozen=True)
class SignedBy:
    """Who signed a verified revision: the allowed_signers principal(s), the key's ``SHA256:``
    fingerprint (as ``ssh-keygen -l`` prints it) and the manifest's serial."""

    principal: str
    fingerprint: str
    serial: int

    def to_json(self) -> dict[str, Any]:
        return {"principal": self.principal, "fingerprint": self.fingerprint, "serial": self.serial}

    def to_text(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_text(cls, text: str | None) -> SignedBy | None:
        if text is None:
            return None
        value = json.loads(text)
        return cls(str(value["principal"]), str(value["fingerprint"]), int(value["serial"]))


@dataclass(frozen=True)
class Deployment:
    """One deployment attempt of a section (the SPEC's ``D`` object)."""

    id: str
    section: str
    bucket: str
    key: str
    etag: str | None
    version_id: str | None
    identity: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    failed_event: str | None
    error: str | None
    rollback_of: str | None
    restores: str | None
    release_dir: str | None
    log_path: str | None
    output_tail: str
    forced: bool
    #: When Install finished (its files are on disk); None when the deployment never got that far.
    install_completed_at: datetime | None = None
    #: Failed in DownloadBundle on an S3 error that may heal: the watcher tries the revision again.
    transient: bool = False
    #: Who signed the release (SPEC §11): set when its download verified, copied by a rollback.
    signed_by: SignedBy | None = None

    def to_json(self) -> dict[str, Any]:
        """The SPEC §4 keys in order, then a few extras operators find useful."""
        return {
            "id": self.id,
            "etag": self.etag,
            "version_id": self.version_id,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at) if self.finished_at is not None else None,
            "failed_event": self.failed_event,
            "error": self.error,
            "rollback_of": self.rollback_of,
            "restores": self.restores,
            "signed_by": self.signed_by.to_json() if self.signed_by is not None else None,
            "section": self.section,
            "identity": self.identity,
            "release_dir": self.release_dir,
            "log_path": self.log_path,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Deployment:
        started_at = parse_ts(row["started_at"])
        assert started_at is not None  # NOT NULL in the schema
        return cls(
            id=row["id"], section=row["section"], bucket=row["bucket"], key=row["key"], etag=row["etag"],
            version_id=row["version_id"], identity=row["identity"], status=row["status"],
            started_at=started_at, finished_at=parse_ts(row["finished_at"]),
            failed_event=row["failed_event"], error=row["error"], rollback_of=row["rollback_of"],
            restores=row["restores"], release_dir=row["release_dir"], log_path=row["log_path"],
            output_tail=row["output_tail"], forced=bool(row["forced"]),
            install_completed_at=parse_ts(row["install_completed_at"]), transient=bool(row["transient"]),
            signed_by=SignedBy.from_text(row["signed_by"]),
        )  # fmt: skip


@dataclass(frozen=True)
class SectionRecord:
    """What the agent remembers about a section besides its deployments."""

    name: str
    suspended: bool = False
    baseline_identity: str | None = None
    baseline_at: datetime | None = None
    last_seen_identity: str | None = None
    last_poll_at: datetime | None = None
    last_error: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> SectionRecord:
        return cls(
            name=row["name"], suspended=bool(row["suspended"]), baseline_identity=row["baseline_identity"],
            baseline_at=parse_ts(row["baseline_at"]), last_seen_identity=row["last_seen_identity"],
            last_poll_at=parse_ts(row["last_poll_at"]), last_error=row["last_error"],
        )  # fmt: skip
