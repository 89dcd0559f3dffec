"""The state database's schema and how a connection to it is opened (WAL, migrations, file mode).

The daemon and one-shot commands open the same file at the same time: opening retries while another
process switches a new file to WAL, and migrations run inside BEGIN IMMEDIATE so racing processes are
ordered.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from s3deploy.errors import S3DeployError

logger = logging.getLogger(__name__)

#: How long opening the state database retries while another process is setting it up.
OPEN_RETRY_S = 10.0
#: The database file (SQLite gives its -wal and -shm files the same mode): only root reads it.
DATABASE_MODE = 0o600

# One entry per schema version; statements run one by one (executescript would commit mid-migration).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    # signed bundles (SPEC §11, state/signatures.py): signed_by, who signed a verified deployment (JSON
    # of principal, fingerprint, serial); signing_ratchet, per section the highest manifest serial
    # accepted and the sha256 it was accepted for (an older signed bundle uploaded again is refused).
    (
        "ALTER TABLE deployments ADD COLUMN signed_by TEXT",
        """CREATE TABLE signing_ratchet (
            section TEXT PRIMARY KEY,
            serial INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            deployment_id TEXT,
            accepted_at TEXT NOT NULL
        )""",
    ),
    # fleet: what a coordinated section (SPEC §10) remembers besides its deployments: the revision it
    # skipped because its rollout was stopped (status shows the section `stopped`), why the store was
    # refused (no conditional writes), and the slot it holds (freed first after a crash).
    (
        """CREATE TABLE fleet_sections (
            name TEXT PRIMARY KEY,
            skipped_identity TEXT,
            skipped_reason TEXT,
            skipped_at TEXT,
            refused TEXT,
            refused_at TEXT,
            slot_identity TEXT,
            slot_deployment_id TEXT,
            slot_holder TEXT
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it 0600 if needed) the database at ``path``, in WAL mode, at SCHEMA_VERSION.

    ``isolation_level=None``: callers issue BEGIN themselves (BEGIN IMMEDIATE for writes, so two
    processes never deadlock upgrading a read lock; busy_timeout then just waits). Raises S3DeployError
    naming the file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created here, not by SQLite (which would use 0644 under the usual umask): 0600 from the start.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATABASE_MODE))
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise S3DeployError(f"cannot open the state database {path}: {_reason(e)}") from e
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _set_up(conn, path)
    except BaseException as e:
        conn.close()
        if isinstance(e, sqlite3.Error):
            raise S3DeployError(
                f"cannot use the state database {path}: {e} (is it an s3deploy state.db?)"
            ) from e
        raise
    return conn


def _reason(e: OSError | sqlite3.Error) -> str:
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def _set_up(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode and the current schema. Switching a new file to WAL needs it to itself, and SQLite
    answers "database is locked" at once (busy_timeout does not apply) to a process that loses that
    race, as `status` does when the daemon creates the file at the same moment: retry a while."""
    deadline = time.monotonic() + OPEN_RETRY_S
    delay = 0.01
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn, path)
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            logger.debug("state database %s busy while opening it (%s); retrying", path, e)
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION; processes racing here are ordered by BEGIN IMMEDIATE."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise S3DeployError(
                f"the state database {path} has schema version {version}, newer than this "
                f"s3deploy understands ({SCHEMA_VERSION}): upgrade s3deploy or use another --state-dir"
            )
        for target in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            logger.info("state database %s migrated to schema version %d", path, target + 1)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
