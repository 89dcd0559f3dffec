"""What a coordinated section (SPEC §10) remembers on this host besides its deployments.

One row per section in ``fleet_sections``:

- the revision it skipped because its rollout was stopped (``status`` then shows the section
  ``stopped`` while that revision is the one S3 serves), and why;
- why its store was refused (it does not honour conditional writes), shown by ``status``;
- the slot it holds right now (revision identity, deployment id, and the process holding it: pid and
  start time, so that a pid reused by another process is not taken for the holder): a process that
  died holding one frees it first when the section's watcher starts again.

Synchronous like the rest of the state; async code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from s3deploy.state.model import iso, parse_ts, utcnow
from s3deploy.state.store import StateStore


@dataclass(frozen=True)
class FleetRecord:
    """One coordinated section's row (defaults when there is none)."""

    name: str
    skipped_identity: str | None = None
    skipped_reason: str | None = None
    skipped_at: datetime | None = None
    refused: str | None = None
    refused_at: datetime | None = None
    slot_identity: str | None = None
    slot_deployment_id: str | None = None
    slot_holder: str | None = None  # "<pid>:<start ticks>" of the process holding the slot

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> FleetRecord:
        return cls(
            name=row["name"], skipped_identity=row["skipped_identity"], skipped_reason=row["skipped_reason"],
            skipped_at=parse_ts(row["skipped_at"]), refused=row["refused"],
            refused_at=parse_ts(row["refused_at"]), slot_identity=row["slot_identity"],
            slot_deployment_id=row["slot_deployment_id"], slot_holder=row["slot_holder"],
        )  # fmt: skip

    def stopped_for(self, identity: str | None) -> bool:
        """True when ``identity`` (the revision S3 serves) is the one skipped: the section is stopped."""
        return identity is not None and self.skipped_identity == identity


class FleetRecords:
    """The ``fleet_sections`` table of one state database."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def get(self, section: str) -> FleetRecord:
        with self.store._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM fleet_sections WHERE name = ?", (section,)).fetchone()
        return FleetRecord.from_row(row) if row is not None else FleetRecord(section)

    def _set(self, section: str, *, bookkeeping: bool, **values: str | None) -> None:
        columns = ", ".join(values)
        updates = ", ".join(f"{column} = excluded.{column}" for column in values)
        with self.store._tx(write=True, bookkeeping=bookkeeping) as conn:
            conn.execute(
                f"INSERT INTO fleet_sections (name, {columns}) VALUES (?{', ?' * len(values)})"
                f" ON CONFLICT (name) DO UPDATE SET {updates}",
                (section, *values.values()),
            )

    def record_skip(self, section: str, identity: str, reason: str) -> None:
        """``identity`` was not deployed: its rollout is stopped. A decision input (not bookkeeping)."""
        self._set(
            section, bookkeeping=False, skipped_identity=identity, skipped_reason=reason, skipped_at=_now()
        )

    def clear_skip(self, section: str) -> None:
        """The rollout goes on again (resumed, forced, or this host took a slot)."""
        self._set(section, bookkeeping=False, skipped_identity=None, skipped_reason=None, skipped_at=None)

    def set_refused(self, section: str, reason: str | None) -> None:
        """Why the section's store is refused, or None once it passes the check."""
        self._set(section, bookkeeping=True, refused=reason, refused_at=_now() if reason else None)

    def hold_slot(self, section: str, identity: str, deployment_id: str, holder: str) -> None:
        """Process ``holder`` of this host holds a slot of ``identity``'s rollout for ``deployment_id``."""
        self._set(
            section, bookkeeping=True, slot_identity=identity, slot_deployment_id=deployment_id,
            slot_holder=holder,
        )  # fmt: skip

    def release_slot(self, section: str) -> None:
        self._set(section, bookkeeping=True, slot_identity=None, slot_deployment_id=None, slot_holder=None)


def _now() -> str:
    return iso(utcnow())
