"""Locks that keep deployments apart: one daemon per state directory, one deployment per section.

Both use flock(2): the lock belongs to an open file and dies with the process holding it, so a crash never
leaves a stale "in progress" behind (the seed's ``installation_in_progress`` flag did). Lock files are
never deleted: unlinking a lock file while another process waits on it would let two processes "hold" it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

from s3deploy.errors import LockBusy, S3DeployError
from s3deploy.state.layout import StateLayout

logger = logging.getLogger(__name__)

POLL_MIN_S = 0.05
POLL_MAX_S = 0.5
# wait=False still retries this long: a `status` probe holds a section's flock for microseconds.
BUSY_GRACE_S = 0.2


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: hook processes must not inherit (and so prolong) the agent's locks.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise S3DeployError(f"cannot open the lock file {path}: {e.strerror}") from e


def _try_flock(fd: int, path: Path, operation: int = fcntl.LOCK_EX) -> bool:
    """One non-blocking attempt; False when another open file holds a conflicting lock."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        raise S3DeployError(f"cannot lock {path}: {e.strerror}") from e
    return True


def _write_pid(fd: int) -> None:
    """Write our pid into a lock file we hold: only informational, for the messages of those who wait."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        logger.debug("could not write the pid into a lock file: %s", e)


def _clear_and_close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor of the open file releases the flock


def read_holder_pid(path: Path) -> int | None:
    """The pid written in a lock file, or None when it is empty, unreadable or not a number."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


#: Who holds a destination lock file with no pid in it: shared holders never write one.
_SHARED_HOLDERS = "held by deployments into folders inside it"


def _holder(path: Path, nobody: str = "pid unknown") -> str:
    pid = read_holder_pid(path)
    return f"pid {pid}" if pid is not None else nobody


