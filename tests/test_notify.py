"""systemd's notify protocol: a real daemon talking to a notify socket, and the shipped unit files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.notify import Notifier
from s3deploy.state.layout import SHARED_DIR_MODE
from tests.agent import DaemonProcess, appspec, hook_script, zip_bytes
from tests.agent import write_config as write_ini

KEY = "app/bundle.zip"
UNITS = Path(__file__).resolve().parent.parent / "systemd"


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET; collects every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def collect(self, timeout: float) -> None:
        """Receive what arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, str]:
        """The first message (already received or arriving within ``timeout``) matching ``predicate``."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching notify message in {timeout}s; got {self.messages}")
            self.collect(0.1)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    try:
        yield sock
    finally:
        sock.close()


def test_daemon_reports_ready_status_reloading_watchdog_and_stopping(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Any,
    s3_client: Any,
    notify_socket: NotifySocket,
) -> None:
    bucket = make_bucket(versioned=True)
    state_dir, gate = tmp_path / "state", tmp_path / "gate"
    keys = {"s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": seaweed.endpoint_url}
    config = write_ini(tmp_path / "config.ini", {"Production": {**keys, "poll_interval": 0.2}})
    # The hook waits for the gate, so the daemon is seen "deploying" in STATUS.
    s3_client.put_object(
        Bucket=bucket,
        Key=KEY,
        Body=zip_bytes(
            {
                "appspec.yml": appspec(tmp_path / "www", {"AfterInstall": "scripts/wait.sh"}),
                "scripts/wait.sh": hook_script(f"while [ ! -e {gate} ]; do sleep 0.05; done"),
                "app/x": "x",
            }
        ),
    )
    daemon = DaemonProcess(config, state_dir, tmp_path / "daemon.log", "--all")
    try:
        ready = notify_socket.wait_for(lambda m: m.get("READY") == "1")
        assert ready["STATUS"].startswith("1 section: Production")
        deploying = notify_socket.wait_for(lambda m: "deploying d-" in m.get("STATUS", ""))
        assert deploying["STATUS"].startswith("1 section: Production deploying d-")
        gate.touch()
        notify_socket.wait_for(lambda m: m.get("STATUS") == "1 section: Production idle")

        # The watchdog is pinged from the event loop at half of WATCHDOG_USEC.
        before = sum(1 for m in notify_socket.messages if m.get("WATCHDOG") == "1")
        notify_socket.collect(1.0)
        pings = sum(1 for m in notify_socket.messages if m.get("WATCHDOG") == "1") - before
        assert 5 <= pings <= 15, pings

        # SIGHUP with a second section: RELOADING=1 (with MONOTONIC_USEC), then READY=1 naming both.
        write_ini(
            tmp_path / "config.ini",
            {"Production": {**keys, "poll_interval": 0.2}, "Staging": {**keys, "poll_interval": 0.2}},
        )
        daemon.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for(lambda m: m.get("RELOADING") == "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        after = notify_socket.messages.index(reloading)
        again = notify_socket.wait_for(
            lambda m: m.get("READY") == "1" and notify_socket.messages.index(m) > after
        )
        assert again["STATUS"].startswith("2 sections: Production idle, Staging ")

        daemon.signal(signal.SIGTERM)
        notify_socket.wait_for(lambda m: m.get("STOPPING") == "1")
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.stop()


def test_notifier_is_a_no_op_without_the_socket_and_honours_watchdog_pid(tmp_path: Path) -> None:
    assert Notifier({}).send(ready=1) is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000"}).watchdog_s == 1.0
    other_pid = {"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other_pid).watchdog_s == 0.0  # the watchdog is meant for another process
    # A socket that is gone is logged, never raised: systemd notifications must not kill the agent.
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send(status="x") is False


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"s3deploy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(status="hello", ready=1)
        assert sock.recv(100) == b"STATUS=hello\nREADY=1"


# ------------------------------------------------------------------------------ unit files


def _unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` of a unit file's [Service] section (repeated keys kept in order)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.parametrize("name", ["s3deploy.service", "s3deploy-hardened.service"])
def test_unit_files_run_the_notify_daemon_with_options_the_cli_accepts(name: str, tmp_path: Path) -> None:
    service = _unit(name)
    assert service["Type"] == ["notify"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == ["s3deploy"]
    # The state directory model (state/layout.py): 0750 would lock every `runas` hook out of its release.
    assert service["StateDirectoryMode"] == [f"{SHARED_DIR_MODE:04o}"] == ["0711"]
    assert "WatchdogSec" in service
    # The ExecStart arguments are accepted by this s3deploy (run with --list-configs, which exits at once).
    argv = service["ExecStart"][0].split()
    assert argv[0].endswith("/s3deploy") and argv[1] == "run"
    config = write_ini(tmp_path / "config.ini", {"Production": {"s3_bucket": "b", "target_file_key": "k"}})
    args = argv[2:]
    args[args.index("--config") + 1] = str(config)
    args[args.index("--state-dir") + 1] = str(tmp_path / "state")
    proc = subprocess.run(
        [sys.executable, "-m", "s3deploy", "run", *args, "--list-configs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Production" in proc.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["s3deploy.service", "s3deploy-hardened.service"])
def test_unit_files_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    # verify wants ExecStart's binary to exist: point it at this venv's s3deploy.
    exe = Path(sys.executable).parent / "s3deploy"
    text = (UNITS / name).read_text().replace("/usr/local/bin/s3deploy", str(exe))
    unit = tmp_path / name
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = ("Unknown", "Failed to parse", "Invalid", "ignoring")
    problems = [line for line in proc.stderr.splitlines() if any(c in line for c in complaints)]
    assert not problems, proc.stderr
