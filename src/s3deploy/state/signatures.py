"""Signed bundles in the state (SPEC §11): each section's serial ratchet, and who signed a deployment.

The ratchet (table ``signing_ratchet``) is the highest manifest serial a section accepted, with the
sha256 it was accepted for: a lower serial is refused, an equal one only for the same content. It moves
only up, and only when a deployment's download verified (:func:`accept`). :func:`reset_serial` is the
one way down (``s3deploy signing reset-serial``), for a host that accepted a serial far above the
honest ones from a leaked key (docs/signing.md). ``deployments.signed_by`` holds a :class:`SignedBy`.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from s3deploy.errors import S3DeployError
from s3deploy.state import model
from s3deploy.state.model import SignedBy
from s3deploy.state.store import StateStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceptedSerial:
    """The highest serial a section accepted. ``sha256`` is "" after a reset to a given serial: an
    equal serial is then refused whatever its content (only higher ones pass)."""

    section: str
    serial: int
    sha256: str
    deployment_id: str | None
    accepted_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "sha256": self.sha256 or None,
            "deployment_id": self.deployment_id,
            "accepted_at": model.iso(self.accepted_at),
        }


def _read(conn: sqlite3.Connection, section: str) -> AcceptedSerial | None:
    row = conn.execute("SELECT * FROM signing_ratchet WHERE section = ?", (section,)).fetchone()
    if row is None:
        return None
    accepted_at = model.parse_ts(row["accepted_at"])
    assert accepted_at is not None  # NOT NULL in the schema
    return AcceptedSerial(section, int(row["serial"]), row["sha256"], row["deployment_id"], accepted_at)


def accepted_serial(store: StateStore, section: str) -> AcceptedSerial | None:
    """The section's ratchet; None when it never accepted a signed revision (or was reset)."""
    with store.transaction(write=False) as conn:
        return _read(conn, section)


def accept(store: StateStore, section: str, deployment_id: str, signed_by: SignedBy, sha256: str) -> None:
    """A deployment's download verified: record who signed it, and move the section's ratchet up to
    its serial (never down: a serial at or below the recorded one leaves it as it is). One transaction."""
    with store.transaction(write=True) as conn:
        updated = conn.execute(
            "UPDATE deployments SET signed_by = ? WHERE id = ? AND status = 'running'",
            (signed_by.to_text(), deployment_id),
        )
        if updated.rowcount == 0:
            raise S3DeployError(
                f"deployment {deployment_id} is not running in the state database {store.path}"
            )
        conn.execute(
            "INSERT INTO signing_ratchet (section, serial, sha256, deployment_id, accepted_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (section) DO UPDATE SET serial = excluded.serial,"
            " sha256 = excluded.sha256, deployment_id = excluded.deployment_id,"
            " accepted_at = excluded.accepted_at WHERE excluded.serial > signing_ratchet.serial",
            (section, signed_by.serial, sha256, deployment_id, model.iso(model.utcnow())),
        )


def record_signed_by(store: StateStore, deployment_id: str, signed_by: SignedBy) -> None:
    """A rollback reinstalls a release verified when it was downloaded: it shows who signed it."""
    with store.transaction(write=True) as conn:
        conn.execute(
            "UPDATE deployments SET signed_by = ? WHERE id = ?", (signed_by.to_text(), deployment_id)
        )


def reset_serial(store: StateStore, section: str, to: int | None = None) -> AcceptedSerial | None:
    """Forget the section's ratchet (``to`` None: the next valid signature is accepted whatever its
    serial, as on a new host), or set it to ``to`` (only higher serials pass). Returns what it was."""
    with store.transaction(write=True) as conn:
        before = _read(conn, section)
        if to is None:
            conn.execute("DELETE FROM signing_ratchet WHERE section = ?", (section,))
        else:
            conn.execute(
                "INSERT INTO signing_ratchet (section, serial, sha256, deployment_id, accepted_at)"
                " VALUES (?, ?, '', NULL, ?) ON CONFLICT (section) DO UPDATE SET serial = excluded.serial,"
                " sha256 = '', deployment_id = NULL, accepted_at = excluded.accepted_at",
                (section, to, model.iso(model.utcnow())),
            )
    logger.warning(
        "[%s] signing serial ratchet reset from %s to %s",
        section,
        before.serial if before else "none",
        "none" if to is None else to,
    )
    return before
