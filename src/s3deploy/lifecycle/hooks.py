"""Run one lifecycle hook script (SPEC §7): env, cwd, timeout, streamed output, TERM→KILL on its group.

Each script runs directly (its shebang) in its own session, so its process group id is its pid and
the whole tree it starts can be signalled at once. On a timeout, a non-zero exit or cancellation of
the calling task (``deployment_timeout``, shutdown) the group gets SIGTERM, then SIGKILL after a grace
period: nothing of a failed hook survives. A successful hook's group is left alone, because daemons
started with ``nohup``/``setsid`` from ApplicationStart are legitimate.

The output pipe is created here rather than with ``stdout=PIPE`` so that we own its read end: when
the main process has exited but a background child still holds the pipe, we stop reading after
``stdout_linger_s`` and close our end instead of waiting for an EOF that may never come (CodeDeploy
waits until the hook's deadline and fails; we return promptly).

With ``runas`` the caller must make ``cwd`` and the script readable and traversable by that user; when
it is not, the failure names the folder or script that blocks it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3deploy.errors import HookFailed

logger = logging.getLogger(__name__)

#: PATH given to a hook run as another user (a login-like PATH; CodeDeploy's ``su -c`` loses it).
RUNAS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Longer output lines are passed to ``on_line`` in pieces of this size, so memory stays bounded.
MAX_LINE_BYTES = 65536
_READ_CHUNK = 65536
_MESSAGE_TAIL_CHARS = 500
_POLL_S = 0.05
_REAP_WAIT_S = 5.0
# After a failed hook's group is killed, EOF is only late if a process escaped the group (setsid).
_FAILED_LINGER_S = 0.5


@dataclass(frozen=True)
class HookResult:
    """What a successful hook run produced: exit code, wall time and the last bytes of its output."""

    event: str
    script: str
    exit_code: int
    duration_s: float
    output_tail: str


class _Tail:
    """The last ``budget`` bytes of output, kept as whole lines (the oldest line may be cut)."""

    def __init__(self, budget: int) -> None:
        self._budget = max(budget, 0)
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0

    def add(self, line: str) -> None:
        raw = line.encode()
        if len(raw) + 1 > self._budget:
            # An over-long line keeps only its end and replaces everything before it.
            raw = raw[len(raw) + 1 - self._budget :] if self._budget > 1 else b""
            line = raw.decode(errors="ignore")
            raw = line.encode()
            self._lines.clear()
            self._size = 0
            if not raw:
                return
        self._lines.append(line)
        self._size += len(raw) + 1
        while self._size > self._budget and self._lines:
            self._size -= len(self._lines.popleft().encode()) + 1

    def text(self) -> str:
        return "\n".join(self._lines)

    def excerpt(self, max_chars: int) -> str:
        """The last lines that fit in ``max_chars`` (for error messages operators read in ``status``)."""
        picked: list[str] = []
        used = 0
        for line in reversed(self._lines):
            if used + len(line) + 1 > max_chars:
                if not picked:
                    picked.append(line[-max_chars:])
                break
            picked.append(line)
            used += len(line) + 1
        return "\n".join(reversed(picked))


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """An index <= limit that does not split a UTF-8 sequence (falls back to ``limit``)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


async def _pump(reader: asyncio.StreamReader, tail: _Tail, on_line: Callable[[str], None] | None) -> None:
    """Read output in chunks, split it into lines and hand each one on (long lines never break us)."""

    def emit(raw: bytes | bytearray) -> None:
        line = bytes(raw).decode("utf-8", errors="replace").rstrip("\r")
        tail.add(line)
        if on_line is not None:
            on_line(line)

    pending = bytearray()
    while chunk := await reader.read(_READ_CHUNK):
        pending += chunk
        start = 0
        while (nl := pending.find(b"\n", start)) != -1:
            emit(pending[start:nl])
            start = nl + 1
        del pending[:start]
        while len(pending) > MAX_LINE_BYTES:
            cut = _utf8_cut(pending, MAX_LINE_BYTES)
            emit(pending[:cut])
            del pending[:cut]
    if pending:
        emit(pending)


