"""A hook's whole session is stopped, also children that left its process group; leftovers of a dead agent.

Real processes: children that call setpgid(0, 0) (as a shell with job control does) or double-fork,
real signals, and hook session records read back by a later "agent".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3deploy.common.procgroup import Session, boot_id, proc_stat, session_members, stop_session
from s3deploy.errors import HookFailed
from s3deploy.lifecycle.hooks import run_hook
from s3deploy.lifecycle.sessions import SessionRecord, kill_leftover_hooks, record_hook
from s3deploy.state.layout import StateLayout
from tests.test_hooks import BASE_ENV, wait_for_pid, wait_gone, write_script

#: A child that leaves the hook's process group (but not its session) and sleeps; writes its pid first.
ESCAPER = (
    f"{sys.executable} -c 'import os, sys, time; os.setpgid(0, 0); "
    'open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(1000)\''
)


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids to SIGKILL whole at the end of a test, so that nothing a test started outlives it."""
    sids: list[int] = []
    yield sids
    for sid in sids:
        for member in session_members(sid):
            os.kill(member.pid, signal.SIGKILL)
    for proc in _started:
        proc.wait()
    _started.clear()


#: Leaders started by start_session, reaped by the ``sessions`` fixture.
_started: list[subprocess.Popen[bytes]] = []


def escaping_hook(folder: Path, name: str, tail: str) -> Path:
    """A hook whose child moves to its own process group, and one that double-forks into its own group."""
    return write_script(
        folder,
        name,
        f"echo $$ > {folder}/main.pid\n"
        f"{ESCAPER} {folder}/moved.pid &\n"
        f"( {ESCAPER} {folder}/orphan.pid & ) \n"  # the subshell exits: the sleeper is an orphan
        f"while [ ! -s {folder}/moved.pid ] || [ ! -s {folder}/orphan.pid ]; do sleep 0.02; done\n"
        "echo ready\n" + tail,
    )


def assert_moved_out_of_the_group(folder: Path) -> tuple[int, int, int]:
    main = int((folder / "main.pid").read_text())
    moved, orphan = int((folder / "moved.pid").read_text()), int((folder / "orphan.pid").read_text())
    for pid in (moved, orphan):
        stat = proc_stat(pid)
        assert stat is None or (os.getpgid(pid) == pid and stat.session == main), (
            "the test child did not move"
        )
    return main, moved, orphan


async def test_timeout_stops_children_that_left_the_process_group(
    tmp_path: Path, sessions: list[int]
) -> None:
    script = escaping_hook(tmp_path, "hang.sh", "sleep 1000\n")
    task = asyncio.create_task(
        run_hook(script, event="ApplicationStart", cwd=tmp_path, env=BASE_ENV, timeout_s=3, kill_grace_s=1)
    )
    sessions.append(await wait_for_pid(tmp_path / "main.pid"))
    await wait_for_pid(tmp_path / "orphan.pid")
    await wait_for_pid(tmp_path / "moved.pid")
    main, moved, orphan = assert_moved_out_of_the_group(tmp_path)
    with pytest.raises(HookFailed) as info:
        await task
    assert info.value.timed_out
    assert await wait_gone(moved) and await wait_gone(orphan)
    assert session_members(main) == [], "nothing of the hook's session may survive its timeout"


async def test_failure_stops_children_that_left_the_process_group(
    tmp_path: Path, sessions: list[int]
) -> None:
    script = escaping_hook(tmp_path, "fail.sh", "exit 4\n")
    with pytest.raises(HookFailed) as info:
        await run_hook(script, event="ValidateService", cwd=tmp_path, env=BASE_ENV, timeout_s=20)
    main, moved, orphan = assert_moved_out_of_the_group(tmp_path)
    sessions.append(main)
    assert info.value.exit_code == 4
    assert await wait_gone(moved) and await wait_gone(orphan)
    assert session_members(main) == []


