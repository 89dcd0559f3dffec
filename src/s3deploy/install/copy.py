"""Carrying out a plan on disk: create its folders, then copy its files, each replaced atomically.

Every change goes through the descriptor of the folder it happens in (``dirs.Dirs``): ``mkdirat``, a
temporary name created exclusively and never written through (one left by a crash could be a link to
anything), ``renameat`` over the destination. Folders get the mode ``mkdir`` gives them (0777 less the
umask: 0755 usually), as with the CodeDeploy agent; files keep the bundle's mode (from the release's
modes file where the release was narrowed) and mtime, symlinks stay symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from s3deploy.common.lanes import run_lanes
from s3deploy.errors import InstallError
from s3deploy.install.cancel import checkpoint
from s3deploy.install.dirs import Dirs, split
from s3deploy.install.plan import TMP_SUFFIX, Plan

_T = TypeVar("_T")

# Plans of at least this many files are copied by COPY_THREADS threads, as the unpacker writes big zips
# (bundle.PARALLEL_MIN_ENTRIES): creating a file costs the filesystem's per-file latency (inode, journal,
# directory entry), which threads overlap; the data itself moves in the kernel (copy_file_range or sendfile).
PARALLEL_MIN_FILES = 256
COPY_THREADS = 4
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK_BYTES = 1 << 30
#: What a kernel or filesystem without a fast copy answers (the next way is tried).
_NO_FAST_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def create_dirs(plan: Plan, dirs: Dirs, cancel: threading.Event | None) -> None:
    """Create the plan's missing folders, parents first (insertion order)."""
    for path, state in plan.dirs.items():
        if state != "create":
            continue
        checkpoint(cancel)
        parent, name = split(path)
        try:
            os.mkdir(name, 0o777, dir_fd=dirs.open(parent))
        except FileExistsError:
            # Sections with disjoint destinations under one new parent install at once: the other one
            # may create that parent between our plan and our mkdir. A folder there is all we need.
            try:
                dirs.open(path)
            except (FileNotFoundError, NotADirectoryError) as e:
                raise InstallError(f"cannot create folder {path}: something else is there now") from e
        except OSError as e:
            raise InstallError(f"cannot create folder {path}: {e}") from e


def copy_files(
    plan: Plan, modes: Mapping[Path, int], roots: Iterable[str], cancel: threading.Event | None
) -> None:
    """Copy the plan's files; the first failure stops every lane and is raised.

    Every folder exists already and every destination is distinct (the plan refuses two sources for
    one), so the files need no order among them; the files of one folder go to one lane (threads creating
    files in the same folder would queue on its lock). The cleanup list written before covers all of
    them, so a failure (or a cancel) leaves nothing on disk that the list does not hold.
    """
    files = list(plan.files.items())
    roots = list(roots)
    local = threading.local()
    opening = threading.Lock()
    with contextlib.ExitStack() as stack:

        def copy(item: tuple[str, Path]) -> None:
            dest, source = item
            checkpoint(cancel)
            dirs: Dirs | None = getattr(local, "dirs", None)
            if dirs is None:  # one descriptor cache per lane, all closed when the copy ends
                with opening:
                    dirs = local.dirs = stack.enter_context(Dirs(roots))
            parent, _ = split(dest)
            try:
                folder = dirs.open(parent)
            except OSError as e:
                raise InstallError(f"cannot open folder {parent}: {e}") from e
            _install_file(source, folder, dest, modes)

        lanes = COPY_THREADS if len(files) >= PARALLEL_MIN_FILES else 1
        run_lanes(copy, files, lanes=lanes, key=lambda item: split(item[0])[0], name="install")


def _install_file(source: Path, folder: int, dest: str, modes: Mapping[Path, int]) -> None:
    try:
        copy_one(source, folder, dest, modes.get(source))
    except OSError as e:
        raise InstallError(f"cannot install {source} as {dest}: {e}") from e


def copy_one(source: Path, folder: int, dest: str, mode: int | None) -> None:
    """Copy one file or symlink into ``folder`` (the open folder of ``dest``) under a temporary name,
    then rename it over ``dest``'s name. ``mode``: the file's mode when the source's was narrowed.

    One lstat of the source gives its kind and mode. The temporary name is removed on failure,
    so nothing stays on disk that the cleanup list does not name.
    """
    st = os.lstat(source)
    if not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InstallError(f"cannot install {source} as {dest}: it is neither a regular file nor a symlink")
    name = split(dest)[1]
    tmp = f"{name}{TMP_SUFFIX}"
    try:
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(source)
            _exclusive(folder, tmp, lambda: os.symlink(target, tmp, dir_fd=folder))
        else:
            bits = stat.S_IMODE(st.st_mode) if mode is None else mode
            _exclusive(folder, tmp, lambda: copy_file(source, folder, tmp, bits))
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


def _exclusive(folder: int, tmp: str, create: Callable[[], _T]) -> _T:
    """``create()``, which fails if ``tmp`` exists; a ``tmp`` left by a crash is removed first."""
    try:
        return create()
    except FileExistsError:
        os.unlink(tmp, dir_fd=folder)
        return create()


def copy_file(source: str | Path, folder: int, name: str, mode: int) -> None:
    """Copy the regular file ``source`` (never through a link: O_NOFOLLOW) to the new file ``name`` of the
    open folder ``folder``: created exclusively (FileExistsError if something is there, never written
    through), with ``mode`` and the source's times. The one file copier of Install and activation."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        out = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=folder)
        try:
            _copy_bytes(src, out)
            os.fchmod(out, mode)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_bytes(src: int, out: int) -> None:
    """copy_file_range (the kernel copies; btrfs and xfs share the extents: a reflink, no data written),
    else sendfile, else (like shutil, when nothing was written yet) plain reads and writes."""
    for fast in (_by_copy_file_range, _by_sendfile):
        try:
            fast(src, out)
            return
        except OSError as e:
            if e.errno not in _NO_FAST_COPY or os.lseek(out, 0, os.SEEK_CUR):
                raise
    os.lseek(src, 0, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view) :]


def _by_copy_file_range(src: int, out: int) -> None:
    while os.copy_file_range(src, out, _CHUNK_BYTES) > 0:
        pass


def _by_sendfile(src: int, out: int) -> None:
    while os.sendfile(out, src, None, _CHUNK_BYTES) > 0:
        pass
