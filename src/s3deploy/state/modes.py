"""Setting owner and permission bits under the state directory, never through a symbolic link.

The model (which path gets which mode) is layout.py's; this module only applies it. Trees are walked
top-down and a folder is taken back (owner, then mode) before it is entered, so once the walk is inside a
folder nobody but its owner can swap its entries any more; every entry is changed through a descriptor
opened with O_NOFOLLOW all the same, and only regular files and folders are opened. The walk is
iterative (no recursion limit on deep release trees).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: (depth below the top, is a folder, current permission bits) -> the bits it should have.
ModeRule = Callable[[int, bool, int], int]


@dataclass
class Changes:
    """What a tightening changed: counts, and the first few entries others could write to or owned."""

    count: int = 0
    was_writable: int = 0
    was_foreign: int = 0
    examples: list[str] = field(default_factory=list)

    def _example(self, text: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(text)

    def mode(self, path: str, before: int, after: int) -> None:
        self.count += 1
        if before & 0o022 and not after & 0o022:
            self.was_writable += 1
            self._example(f"{path} {before:04o} -> {after:04o}")

    def owner(self, path: str, uid: int) -> None:
        self.count += 1
        self.was_foreign += 1
        self._example(f"{path} owned by uid {uid}")

    def __str__(self) -> str:
        worrying = [
            f"{self.was_writable} writable by group or others" if self.was_writable else "",
            f"{self.was_foreign} owned by another user" if self.was_foreign else "",
        ]
        if not self.examples:
            return f"{self.count} entries"
        return f"{self.count} entries; {' and '.join(filter(None, worrying))}: {', '.join(self.examples)}"


def private(dir_mode: int, file_mode: int) -> ModeRule:
    """Every folder ``dir_mode``, every file ``file_mode``."""
    return lambda _depth, is_dir, _bits: dir_mode if is_dir else file_mode


def _is_file_or_dir(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _open_no_follow(name: str, dir_fd: int | None) -> int | None:
    """A descriptor of ``name`` when it is a regular file or a folder; None for anything else (links are
    never followed nor changed; fifos, sockets and devices are never opened) and for what vanished."""
    try:
        if not _is_file_or_dir(os.lstat(name, dir_fd=dir_fd).st_mode):
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # replaced by a link since the lstat
            return None
        raise
    if not _is_file_or_dir(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _fix(fd: int, path: str, rule: ModeRule, depth: int, changes: Changes, *, own: bool) -> os.stat_result:
    """Take ``fd`` back for this user (``own``) and give it the bits ``rule`` says; returns its stat."""
    st = os.fstat(fd)
    if own and st.st_uid != os.geteuid():
        os.fchown(fd, os.geteuid(), os.getegid())
        changes.owner(path, st.st_uid)
        st = os.fstat(fd)
    bits = stat.S_IMODE(st.st_mode)
    wanted = rule(depth, stat.S_ISDIR(st.st_mode), bits)
    if wanted != bits:
        os.fchmod(fd, wanted)
        changes.mode(path, bits, wanted)
    return st


def set_mode(path: Path, mode: int) -> bool:
    """Give ``path`` exactly the permission bits ``mode`` (never through a link); True when it changed."""
    fd = _open_no_follow(str(path), None)
    if fd is None:
        return False
    changes = Changes()
    try:
        _fix(fd, str(path), lambda _depth, _is_dir, _bits: mode, 0, changes, own=False)
    finally:
        os.close(fd)
    return changes.count > 0


def apply_tree(top: Path, rule: ModeRule) -> Changes:
    """Make every entry under ``top`` (``top`` included, at depth 0) this user's, with the bits ``rule``
    says, top-down. Symlinks are neither followed nor changed. What cannot be changed is logged, skipped.
    """
    changes = Changes()
    todo: list[tuple[str, int]] = [(str(top), 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            fd = _open_no_follow(folder, None)
        except OSError as e:
            _cannot(folder, e)
            continue
        if fd is None:
            continue
        try:
            if not stat.S_ISDIR(_fix(fd, folder, rule, depth, changes, own=True).st_mode):
                continue
            entries = list(os.scandir(fd))
        except OSError as e:
            _cannot(folder, e)
            continue
        finally:
            os.close(fd)  # entries are opened again by name, under a folder nobody else can change now
        for entry in entries:
            path = f"{folder}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                todo.append((path, depth + 1))
            elif not entry.is_symlink():
                _fix_path(path, rule, depth + 1, changes)
    return changes


def _fix_path(path: str, rule: ModeRule, depth: int, changes: Changes) -> None:
    try:
        fd = _open_no_follow(path, None)
        if fd is not None:
            try:
                _fix(fd, path, rule, depth, changes, own=True)
            finally:
                os.close(fd)
    except OSError as e:
        _cannot(path, e)


def _cannot(path: str, e: OSError) -> None:
    logger.warning("state directory: cannot check %s: %s", path, e.strerror or e)
