"""Setting permission bits under the state directory, never through a symbolic link.

The model (which path gets which mode) is layout.py's; this module only applies modes. Trees are walked
top-down and a folder is tightened before it is entered, so once the walk is inside a folder nobody but
root can swap its entries for links any more; every file is opened with O_NOFOLLOW and changed through
its descriptor all the same. The walk is iterative (no recursion limit on deep release trees).
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
    """What a tightening changed: counted per tree, the first few named for the log."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: str, before: int, after: int) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(f"{path} {before:04o} -> {after:04o}")


def private(dir_mode: int, file_mode: int) -> ModeRule:
    """Every folder ``dir_mode``, every other entry ``file_mode``."""
    return lambda _depth, is_dir, _bits: dir_mode if is_dir else file_mode


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


def _is_file_or_dir(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def set_mode(path: Path, mode: int, changes: Changes | None = None) -> bool:
    """Give ``path`` exactly the permission bits ``mode`` (not through a link); True when it changed."""
    fd = _open_no_follow(str(path), None)
    if fd is None:
        return False
    try:
        return _set_fd_mode(fd, str(path), lambda _depth, _is_dir, _bits: mode, 0, changes)
    finally:
        os.close(fd)


def _set_fd_mode(fd: int, path: str, rule: ModeRule, depth: int, changes: Changes | None) -> bool:
    st = os.fstat(fd)
    bits = stat.S_IMODE(st.st_mode)
    wanted = rule(depth, stat.S_ISDIR(st.st_mode), bits)
    if wanted == bits:
        return False
    os.fchmod(fd, wanted)
    if changes is not None:
        changes.add(path, bits, wanted)
    return True


def apply_tree(top: Path, rule: ModeRule) -> Changes:
    """Give every entry under ``top`` (``top`` included, depth 0) the bits ``rule`` says, top-down.

    Symlinks are neither followed nor changed. An entry that cannot be changed is logged and skipped.
    """
    changes = Changes()
    todo: list[tuple[str, int]] = [(str(top), 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            fd = _open_no_follow(folder, None)
        except OSError as e:
            logger.warning("state directory: cannot check the mode of %s: %s", folder, e.strerror or e)
            continue
        if fd is None:
            continue
        try:
            _set_fd_mode(fd, folder, rule, depth, changes)
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                continue
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    todo.append((f"{folder}/{entry.name}", depth + 1))
                elif not entry.is_symlink():
                    _apply_entry(fd, folder, entry.name, depth + 1, rule, changes)
        except OSError as e:
            logger.warning("state directory: cannot check the modes in %s: %s", folder, e.strerror or e)
        finally:
            os.close(fd)
    return changes


def _apply_entry(dir_fd: int, folder: str, name: str, depth: int, rule: ModeRule, changes: Changes) -> None:
    try:
        fd = _open_no_follow(name, dir_fd)
    except OSError as e:
        logger.warning("state directory: cannot check the mode of %s/%s: %s", folder, name, e.strerror or e)
        return
    if fd is None:
        return
    try:
        _set_fd_mode(fd, f"{folder}/{name}", rule, depth, changes)
    finally:
        os.close(fd)
