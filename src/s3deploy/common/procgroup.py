"""Stopping a process session: SIGTERM, a grace period, SIGKILL until none is left, a log line per step.

The one implementation for everything s3deploy starts and must stop: hooks (each runs in its own
session), the local SeaweedFS and the demo's agent. A session rather than a process group: a child that
moves itself into a new process group (``setpgid(0, 0)``, a shell with job control, a double fork)
stays in its session, so it is found and stopped too. Only ``setsid()`` leaves a session; that is how a
program asks to be a daemon of its own (``setsid myapp``), and it is then no longer ours to stop.

Members are found in /proc by their session id. Each one is signalled through a pidfd opened on it and
checked again after opening: a pid reused by an unrelated process in between is never signalled. A
:class:`Session` carries its leader's start time, so a session that ended and whose id was handed to a
new process is never taken for the old one. SIGKILL is sent again at every poll until no member is
left, so children forked during the stop die too.

The stop sequence is written once (:func:`_plan`, no I/O of its own) and driven either by blocking sleeps
(:func:`stop_session`, for synchronous callers) or by the event loop (:func:`stop_session_async`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: How often a stop looks again whether the session is empty (and re-sends SIGKILL).
POLL_S = 0.05
#: How long SIGKILL may take to empty a session before the stop reports survivors.
KILL_WAIT_S = 5.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that identify a process and its session."""

    pid: int
    state: str
    session: int
    #: Clock ticks after boot at which the process started: with the pid, a process's identity.
    start_ticks: int

    @property
    def running(self) -> bool:
        """False for a zombie (dead, waiting for its parent to reap it) or a dying process."""
        return self.state not in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    """The process ``pid`` as /proc shows it now, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything, parentheses and spaces included.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(pid, fields[0].decode(), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    """This boot's id: a pid and a start time name one process only within one boot."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def session_members(sid: int, *, started_since: int = 0) -> list[ProcStat]:
    """Every running (non-zombie) process of session ``sid`` started at or after ``started_since`` ticks."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    members = []
    for name in names:
        if not name.isdigit():
            continue
        stat = proc_stat(int(name))
        if stat is not None and stat.session == sid and stat.running and stat.start_ticks >= started_since:
            members.append(stat)
    return members


def _send(member: ProcStat, sig: signal.Signals) -> bool:
    """Signal ``member`` if it is still that process and still in its session; False when it is gone."""
    try:
        pidfd = os.pidfd_open(member.pid)
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        pidfd = -1  # no pidfds here: the check below and the signal are then a few microseconds apart
    try:
        now = proc_stat(member.pid)
        if now is None or now.start_ticks != member.start_ticks or now.session != member.session:
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(member.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a set-uid child of an unprivileged agent: reported if it survives
        logger.debug(
            "cannot send %s to pid %d of session %d: permission denied", sig.name, member.pid, member.session
        )
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return True


@dataclass(frozen=True)
class Session:
    """A session as its leader started it: the session id (the leader's pid) and the leader's start time.

    The start time guards against pid reuse: a pid is never handed out again while it is still some
    process's session id, so a process now holding the pid with another start time means that session
    has ended; and no member of it can have started before its leader.
    """

    sid: int
    #: None when the leader was already gone when looked at: then any process holding the pid is new.
    leader_start: int | None

    @classmethod
    def led_by(cls, pid: int) -> Session:
        """The session of a leader just started by the caller (not reaped yet, so its pid is its own)."""
        stat = proc_stat(pid)
        return cls(pid, stat.start_ticks if stat is not None else None)

    def members(self) -> list[ProcStat]:
        """Its processes still running (none once it has ended, whoever holds the pid now)."""
        leader = proc_stat(self.sid)
        if leader is not None and leader.start_ticks != self.leader_start:
            return []
        return session_members(self.sid, started_since=self.leader_start or 0)

    def signal(self, sig: signal.Signals) -> int:
        """Send ``sig`` to every running member; return how many were signalled."""
        return sum(_send(member, sig) for member in self.members())


@dataclass(frozen=True)
class _Wait:
    """A step of the plan: wait up to ``seconds`` until ``done()`` (polled every POLL_S) says True."""

    seconds: float
    done: Callable[[], bool]


def _plan(session: Session, grace_s: float, label: str, kill_wait_s: float) -> Generator[_Wait, bool, bool]:
    """The stop sequence; yields waits, is sent whether each one ended with the session empty."""
    what = f"session {session.sid}"
    count = session.signal(signal.SIGTERM)
    if count == 0:
        logger.debug("%s: %s has no process left", label, what)
        return True
    # A stopped process acts on SIGTERM only once continued (systemd sends SIGCONT too).
    session.signal(signal.SIGCONT)
    logger.info("%s: sent SIGTERM to %d process(es) of %s, waiting up to %g s", label, count, what, grace_s)
    if (yield _Wait(grace_s, lambda: not session.members())):
        logger.info("%s: %s stopped after SIGTERM", label, what)
        return True
    count = session.signal(signal.SIGKILL)
    logger.warning(
        "%s: %s still running after %g s, sent SIGKILL to %d process(es)", label, what, grace_s, count
    )
    # SIGKILL again at every poll: a member may have forked between two scans.
    if (yield _Wait(kill_wait_s, lambda: session.signal(signal.SIGKILL) == 0)):
        logger.info("%s: %s killed", label, what)
        return True
    left = session.members()
    logger.error(
        "%s: %d process(es) of %s survived SIGKILL for %g s (pids %s: uninterruptible I/O, or not ours)",
        label,
        len(left),
        what,
        kill_wait_s,
        " ".join(str(m.pid) for m in left),
    )
    return False


def stop_session(session: Session, *, grace_s: float, label: str, kill_wait_s: float = KILL_WAIT_S) -> bool:
    """SIGTERM every process of ``session``, wait up to ``grace_s``, then SIGKILL until none is left.

    Blocks (synchronous callers: devtools, recovery at startup). Returns True when nothing of the
    session is left running (a zombie waits only for its parent to reap it).
    """
    plan = _plan(session, grace_s, label, kill_wait_s)
    try:
        step = next(plan)
        while True:
            deadline = time.monotonic() + step.seconds
            while not (done := step.done()) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            step = plan.send(done)
    except StopIteration as finished:
        return bool(finished.value)


async def stop_session_async(
    session: Session, *, grace_s: float, label: str, kill_wait_s: float = KILL_WAIT_S
) -> bool:
    """:func:`stop_session` waiting on the event loop instead of blocking it."""
    plan = _plan(session, grace_s, label, kill_wait_s)
    try:
        step = next(plan)
        while True:
            deadline = time.monotonic() + step.seconds
            while True:
                done = step.done()
                if done or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(POLL_S)
            step = plan.send(done)
    except StopIteration as finished:
        return bool(finished.value)
