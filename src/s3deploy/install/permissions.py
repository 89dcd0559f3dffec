"""appspec ``permissions``: checked before anything changes, applied to what this Install put on disk.

Matching is the CodeDeploy agent's (``LinuxPermissionInfo``): ``pattern: "**"`` is everything under
``object``; another pattern is a glob on the names of ``object``'s direct children, where only ``*`` is
special (``?`` and ``[`` are literal characters). Where s3deploy differs on purpose (README): with "**"
the object folder itself counts when this Install created it, ``except`` names match at any depth, and
several entries may match one path (they apply in appspec order; a later one wins).

Each path is changed through a descriptor opened without following links (``dirs.open_entry``): chown
first (it clears setuid/setgid bits a later chmod must be able to set), then chmod, ACLs, SELinux context.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Collection

from s3deploy.appspec import Permission
from s3deploy.errors import InstallError
from s3deploy.install import acl
from s3deploy.install.cancel import checkpoint
from s3deploy.install.dirs import Dirs, inside, open_entry, split
from s3deploy.install.plan import Plan


def preflight(permissions: tuple[Permission, ...]) -> None:
    """Fail before anything changes when a permission cannot be applied on this host: an owner or group
    that does not exist, an acls entry that does not parse or names an unknown user or group, a context
    without SELinux and chcon."""
    for i, perm in enumerate(permissions):
        where = f"permissions[{i}] (object {perm.object})"
        if perm.owner is not None:
            _lookup(pwd.getpwnam, perm.owner, f"{where}: owner {perm.owner!r} is not a user on this host")
        if perm.group is not None:
            _lookup(grp.getgrnam, perm.group, f"{where}: group {perm.group!r} is not a group on this host")
        for j, text in enumerate(perm.acls):
            try:
                acl.compile_rules([text])
            except acl.AclError as e:
                raise InstallError(f"{where}: acls[{j}]: {e}") from e
        if perm.context is not None and not _selinux_ready():
            raise InstallError(f"{where}: context needs SELinux enabled and chcon installed; it is not here")


def check_file_objects(permissions: tuple[Permission, ...], files: Collection[str]) -> None:
    """A ``pattern`` or ``except`` on an object that is a file this Install copies fails, before anything
    is copied: the agent refuses it (``validate_file_permission``), and skipping the entry would silently
    leave its mode and owner unapplied."""
    for i, perm in enumerate(permissions):
        obj = os.path.normpath(perm.object)
        if obj not in files or "file" not in perm.type:
            continue
        if perm.pattern != "**":
            raise InstallError(
                f"permissions[{i}] (object {obj}): pattern {perm.pattern!r} on a file; a pattern selects "
                "within a folder object (remove it, or make object the folder); CodeDeploy refuses it too"
            )
        if perm.except_:
            raise InstallError(
                f"permissions[{i}] (object {obj}): except {list(perm.except_)!r} on a file; except selects "
                "within a folder object (remove it, or make object the folder); CodeDeploy refuses it too"
            )


def apply_permissions(
    permissions: tuple[Permission, ...], plan: Plan, dirs: Dirs, cancel: threading.Event | None
) -> None:
    """Apply each permission, in appspec order, to the matching folders this Install created and files
    it copied (symlinks excepted)."""
    installed = [(p, True) for p in plan.owned_dirs] + [(p, False) for p in plan.files if p not in plan.links]
    apply_to(permissions, installed, dirs, cancel)


def apply_to(
    permissions: tuple[Permission, ...],
    installed: list[tuple[str, bool]],
    dirs: Dirs,
    cancel: threading.Event | None,
    located: Callable[[str], str] | None = None,
) -> None:
    """Apply each permission, in appspec order, to the matching ``installed`` (path, is a folder) entries.
    ``located``: where a path is on disk now, when that is not the path itself (a release folder that
    becomes the destination once switched)."""
    if not permissions:
        return
    for perm in permissions:
        try:  # names are looked up once per permission, not once per file
            uid = pwd.getpwnam(perm.owner).pw_uid if perm.owner is not None else -1
            gid = grp.getgrnam(perm.group).gr_gid if perm.group is not None else -1
            rules = acl.compile_rules(perm.acls)
        except (LookupError, acl.AclError) as e:
            raise InstallError(f"permissions (object {perm.object}): {e}") from e
        for path in sorted(p for p, is_dir in installed if matches(perm, p, is_dir)):
            checkpoint(cancel)
            try:
                _apply_one(perm, located(path) if located else path, dirs, uid, gid, rules)
            except (OSError, acl.AclError, subprocess.CalledProcessError) as e:
                detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
                raise InstallError(
                    f"permissions (object {perm.object}): cannot apply to {path}: {detail}"
                ) from e


def matches(perm: Permission, path: str, is_dir: bool) -> bool:
    """True when ``perm`` applies to ``path`` (a folder when ``is_dir``)."""
    if ("directory" if is_dir else "file") not in perm.type:
        return False
    obj = os.path.normpath(perm.object)
    if path == obj:
        return perm.pattern == "**" and not perm.except_
    if not inside(path, obj):
        return False
    rel = path[len(obj.rstrip("/")) + 1 :]
    if perm.pattern != "**" and ("/" in rel or not simple_glob(rel, perm.pattern)):
        return False
    name = rel.rsplit("/", 1)[-1]
    return not any(simple_glob(name, pattern) for pattern in perm.except_)


def simple_glob(name: str, pattern: str) -> bool:
    """The agent's ``matches_simple_glob``: ``*`` matches any run of characters; nothing else is special."""
    return _glob_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern), re.DOTALL)


def _apply_one(perm: Permission, path: str, dirs: Dirs, uid: int, gid: int, rules: list[acl.Rule]) -> None:
    parent, name = split(path)
    fd, _ = open_entry(name, dirs.open(parent), path)
    try:
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        if perm.mode is not None:
            os.fchmod(fd, perm.mode)
        if rules:
            acl.apply(fd, rules, path)
        if perm.context is not None:
            args = ["chcon", "-t", perm.context.type]
            args += ["-u", perm.context.user] if perm.context.user else []
            args += ["-l", perm.context.range] if perm.context.range else []
            _run([*args, f"/proc/self/fd/{fd}"], fd)  # the open file itself, whatever its path is now
    finally:
        os.close(fd)


def _lookup(func: Callable[[str], object], name: str, message: str) -> None:
    try:
        func(name)
    except KeyError as e:
        raise InstallError(message) from e


def _selinux_ready() -> bool:
    return shutil.which("chcon") is not None and os.path.exists("/sys/fs/selinux/enforce")


def _run(args: list[str], fd: int) -> None:
    executable = shutil.which(args[0])
    if executable is None:
        raise InstallError(f"{args[0]} is needed for permissions but is not installed")
    subprocess.run(
        [executable, *args[1:]],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        pass_fds=(fd,),
    )
