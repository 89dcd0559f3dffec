"""SQLite state: every deployment of every section, per-section settings, crash recovery.

The daemon and one-shot commands use the same database from different processes at the same time, so it
runs in WAL mode (readers never wait for the writer) and every call is one short transaction. The API is
synchronous; async code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3deploy.errors import S3DeployError

logger = logging.getLogger(__name__)

STATUSES = ("running", "succeeded", "failed", "interrupted")
FINAL_STATUSES = frozenset({"succeeded", "failed", "interrupted"})
INTERRUPTED_ERROR = "the agent stopped while this deployment was running"
OUTPUT_TAIL_MAX_BYTES = 8192
# record_poll() refreshes an unchanged section's last_poll_at at most this often: cheap, yet fresh enough.
POLL_TOUCH_INTERVAL_S = 300.0
#: How long opening the state database retries while another process is setting it up.
OPEN_RETRY_S = 10.0
_ID_ALPHABET = string.ascii_uppercase + string.digits

# One entry per schema version; statements run one by one (executescript would commit mid-migration).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE deployments (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            section TEXT NOT NULL,
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            etag TEXT,
            version_id TEXT,
            identity TEXT,
            status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            failed_event TEXT,
            error TEXT,
            rollback_of TEXT REFERENCES deployments(id),
            restores TEXT REFERENCES deployments(id),
            release_dir TEXT,
            log_path TEXT,
            output_tail TEXT NOT NULL DEFAULT '',
            forced INTEGER NOT NULL DEFAULT 0 CHECK (forced IN (0, 1))
        )""",
        "CREATE INDEX deployments_by_section ON deployments (section, seq)",
        "CREATE INDEX deployments_running ON deployments (section) WHERE status = 'running'",
        """CREATE TABLE sections (
            name TEXT PRIMARY KEY,
            suspended INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
            baseline_identity TEXT,
            baseline_at TEXT,
            last_seen_identity TEXT,
            last_poll_at TEXT,
            last_error TEXT
        )""",
    ),
    # 2: when Install completed, recorded the moment it does (ApplicationStop of the next deployment runs
    # from the release whose Install last completed, even when the process died right after Install).
    # transient: a DownloadBundle failure on an S3 error that may heal (5xx, reset, checksum mismatch in
    # transit): unlike a bad bundle or a failing hook, the revision is tried again at the next poll.
    (
        "ALTER TABLE deployments ADD COLUMN install_completed_at TEXT",
        "ALTER TABLE deployments ADD COLUMN transient INTEGER NOT NULL DEFAULT 0 CHECK (transient IN (0, 1))",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse_ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _tail(text: str) -> str:
    """The last OUTPUT_TAIL_MAX_BYTES of ``text`` (UTF-8), never splitting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= OUTPUT_TAIL_MAX_BYTES:
        return text
    return raw[-OUTPUT_TAIL_MAX_BYTES:].decode("utf-8", "ignore")


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

    @property
    def is_rollback(self) -> bool:
        """True when this deployment reinstalls a release from disk rather than a revision from S3."""
        return self.rollback_of is not None or self.restores is not None

    def to_json(self) -> dict[str, Any]:
        """The SPEC §4 keys in order, then a few extras operators find useful."""
        return {
            "id": self.id,
            "etag": self.etag,
            "version_id": self.version_id,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at is not None else None,
            "failed_event": self.failed_event,
            "error": self.error,
            "rollback_of": self.rollback_of,
            "restores": self.restores,
            "section": self.section,
            "identity": self.identity,
            "release_dir": self.release_dir,
            "log_path": self.log_path,
        }


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


def _deployment(row: sqlite3.Row) -> Deployment:
    started_at = _parse_ts(row["started_at"])
    assert started_at is not None  # NOT NULL in the schema
    return Deployment(
        id=row["id"], section=row["section"], bucket=row["bucket"], key=row["key"], etag=row["etag"],
        version_id=row["version_id"], identity=row["identity"], status=row["status"],
        started_at=started_at, finished_at=_parse_ts(row["finished_at"]),
        failed_event=row["failed_event"], error=row["error"], rollback_of=row["rollback_of"],
        restores=row["restores"], release_dir=row["release_dir"], log_path=row["log_path"],
        output_tail=row["output_tail"], forced=bool(row["forced"]),
        install_completed_at=_parse_ts(row["install_completed_at"]), transient=bool(row["transient"]),
    )  # fmt: skip


def _section(row: sqlite3.Row) -> SectionRecord:
    return SectionRecord(
        name=row["name"], suspended=bool(row["suspended"]), baseline_identity=row["baseline_identity"],
        baseline_at=_parse_ts(row["baseline_at"]), last_seen_identity=row["last_seen_identity"],
        last_poll_at=_parse_ts(row["last_poll_at"]), last_error=row["last_error"],
    )  # fmt: skip


_NEWEST = "SELECT * FROM deployments WHERE section = ? {where} ORDER BY seq DESC LIMIT 1"
_NOT_ROLLBACK = "AND rollback_of IS NULL AND restores IS NULL"


class StateStore:
    """The state database. Thread-safe: one connection guarded by a lock; each call is one transaction."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0  # writes of this process that can change a deployment decision
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves (BEGIN IMMEDIATE for writes, so two processes
            # never deadlock upgrading a read lock; busy_timeout then just waits).
            self._conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise S3DeployError(f"cannot open the state database {self.path}: {e}") from e
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._set_up()
        except BaseException as e:
            self._conn.close()
            if isinstance(e, sqlite3.Error):
                raise S3DeployError(
                    f"cannot use the state database {self.path}: {e} (is it an s3deploy state.db?)"
                ) from e
            raise

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def _set_up(self) -> None:
        """WAL mode and the current schema. Switching a new file to WAL needs it to itself, and SQLite
        answers "database is locked" at once (busy_timeout does not apply) to a process that loses that
        race, as `status` does when the daemon creates the file at the same moment: retry a while."""
        deadline = time.monotonic() + OPEN_RETRY_S
        delay = 0.01
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                self._migrate()
                return
            except (sqlite3.OperationalError, S3DeployError) as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise
                logger.debug("state database %s busy while opening it (%s); retrying", self.path, e)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION; processes racing here are ordered by BEGIN IMMEDIATE."""
        if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._tx(write=True) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise S3DeployError(
                    f"the state database {self.path} has schema version {version}, newer than this "
                    f"s3deploy understands ({SCHEMA_VERSION}): upgrade s3deploy or use another --state-dir"
                )
            for target in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                logger.info("state database %s migrated to schema version %d", self.path, target + 1)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    @staticmethod
    def _fetch(conn: sqlite3.Connection, deployment_id: str) -> Deployment | None:
        row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        return _deployment(row) if row is not None else None

    @staticmethod
    def _unique_id(conn: sqlite3.Connection) -> str:
        while True:
            candidate = "d-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))
            if conn.execute("SELECT 1 FROM deployments WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate

    def _newest(self, section: str, where: str = "") -> Deployment | None:
        with self._tx(write=False) as conn:
            row = conn.execute(_NEWEST.format(where=where), (section,)).fetchone()
        return _deployment(row) if row is not None else None

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
                (dep_id, section, bucket, key, etag, version_id, identity, _iso(self._now()), rollback_of,
                 restores, None if release_dir is None else str(release_dir),
                 None if log_path is None else str(log_path), int(forced)),
            )  # fmt: skip
            deployment = self._fetch(conn, dep_id)
        assert deployment is not None
        logger.debug("deployment %s recorded as running", dep_id, extra={"section": section})
        return deployment

    def finish(
        self, deployment_id: str, status: str, *, failed_event: str | None = None,
        error: str | None = None, output_tail: str = "", transient: bool = False,
    ) -> Deployment:  # fmt: skip
        """Record how a running deployment ended; ``output_tail`` keeps only its last few KB."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish(): status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")
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
                (status, _iso(self._now()), failed_event, error, _tail(output_tail), int(transient),
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
                (_iso(self._now()), deployment_id),
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
        return [_deployment(row) for row in rows]

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

        deploying: a deployment is recorded running (after a crash, until recover_interrupted; callers may
        cross-check with SectionLocks.is_held_elsewhere). failed: the newest revision attempt failed, even
        if a rollback then succeeded, or the newest attempt of any kind failed (a failed manual rollback
        leaves the host broken too). interrupted counts as idle: the revision is deployed again at the next
        start. never: no deployment recorded.
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
                [(_iso(self._now()), INTERRUPTED_ERROR, dep_id) for dep_id in ids],
            )
            recovered = [d for d in (self._fetch(conn, dep_id) for dep_id in ids) if d is not None]
        for d in recovered:  # callers log these for the operator; this is the state's own trace
            logger.debug("deployment %s marked interrupted", d.id, extra={"section": d.section})
        return recovered

    # ---- sections ----------------------------------------------------------------------------------

    def get_section(self, section: str) -> SectionRecord:
        """What is remembered about ``section`` (defaults when nothing is)."""
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM sections WHERE name = ?", (section,)).fetchone()
        return _section(row) if row is not None else SectionRecord(name=section)

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
        self._upsert_section(section, baseline_identity=identity, baseline_at=_iso(self._now()))

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
            section, bookkeeping=True, last_seen_identity=seen, last_poll_at=_iso(now), last_error=error
        )
        return True

    # ---- releases ----------------------------------------------------------------------------------

    def releases_to_prune(self, section: str, keep: int) -> list[Deployment]:
        """Deployments of ``section`` whose release_dir should be deleted, newest first.

        Keeps the ``keep`` newest release folders that exist (counting the current one), and always the
        folders of the current deployment, of any running one, and of the deployments they restore. A
        folder shared by several deployments is kept if any of them keeps it. Recorded folders that no
        longer exist are listed so the caller clears them.
        """
        with self._tx(write=False) as conn:
            rows = [_deployment(r) for r in conn.execute(
                "SELECT * FROM deployments WHERE section = ? ORDER BY seq DESC", (section,)
            ).fetchall()]  # fmt: skip
        current = next((d for d in rows if d.status == "succeeded"), None)
        protected = {d for d in rows if d.status == "running"} | ({current} if current else set())
        protected_ids = {d.id for d in protected} | {d.restores for d in protected if d.restores}
        with_dir = [d for d in rows if d.release_dir is not None]
        kept = {d.release_dir for d in with_dir if d.id in protected_ids}
        for d in with_dir:
            if len(kept) >= keep:
                break
            if d.release_dir not in kept and Path(str(d.release_dir)).exists():
                kept.add(d.release_dir)
        return [d for d in with_dir if d.release_dir not in kept]

    def trim_history(self, section: str, keep: int) -> list[tuple[str, str | None]]:
        """Delete ``section``'s deployment records beyond the ``keep`` newest; return (id, log_path) of each.

        Kept whatever ``keep`` says: the current deployment, running ones, the newest attempt of a
        revision from S3 (detection compares with it), those whose release folder is still recorded, and
        every deployment a kept one is a rollback of or restores (so no reference dangles).
        """
        with self._tx(write=True) as conn:
            rows = conn.execute(
                "SELECT id, status, release_dir, rollback_of, restores, log_path FROM deployments"
                " WHERE section = ? ORDER BY seq DESC",
                (section,),
            ).fetchall()
            if len(rows) <= keep:
                return []
            kept = {r["id"] for r in rows[:keep]}
            kept |= {r["id"] for r in rows if r["release_dir"] or r["status"] == "running"}
            current = next((r for r in rows if r["status"] == "succeeded"), None)
            attempt = next((r for r in rows if r["rollback_of"] is None and r["restores"] is None), None)
            kept |= {r["id"] for r in (current, attempt) if r is not None}
            by_id = {r["id"]: r for r in rows}
            todo = list(kept)
            while todo:
                row = by_id.get(todo.pop())
                for ref in (row["rollback_of"], row["restores"]) if row else ():
                    if ref and ref not in kept:
                        kept.add(ref)
                        todo.append(ref)
            doomed = [(r["id"], r["log_path"]) for r in rows if r["id"] not in kept]
            conn.executemany("DELETE FROM deployments WHERE id = ?", [(d,) for d, _ in doomed])
        return doomed

    def clear_release_dir(self, deployment_id: str) -> None:
        """Forget a deployment's release folder once it has been deleted."""
        with self._tx(write=True) as conn:
            cursor = conn.execute("UPDATE deployments SET release_dir = NULL WHERE id = ?", (deployment_id,))
            if cursor.rowcount == 0:
                raise S3DeployError(f"deployment {deployment_id} is not in the state database {self.path}")
