"""The test suite's shared helpers, in one place: bundles and archives, configs, the CLI, a daemon
process, processes and waits, and end-state checks (locks free, database intact, revisions on disk).
Real S3 servers and fault proxies live in tests/s3server.py; both are registered by conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from s3deploy.config import Config, Section
from s3deploy.runtime.agent import Agent
from s3deploy.state.store import Deployment

APPSPEC_HEADER = "version: 0.0\nos: linux\n"
#: An archive member: its content, or (content, mode); *.sh files default to mode 0o755, others 0o644.
Entry = str | bytes | tuple[str | bytes, int]
_MTIME = 1_700_000_000


def _content_and_mode(name: str, value: Entry) -> tuple[bytes, int]:
    content, mode = value if isinstance(value, tuple) else (value, 0o755 if name.endswith(".sh") else 0o644)
    return (content.encode() if isinstance(content, str) else content), mode


def zip_bytes(
    files: Mapping[str, Entry],
    links: Mapping[str, str] | None = None,
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip holding ``files`` (path → Entry) and Unix symlinks ``links`` (path → target), as
    ``zip --symlinks`` writes them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, value in files.items():
            content, mode = _content_and_mode(name, value)
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = compression
            zf.writestr(info, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o120777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def tar_bytes(
    files: Mapping[str, Entry],
    links: Mapping[str, str] | None = None,
    *,
    hardlinks: Mapping[str, str] | None = None,
    gzip: bool = False,
) -> bytes:
    """A tar (or tar.gz) of ``files``, symlinks and hard links (path → target), with folder entries as
    GNU tar writes them."""
    links, hardlinks = links or {}, hardlinks or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tf:
        folders = sorted({str(Path(n).parent) for n in [*files, *links, *hardlinks]} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            tf.addfile(info)
        for name, value in files.items():
            content, mode = _content_and_mode(name, value)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, _MTIME
            tf.addfile(info, io.BytesIO(content))
        for kind, entries in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, target in entries.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mtime = kind, target, _MTIME
                tf.addfile(info)
    return buf.getvalue()


def hook_script(body: str) -> str:
    return "#!/bin/sh\nset -eu\n" + body + "\n"


def trace_hooks(trace: Path, events: tuple[str, ...], tag: str) -> dict[str, str]:
    """Hook scripts appending ``<tag> <event> <DEPLOYMENT_ID> <bundle dir>`` to ``trace``."""
    files = {}
    for event in events:
        files[f"scripts/{event}.sh"] = hook_script(
            f'echo "{tag} $LIFECYCLE_EVENT $DEPLOYMENT_ID $S3DEPLOY_BUNDLE_DIR" >> {trace}\n'
            f'echo "{event} ran"'
        )
    return files


def appspec(destination: Path | None, hooks: Mapping[str, str], extra: str = "") -> str:
    """appspec.yml text: files "/" → destination (if given) and one script per event."""
    text = APPSPEC_HEADER
    if destination is not None:
        text += f"files:\n  - source: app\n    destination: {destination}\n"
    if hooks:
        text += "hooks:\n"
        for event, location in hooks.items():
            text += f"  {event}:\n    - location: {location}\n      timeout: 60\n"
    return text + extra


@contextlib.asynccontextmanager
async def open_agent(state_dir: Path, *sections: Section, **options: Any) -> AsyncIterator[Agent]:
    """The runtime (``runtime.agent.Agent``) of an in-process test, on a config holding ``sections``."""
    config = Config(path=state_dir.parent / "config.ini", sections={s.name: s for s in sections})
    async with Agent(config, state_dir, **options) as agent:
        yield agent


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def cli(
    *args: str, timeout: float = 90, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m s3deploy ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "s3deploy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )


def status(config: Path, state_dir: Path) -> dict[str, dict[str, Any]]:
    """``status --json`` by section name."""
    proc = cli("status", "--json", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    return {s["name"]: s for s in json.loads(proc.stdout)["sections"]}


def history(config: Path, state_dir: Path, section: str) -> list[dict[str, Any]]:
    proc = cli("history", section, "--json", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Any], within_s: float = 30, interval: float = 0.05) -> Any:
    """``wait_until`` for async tests: the predicate's first truthy value, polled without blocking."""
    for _ in range(int(within_s / interval) + 1):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within_s}s")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (reaped, or a zombie waiting for its new parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def deployment(**fields: Any) -> Deployment:
    """A Deployment value (section "S", revision "e1" of b-1/k, succeeded) with ``fields`` changed."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    values: dict[str, Any] = dict(
        id="d-TEST00001", section="S", bucket="b-1", key="k", etag="e1", version_id=None, identity="e1",
        status="succeeded", started_at=now, finished_at=now, failed_event=None, error=None,
        rollback_of=None, restores=None, release_dir=None, log_path=None, output_tail="", forced=False,
    )  # fmt: skip
    values.update(fields)
    return Deployment(**values)


# ---------------------------------------------------------------------------------------------- end state
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


class DaemonProcess:
    """``s3deploy run`` as a real child process, its output in a file; always stopped by the fixture."""

    def __init__(self, config: Path, state_dir: Path, log: Path, *args: str) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "s3deploy",
                "run",
                "-c",
                str(config),
                "--state-dir",
                str(state_dir),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: ``daemons(config, state_dir, *run_args)`` starts ``s3deploy run``; all are stopped after."""
    started: list[DaemonProcess] = []

    def start(config: Path, state_dir: Path, *args: str) -> DaemonProcess:
        daemon = DaemonProcess(config, state_dir, state_dir.parent / f"daemon{len(started)}.log", *args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
        # Shown by pytest only when the test failed: what the daemon said, for the diagnosis.
        print(f"--- {daemon.log_path.name} (last 80 lines) ---")
        print("\n".join(daemon.output().splitlines()[-80:]))