def _ensure_runnable(script: Path, event: str, cwd: Path) -> None:
    """Fail clearly on a missing script or cwd; add exec bits where read is set (as CodeDeploy does)."""
    try:
        st = script.stat()
    except FileNotFoundError:
        raise HookFailed(f"{event}: script {script} not found", event=event, script=str(script)) from None
    except OSError as e:
        raise HookFailed(
            f"{event}: cannot read script {script}: {e.strerror}", event=event, script=str(script)
        ) from e
    if not script.is_file():
        raise HookFailed(f"{event}: script {script} is not a regular file", event=event, script=str(script))
    if not cwd.is_dir():
        raise HookFailed(
            f"{event}: working directory {cwd} for {script.name} is not a directory",
            event=event,
            script=str(script),
        )
    mode = st.st_mode & 0o7777
    wanted = mode | ((mode & 0o444) >> 2)
    if wanted != mode:
        try:
            os.chmod(script, wanted)
        except OSError as e:
            raise HookFailed(
                f"{event}: script {script} is not executable and chmod failed: {e.strerror}",
                event=event,
                script=str(script),
            ) from e
        logger.info("%s: added exec bits to %s (mode %o -> %o)", event, script, mode, wanted)


def _runas_options(
    runas: str | None, env: Mapping[str, str], event: str, script: Path
) -> tuple[dict[str, str], dict[str, Any]]:
    """The env copy and extra spawn arguments to run as ``runas`` (only possible as root)."""
    run_env = dict(env)
    if runas is None:
        return run_env, {}
    try:
        entry = pwd.getpwnam(runas)
    except KeyError:
        raise HookFailed(
            f"{event}: runas user {runas!r} for {script.name} does not exist on this host",
            event=event,
            script=str(script),
        ) from None
    if entry.pw_uid == os.geteuid():
        return run_env, {}
    if os.geteuid() != 0:
        raise HookFailed(
            f"{event}: runas: user {runas} requested but the agent is not root",
            event=event,
            script=str(script),
        )
    run_env.update(
        HOME=entry.pw_dir,
        USER=entry.pw_name,
        LOGNAME=entry.pw_name,
        SHELL=entry.pw_shell or "/bin/sh",
        PATH=RUNAS_PATH,
    )
    options: dict[str, Any] = {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid),
    }
    return run_env, options


async def _spawn(
    script: Path,
    *,
    event: str,
    cwd: Path,
    env: dict[str, str],
    stdout_fd: int,
    options: dict[str, Any],
    runas: str | None = None,
) -> asyncio.subprocess.Process:
    """Start the script directly; without a shebang (ENOEXEC) it runs under /bin/sh, as shells do."""
    common: dict[str, Any] = dict(
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout_fd,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **options,
    )
    try:
        try:
            return await asyncio.create_subprocess_exec(str(script), **common)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            logger.info("%s: %s has no shebang; running it with /bin/sh", event, script)
            return await asyncio.create_subprocess_exec("/bin/sh", str(script), **common)
    except OSError as e:
        blocked = _blocked_for(options, cwd, script) if e.errno == errno.EACCES else None
        if blocked is not None:
            raise HookFailed(
                f"{event}: cannot run {script} as {runas}: {blocked}",
                event=event,
                script=str(script),
            ) from e
        raise HookFailed(
            f"{event}: cannot execute {script}: {e.strerror or e} (check its shebang line, "
            f"its interpreter and the working directory {cwd})",
            event=event,
            script=str(script),
        ) from e


def _blocked_for(options: dict[str, Any], cwd: Path, script: Path) -> str | None:
    """Why the runas user in ``options`` cannot reach ``cwd`` or run ``script`` (None: not a mode problem).

    Only used to explain an EACCES, never to refuse in advance (ACLs may grant what the mode bits deny).
    """
    if "user" not in options:
        return None
    uid, groups = options["user"], {options["group"], *options.get("extra_groups", ())}

    def allowed(path: Path, bits: int) -> bool:
        st = path.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits

    try:
        for folder in [*reversed(cwd.parents), cwd, *reversed(script.parents)]:
            if not allowed(folder, 0o1):
                st = folder.stat()
                return (
                    f"folder {folder} is not traversable by that user (mode {st.st_mode & 0o7777:o}, "
                    f"owner uid {st.st_uid}). Runas users need every folder above the release bundle to "
                    f"be traversable: chmod o+x {folder}, or use a --state-dir whose parents are "
                    "(the default /var/lib/s3deploy is)"
                )
        if not allowed(script, 0o5):
            script_mode = script.stat().st_mode & 0o7777
            return f"the script is not readable and executable by that user (mode {script_mode:o})"
    except OSError:
        return None
    return None


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies wait only for their reaper)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _wait_gone(proc: asyncio.subprocess.Process, pgid: int, limit_s: float) -> bool:
    """Poll until the main process is reaped and its group is empty, for at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.returncode is not None and not _group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def _stop_group(proc: asyncio.subprocess.Process, grace_s: float, label: str) -> None:
    """SIGTERM the hook's process group, wait ``grace_s``, then SIGKILL it and wait for it to go."""
    pgid = proc.pid
    if not _signal_group(pgid, signal.SIGTERM):
        return
    logger.warning("%s: sent SIGTERM to process group %d, waiting up to %g s", label, pgid, grace_s)
    if await _wait_gone(proc, pgid, grace_s):
        logger.info("%s: process group %d stopped after SIGTERM", label, pgid)
        return
    if _signal_group(pgid, signal.SIGKILL):
        logger.warning("%s: process group %d still running after %g s, sent SIGKILL", label, pgid, grace_s)
    if not await _wait_gone(proc, pgid, _REAP_WAIT_S):
        logger.error("%s: process group %d survived SIGKILL for %g s", label, pgid, _REAP_WAIT_S)


