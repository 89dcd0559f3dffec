"""Helpers for the failure tests: a proxy that stalls bundle bodies, a hostile S3 server (malformed
answers, trickling bodies, reset connections), archives that must be refused, and end-state checks
(locks free, database intact, one revision on disk)."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import sqlite3
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
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


# ---------------------------------------------------------------------------------------------- hostile S3
HTTP_DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@dataclass
class Answer:
    """What :class:`HostileS3` answers to one request.

    ``mode``: "normal" (headers, then the body); "trickle" (headers, then the body ``trickle_bytes`` at a
    time every ``trickle_every_s``: 100 B/s by default); "reset_before_headers" (read the request, then
    reset the connection); "reset_mid_body" (headers and ``reset_after`` body bytes, then a reset).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    mode: str = "normal"
    trickle_bytes: int = 10
    trickle_every_s: float = 0.1
    reset_after: int = 0
    date: str | None = HTTP_DATE  # the Date header (S3's clock); None: no Date header at all


class HostileS3:
    """A raw-socket HTTP server that answers like a broken or malicious S3: whatever ``answer(method,
    path)`` returns, byte for byte (no framework fixes a bad header up). Context manager."""

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile-s3", daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> HostileS3:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(10)
                while not self._stop.is_set() and self._one(conn):
                    pass
        except OSError:
            pass  # the client went away (or we reset it)

    def _one(self, conn: socket.socket) -> bool:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return False
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
        }
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(headers.get("content-length") or 0)  # botocore sends no chunked bodies here
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append((method, path))
        ans = self.answer(method, path)
        if ans.mode == "reset_before_headers":
            _reset(conn)
            return False
        out = [f"HTTP/1.1 {ans.status} X"] + ([f"Date: {ans.date}"] if ans.date is not None else [])
        out += [f"{k}: {v}" for k, v in ans.headers.items()]
        if "content-length" not in {k.lower() for k in ans.headers}:
            out.append(f"Content-Length: {len(ans.body)}")
        conn.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        body = b"" if method == "HEAD" else ans.body
        if ans.mode == "reset_mid_body":
            conn.sendall(body[: ans.reset_after])
            time.sleep(0.05)
            _reset(conn)
            return False
        if ans.mode == "trickle":
            for i in range(0, len(body), ans.trickle_bytes):
                if self._stop.wait(ans.trickle_every_s):
                    return False
                conn.sendall(body[i : i + ans.trickle_bytes])
            return True
        conn.sendall(body)
        return True


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (RST), as a crashed server or a middlebox does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def object_headers(size: int, **extra: str) -> dict[str, str]:
    """The headers of a plausible HEAD/GET answer for an object of ``size`` bytes."""
    return {
        "ETag": '"0123456789abcdef0123456789abcdef"',
        "Last-Modified": HTTP_DATE,
        "Content-Length": str(size),
        "Content-Type": "application/zip",
        **extra,
    }


def list_xml(bucket: str, entries: list[tuple[str, str]]) -> bytes:
    """A ListObjectsV2 answer listing ``(key, last_modified)`` pairs."""
    contents = "".join(
        f"<Contents><Key>{key}</Key><LastModified>{when}</LastModified>"
        f'<ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>1</Size></Contents>'
        for key, when in entries
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix></Prefix><KeyCount>{len(entries)}</KeyCount>"
        f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
    ).encode()


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
