"""Starting one hook script: checks, the environment, the user (``runas``), its own session.

The script is executed directly (its shebang; without one, by /bin/sh as shells do) with stdin from
/dev/null, stdout and stderr into one pipe, ``cwd`` as given, and ``start_new_session``: it leads a new
session, whose id is its pid, so everything it starts can be found and stopped (common/procgroup.py).

With ``runas`` another user, the agent's own secrets stay behind (:data:`RUNAS_DROPPED`): a hook that the
application user controls must not be able to read the credentials of a root agent. With ``runas`` the
caller must make ``cwd`` and the script readable and traversable by that user; when it is not, the
failure names the folder or script that blocks it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3deploy.errors import HookFailed

logger = logging.getLogger(__name__)

#: PATH given to a hook run as another user (a login-like PATH; CodeDeploy's ``su -c`` loses it).
RUNAS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Variables a hook running as another user does not get: every ``AWS_*`` (credentials, profile and
#: credential-file paths, container and web-identity credentials), the agent's own settings, systemd's
#: channels to the agent (credentials folder, notify socket, watchdog) and root's ssh-agent.
RUNAS_DROPPED_PREFIXES = ("AWS_",)
RUNAS_DROPPED = frozenset(
    {
        "S3DEPLOY_CONFIG",
        "S3DEPLOY_STATE_DIR",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "SSH_AUTH_SOCK",
    }
)


@dataclass(frozen=True)
class Launch:
    """How to start one script: its environment and, for ``runas``, the user and groups to run as."""

    env: dict[str, str]
    user: pwd.struct_passwd | None = None
    groups: list[int] = field(default_factory=list)

    def spawn_options(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": self.groups}


def ensure_runnable(script: Path, event: str, cwd: Path) -> None:
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


def runas_env(env: Mapping[str, str], user: pwd.struct_passwd) -> dict[str, str]:
    """``env`` for a hook running as ``user``: the agent's secrets dropped, a login-like identity set."""
    kept = {
        name: value
        for name, value in env.items()
        if name not in RUNAS_DROPPED and not name.startswith(RUNAS_DROPPED_PREFIXES)
    }
    kept.update(
        HOME=user.pw_dir,
        USER=user.pw_name,
        LOGNAME=user.pw_name,
        SHELL=user.pw_shell or "/bin/sh",
        PATH=RUNAS_PATH,
    )
    return kept


def plan_launch(runas: str | None, env: Mapping[str, str], event: str, script: Path) -> Launch:
    """The environment and identity to run ``script`` with (another user only possible as root)."""
    if runas is None:
        return Launch(dict(env))
    try:
        entry = pwd.getpwnam(runas)
    except KeyError:
        raise HookFailed(
            f"{event}: runas user {runas!r} for {script.name} does not exist on this host",
            event=event,
            script=str(script),
        ) from None
    if entry.pw_uid == os.geteuid():
        return Launch(dict(env))
    if os.geteuid() != 0:
        raise HookFailed(
            f"{event}: runas: user {runas} requested but the agent is not root",
            event=event,
            script=str(script),
        )
    return Launch(runas_env(env, entry), entry, os.getgrouplist(entry.pw_name, entry.pw_gid))


async def spawn(
    script: Path, *, event: str, cwd: Path, launch: Launch, stdout_fd: int
) -> asyncio.subprocess.Process:
    """Start the script in a new session; without a shebang (ENOEXEC) it runs under /bin/sh."""
    options = launch.spawn_options()
    common: dict[str, Any] = dict(
        cwd=cwd,
        env=launch.env,
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
        blocked = _blocked_for(launch, cwd, script) if e.errno == errno.EACCES else None
        if blocked is not None and launch.user is not None:
            raise HookFailed(
                f"{event}: cannot run {script} as {launch.user.pw_name}: {blocked}",
                event=event,
                script=str(script),
            ) from e
        raise HookFailed(
            f"{event}: cannot execute {script}: {e.strerror or e} (check its shebang line, "
            f"its interpreter and the working directory {cwd})",
            event=event,
            script=str(script),
        ) from e


def _blocked_for(launch: Launch, cwd: Path, script: Path) -> str | None:
    """Why the runas user cannot reach ``cwd`` or run ``script`` (None: not a mode problem).

    Only used to explain an EACCES, never to refuse in advance (ACLs may grant what the mode bits deny).
    """
    if launch.user is None:
        return None
    uid, groups = launch.user.pw_uid, {launch.user.pw_gid, *launch.groups}

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