async def _stop_group_firmly(proc: asyncio.subprocess.Process, grace_s: float, label: str) -> None:
    """``_stop_group`` that a (repeated) cancellation cannot interrupt; re-raises it once done."""
    task = asyncio.ensure_future(_stop_group(proc, grace_s, label))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


async def _drain(reader_task: asyncio.Task[None], linger_s: float, label: str) -> None:
    """Let the reader finish for ``linger_s``; a background child may hold the pipe forever."""
    done, _ = await asyncio.wait({reader_task}, timeout=linger_s)
    if done:
        reader_task.result()  # surfaces an exception raised by on_line
        return
    logger.warning(
        "%s: a background process still holds the hook's output after %g s; no longer reading it",
        label,
        linger_s,
    )


def _exit_message(event: str, name: str, rc: int, tail: _Tail) -> str:
    if rc < 0:
        try:
            what = f"was killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            what = f"was killed by signal {-rc}"
    else:
        what = f"exited with code {rc}"
    excerpt = tail.excerpt(_MESSAGE_TAIL_CHARS)
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
    tail_bytes: int = 4096,
    kill_grace_s: float = 5.0,
    stdout_linger_s: float = 3.0,
) -> HookResult:
    """Run one hook script to completion and return its result; raise ``HookFailed`` if it fails.

    ``script`` is an absolute path; ``env`` is the hook's whole environment (built by the caller);
    ``on_line`` receives each output line (stdout and stderr merged). On failure, timeout or
    cancellation the script's whole process group is stopped (SIGTERM, then SIGKILL after
    ``kill_grace_s``) before the error, or the ``CancelledError``, propagates.
    """
    name = script.name
    label = f"{event} {name}"
    _ensure_runnable(script, event, cwd)
    run_env, options = _runas_options(runas, env, event, script)

    read_fd, write_fd = os.pipe()
    try:
        proc = await _spawn(
            script, event=event, cwd=cwd, env=run_env, stdout_fd=write_fd, options=options, runas=runas
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child has its copy; EOF comes when every writer is gone

    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=_READ_CHUNK, loop=loop)
    pipe = open(read_fd, "rb", buffering=0)  # noqa: ASYNC230 - wraps an fd we own, no file I/O
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream, loop=loop), pipe
        )
    except BaseException:
        pipe.close()
        await _stop_group_firmly(proc, kill_grace_s, label)
        raise
    tail = _Tail(tail_bytes)
    reader_task = asyncio.create_task(_pump(stream, tail, on_line), name=f"hook-output {label}")
    started = time.monotonic()
    logger.info(
        "%s: started (pid %d, timeout %g s%s)", label, proc.pid, timeout_s, f", as {runas}" if options else ""
    )
    stopped = False
    try:
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            logger.warning("%s: timed out after %g s", label, timeout_s)
            stopped = True
            await _stop_group_firmly(proc, kill_grace_s, label)
            await _drain(reader_task, min(stdout_linger_s, _FAILED_LINGER_S), label)
            excerpt = tail.excerpt(_MESSAGE_TAIL_CHARS)
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
            await _stop_group_firmly(proc, kill_grace_s, label)
            await _drain(reader_task, min(stdout_linger_s, _FAILED_LINGER_S), label)
            raise HookFailed(
                _exit_message(event, name, rc, tail), event=event, script=str(script), exit_code=rc
            )
        await _drain(reader_task, stdout_linger_s, label)
        duration = time.monotonic() - started
        logger.info("%s: succeeded in %.2f s", label, duration)
        return HookResult(
            event=event, script=str(script), exit_code=rc, duration_s=duration, output_tail=tail.text()
        )
    except BaseException:
        # Cancellation (deployment_timeout, shutdown) or an error from on_line: nothing may survive.
        if not stopped:
            await _stop_group_firmly(proc, kill_grace_s, label)
        raise
    finally:
        # Not awaited: a cancellation arriving here must not be swallowed; the callback only
        # retrieves the reader's outcome so asyncio does not report it as never retrieved.
        reader_task.cancel()
        reader_task.add_done_callback(_consume)
        transport.close()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