async def test_cancellation_stops_children_that_left_the_process_group(
    tmp_path: Path, sessions: list[int]
) -> None:
    script = escaping_hook(tmp_path, "long.sh", "trap '' TERM\nwhile true; do sleep 0.05; done\n")
    task = asyncio.create_task(
        run_hook(script, event="AfterInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=60, kill_grace_s=0.5)
    )
    sessions.append(await wait_for_pid(tmp_path / "main.pid"))
    await wait_for_pid(tmp_path / "orphan.pid")
    await wait_for_pid(tmp_path / "moved.pid")
    main, moved, orphan = assert_moved_out_of_the_group(tmp_path)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(moved) and await wait_gone(orphan) and await wait_gone(main)
    assert session_members(main) == [], "nothing of the hook's session may survive a cancellation"


async def test_a_successful_hook_records_its_session_while_it_runs_and_removes_the_record(
    tmp_path: Path,
) -> None:
    layout = StateLayout(tmp_path / "state")
    record_file = layout.hook_session("Web/1")
    script = write_script(tmp_path, "slow.sh", f"echo $$ > {tmp_path}/main.pid\nsleep 0.5\n")
    task = asyncio.create_task(
        run_hook(
            script, event="BeforeInstall", cwd=tmp_path, env=BASE_ENV, timeout_s=20, session_file=record_file
        )
    )
    main = await wait_for_pid(tmp_path / "main.pid")
    record = SessionRecord(**json.loads(record_file.read_text()))
    leader = proc_stat(main)
    assert leader is not None
    assert (record.sid, record.sid_start, record.agent_pid) == (main, leader.start_ticks, os.getpid())
    assert record.boot_id == boot_id() and record.event == "BeforeInstall" and record.script == str(script)
    assert record_file.stat().st_mode & 0o777 == 0o600
    assert record_file.parent.stat().st_mode & 0o777 == 0o700
    assert kill_leftover_hooks(layout) == [], "the hook of a live agent is not a leftover"
    assert proc_stat(main) is not None and record_file.exists()
    await task
    assert not record_file.exists()


# ------------------------------------------------------------------ leftovers of a dead agent


def start_session(tmp_path: Path, name: str, sessions: list[int]) -> Session:
    """A real session (a shell leading it, a child that left its process group), like a running hook."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"{ESCAPER} {tmp_path}/{name}.pid & exec sleep 1000"], start_new_session=True
    )
    _started.append(proc)
    session = Session.led_by(proc.pid)
    sessions.append(session.sid)
    deadline = time.monotonic() + 10
    while not (tmp_path / f"{name}.pid").is_file() or not (tmp_path / f"{name}.pid").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return session


def dead_agent() -> tuple[int, int]:
    """The pid and start time of a process that has ended (an agent killed with SIGKILL)."""
    proc = subprocess.Popen(["/bin/true"])
    stat = None
    while stat is None or stat.running:  # read before it is reaped: a zombie keeps its stat
        stat = proc_stat(proc.pid)
        assert stat is not None
    proc.wait()
    return stat.pid, stat.start_ticks


def write_record(path: Path, session: Session, *, agent: tuple[int, int], boot: str | None = None) -> None:
    assert session.leader_start is not None
    record = SessionRecord(
        event="ApplicationStart",
        script="/x/scripts/start.sh",
        sid=session.sid,
        sid_start=session.leader_start,
        agent_pid=agent[0],
        agent_start=agent[1],
        boot_id=boot or boot_id(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.__dict__))


def test_leftover_hooks_of_a_dead_agent_are_stopped_and_only_they(
    tmp_path: Path, sessions: list[int]
) -> None:
    layout = StateLayout(tmp_path / "state")
    left, live, rebooted, reused = (
        start_session(tmp_path, n, sessions) for n in ("left", "live", "rebooted", "reused")
    )
    sessions += [left.sid, live.sid, rebooted.sid, reused.sid]
    assert reused.leader_start is not None
    dead = dead_agent()
    me = proc_stat(os.getpid())
    assert me is not None
    write_record(layout.hook_session("Left"), left, agent=dead)
    write_record(layout.hook_session("Live"), live, agent=(me.pid, me.start_ticks))
    write_record(layout.hook_session("Rebooted"), rebooted, agent=dead, boot="another-boot")
    # The pid of the recorded leader now belongs to a process started at another time: not that session.
    write_record(layout.hook_session("Reused"), Session(reused.sid, reused.leader_start - 1), agent=dead)

    stopped = kill_leftover_hooks(layout, ["Left", "Live", "Rebooted", "Reused", "Never"])

    assert [r.sid for r in stopped] == [left.sid]
    assert session_members(left.sid) == [], "every process of the leftover session, moved ones too"
    for kept in (live, rebooted, reused):
        assert len(session_members(kept.sid)) == 2, "never stop a session that is not the recorded one"
    assert layout.hook_session("Live").exists(), "a live agent's record stays"
    for gone in ("Left", "Rebooted", "Reused"):
        assert not layout.hook_session(gone).exists()


def test_leftover_hooks_of_every_section_when_no_section_is_named(
    tmp_path: Path, sessions: list[int]
) -> None:
    layout = StateLayout(tmp_path / "state")
    one, two = start_session(tmp_path, "one", sessions), start_session(tmp_path, "two", sessions)
    write_record(layout.hook_session("One"), one, agent=dead_agent())
    write_record(layout.hook_session("Two words"), two, agent=dead_agent())
    layout.hook_session("Broken").write_text("{not json")
    assert sorted(r.sid for r in kill_leftover_hooks(layout)) == sorted([one.sid, two.sid])
    assert session_members(one.sid) == [] and session_members(two.sid) == []
    assert list(layout.hooks_dir.iterdir()) == []


def test_a_session_whose_leader_pid_was_reused_is_left_alone(tmp_path: Path, sessions: list[int]) -> None:
    real = start_session(tmp_path, "real", sessions)
    assert real.leader_start is not None
    assert Session(real.sid, real.leader_start + 1).members() == []
    assert stop_session(Session(real.sid, real.leader_start + 1), grace_s=0.5, label="test")
    assert len(real.members()) == 2
    assert stop_session(real, grace_s=0.5, label="test")
    assert real.members() == []


def test_record_is_not_written_for_a_hook_already_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen(["/bin/true"], start_new_session=True)
    proc.wait()
    assert not record_hook(tmp_path / "r.json", Session.led_by(proc.pid), event="E", script="s")
    assert not (tmp_path / "r.json").exists()
