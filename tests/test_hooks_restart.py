"""A real agent killed with SIGKILL while its hook runs: the next agent stops that hook before redeploying."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3deploy.common.procgroup import proc_stat
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.state.layout import StateLayout
from tests.agent import DaemonProcess, appspec, hook_script, status, wait_until, write_config, zip_bytes
from tests.test_hooks_sessions import ESCAPER

KEY = "app/bundle.zip"


def running_pid(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.running


def running(pid_file: Path) -> bool:
    return running_pid(int(pid_file.read_text()))


def test_a_restarted_agent_stops_the_hooks_a_killed_agent_left_before_its_hooks_start(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket()
    state_dir, armed, check = tmp_path / "state", tmp_path / "armed", tmp_path / "check"
    sleeper, moved = tmp_path / "sleep.pid", tmp_path / "moved.pid"
    # BeforeInstall notes whether the previous generation's hook processes still run; ApplicationStart
    # (while armed) starts a long sleep and a child that leaves the hook's process group, and waits.
    alive = (
        'alive() { [ -s "$1" ] && s=$(cut -d" " -f3 "/proc/$(cat "$1")/stat" 2>/dev/null) '
        '&& [ "$s" != Z ]; }\n'
        f"if alive {sleeper} || alive {moved}; then echo alive >> {check}; else echo gone >> {check}; fi"
    )
    start = (
        f"if [ -e {armed} ]; then\n  sleep 1000 &\n  echo $! > {sleeper}\n  {ESCAPER} {moved} &\n  wait\nfi"
    )
    events = {"BeforeInstall": alive, "ApplicationStart": start}
    body = zip_bytes(
        {
            "appspec.yml": appspec(None, {e: f"scripts/{e}.sh" for e in events}),
            **{f"scripts/{e}.sh": hook_script(text) for e, text in events.items()},
        }
    )
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": {
                "s3_bucket": bucket,
                "target_file_key": KEY,
                "endpoint_url": seaweed.endpoint_url,
                "poll_interval": 0.2,
                "destination": tmp_path / "www",
            }
        },
    )
    armed.touch()
    first = daemons(config, state_dir, "--all")
    wait_until(lambda: sleeper.is_file() and moved.is_file() and moved.read_text(), timeout=60)
    record = StateLayout(state_dir).hook_session("Web")
    assert record.is_file(), "the running hook's session is recorded"
    assert record.stat().st_mode & 0o777 == 0o600 and record.parent.stat().st_mode & 0o777 == 0o700

    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert running(sleeper) and running(moved), "hooks run in their own sessions: they outlive the agent"
    armed.unlink()

    second = daemons(config, state_dir, "--all")
    wait_until(
        lambda: (status(config, state_dir)["Web"]["last"] or {}).get("status") == "succeeded", timeout=60
    )
    assert check.read_text().split() == ["gone", "gone"], "the old hooks were gone before new hooks started"
    assert not running(sleeper) and not running(moved)
    assert not record.exists()
    deployments = status(config, state_dir)["Web"]
    assert deployments["current"]["id"] == deployments["last"]["id"]
    assert "left by agent process" in second.output()
