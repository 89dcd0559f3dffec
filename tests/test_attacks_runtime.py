"""Issue 9, replayed against the real daemon: local users against the state directory and the locks
(items 6, 7), hooks that try to outlive their timeout (item 12), reloads with values that used to kill
the daemon (item 9), and the unclear errors of item 17 that the command line shows.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.agent import APPSPEC_HEADER, appspec, cli, hook_script, pid_alive, wait_until, zip_bytes
from tests.attacks import User, Victim


def test_item6_item7_a_local_user_can_neither_lock_nor_read_anything_of_a_deploying_daemon(
    victim: Victim, app_user: User
) -> None:
    """Issue 9 item 6: "Any local user can block the agent with flock on its lock files ...: holding
    daemon.lock made the daemon exit 3; holding a destination lock kept a deployment deploying
    indefinitely". Item 7: "... can read state.db and every section's logs (0644)". Tried while a
    deployment holds its locks and runs a hook that prints a secret."""
    gate, state = victim.base / "gate", victim.state_dir
    started = victim.base / "started"
    hook = hook_script(f"echo secret=hunter2\ntouch {started}\nwhile [ ! -e {gate} ]; do sleep 0.05; done")
    victim.start()
    bundle = {"appspec.yml": appspec(victim.dest("Target"), {"BeforeInstall": "s.sh"}), "s.sh": hook}
    victim.upload("Target", zip_bytes({**bundle, "app/x": "1"}))
    wait_until(started.exists, timeout=60)
    attempts = {f"flock {p.relative_to(state)}": ("flock", str(p)) for p in state.rglob("*.lock")}
    assert len(attempts) >= 4  # daemon.lock, the section's, its destination's folders
    files = [state / "state.db", *state.glob("logs/*/*.log"), *state.glob("hooks/*.json")]
    attempts.update({f"read {p.relative_to(state)}": ("read", str(p)) for p in files})
    attempts.update({f"list {d}": ("list", str(state / d)) for d in (".", "releases", "logs", "locks")})
    attempts["read the daemon's environment"] = ("read", f"/proc/{victim.daemon.proc.pid}/environ")  # type: ignore[union-attr]
    seen = app_user.probe(attempts)
    assert seen == dict.fromkeys(seen, "EACCES"), seen
    gate.touch()
    assert victim.wait_finished(1)["status"] == "succeeded"
    victim.bystander_deploys()


def test_item7_a_runas_hook_gets_none_of_the_agents_secrets(
    victim: Victim, app_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 item 7 (the daemon has AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, see aws_env): "runas
    hooks inherit the agent's secrets (AWS_SECRET_ACCESS_KEY etc.) and can read
    state.db and every section's logs (0644). Drop AWS_* and the agent's own credentials from a hook's
    environment when it runs as another user"."""
    monkeypatch.setenv("SSH_AUTH_SOCK", "/root/agent.sock")
    monkeypatch.setenv("S3DEPLOY_CONFIG", str(victim.config))
    out = victim.base / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    state = victim.state_dir
    body = (
        f"env > {out}/env\ncat {state}/state.db > /dev/null 2>&1 && echo db >> {out}/leaks\n"
        f"cat {state}/logs/*/* > /dev/null 2>&1 && echo logs >> {out}/leaks\nexit 0"
    )
    spec = (
        appspec(victim.dest("Target"), {})
        + f"hooks:\n  AfterInstall:\n    - location: who.sh\n      runas: {app_user.name}\n"
    )
    victim.start()
    victim.upload("Target", zip_bytes({"appspec.yml": spec, "who.sh": hook_script(body), "app/x": "x"}))
    assert victim.wait_finished(1)["status"] == "succeeded"
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert env["USER"] == app_user.name and env["DEPLOYMENT_GROUP_NAME"] == "Target"
    leaked = sorted(k for k in env if k.startswith("AWS_") or k in ("SSH_AUTH_SOCK", "S3DEPLOY_CONFIG"))
    assert leaked == [], leaked
    assert not (out / "leaks").exists(), (out / "leaks").read_text()
    victim.bystander_deploys()


ESCAPER = (
    f"{sys.executable} -c 'import os, sys, time; os.setpgid(0, 0); "
    'open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(1000)\''
)


