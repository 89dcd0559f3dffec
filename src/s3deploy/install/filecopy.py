"""Copying one file's bytes, mode and times into a new file, as fast as the filesystem allows.

``copy_file_range`` first: the kernel copies without passing the bytes through user space, and btrfs or
xfs share the extents (a reflink: no data written at all). Where it cannot (another filesystem type,
an old kernel), ``sendfile``, then plain reads and writes.
"""

from __future__ import annotations

import errno
import os

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_FAST_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})
_CHUNK = 1 << 30


def copy_file(path: str, folder: int, target: str, mode: int) -> None:
    """Copy the regular file ``path`` (never through a link) to the new file ``target`` of the open folder
    ``folder`` (created exclusively, never written through) with ``mode`` and the source's times."""
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        out = os.open(target, _CREATE, 0o600, dir_fd=folder)
        try:
            _copy_bytes(src, out)
            os.fchmod(out, mode)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_bytes(src: int, out: int) -> None:
    """copy_file_range (a reflink where the filesystem can), else sendfile, else reads and writes."""
    for fast in (_by_copy_file_range, _by_sendfile):
        try:
            fast(src, out)
            return
        except OSError as e:
            if e.errno not in _NO_FAST_COPY or os.lseek(out, 0, os.SEEK_CUR):
                raise
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view) :]


def _by_copy_file_range(src: int, out: int) -> None:
    while os.copy_file_range(src, out, _CHUNK) > 0:
        pass


def _by_sendfile(src: int, out: int) -> None:
    while os.sendfile(out, src, None, _CHUNK) > 0:
        pass
