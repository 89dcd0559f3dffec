"""Which hook sessions are running, on disk, so that a restarted agent can stop what a dead one left.

Hooks run in their own sessions, so they outlive an agent killed with SIGKILL (or a crash, or the OOM
killer). While a hook runs, its section's record file (``StateLayout.hook_session``: 0600 in a 0700
folder) names its session and the agent process that runs it; the file is removed when the hook ends.
A later agent that finds a record whose agent is gone stops that session (common/procgroup.py) before
it redeploys the section: two generations of hooks never run side by side.

Every id is checked against pid reuse: the record holds the boot id and the start times of the session
leader and of the agent (common/procgroup.py ``Session`` explains how the leader's start time is used).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote

from s3deploy.common.files import atomic_write
from s3deploy.common.procgroup import Session, boot_id, proc_stat, stop_session
from s3deploy.common.text import printable
from s3deploy.state.layout import PRIVATE_DIR_MODE, StateLayout

logger = logging.getLogger(__name__)

#: SIGTERM to SIGKILL for a leftover hook (as for a hook that times out: SPEC §7).
LEFTOVER_GRACE_S = 5.0
_VERSION = 1


@dataclass(frozen=True)
class SessionRecord:
    """One running hook: its session, its leader's start time, the agent running it, this boot."""

    event: str
    script: str
    sid: int
    sid_start: int
    agent_pid: int
    agent_start: int
    boot_id: str
    v: int = _VERSION

    def agent_alive(self) -> bool:
        """Whether the agent process that wrote this record still runs (same pid, same start time)."""
        stat = proc_stat(self.agent_pid)
        return stat is not None and stat.running and stat.start_ticks == self.agent_start


def record_hook(path: Path, session: Session, *, event: str, script: str) -> bool:
    """Write the record of a hook that leads ``session`` (just started by this process).

    False (logged) when it cannot be written: the hook still runs, only a restart would not find it.
    """
    me = proc_stat(os.getpid())
    if session.leader_start is None or me is None:
        return False  # the hook is already gone (and reaped): nothing to record
    record = SessionRecord(
        event=event,
        script=script,
        sid=session.sid,
        sid_start=session.leader_start,
        agent_pid=me.pid,
        agent_start=me.start_ticks,
        boot_id=boot_id(),
    )
    try:
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        # Not durable: after a power cut the boot id differs and the record means nothing anyway.
        atomic_write(path, json.dumps(asdict(record)), durable=False)
    except OSError as e:
        logger.warning(
            "%s %s: cannot record its session in %s (%s); a restarted agent would not stop it",
            event,
            script,
            path,
            e.strerror or e,
        )
        return False
    return True


def forget_hook(path: Path) -> None:
    """Remove the record of a hook that has ended (it is no longer ours to stop)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        logger.warning("cannot remove the hook session record %s: %s", path, e.strerror or e)


def _read(path: Path) -> SessionRecord | None:
    try:
        data = json.loads(path.read_bytes())
        if data.get("v") != _VERSION:
            raise ValueError(f"version {data.get('v')!r}")
        return SessionRecord(**data)
    except (OSError, ValueError, TypeError) as e:
        logger.warning("ignoring the unreadable hook session record %s: %s", path, e)
        return None


def kill_leftover_hooks(layout: StateLayout, sections: Iterable[str] | None = None) -> list[SessionRecord]:
    """Stop every hook session left running by a dead agent (of ``sections``, or all); return them.

    Records of a live agent (another process deploying that section right now) are left alone. Blocks
    while it stops a session (SIGTERM, then SIGKILL after ``LEFTOVER_GRACE_S``): call it from a thread
    in async code. Records are removed once their session is gone.
    """
    if sections is None:
        try:
            paths = sorted(layout.hooks_dir.glob("*.json"))
        except OSError:
            paths = []
    else:
        paths = [layout.hook_session(name) for name in sections]
    stopped: list[SessionRecord] = []
    for path in paths:
        if not path.is_file():
            continue
        record = _read(path)
        section = printable(unquote(path.stem))
        if record is not None and record.agent_alive():
            logger.debug(
                "[%s] hook session %d belongs to running agent %d", section, record.sid, record.agent_pid
            )
            continue
        # A record from before a reboot names processes that are all gone.
        session = Session(record.sid, record.sid_start) if record and record.boot_id == boot_id() else None
        if record is not None and session is not None and session.members():
            logger.warning(
                "[%s] %s %s (session %d) is still running, left by agent process %d that ended: stopping it",
                section,
                printable(record.event),
                printable(record.script),
                record.sid,
                record.agent_pid,
            )
            label = f"[{section}] leftover {printable(record.event)} {printable(Path(record.script).name)}"
            if not stop_session(session, grace_s=LEFTOVER_GRACE_S, label=label):
                continue  # survivors are logged; keep the record so that the next start tries again
            stopped.append(record)
        with contextlib.suppress(OSError):
            path.unlink()
    return stopped
