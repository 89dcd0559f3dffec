"""Tests for s3deploy.lifecycle.hooks: real shell scripts, real processes, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.errors import HookFailed
from s3deploy.lifecycle.hooks import RUNAS_PATH, HookResult, run_hook
from tests.agent import pid_alive

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def output_of(script: Path, **kwargs: Any) -> tuple[HookResult, list[str]]:
    """Run ``script`` as a hook (event AfterInstall, cwd its folder, BASE_ENV unless given); its lines."""
    lines: list[str] = []
    kwargs.setdefault("event", "AfterInstall")
    kwargs.setdefault("cwd", script.parent)
    kwargs.setdefault("env", BASE_ENV)
    kwargs.setdefault("timeout_s", 10)
    result = await run_hook(script, on_line=lines.append, **kwargs)
    return result, lines


def write_script(folder: Path, name: str, body: str, *, mode: int = 0o755, shebang: bool = True) -> Path:
    path = folder / name
    path.write_text(("#!/bin/sh\n" if shebang else "") + body)
    path.chmod(mode)
    return path


async def wait_gone(pid: int, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


async def wait_for_pid(path: Path, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (pid := read_pid(path)) is None:
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.02)
    return pid


@pytest.fixture
def reap_pids() -> Iterator[list[int]]:
    """Pids to SIGKILL, with their process groups, at the end of a test, so no sleep outlives it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) != os.getpgrp():  # never our own group, even if a hook failed to detach
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_success_streams_lines_in_order_with_exact_env_and_own_session(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "start.sh",
        'echo "one"\necho "two" >&2\necho "foo=$FOO home=${HOME-unset}"\n'
        "echo \"ids $$ $(cut -d' ' -f5,6 /proc/$$/stat)\"\nprintf 'crlf\\r\\n'\n",
    )
    lines: list[str] = []
    result = await run_hook(
        script,
        event="ApplicationStart",
        cwd=tmp_path,
        env={**BASE_ENV, "FOO": "bar"},
        timeout_s=10,
        on_line=lines.append,
    )
    assert isinstance(result, HookResult)
    assert result.exit_code == 0 and result.event == "ApplicationStart" and result.script == str(script)
    assert lines[:3] == ["one", "two", "foo=bar home=unset"]
    pid, pgrp, session = lines[3].split()[1:]
    assert pid == pgrp == session, "the hook must lead its own session and process group"
    assert lines[4:] == ["crlf"]
    assert 0 <= result.duration_s < 5


async def test_exit_code_fails_with_code_and_last_output(tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "check.sh", 'for i in 1 2 3; do echo "line $i"; done\necho "db down"\nexit 3\n'
    )
    with pytest.raises(HookFailed) as info:
        await run_hook(script, event="ValidateService", cwd=tmp_path, env=BASE_ENV, timeout_s=10)
    err = info.value
    assert err.exit_code == 3 and not err.timed_out
    assert err.event == "ValidateService" and err.script == str(script)
    assert "ValidateService: check.sh exited with code 3" in str(err)
    assert str(err).endswith("line 3\ndb down")