class InstanceLock:
    """STATE_DIR/daemon.lock: at most one daemon per state directory (a second one gets LockBusy)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = StateLayout(Path(state_dir)).daemon_lock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now or raise LockBusy naming the holder's pid; a no-op when already held."""
        if self._fd is not None:
            return
        fd = _open_lock_file(self.path)
        try:
            acquired = _try_flock(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        if not acquired:
            os.close(fd)
            raise LockBusy(
                f"another s3deploy daemon ({_holder(self.path)}) is running on the state directory "
                f"{self.path.parent} (it holds {self.path}); stop it first or use another --state-dir"
            )
        _write_pid(fd)
        self._fd = fd
        logger.debug("instance lock %s acquired", self.path)

    def release(self) -> None:
        """Give the lock up; a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _clear_and_close(fd)
            logger.debug("instance lock %s released", self.path)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def destination_lock_modes(destinations: Iterable[Path | str]) -> dict[str, int]:
    """The flocks that keep deployments into overlapping folders apart, by resolved path.

    Hierarchical locking: each destination root exclusively, each of its ancestors shared. Two roots
    that are equal or nested always meet on one path with at least one exclusive lock; two disjoint roots
    (``/srv/a``, ``/srv/b``) only share ancestors, locked shared by both, so they deploy at once. Such an
    ancestor may not exist yet: both Installs may then create it at the same moment, and each must accept
    the folder the other made. Symlinks are resolved, so ``/srv/www`` → ``/data/www`` overlaps ``/data``.
    """
    modes: dict[str, int] = {}
    for destination in destinations:
        root = Path(os.path.realpath(os.path.abspath(destination)))
        modes[str(root)] = fcntl.LOCK_EX
        for ancestor in root.parents:
            modes.setdefault(str(ancestor), fcntl.LOCK_SH)
    return modes


class SectionLocks:
    """Per section: an asyncio.Lock (inside this process) + an flock on STATE_DIR/locks/<section>.lock
    (across processes: daemon vs one-shot commands). Per destination folder: see ``hold_destinations``."""

    def __init__(self, state_dir: Path) -> None:
        self.layout = StateLayout(Path(state_dir))
        self.lock_dir = self.layout.lock_dir
        self._async_locks: dict[str, asyncio.Lock] = {}
        self._fds: dict[str, int] = {}

    def lock_path(self, section: str) -> Path:
        """The lock file of ``section``; any section name maps to one safe file name."""
        return self.layout.section_lock(section)

    @asynccontextmanager
    async def hold(self, sections: Sequence[str], *, wait: bool) -> AsyncIterator[None]:
        """Hold the locks of all ``sections`` for the body of ``async with``.

        Taken in sorted order so that overlapping sets never deadlock. The asyncio part always waits; the
        flock part raises LockBusy at once (after a short grace) when ``wait`` is False, else polls until
        the other process lets go. Everything taken is released on exit, cancellation included.
        """
        names = [sections] if isinstance(sections, str) else sections
        async with contextlib.AsyncExitStack() as stack:
            for section in sorted(set(names)):
                lock = self._async_locks.setdefault(section, asyncio.Lock())
                await lock.acquire()
                stack.callback(lock.release)
                self._fds[section] = await self._flock(section, wait=wait)
                stack.callback(self._unflock, section)
            yield

    def destination_lock_path(self, root: str) -> Path:
        """The lock file standing for the folder ``root`` (any path maps to one short file name)."""
        return self.layout.destination_lock(root)

    @asynccontextmanager
    async def hold_destinations(
        self, section: str, destinations: Iterable[Path | str], *, wait: bool
    ) -> AsyncIterator[None]:
        """Hold the folder locks of ``destinations`` (see destination_lock_modes) for the ``async with``.

        Taken in sorted path order after the section locks, so no two deployers ever deadlock. Whichever
        sections (of this daemon, of another config, a one-shot command) install into overlapping folders,
        their lifecycles never run at the same time.
        """
        modes = destination_lock_modes(destinations)
        async with contextlib.AsyncExitStack() as stack:
            for root in sorted(modes):
                what = f"[{section}] destination {root}"
                fd = await self._acquire(
                    self.destination_lock_path(root),
                    modes[root],
                    wait=wait,
                    what=what,
                    nobody=_SHARED_HOLDERS,
                )
                # An exclusive holder's pid goes with it: a later (shared) holder must not be named by it.
                stack.callback(_clear_and_close if modes[root] == fcntl.LOCK_EX else os.close, fd)
            yield

    async def _flock(self, section: str, *, wait: bool) -> int:
        return await self._acquire(
            self.lock_path(section), fcntl.LOCK_EX, wait=wait, what=f"section [{section}]"
        )

    async def _acquire(
        self, path: Path, operation: int, *, wait: bool, what: str, nobody: str = "pid unknown"
    ) -> int:
        fd = _open_lock_file(path)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            delay = POLL_MIN_S
            while not _try_flock(fd, path, operation):
                if not wait and loop.time() - started >= BUSY_GRACE_S:
                    raise LockBusy(
                        f"{what} is being deployed by another s3deploy process or section "
                        f"({_holder(path, nobody)}; lock file {path}); try again when it has finished"
                    )
                if wait and delay == POLL_MIN_S:
                    holder = _holder(path, nobody)
                    logger.info("%s: waiting for another deployment (%s) to finish with it", what, holder)
                await asyncio.sleep(delay)
                if wait:
                    delay = min(delay * 2, POLL_MAX_S)
        except BaseException:
            os.close(fd)
            raise
        if operation == fcntl.LOCK_EX:
            _write_pid(fd)
        waited = loop.time() - started
        logger.debug("%s: lock %s acquired after %.2fs", what, path, waited)
        return fd

    def _unflock(self, section: str) -> None:
        fd = self._fds.pop(section, None)
        if fd is not None:
            _clear_and_close(fd)

    def is_held_elsewhere(self, section: str) -> bool:
        """True when another process (or another SectionLocks) holds the flock of ``section``."""
        if section in self._fds:
            return False
        path = self.lock_path(section)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise S3DeployError(f"cannot open the lock file {path}: {e.strerror}") from e
        try:
            # A shared probe: two concurrent probes (two `status` commands) never see each other.
            return not _try_flock(fd, path, fcntl.LOCK_SH)
        finally:
            os.close(fd)