def test_item12_nothing_of_a_timed_out_or_failed_hook_survives(victim: Victim) -> None:
    """Issue 9 item 12: "A hook child that calls setpgid(0, 0) escapes the process-group kill and survives
    its timeout. Kill the hook's whole session (or cgroup), and verify nothing of it survives." Its
    children move to their own process groups, one of them orphaned, then the hook times out (first
    revision) or fails (second)."""
    pids = victim.base / "pids"
    pids.mkdir()
    victim.start()
    for n, end in enumerate(("sleep 1000", "exit 3"), start=1):
        moved, orphan = pids / f"{n}-moved", pids / f"{n}-orphan"
        body = (
            f"{ESCAPER} {moved} &\n( {ESCAPER} {orphan} & )\nsleep 1000 &\necho $! > {pids}/{n}-sleep\n"
            f"while [ ! -s {moved} ] || [ ! -s {orphan} ]; do sleep 0.02; done\n{end}"
        )
        spec = appspec(None, {"BeforeInstall": "h.sh"}).replace("timeout: 60", "timeout: 2")
        victim.upload("Target", zip_bytes({"appspec.yml": spec, "h.sh": hook_script(body)}))
        row = victim.wait_finished(n)
        assert row["failed_event"] == "BeforeInstall", row
        assert ("timed out" if n == 1 else "exited with code 3") in row["error"]
        survivors = [p.name for p in pids.glob(f"{n}-*") if pid_alive(int(p.read_text()))]
        assert survivors == [], f"still running: {survivors}"
    victim.bystander_deploys()


def test_item9_sighup_with_values_that_used_to_kill_the_daemon_keeps_the_old_config(
    victim: Victim,
) -> None:
    """Issue 9 item 9: "SIGHUP with some invalid values kills the daemon (endpoint_url = http://[::1 →
    ValueError, last_fetch_time = 9999-12-31T23:59:59-14:00 → OverflowError): exit 1 and a traceback, a
    restart loop under systemd. Every bad value is a ConfigError (exit 2; on reload the old config
    stays)"."""
    daemon = victim.start()
    for key, value in (("endpoint_url", "http://[::1"), ("last_fetch_time", "9999-12-31T23:59:59-14:00")):
        victim.write_config(**{key: value})
        daemon.signal(signal.SIGHUP)
        wait_until(lambda key=key: daemon.output().count("keeping the current configuration") and
                   f"[Target] {key}" in daemon.output(), timeout=20)  # fmt: skip
        victim.bystander_deploys()
        run = cli("run", "--all", "-c", str(victim.config), "--state-dir", str(victim.base / "other"))
        assert run.returncode == 2 and f"[Target] {key}: expected" in run.stderr, run.stderr
    victim.assert_clean_output()


def test_item17_unclear_errors_of_the_command_line_are_clear(victim: Victim) -> None:
    """Issue 9 item 17: "validate /dev/zero or a fifo hangs ... duplicate YAML keys (two hooks: blocks)
    silently keep the last — refuse them; "state dir is a file" reported as "cannot open the lock file:
    File exists"." (history --limit and --log-file: tests/test_cli.py, through the command line too.)"""
    fifo = victim.base / "bundle.zip"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        proc = cli("validate", str(path), timeout=30)
        assert proc.returncode == 1 and "not a regular file or a folder" in proc.stdout + proc.stderr
    state_file = victim.base / "state-file"
    state_file.write_text("")
    victim.write_config()
    proc = cli("run", "--all", "--once", "-c", str(victim.config), "--state-dir", str(state_file))
    assert proc.returncode != 0 and "exists and is not a folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "File exists" not in proc.stderr
    twice = (
        APPSPEC_HEADER + "hooks:\n  BeforeInstall:\n    - location: a.sh\nhooks:\n  AfterInstall:\n"
        "    - location: a.sh\n"
    )
    victim.start()
    victim.upload("Target", zip_bytes({"appspec.yml": twice, "a.sh": hook_script("true")}))
    row = victim.wait_finished(1)
    assert row["failed_event"] == "DownloadBundle" and 'key "hooks" appears twice' in row["error"], row
    victim.bystander_deploys()
