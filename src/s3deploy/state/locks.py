"""Locks that keep deployments apart: one daemon per state directory, one deployment per section, one
lifecycle per destination folder.

All use flock(2): the lock belongs to an open file and dies with the process holding it, so a crash never
leaves a stale "in progress" behind (the seed's ``installation_in_progress`` flag did). Lock files are
never deleted: unlinking a lock file while another process waits on it would let two processes "hold" it.
They are 0600 in root-only folders (layout.py): no other local user can open one, so none can flock it
to stall the agent. A wait for a lock held by another process is logged with the holder's pid when it
starts and every REPORT_EVERY_S; a wait with a timeout gives up with LockBusy naming the holder.
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
from s3deploy.state.layout import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, StateLayout

logger = logging.getLogger(__name__)

POLL_MIN_S = 0.05
POLL_MAX_S = 0.5
# wait=False still retries this long: a `status` probe holds a section's flock for microseconds.
BUSY_GRACE_S = 0.2
#: A long wait for a lock is logged again this often, naming the holder.
REPORT_EVERY_S = 60.0


def _open_lock_file(path: Path) -> int:
    """Open (creating it 0600, its folder 0700) the lock file ``path``; never through a symlink."""
    try:
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        # O_CLOEXEC: hook processes must not inherit (and so prolong) the agent's locks.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except (FileExistsError, NotADirectoryError) as e:
        folder = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise S3DeployError(
            f"state directory: {folder} exists and is not a folder (needed for the lock file {path}); "
            "move it away or use another --state-dir"
        ) from e
    except OSError as e:
        raise S3DeployError(f"cannot open the lock file {path}: {e.strerror}") from e
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # made by an older s3deploy (0644)
    except OSError as e:
        os.close(fd)
        raise S3DeployError(f"cannot restrict the lock file {path} to its owner: {e.strerror}") from e
    return fd


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
        self.layout = StateLayout(Path(state_dir))
        self.path = self.layout.daemon_lock
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise LockBusy naming the holder's pid; a no-op when already held.

        Prepares the state directory first (made, or tightened to its modes; S3DeployError naming the
        path when it cannot be)."""
        if self._fd is not None:
            return
        self.layout.prepare()
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
        self,
        section: str,
        destinations: Iterable[Path | str],
        *,
        wait: bool,
        timeout_s: float | None = None,
    ) -> AsyncIterator[None]:
        """Hold the folder locks of ``destinations`` (see destination_lock_modes) for the ``async with``.

        Taken in sorted path order after the section locks, so no two deployers ever deadlock. Whichever
        sections (of this daemon, of another config, a one-shot command) install into overlapping folders,
        their lifecycles never run at the same time. With ``wait``, gives up with LockBusy naming the
        holder once ``timeout_s`` (for all of them together) has passed.
        """
        modes = destination_lock_modes(destinations)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        async with contextlib.AsyncExitStack() as stack:
            for root in sorted(modes):
                fd = await self._acquire(
                    self.destination_lock_path(root),
                    modes[root],
                    wait=wait,
                    what=f"[{section}] destination {root}",
                    nobody=_SHARED_HOLDERS,
                    deadline=deadline,
                )
                # An exclusive holder's pid goes with it: a later (shared) holder must not be named by it.
                stack.callback(_clear_and_close if modes[root] == fcntl.LOCK_EX else os.close, fd)
            yield

    async def _flock(self, section: str, *, wait: bool) -> int:
        return await self._acquire(
            self.lock_path(section), fcntl.LOCK_EX, wait=wait, what=f"section [{section}]"
        )

    async def _acquire(
        self,
        path: Path,
        operation: int,
        *,
        wait: bool,
        what: str,
        nobody: str = "pid unknown",
        deadline: float | None = None,
    ) -> int:
        """Poll for the flock of ``path``: at most BUSY_GRACE_S without ``wait``, else until ``deadline``
        (loop time; None: for as long as it takes), reporting the holder while it waits."""
        fd = _open_lock_file(path)
        loop = asyncio.get_running_loop()
        started = report_at = loop.time()
        try:
            delay = POLL_MIN_S
            while not _try_flock(fd, path, operation):
                now = loop.time()
                if not wait and now - started >= BUSY_GRACE_S:
                    raise LockBusy(
                        f"{what} is being deployed by another s3deploy process or section "
                        f"({_holder(path, nobody)}; lock file {path}); try again when it has finished"
                    )
                if wait and deadline is not None and now >= deadline:
                    raise LockBusy(
                        f"{what}: gave up after waiting {now - started:.0f}s for another deployment "
                        f"({_holder(path, nobody)}; lock file {path}) to finish with it"
                    )
                if wait and now >= report_at:
                    logger.info(
                        "%s: %s for another deployment (%s; lock file %s) to finish with it",
                        what,
                        "waiting" if report_at == started else f"still waiting after {now - started:.0f}s",
                        _holder(path, nobody),
                        path,
                    )
                    report_at += REPORT_EVERY_S
                await asyncio.sleep(delay if deadline is None else max(0.0, min(delay, deadline - now)))
                if wait:
                    delay = min(delay * 2, POLL_MAX_S)
        except BaseException:
            os.close(fd)
            raise
        if operation == fcntl.LOCK_EX:
            _write_pid(fd)
        logger.debug("%s: lock %s acquired after %.2fs", what, path, loop.time() - started)
        return fd

    def _unflock(self, section: str) -> None:
        fd = self._fds.pop(section, None)
        if fd is not None:
            _clear_and_close(fd)
