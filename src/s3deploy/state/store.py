"""SQLite state: every deployment of every section, per-section settings, crash recovery.

The daemon and one-shot commands use the same database from different processes at the same time, so it
runs in WAL mode (readers never wait for the writer) and every call is one short transaction. The API is
synchronous; async code calls it through ``asyncio.to_thread``. The row values live in ``model``, the
schema in ``schema``, what pruning may delete in ``retention``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from s3deploy.errors import S3DeployError
from s3deploy.state import model, retention
from s3deploy.state.layout import StateLayout
from s3deploy.state.model import Deployment, SectionRecord
from s3deploy.state.schema import connect

__all__ = ["Deployment", "SectionRecord", "StateStore"]

logger = logging.getLogger(__name__)

# record_poll() refreshes an unchanged section's last_poll_at at most this often: cheap, yet fresh enough.
POLL_TOUCH_INTERVAL_S = 300.0

_NEWEST = "SELECT * FROM deployments WHERE section = ? {where} ORDER BY seq DESC LIMIT 1"
_NOT_ROLLBACK = "AND rollback_of IS NULL AND restores IS NULL"


class StateStore:
    """The state database. Thread-safe: one connection guarded by a lock; each call is one transaction."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = model.utcnow) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0  # writes of this process that can change a deployment decision
        self._conn = connect(self.path)

    @classmethod
    def open(cls, state_dir: Path) -> StateStore:
        """The store of the state directory ``state_dir``, made or tightened to the state directory
        model first (StateLayout.prepare). What every process that runs deployments opens."""
        layout = StateLayout(Path(state_dir))
        layout.prepare()
        return cls(layout.database)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self, *, write: bool, bookkeeping: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                if write and not bookkeeping:
                    self._writes += 1
            except sqlite3.Error as e:
                raise S3DeployError(f"state database {self.path}: {e}") from e

    def transaction(self, *, write: bool) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction, for the queries other state modules keep (state/signatures.py)."""
        return self._tx(write=write)

    def data_version(self) -> int:
        """Moves when another process has committed a change (SQLite's PRAGMA data_version)."""
        with self._lock:
            try:
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as e:
                raise S3DeployError(f"state database {self.path}: {e}") from e

    @property
    def local_writes(self) -> int:
        """How many writes this process made that can change a deployment decision (poll bookkeeping is
        not counted). With :meth:`data_version`, lets an idle daemon skip re-reading unchanged sections."""
        return self._writes

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _stamp(self) -> str:
        return model.iso(self._now())

    @staticmethod
    def _fetch(conn: sqlite3.Connection, deployment_id: str) -> Deployment | None:
        row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        return Deployment.from_row(row) if row is not None else None

    @staticmethod
    def _unique_id(conn: sqlite3.Connection) -> str:
        while True:
            candidate = model.random_deployment_id()
            if conn.execute("SELECT 1 FROM deployments WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate

    def _newest(self, section: str, where: str = "") -> Deployment | None:
        with self._tx(write=False) as conn:
            row = conn.execute(_NEWEST.format(where=where), (section,)).fetchone()
        return Deployment.from_row(row) if row is not None else None

    # ---- deployments -------------------------------------------------------------------------------

    def new_deployment_id(self) -> str:
        """A fresh CodeDeploy-style id (``d-`` + 9 of A-Z0-9), unused in this database."""
        with self._tx(write=False) as conn:
            return self._unique_id(conn)

    def start(
        self, *, section: str, bucket: str, key: str, etag: str | None, version_id: str | None,
        identity: str | None, release_dir: str | Path | None, log_path: str | Path | None,
        rollback_of: str | None = None, restores: str | None = None, forced: bool = False,
        deployment_id: str | None = None,
    ) -> Deployment:  # fmt: skip
        """Record a deployment that starts now (status ``running``) and return it."""
        with self._tx(write=True) as conn:
            for name, ref in (("rollback_of", rollback_of), ("restores", restores)):
                if ref is not None and self._fetch(conn, ref) is None:
                    raise S3DeployError(
                        f"cannot record a deployment of [{section}]: {name} {ref} is not a deployment "
                        f"in {self.path}"
                    )
            dep_id = deployment_id or self._unique_id(conn)
            if self._fetch(conn, dep_id) is not None:
                raise S3DeployError(f"deployment id {dep_id} is already used in {self.path}")
            conn.execute(
                "INSERT INTO deployments (id, section, bucket, key, etag, version_id, identity, status,"
                " started_at, rollback_of, restores, release_dir, log_path, forced)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (dep_id, section, bucket, key, etag, version_id, identity, self._stamp(), rollback_of,
                 restores, None if release_dir is None else str(release_dir),
                 None if log_path is None else str(log_path), int(forced)),
            )  # fmt: skip
            deployment = self._fetch(conn, dep_id)
        assert deployment is not None
        logger.debug("[%s] deployment %s recorded as running", section, dep_id)
        return deployment

    def finish(
        self, deployment_id: str, status: str, *, failed_event: str | None = None,
        error: str | None = None, output_tail: str = "", transient: bool = False,
    ) -> Deployment:  # fmt: skip
        """Record how a running deployment ended; ``output_tail`` keeps only its last few KB."""
        if status not in model.FINAL_STATUSES:
            wanted = sorted(model.FINAL_STATUSES)
            raise ValueError(f"finish(): status must be one of {wanted}, got {status!r}")
        with self._tx(write=True) as conn:
            before = self._fetch(conn, deployment_id)
            if before is None:
                raise S3DeployError(f"deployment {deployment_id} is not in the state database {self.path}")
            if before.status != "running":
                raise S3DeployError(
                    f"deployment {deployment_id} of [{before.section}] already finished as {before.status}; "
                    f"cannot record it as {status}"
                )
            conn.execute(
                "UPDATE deployments SET status = ?, finished_at = ?, failed_event = ?, error = ?,"
                " output_tail = ?, transient = ? WHERE id = ?",
                (status, self._stamp(), failed_event, error, model.tail_of(output_tail), int(transient),
                 deployment_id),
            )  # fmt: skip
            deployment = self._fetch(conn, deployment_id)
        assert deployment is not None
        return deployment

    def mark_install_completed(self, deployment_id: str) -> None:
        """Record that Install of a running deployment finished: its files are what is on disk now."""
        with self._tx(write=True) as conn:
            cursor = conn.execute(
                "UPDATE deployments SET install_completed_at = ? WHERE id = ? AND status = 'running'",
                (self._stamp(), deployment_id),
            )
            if cursor.rowcount == 0:
                raise S3DeployError(
                    f"deployment {deployment_id} is not running in the state database {self.path}"
                )

    def get(self, deployment_id: str) -> Deployment | None:
        """The deployment with this id, or None."""
        with self._tx(write=False) as conn:
            return self._fetch(conn, deployment_id)

    def history(self, section: str, limit: int | None = None) -> list[Deployment]:
        """Deployments of ``section``, newest first (at most ``limit``)."""
        if limit is not None and limit < 0:
            raise ValueError(f"history(): limit must be >= 0, got {limit}")
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM deployments WHERE section = ? ORDER BY seq DESC LIMIT ?",
                (section, -1 if limit is None else limit),
            ).fetchall()
        return [Deployment.from_row(row) for row in rows]

    def last_attempt(self, section: str) -> Deployment | None:
        """The newest deployment of any kind, rollbacks included (``last`` in ``status``)."""
        return self._newest(section)

    def current(self, section: str) -> Deployment | None:
        """The newest succeeded deployment: the one whose files are installed (``current`` in ``status``)."""
        return self._newest(section, "AND status = 'succeeded'")

    def last_revision_attempt(self, section: str) -> Deployment | None:
        """The newest deployment of a revision from S3 (not a rollback), whatever its status.

        The watcher compares the S3 identity with this one's; when its status is ``interrupted`` the
        revision must be deployed again even though the identity matches (SPEC §8).
        """
        return self._newest(section, _NOT_ROLLBACK)

    def section_state(self, section: str) -> str:
        """``never`` | ``idle`` | ``deploying`` | ``failed`` (SPEC §4).

        deploying: a deployment is recorded running (after a crash, until recover_interrupted). failed: the
        newest revision attempt failed, even if a rollback then succeeded, or the newest attempt of any
        kind failed (a failed manual rollback leaves the host broken too). interrupted counts as idle: the
        revision is deployed again at the next start. never: no deployment recorded.
        """
        with self._tx(write=False) as conn:
            if conn.execute(
                "SELECT 1 FROM deployments WHERE section = ? AND status = 'running' LIMIT 1", (section,)
            ).fetchone():
                return "deploying"
            last = conn.execute(_NEWEST.format(where=""), (section,)).fetchone()
            revision = conn.execute(_NEWEST.format(where=_NOT_ROLLBACK), (section,)).fetchone()
        if last is None:
            return "never"
        if last["status"] == "failed" or (revision is not None and revision["status"] == "failed"):
            return "failed"
        return "idle"

    def recover_interrupted(self, sections: Iterable[str] | None = None) -> list[Deployment]:
        """Mark every running deployment (of ``sections``, or all) interrupted; return them.

        Only safe while holding the locks that prove nobody is running them: the instance lock at daemon
        start, or the section flocks.
        """
        where: str = ""
        args: tuple[str, ...] = ()
        if sections is not None:
            names = tuple(dict.fromkeys(sections))
            if not names:
                return []
            where, args = f" AND section IN ({', '.join('?' * len(names))})", names
        with self._tx(write=True) as conn:
            rows = conn.execute(
                f"SELECT id FROM deployments WHERE status = 'running'{where}", args
            ).fetchall()
            ids = [row["id"] for row in rows]
            conn.executemany(
                "UPDATE deployments SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                [(self._stamp(), model.INTERRUPTED_ERROR, dep_id) for dep_id in ids],
            )
            recovered = [d for d in (self._fetch(conn, dep_id) for dep_id in ids) if d is not None]
        for d in recovered:  # callers log these for the operator; this is the state's own trace
            logger.debug("[%s] deployment %s marked interrupted", d.section, d.id)
        return recovered

    # ---- sections ----------------------------------------------------------------------------------

    def get_section(self, section: str) -> SectionRecord:
        """What is remembered about ``section`` (defaults when nothing is)."""
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM sections WHERE name = ?", (section,)).fetchone()
        return SectionRecord.from_row(row) if row is not None else SectionRecord(name=section)

    def _upsert_section(self, section: str, *, bookkeeping: bool = False, **values: object) -> None:
        columns = ", ".join(values)
        updates = ", ".join(f"{column} = excluded.{column}" for column in values)
        with self._tx(write=True, bookkeeping=bookkeeping) as conn:
            conn.execute(
                f"INSERT INTO sections (name, {columns}) VALUES (?{', ?' * len(values)})"
                f" ON CONFLICT (name) DO UPDATE SET {updates}",
                (section, *values.values()),
            )

    def set_baseline(self, section: str, identity: str) -> None:
        """Record ``identity`` as already deployed without deploying it (legacy ``last_fetch_time``)."""
        self._upsert_section(section, baseline_identity=identity, baseline_at=self._stamp())

    def set_suspended(self, section: str, suspended: bool) -> None:
        """Suspend or resume deployments of ``section`` (the daemon keeps watching it)."""
        self._upsert_section(section, suspended=int(suspended))

    def record_poll(self, section: str, *, identity: str | None, error: str | None) -> bool:
        """Remember what the last poll saw; returns whether it wrote.

        Cheap: writes only when the identity or the error changed, or last_poll_at is older than
        POLL_TOUCH_INTERVAL_S. ``identity=None`` (nothing seen, e.g. on an error) keeps the last one seen.
        """
        record = self.get_section(section)
        now = self._now()
        fresh = (
            record.last_poll_at is not None
            and (now - record.last_poll_at).total_seconds() < POLL_TOUCH_INTERVAL_S
        )
        seen = identity if identity is not None else record.last_seen_identity
        if fresh and seen == record.last_seen_identity and error == record.last_error:
            return False
        self._upsert_section(
            section, bookkeeping=True, last_seen_identity=seen, last_poll_at=model.iso(now), last_error=error
        )
        return True

    # ---- releases and records ----------------------------------------------------------------------

    def _all(self, conn: sqlite3.Connection, section: str) -> list[Deployment]:
        rows = conn.execute(
            "SELECT * FROM deployments WHERE section = ? ORDER BY seq DESC", (section,)
        ).fetchall()
        return [Deployment.from_row(r) for r in rows]

    def releases_to_prune(self, section: str, keep: int) -> list[Deployment]:
        """Deployments of ``section`` whose release_dir should be deleted, newest first (see
        retention.releases_to_prune: the current, running and restored releases are always kept)."""
        with self._tx(write=False) as conn:
            deployments = self._all(conn, section)
        return retention.releases_to_prune(deployments, keep)

    def trim_history(self, section: str, keep: int) -> list[tuple[str, str | None]]:
        """Delete ``section``'s deployment records beyond the ``keep`` newest that nothing needs (see
        retention.records_to_trim); return (id, log_path) of each."""
        with self._tx(write=True) as conn:
            doomed = retention.records_to_trim(self._all(conn, section), keep)
            conn.executemany("DELETE FROM deployments WHERE id = ?", [(d.id,) for d in doomed])
        return [(d.id, d.log_path) for d in doomed]

    def clear_release_dir(self, deployment_id: str) -> None:
        """Forget a deployment's release folder once it has been deleted."""
        with self._tx(write=True) as conn:
            cursor = conn.execute("UPDATE deployments SET release_dir = NULL WHERE id = ?", (deployment_id,))
            if cursor.rowcount == 0:
                raise S3DeployError(f"deployment {deployment_id} is not in the state database {self.path}")
