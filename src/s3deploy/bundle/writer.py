"""Writing checked members under the unpack folder.

Everything under the folder is created here, the checks refused paths below links and every path is
written once, and files are opened with O_EXCL|O_NOFOLLOW: a write can never be redirected outside.
The written bytes are counted as they stream (headers may understate sizes) against the limit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterable

from s3deploy.bundle.member import entry, shown
from s3deploy.errors import BundleError

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Writer:
    """Creates folders, files and links below ``root``; safe to call from several threads."""

    def __init__(self, root: str, label: str, max_bytes: int) -> None:
        self.root = root
        self.label = label
        self.max_bytes = max_bytes
        self.written = 0
        self._count_lock = threading.Lock()

    def _cannot(self, name: str, e: OSError) -> BundleError:
        return BundleError(f"{self.label}: {entry(name)} cannot be written ({shown(e.strerror or e)})")

    def folders(self, paths: Iterable[str]) -> None:
        """Create ``paths`` (each after its parent) with 0o755; their own modes come in ``finish``."""
        for path in paths:
            try:
                os.mkdir(f"{self.root}/{path}", 0o755)
            except OSError as e:
                raise self._cannot(path, e) from e

    def symlink(self, path: str, target: str, name: str) -> None:
        try:
            os.symlink(target, f"{self.root}/{path}")
        except OSError as e:
            raise self._cannot(name, e) from e

    def hardlink(self, path: str, target: str, name: str) -> None:
        try:
            os.link(f"{self.root}/{target}", f"{self.root}/{path}", follow_symlinks=False)
        except OSError as e:
            raise self._cannot(name, e) from e

    def file(self, path: str, name: str, mode: int, chunks: Generator[bytes, None, None]) -> None:
        """Write ``chunks`` to a new file; setuid, setgid and sticky bits are dropped from ``mode``."""
        try:
            fd = os.open(f"{self.root}/{path}", _WRITE_FLAGS, 0o600)
        except OSError as e:
            raise self._cannot(name, e) from e
        try:
            for chunk in chunks:
                self._count(name, len(chunk))
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, mode & 0o777)
        except OSError as e:
            raise self._cannot(name, e) from e
        finally:
            os.close(fd)
            chunks.close()

    def _count(self, name: str, size: int) -> None:
        with self._count_lock:  # lanes share the total
            self.written += size
            over = self.written > self.max_bytes
        if over:  # the headers lied about the sizes
            raise BundleError(
                f"{self.label}: {entry(name)} unpacks past max_unpacked_bytes={self.max_bytes} "
                "(more data than the archive's headers declare)"
            )

    def finish(self, dir_modes: dict[str, int]) -> None:
        """Apply folder modes last, deepest first, so a read-only folder does not block its children.

        setuid/setgid dropped (files belong to the agent, often root); the owner keeps rwx so the agent
        can always fill, read and delete its own release folder.
        """
        for path in sorted(dir_modes, key=lambda p: p.count("/"), reverse=True):
            try:
                os.chmod(f"{self.root}/{path}", (dir_modes[path] & 0o1777) | 0o700)
            except OSError as e:
                raise self._cannot(path, e) from e
