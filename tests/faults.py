"""Helpers for the failure tests: a proxy that stalls bundle bodies, archives that must be refused,
and end-state checks (locks free, database intact, one revision on disk)."""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from tests.s3server import FaultProxy

STALL_MIN_BYTES = 16384


class _StallingWriter:
    """Wraps a handler's wfile: a body write of STALL_MIN_BYTES or more sends half, then waits."""

    def __init__(self, raw: BinaryIO, proxy: StallingProxy) -> None:
        self._raw = raw
        self._proxy = proxy

    def write(self, data: bytes) -> int:
        if self._proxy.stalling.is_set() and len(data) >= STALL_MIN_BYTES:
            half = len(data) // 2
            self._raw.write(data[:half])
            self._raw.flush()
            self._proxy.stalled.set()
            self._proxy.release.wait(60)
            return half + self._raw.write(data[half:])
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class StallingProxy(FaultProxy):
    """A FaultProxy that can also hold a GET body half-sent (``stalling``) until ``release`` is set."""

    def __init__(self, upstream_url: str) -> None:
        self.stalling = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        super().__init__(upstream_url)

    def _handler_class(self) -> Any:
        base = super()._handler_class()
        proxy = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.wfile = _StallingWriter(self.wfile, proxy)

        return Handler

    def stop(self) -> None:
        self.release.set()
        super().stop()


# ---------------------------------------------------------------------------------------------- archives
def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tar_file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def tar_link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def many_files_zip(
    files: dict[str, str | bytes], count: int, content: str = "", prefix: str = "app/many/"
) -> bytes:
    """A zip with ``files`` plus ``count`` tiny stored entries holding ``content`` (slow to unpack and
    to install)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | (0o755 if name.endswith(".sh") else 0o644)) << 16
            zf.writestr(info, content)
        for i in range(count):
            zf.writestr(f"{prefix}{i // 1000}/{i}", content)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- checks
def lock_is_free(path: Path) -> bool:
    """True when nobody holds an flock on ``path`` (a missing file is free)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def assert_no_lock_held(state_dir: Path) -> None:
    held = [p for p in state_dir.rglob("*.lock") if not lock_is_free(p)]
    assert held == [], f"locks still held: {held}"


def assert_db_intact(state_dir: Path) -> None:
    conn = sqlite3.connect(state_dir / "state.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        running = conn.execute("SELECT id FROM deployments WHERE status = 'running'").fetchall()
        assert running == [], f"deployments left running: {running}"
    finally:
        conn.close()


def revisions_in(folder: Path) -> set[str]:
    """The revision markers of every regular file under ``folder`` (each file's first line)."""
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size:
            found.add(path.read_text().splitlines()[0])
    return found


def db_history(state_dir: Path, section: str) -> list[dict[str, Any]]:
    """The section's deployments, newest first, read straight from state.db (no CLI start-up per poll)."""
    db = state_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM deployments WHERE section = ? ORDER BY seq DESC", (section,))
        return [dict(row) for row in rows]
    except sqlite3.OperationalError:  # the daemon is creating the schema right now
        return []
    finally:
        conn.close()
