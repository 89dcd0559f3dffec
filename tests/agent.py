"""Helpers for tests that drive the real agent: bundles, configs, the CLI and a daemon process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

APPSPEC_HEADER = "version: 0.0\nos: linux\n"


def zip_bytes(files: Mapping[str, str | bytes | tuple[str | bytes, int]]) -> bytes:
    """A zip holding ``files`` (path → content, or (content, mode)); *.sh files default to mode 0o755."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in files.items():
            content, mode = (
                value if isinstance(value, tuple) else (value, 0o755 if name.endswith(".sh") else 0o644)
            )
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
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


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