async def test_long_output_message_is_bounded_and_keeps_the_newest_lines(tmp_path: Path) -> None:
    failing = write_script(
        tmp_path, "fail.sh", 'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done\nexit 1\n'
    )
    with pytest.raises(HookFailed) as info:
        await run_hook(failing, event="AfterInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=10)
    assert len(str(info.value)) < 600
    assert str(info.value).endswith("line 298\nline 299")
    assert "\nline 2" in str(info.value) and "line 0\n" not in str(info.value)


async def test_killed_by_signal_is_named(tmp_path: Path) -> None:
    script = write_script(tmp_path, "suicide.sh", "echo bye\nkill -KILL $$\n")
    with pytest.raises(HookFailed) as info:
        await run_hook(script, event="ApplicationStop", cwd=tmp_path, env=BASE_ENV, timeout_s=10)
    assert info.value.exit_code == -signal.SIGKILL
    assert "ApplicationStop: suicide.sh was killed by signal SIGKILL" in str(info.value)


async def test_missing_script(tmp_path: Path) -> None:
    missing = tmp_path / "scripts" / "nope.sh"
    with pytest.raises(HookFailed) as info:
        await run_hook(missing, event="BeforeInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=10)
    assert str(info.value) == f"BeforeInstall: script {missing} not found"
    assert info.value.exit_code is None and info.value.script == str(missing)


async def test_missing_interpreter_fails_clearly(tmp_path: Path) -> None:
    script = tmp_path / "py2.sh"
    script.write_text("#!/usr/bin/no-such-interpreter\nprint 'x'\n")
    script.chmod(0o755)
    with pytest.raises(HookFailed, match=r"BeforeInstall: cannot execute .*py2\.sh.*shebang"):
        await run_hook(script, event="BeforeInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=10)


async def test_non_executable_script_gets_exec_bits_and_runs(tmp_path: Path) -> None:
    script = write_script(tmp_path, "install.sh", "echo ran\n", mode=0o640)
    _, lines = await output_of(script, event="BeforeInstall")
    assert lines == ["ran"]
    assert script.stat().st_mode & 0o777 == 0o750


async def test_script_without_shebang_runs_with_sh(tmp_path: Path) -> None:
    script = write_script(tmp_path, "plain.sh", 'x=41\necho "answer $((x+1))"\n', shebang=False)
    _, lines = await output_of(script)
    assert lines == ["answer 42"]


async def test_cwd_and_stdin_devnull(tmp_path: Path) -> None:
    work = tmp_path / "bundle"
    work.mkdir()
    script = write_script(tmp_path, "where.sh", 'pwd\nif read x; then echo "got $x"; else echo eof; fi\n')
    _, lines = await output_of(script, cwd=work)
    assert lines == [str(work.resolve()), "eof"]


async def test_timeout_kills_whole_group(tmp_path: Path, reap_pids: list[int]) -> None:
    script = write_script(
        tmp_path,
        "hang.sh",
        f"sleep 1000 &\necho $! > {tmp_path}/bg.pid\necho $$ > {tmp_path}/main.pid\n"
        "echo waiting\nsleep 1000\n",
    )
    started = time.monotonic()
    with pytest.raises(HookFailed) as info:
        await run_hook(
            script, event="ApplicationStart", cwd=tmp_path, env=BASE_ENV, timeout_s=0.5, kill_grace_s=2
        )
    elapsed = time.monotonic() - started
    bg, main = int((tmp_path / "bg.pid").read_text()), int((tmp_path / "main.pid").read_text())
    reap_pids += [bg, main]
    assert info.value.timed_out and info.value.exit_code is None
    assert "ApplicationStart: hang.sh timed out after 0.5 s" in str(info.value)
    assert "waiting" in str(info.value)
    assert elapsed < 2, "sleep dies on SIGTERM: no need to wait for the grace period"
    assert await wait_gone(main) and await wait_gone(bg)


async def test_term_ignored_gets_sigkill_after_grace(
    tmp_path: Path, reap_pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    script = write_script(
        tmp_path,
        "stubborn.sh",
        f"trap '' TERM\nsleep 1000 &\necho $! > {tmp_path}/bg.pid\nwhile true; do sleep 0.05; done\n",
    )
    caplog.set_level(logging.INFO, logger="s3deploy")
    started = time.monotonic()
    with pytest.raises(HookFailed) as info:
        await run_hook(
            script, event="ApplicationStop", cwd=tmp_path, env=BASE_ENV, timeout_s=0.5, kill_grace_s=0.5
        )
    elapsed = time.monotonic() - started
    bg = int((tmp_path / "bg.pid").read_text())
    reap_pids.append(bg)
    assert info.value.timed_out
    assert 1.0 <= elapsed < 4
    assert await wait_gone(bg)
    messages = [r.getMessage() for r in caplog.records]
    assert any("sent SIGTERM" in m for m in messages)
    assert any("sent SIGKILL" in m for m in messages)


async def test_cancellation_kills_group_and_propagates(tmp_path: Path, reap_pids: list[int]) -> None:
    script = write_script(
        tmp_path,
        "long.sh",
        f"trap '' TERM\nsleep 1000 &\necho $! > {tmp_path}/bg.pid\n"
        f"echo $$ > {tmp_path}/main.pid\nsleep 1000\n",
    )
    task = asyncio.create_task(
        run_hook(script, event="ApplicationStart", cwd=tmp_path, env=BASE_ENV, timeout_s=60, kill_grace_s=0.5)
    )
    bg = await wait_for_pid(tmp_path / "bg.pid")
    main = await wait_for_pid(tmp_path / "main.pid")
    reap_pids += [bg, main]
    task.cancel()
    await asyncio.sleep(0.2)  # now inside the TERM grace period (TERM is ignored)
    assert not task.done()
    task.cancel()  # a second cancellation must not cut the cleanup short
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(main) and await wait_gone(bg)


async def test_failure_kills_background_children(tmp_path: Path, reap_pids: list[int]) -> None:
    script = write_script(tmp_path, "half.sh", f"sleep 1000 &\necho $! > {tmp_path}/bg.pid\nexit 2\n")
    started = time.monotonic()
    with pytest.raises(HookFailed) as info:
        await run_hook(script, event="AfterInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=10)
    bg = int((tmp_path / "bg.pid").read_text())
    reap_pids.append(bg)
    assert info.value.exit_code == 2
    assert time.monotonic() - started < 2
    assert await wait_gone(bg)


async def test_background_child_holding_stdout_does_not_block(
    tmp_path: Path, reap_pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    script = write_script(
        tmp_path, "daemonize.sh", f"sleep 30 &\necho $! > {tmp_path}/bg.pid\necho done\nexit 0\n"
    )
    started = time.monotonic()
    result, lines = await output_of(script, event="ApplicationStart", stdout_linger_s=0.5)
    elapsed = time.monotonic() - started
    bg = int((tmp_path / "bg.pid").read_text())
    reap_pids.append(bg)
    assert result.exit_code == 0 and lines == ["done"]
    assert elapsed < 0.5 + 2
    assert pid_alive(bg), "a successful hook's background processes are left running"
    assert any("still holds the hook's output" in r.getMessage() for r in caplog.records)


async def test_long_line_without_newline(tmp_path: Path) -> None:
    script = write_script(tmp_path, "big.sh", "head -c 200000 /dev/zero | tr '\\0' x\n")
    _, lines = await output_of(script, event="Install")
    assert "".join(lines) == "x" * 200000
    assert max(len(line) for line in lines) <= 65536


async def test_multibyte_line_split_does_not_garble(tmp_path: Path) -> None:
    # 40000 three-byte characters on one line: pieces must be cut between characters.
    script = write_script(
        tmp_path, "utf.sh", "i=0; while [ $i -lt 40000 ]; do printf '\\342\\202\\254'; i=$((i+1)); done\n"
    )
    lines: list[str] = []
    await run_hook(script, event="Install", cwd=tmp_path, env=BASE_ENV, timeout_s=20, on_line=lines.append)
    assert "".join(lines) == "\u20ac" * 40000


async def test_runas_unknown_user(tmp_path: Path) -> None:
    script = write_script(tmp_path, "x.sh", "echo x\n")
    with pytest.raises(HookFailed, match="runas user 'no-such-user-s3d' for x.sh does not exist"):
        await run_hook(
            script, event="AfterInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=5, runas="no-such-user-s3d"
        )


async def test_runas_other_user_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulates an unprivileged agent when the suite runs as root; the check happens before any spawn.
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 4242)
    script = write_script(tmp_path, "x.sh", "echo x\n")
    with pytest.raises(HookFailed, match="runas: user nobody requested but the agent is not root"):
        await run_hook(script, event="AfterInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=5, runas="nobody")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder another user can traverse (tmp_path's parents are private to the test's user)."""
    with tempfile.TemporaryDirectory(prefix="s3deploy-hooks-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        yield folder


async def test_runas_nobody(open_dir: Path) -> None:
    script = write_script(open_dir, "who.sh", 'id -un\necho "$HOME|$USER|$LOGNAME|$PATH|$KEEP"\n')
    lines: list[str] = []
    call = run_hook(
        script,
        event="AfterInstall",
        cwd=open_dir,
        env={**BASE_ENV, "KEEP": "kept"},
        timeout_s=5,
        runas="nobody",
        on_line=lines.append,
    )
    if os.geteuid() != 0:
        with pytest.raises(HookFailed, match="not root"):
            await call
        return
    await call
    home = pwd.getpwnam("nobody").pw_dir
    assert lines == ["nobody", f"{home}|nobody|nobody|{RUNAS_PATH}|kept"]


#: What the agent may have in its environment that a hook run as another user must not see.
AGENT_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "secret-key-value",
    "AWS_SESSION_TOKEN": "session-token-value",
    "AWS_PROFILE": "production",
    "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
    "S3DEPLOY_CONFIG": "/etc/s3deploy/config.ini",
    "S3DEPLOY_STATE_DIR": "/var/lib/s3deploy",
    "CREDENTIALS_DIRECTORY": "/run/credentials/s3deploy.service",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "SSH_AUTH_SOCK": "/tmp/ssh-root/agent.1",
}
#: What every hook gets (SPEC §7), run as another user or not.
HOOK_VARIABLES = {
    "LIFECYCLE_EVENT": "AfterInstall",
    "DEPLOYMENT_ID": "d-TEST",
    "APPLICATION_NAME": "Web",
    "DEPLOYMENT_GROUP_NAME": "Web",
    "DEPLOYMENT_GROUP_ID": "4f0e",
    "BUNDLE_BUCKET": "bucket",
    "BUNDLE_KEY": "app.zip",
    "BUNDLE_VERSION": "",
    "BUNDLE_ETAG": "etag",
    "S3DEPLOY_BUNDLE_DIR": "/bundle",
    "S3DEPLOY_HOST_ID": "web-1",
    "LANG": "C.UTF-8",
}


async def test_runas_hook_gets_none_of_the_agents_secrets(open_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("running a hook as another user needs root")
    script = write_script(open_dir, "env.sh", "env\n")
    env = {**BASE_ENV, **AGENT_SECRETS, **HOOK_VARIABLES}
    _, lines = await output_of(script, cwd=open_dir, env=env, runas="nobody")
    got = dict(line.split("=", 1) for line in lines if "=" in line)
    assert not [name for name in got if name.startswith("AWS_")]
    assert not got.keys() & AGENT_SECRETS.keys()
    assert not [line for line in lines if "secret-key-value" in line or "session-token-value" in line]
    assert {name: got.get(name) for name in HOOK_VARIABLES} == HOOK_VARIABLES
    assert got["USER"] == "nobody" and got["PATH"] == RUNAS_PATH


async def test_a_hook_run_as_the_agents_own_user_gets_the_agents_environment(tmp_path: Path) -> None:
    script = write_script(tmp_path, "env.sh", "env\n")
    env = {**BASE_ENV, **AGENT_SECRETS, **HOOK_VARIABLES}
    _, lines = await output_of(script, env=env)
    got = dict(line.split("=", 1) for line in lines if "=" in line)
    assert {name: got.get(name) for name in env} == env
