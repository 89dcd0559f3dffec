"""Run one lifecycle hook script (SPEC §7): env, cwd, timeout, streamed output, stop of its whole session.

Each script runs directly (its shebang) as the leader of its own session (lifecycle/spawn.py), so
everything it starts can be found and stopped, also a child that moved to a process group of its own.
On a timeout, a non-zero exit or cancellation of the calling task (``deployment_timeout``, shutdown) the
session gets SIGTERM, then SIGKILL after a grace period (common/procgroup.py): nothing of a failed hook
survives. A successful hook's session is left alone, because daemons started with ``nohup`` from
ApplicationStart are legitimate.

While a hook runs, its session is recorded in ``session_file`` (lifecycle/sessions.py) so that an agent
started after this one died can stop it before deploying again. Output is read by lifecycle/output.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from s3deploy.common.procgroup import Session, stop_session_async
from s3deploy.common.text import printable
from s3deploy.errors import HookFailed
from s3deploy.lifecycle.output import OutputTail, attach, drain, open_pipe, pump
from s3deploy.lifecycle.sessions import forget_hook, record_hook
from s3deploy.lifecycle.spawn import RUNAS_PATH, ensure_runnable, plan_launch, spawn

__all__ = ["RUNAS_PATH", "HookResult", "run_hook"]

logger = logging.getLogger(__name__)

#: Characters of the hook's last output quoted in the error of a failed hook (status, history).
MESSAGE_TAIL_CHARS = 500
# After a failed hook's session is stopped, EOF is only late if a process left the session (setsid).
_FAILED_LINGER_S = 0.5


@dataclass(frozen=True)
class HookResult:
    """What a successful hook run produced: exit code and wall time."""

    event: str
    script: str
    exit_code: int
    duration_s: float


async def _stop(proc: asyncio.subprocess.Process, session: Session, grace_s: float, label: str) -> bool:
    gone = await stop_session_async(session, grace_s=grace_s, label=label)
    if gone:
        await proc.wait()  # the main process is a zombie now: let asyncio reap it
    return gone


async def _stop_firmly(
    proc: asyncio.subprocess.Process, session: Session, grace_s: float, label: str
) -> bool:
    """Stop the hook's session; a (repeated) cancellation cannot interrupt it, and is re-raised after."""
    task = asyncio.ensure_future(_stop(proc, session, grace_s, label))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    gone = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return gone


def _exit_message(event: str, name: str, rc: int, tail: OutputTail) -> str:
    if rc < 0:
        try:
            what = f"was killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            what = f"was killed by signal {-rc}"
    else:
        what = f"exited with code {rc}"
    excerpt = tail.excerpt()
    return f"{event}: {name} {what}" + (f"; last output:\n{excerpt}" if excerpt else "; no output")


async def run_hook(
    script: Path,
    *,
    event: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    runas: str | None = None,
    on_line: Callable[[str], None] | None = None,
    kill_grace_s: float = 5.0,
    stdout_linger_s: float = 3.0,
    session_file: Path | None = None,
) -> HookResult:
    """Run one hook script to completion and return its result; raise ``HookFailed`` if it fails.

    ``script`` is an absolute path; ``env`` is the hook's whole environment (built by the caller; with
    ``runas`` another user, the agent's secrets are dropped from it: lifecycle/spawn.py). ``on_line``
    receives each output line (stdout and stderr merged), already printable. On failure, timeout or
    cancellation the script's whole session is stopped (SIGTERM, then SIGKILL after ``kill_grace_s``)
    before the error, or the ``CancelledError``, propagates. ``session_file``: where to record the
    running hook's session for a later agent (removed when the hook ends).
    """
    name = script.name
    label = f"{event} {printable(name)}"
    ensure_runnable(script, event, cwd)
    launch = plan_launch(runas, env, event, script)
    read_fd, write_fd = open_pipe()
    try:
        proc = await spawn(script, event=event, cwd=cwd, launch=launch, stdout_fd=write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child has its copy; EOF comes when every writer is gone
    session = Session.led_by(proc.pid)
    if session_file is not None:
        # A few microseconds of file work, kept on the loop so no cancellation can come in between.
        record_hook(session_file, session, event=event, script=str(script))
    try:
        stream, transport = await attach(read_fd)
    except BaseException:
        await _stop_firmly(proc, session, kill_grace_s, label)
        if session_file is not None:
            forget_hook(session_file)
        raise
    tail = OutputTail(MESSAGE_TAIL_CHARS)
    reader_task = asyncio.create_task(pump(stream, tail, on_line, label), name=f"hook-output {label}")
    started = time.monotonic()
    as_user = f", as {launch.user.pw_name}" if launch.user is not None else ""
    logger.info("%s: started (pid %d, timeout %g s%s)", label, proc.pid, timeout_s, as_user)
    stopped = False
    try:
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            logger.warning("%s: timed out after %g s", label, timeout_s)
            stopped = True
            await _stop_firmly(proc, session, kill_grace_s, label)
            await drain(reader_task, min(stdout_linger_s, _FAILED_LINGER_S), label)
            excerpt = tail.excerpt()
            raise HookFailed(
                f"{event}: {name} timed out after {timeout_s:g} s"
                + (f"; last output:\n{excerpt}" if excerpt else ""),
                event=event,
                script=str(script),
                timed_out=True,
            ) from None
        if rc != 0:
            # Stop what it left behind first, so its output pipe closes and we need not linger.
            stopped = True
            await _stop_firmly(proc, session, kill_grace_s, label)
            await drain(reader_task, min(stdout_linger_s, _FAILED_LINGER_S), label)
            raise HookFailed(
                _exit_message(event, name, rc, tail), event=event, script=str(script), exit_code=rc
            )
        await drain(reader_task, stdout_linger_s, label)
        duration = time.monotonic() - started
        logger.info("%s: succeeded in %.2f s", label, duration)
        return HookResult(event=event, script=str(script), exit_code=rc, duration_s=duration)
    except BaseException:
        # Cancellation (deployment_timeout, shutdown) or an unexpected error: nothing may survive.
        if not stopped:
            await _stop_firmly(proc, session, kill_grace_s, label)
        raise
    finally:
        # Only once its session is stopped (or the hook succeeded): a restart must not stop it then.
        if session_file is not None:
            forget_hook(session_file)
        # Not awaited: a cancellation arriving here must not be swallowed; the callback only
        # retrieves the reader's outcome so asyncio does not report it as never retrieved.
        reader_task.cancel()
        reader_task.add_done_callback(_consume)
        transport.close()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
