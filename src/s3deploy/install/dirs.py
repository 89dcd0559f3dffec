"""Reach destination folders through directory descriptors, never through a link someone else planted.

Install runs as root in folders other users may write to (a common appspec gives the web root to
``www-data``). Every folder it reads or changes is reached from ``/`` one component at a time with
``openat(O_DIRECTORY | O_NOFOLLOW)``, and every change is made relative to the folder's descriptor
(``unlinkat``, ``mkdirat``, ``renameat``, ``fchown``...), so a link swapped in after a check is never
followed either. A component that is a symbolic link is followed only when:

- it is not inside a destination (a ``files`` destination, or one a previous Install recorded): inside,
  Install follows no link at all, and
- only root could have planted it: the link is owned by root, and the folder holding it is owned by root
  and writable by no one else (an operator's ``/var/www -> /data/www`` qualifies; a link the
  application user made, or one in a folder it can write to, does not).

The components of a followed link's target obey the second rule. Any other link is refused with an
InstallError naming it, and Install changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from s3deploy.errors import InstallError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINK_HOPS = 40


def open_folder(path: str, *, create: bool = False) -> int:
    """A descriptor of its own of the folder ``path`` (normalized, absolute) under the link rule (no
    destination roots: every link root alone could have planted is followed). ``create`` makes missing
    folders (0755 less the umask: never writable by others). Raises FileNotFoundError when a folder is
    missing (and not to be created), InstallError naming the path otherwise."""
    with Dirs() as dirs:
        try:
            if create:
                parts = [p for p in path.split("/") if p]
                for i in range(1, len(parts) + 1):
                    _make_folder(dirs, "/" + "/".join(parts[:i]))
            return os.dup(dirs.open(path))
        except (FileNotFoundError, InstallError):
            raise
        except NotADirectoryError as e:
            raise InstallError(f"{e.filename or path} is not a folder") from e
        except OSError as e:
            raise InstallError(f"cannot open folder {path}: {e.strerror or e}") from e


def _make_folder(dirs: Dirs, path: str) -> None:
    try:
        dirs.open(path)
    except FileNotFoundError:
        parent, name = split(path)
        try:
            os.mkdir(name, 0o755, dir_fd=dirs.open(parent))
        except FileExistsError:
            pass  # made meanwhile by another deployment: a folder is all we need


def split(path: str) -> tuple[str, str]:
    """(parent folder, name) of a normalized absolute path."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def inside(path: str, root: str) -> bool:
    """True when ``path`` is strictly below the folder ``root`` (both normalized and absolute)."""
    return path.startswith(root.rstrip("/") + "/")


class Dirs:
    """Open folders by absolute path under the link rule; one per thread.

    Keeps the descriptors along the last path opened, so paths visited in sorted order reuse their
    common prefix (a tree of N folders costs about N opens, not N times its depth).
    """

    def __init__(self, roots: Iterable[str] = ()) -> None:
        self._roots = sorted(set(roots))
        self._chain: list[tuple[str, int]] = [("/", os.open("/", DIR_FLAGS))]

    def __enter__(self) -> Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self._chain:
            os.close(self._chain.pop()[1])

    def open(self, path: str) -> int:
        """The descriptor of the folder at ``path`` (normalized, absolute), owned by this object and valid
        until the next call. Raises FileNotFoundError, NotADirectoryError (a component is not a folder),
        or InstallError (a link the rule refuses)."""
        if self._chain[-1][0] == path:
            return self._chain[-1][1]  # the folder of the previous call: files in one folder
        parts = [p for p in path.split("/") if p]
        keep = 1
        while (
            keep < len(self._chain)
            and keep <= len(parts)
            and self._chain[keep][0] == "/" + "/".join(parts[:keep])
        ):
            keep += 1
        while len(self._chain) > keep:
            os.close(self._chain.pop()[1])
        for i in range(len(self._chain) - 1, len(parts)):
            logical = "/" + "/".join(parts[: i + 1])
            self._chain.append((logical, self._child(self._chain[-1][1], parts[i], logical, True, [0])))
        return self._chain[-1][1]

    def _child(self, parent: int, name: str, logical: str, strict: bool, hops: list[int]) -> int:
        """Open folder ``name`` of ``parent``; ``logical`` names it in errors; ``strict`` applies the
        inside-a-destination rule."""
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", logical) from None
        self._check_link(parent, st, logical, strict)
        hops[0] += 1
        if hops[0] > MAX_LINK_HOPS:
            raise InstallError(f"{logical}: too many levels of symbolic links")
        return self._follow(parent, os.readlink(name, dir_fd=parent), logical, hops)

    def _check_link(self, parent: int, st: os.stat_result, logical: str, strict: bool) -> None:
        if strict and any(inside(logical, root) for root in self._roots):
            raise InstallError(
                f"{logical} is a symbolic link inside a destination; Install never follows a link there "
                "(one the application user planted could lead anywhere): replace it with a folder"
            )
        folder = os.fstat(parent)
        trusted = (0, os.geteuid())  # root (or the agent's own user, when it runs as one)
        if st.st_uid not in trusted or folder.st_uid not in trusted or folder.st_mode & 0o022:
            raise InstallError(
                f"{logical} is a symbolic link that root did not plant (link owner uid {st.st_uid}; its "
                f"folder's owner uid {folder.st_uid}, mode {stat.S_IMODE(folder.st_mode):o}); Install "
                "follows a link only when it and its folder are root's and writable by no one else"
            )

    def _follow(self, parent: int, target: str, logical: str, hops: list[int]) -> int:
        fd = os.dup(self._chain[0][1] if target.startswith("/") else parent)
        try:
            for part in target.split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    child = os.open("..", DIR_FLAGS, dir_fd=fd)
                else:
                    child = self._child(fd, part, logical, False, hops)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def listing(self, path: str) -> dict[str, str] | None:
        """Each entry of the folder at ``path`` with its kind ("dir", "link", "file" or "other"); None when
        the folder does not exist (or a parent is not a folder)."""
        try:
            fd = self.open(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.scandir(fd) as entries:
            return {e.name: _dirent_kind(e) for e in entries}


def _dirent_kind(entry: os.DirEntry[str]) -> str:
    """``entry_kind`` from the folder listing's own type field (no stat when the filesystem gives it)."""
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if entry.is_file(follow_symlinks=False) else "other"


ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def open_entry(name: str, dir_fd: int, where: str) -> tuple[int, os.stat_result]:
    """Open the file or folder ``name`` of ``dir_fd`` itself, to change it through its descriptor
    (``fchown``, ``fchmod``, xattrs). Never a link, never blocks (a fifo put there); InstallError naming
    ``where`` when it is neither a regular file nor a folder."""
    try:
        fd = os.open(name, ENTRY_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InstallError(f"{where} is a symbolic link now; it was not when Install planned it") from e
        raise
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise InstallError(f"{where} is neither a regular file nor a folder")
    return fd, st
