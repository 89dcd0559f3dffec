"""Linux's ``renameat2(2)``, which Python's ``os`` does not offer, through ctypes.

Two flags matter to activation: ``RENAME_EXCHANGE`` swaps two names in one step (a real folder and the
link that replaces it: a reader sees one or the other, never neither), ``RENAME_NOREPLACE`` refuses to
replace a name that exists (a plain rename would silently replace a file or an empty folder). Both need
Linux 3.15 or later and a filesystem that implements them (ext4, xfs, btrfs, tmpfs do; an overlay's
lower-layer folder, NFS and some FUSE filesystems do not): the caller gets the kernel's OSError
(EINVAL, ENOSYS, EXDEV...) and turns it into a message for the operator.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# The system call numbers, for a C library without the renameat2 wrapper (glibc has it since 2.28).
_SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276, "i686": 353, "i386": 353, "armv7l": 382, "ppc64le": 357}
#: The errors that mean "this kernel or filesystem cannot do that flag here", not "this rename is wrong".
UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV})

_Call = Callable[[int, bytes, int, bytes, int], int]


def _load() -> _Call | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - every Linux process has a C library loaded
        return None
    wrapper = getattr(libc, "renameat2", None)
    if wrapper is not None:
        wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        wrapper.restype = ctypes.c_int
        return wrapper  # type: ignore[no-any-return]
    number = _SYSCALL_NUMBERS.get(platform.machine())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:  # pragma: no cover - old C library on an unlisted machine
        return None
    syscall.restype = ctypes.c_long

    def call(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int) -> int:
        args = (ctypes.c_int(src_fd), src, ctypes.c_int(dst_fd), dst, ctypes.c_uint(flags))
        return int(syscall(ctypes.c_long(number), *args))

    return call  # pragma: no cover


_renameat2 = _load()


def renameat2(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, flags: int) -> None:
    """Rename ``src`` (in the folder ``src_dir_fd``) to ``dst`` (in ``dst_dir_fd``) with ``flags``.

    Raises OSError with the kernel's errno; ENOSYS when this system has no renameat2 at all.
    """
    if _renameat2 is None:  # pragma: no cover - see _load
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library", src)
    if _renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)
