"""The file a download writes into: one descriptor shared by worker threads, reserved up front."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any


class SharedFd:
    """A file descriptor used from worker threads; closed only once no thread uses it any more.

    A cancelled download returns while its last write may still run in a thread: closing the number
    under it could hand it to another open() mid-write.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self._closing:
                raise OSError("download file already closed")
            self._users += 1
        try:
            return fn(self.fd, *args)
        finally:
            with self._lock:
                self._users -= 1
                if self._closing and self._users == 0:
                    os.close(self.fd)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._users == 0:
                os.close(self.fd)


def preallocate(fd: int, size: int) -> None:
    """Reserve the whole file up front (no fragmentation, ENOSPC before any byte is fetched)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.ftruncate(fd, size)  # filesystems without fallocate: a sparse file filled by the writes
