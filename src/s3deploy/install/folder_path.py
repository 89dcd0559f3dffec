"""Opening a folder by its absolute path without following a link that someone other than root planted.

The folder is reached from ``/`` one component at a time with ``openat(O_DIRECTORY | O_NOFOLLOW)``. A
component that is a symbolic link is followed only when root alone could have planted it: the link and
the folder holding it belong to root (or to the agent's user) and that folder is writable by no one else
(an operator's ``/var/www -> /data/www`` qualifies; a link the application user made, or one in a folder
it can write to, does not). The components of a followed link's target obey the same rule. This is the
rule Install applies to its destinations (issue 9); the two share one implementation once both land.
"""

from __future__ import annotations

import errno
import os
import stat

from s3deploy.errors import InstallError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Folders activation creates: the agent's, writable by it alone.
RELEASE_DIR_MODE = 0o755
MAX_LINK_HOPS = 40


class MissingFolder(InstallError):
    """A folder on the way to the destination does not exist (and was not to be created)."""


def open_folder(path: str, *, create: bool = False) -> int:
    """A descriptor of the folder ``path`` reached under the link rule (module docstring); with ``create``
    missing folders are made (0755). InstallError naming the path when it cannot."""
    fd = os.open("/", DIR_FLAGS)
    done = ""
    try:
        for part in [p for p in path.split("/") if p]:
            done = f"{done}/{part}"
            fd = _replace(fd, _step(fd, part, done, create, [0]))
        return fd
    except FileNotFoundError as e:
        os.close(fd)
        raise MissingFolder(f"folder {done} does not exist") from e
    except OSError as e:
        os.close(fd)
        raise InstallError(f"cannot open folder {done or '/'}: {e.strerror}") from e
    except BaseException:
        os.close(fd)
        raise


def _replace(old: int, new: int) -> int:
    os.close(old)
    return new


def _step(parent: int, name: str, logical: str, create: bool, hops: list[int]) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, RELEASE_DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
        return _step(parent, name, logical, False, hops)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise InstallError(f"{logical} is not a folder")
    folder = os.fstat(parent)
    trusted = (0, os.geteuid())
    if st.st_uid not in trusted or folder.st_uid not in trusted or folder.st_mode & 0o022:
        raise InstallError(
            f"{logical} is a symbolic link that root did not plant (link owner uid {st.st_uid}; its folder's "
            f"owner uid {folder.st_uid}, mode {stat.S_IMODE(folder.st_mode):o}); s3deploy follows a link "
            "there only when it and its folder are root's and writable by no one else"
        )
    hops[0] += 1
    if hops[0] > MAX_LINK_HOPS:
        raise InstallError(f"{logical}: too many levels of symbolic links")
    target = os.readlink(name, dir_fd=parent)
    fd = os.open("/", DIR_FLAGS) if target.startswith("/") else os.dup(parent)
    try:
        for part in target.split("/"):
            if part in ("", "."):
                continue
            child = (
                os.open("..", DIR_FLAGS, dir_fd=fd) if part == ".." else _step(fd, part, logical, False, hops)
            )
            fd = _replace(fd, child)
        return fd
    except BaseException:
        os.close(fd)
        raise
