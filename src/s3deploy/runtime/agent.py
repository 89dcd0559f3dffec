"""The runtime of one s3deploy process, wired once: what it opens and closes, and what it offers.

``async with Agent(config, state_dir, ...) as agent`` opens the state database and, for the daemon and
``run --once`` (``exclusive``), takes the instance lock and marks deployments a dead process left
``running`` as interrupted; blocking work (flock, SQLite, rmtree) runs in a thread. The S3 client pool
and the watchers are made on first use, so reading commands (``status``, ``history``, ``suspend``)
never load the S3 stack. Closing releases everything in reverse order.

Operations: ``run_once``, ``deploy_now``, ``rollback`` (one-shot: SIGTERM/SIGINT stop their hooks and
record the deployment ``interrupted``), ``set_suspended``, ``status``, ``history``; the daemon
(runtime/daemon.py) serves with ``watcher()``. Library code: it raises S3DeployError, never exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from s3deploy.config import Config, Section
from s3deploy.errors import Interrupted, LockBusy, SourceError, describe
from s3deploy.log import log_context
from s3deploy.runtime.context import AgentContext
from s3deploy.runtime.recovery import recover_interrupted
from s3deploy.runtime.status import section_status
from s3deploy.state.layout import StateLayout
from s3deploy.state.locks import InstanceLock, SectionLocks
from s3deploy.state.store import Deployment, StateStore

if TYPE_CHECKING:
    from s3deploy.fleet.policy import Timing
    from s3deploy.metrics import Observer
    from s3deploy.source.s3 import ProgressCallback, S3Pool
    from s3deploy.watcher import Watcher

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Selection:
    """Which sections to run, and per-run overrides of their settings (never written back)."""

    all_sections: bool = False
    names: tuple[str, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)

    def pick(self, config: Config) -> list[Section]:
        """The selected sections with overrides applied; ConfigError for an unknown name."""
        if self.all_sections:
            sections = list(config.sections.values())
        else:
            sections = [config.section(name) for name in self.names]
        if self.overrides:
            sections = [s.with_overrides(**self.overrides) for s in sections]
        return sections


def overlapping_groups(sections: Sequence[Section]) -> dict[str, list[str]]:
    """For each section, the sections locked when it deploys (sorted): itself, and those whose
    ``destination`` is the same, inside or around it. Compares path components (what
    ``is_relative_to`` does), so 200 sections cost 40,000 tuple comparisons, not pathlib parsing."""
    parts = {s.name: s.destination.parts for s in sections if s.destination is not None}
    groups: dict[str, list[str]] = {}
    for a in sections:
        pa = parts.get(a.name)
        names = [a.name]
        if pa is not None:
            for b, pb in parts.items():
                n = min(len(pa), len(pb))
                if b != a.name and pa[:n] == pb[:n]:  # one is the other or inside it
                    names.append(b)
        groups[a.name] = sorted(names)
    return groups


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one section's check (``run --once``, ``deploy``)."""

    section: str
    deployment: Deployment | None = None
    error: str | None = None
    #: ``deploy`` without --force on a suspended section: nothing was checked.
    suspended: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None or (
            self.deployment is not None and self.deployment.status != "succeeded"
        )


async def check(watcher: Watcher, *, force: bool = False) -> CheckResult:
    """One poll of one watcher, with its errors turned into a result (they are logged once here)."""
    name = watcher.section.name
    started = time.monotonic()
    with log_context(section=name):
        try:
            dep = await watcher.poll_once(force=force)
        except LockBusy:
            raise
        except SourceError as e:
            logger.error("S3 check failed: %s", e)
            return CheckResult(name, error=str(e))
        except Exception as e:
            logger.error("%s", describe(e), exc_info=logger.isEnabledFor(logging.DEBUG))
            return CheckResult(name, error=describe(e))
        if dep is None:
            logger.info("nothing to deploy (checked in %.2fs)", time.monotonic() - started)
    return CheckResult(name, dep)


class Agent:
    """One process's runtime: the state, the locks, the S3 pool, recovery, and the operations on them.

    ``exclusive`` (the daemon, ``run --once``): hold the state directory's instance lock (a second one
    gets LockBusy → exit 3), recover every interrupted deployment at start, and wait for a section lock
    that a one-shot command holds. Otherwise a one-shot command: no instance lock, and a section that
    is being deployed by another process is LockBusy at once.
    """

    def __init__(
        self,
        config: Config,
        state_dir: Path,
        *,
        exclusive: bool = False,
        progress: Callable[[str, int], ProgressCallback | None] | None = None,
        observer: Observer | None = None,
        host_id: str | None = None,
        fleet_timing: Timing | None = None,
    ) -> None:
        #: The daemon replaces it on SIGHUP; lock groups follow it.
        self.config = config
        #: This host's name in a fleet (SPEC §10); None: the host name.
        self.host_id = host_id or socket.gethostname()
        self.fleet_timing = fleet_timing
        self.layout = StateLayout(state_dir)
        self.exclusive = exclusive
        self.progress = progress
        self.observer = observer
        self._instance_lock: InstanceLock | None = None
        self._state: StateStore | None = None
        self._pool: S3Pool | None = None
        self._context: AgentContext | None = None
        self._groups: dict[str, list[str]] = {}
        self._groups_of: Config | None = None

    # ------------------------------------------------------------------ opening and closing
    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Instance lock (exclusive), state database, recovery (exclusive): all off the event loop."""
        try:
            if self.exclusive:
                self._instance_lock = InstanceLock(self.layout.root)
                await asyncio.to_thread(self._instance_lock.acquire)
            self._state = await asyncio.to_thread(StateStore.open, self.layout.root)
            if self.exclusive:
                # Logs each one; removes their partial release folders.
                await asyncio.to_thread(recover_interrupted, self._state)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the S3 pool, the state database and the instance lock (in that order)."""
        pool, self._pool, self._context = self._pool, None, None
        try:
            if pool is not None:
                await pool.close()
        finally:
            state, self._state = self._state, None
            if state is not None:
                await asyncio.to_thread(state.close)
            lock, self._instance_lock = self._instance_lock, None
            if lock is not None:
                lock.release()

    @property
    def state(self) -> StateStore:
        if self._state is None:
            raise RuntimeError("the agent is not started")
        return self._state

    async def context(self) -> AgentContext:
        """What the watchers share; the S3 client pool is opened on first use."""
        if self._context is None:
            # Imported here: reading commands never load the S3 stack (aioboto3 costs most of a start-up).
            from s3deploy.source.s3 import S3Pool

            self._pool = S3Pool()
            self._context = AgentContext(
                self.layout,
                self.state,
                self._pool,
                SectionLocks(self.layout.root),
                lock_wait=self.exclusive,
                progress=self.progress,
                observer=self.observer,
                host_id=self.host_id,
                fleet_timing=self.fleet_timing,
            )
        return self._context

    def lock_names(self, section: str) -> list[str]:
        """The sections locked when ``section`` deploys: itself and those whose destination overlaps."""
        if self._groups_of is not self.config:  # once per config (SIGHUP replaces it), not per section
            self._groups = overlapping_groups(list(self.config.sections.values()))
            self._groups_of = self.config
        return self._groups.get(section, [section])

    async def watcher(self, section: Section) -> Watcher:
        """A watcher of ``section`` on this process's shared context and lock groups."""
        from s3deploy.watcher import Watcher  # the S3 stack: see context()

        return Watcher(section, await self.context(), lock_names=self.lock_names(section.name))

    # ------------------------------------------------------------------ one-shot operations
    async def run_once(self, selection: Selection) -> list[CheckResult]:
        """``run --once``: one check per selected section, deploying where needed, all at once."""
        sections = selection.pick(self.config)
        watchers = [await self.watcher(s) for s in sections]
        async with self._stoppable():
            return list(await asyncio.gather(*(check(w) for w in watchers)))

    async def deploy_now(self, name: str, *, force: bool = False) -> CheckResult:
        """``deploy NAME``: check now and deploy if changed (``force``: even unchanged, failed or
        suspended). LockBusy when another process deploys the section right now."""
        section = self.config.section(name)
        if not force and (await asyncio.to_thread(self.state.get_section, name)).suspended:
            return CheckResult(name, suspended=True)
        watcher = await self.watcher(section)
        async with self._stoppable():
            return await check(watcher, force=force)

    async def rollback(self, name: str, to: str | None = None) -> Deployment:
        """``rollback NAME``: reinstall the previous successful release (or ``to``'s) from disk."""
        watcher = await self.watcher(self.config.section(name))
        async with self._stoppable():
            return await watcher.manual_rollback(to)

    @asynccontextmanager
    async def _stoppable(self) -> AsyncIterator[None]:
        """SIGTERM/SIGINT cancel the operation: hooks are stopped, the deployment is recorded
        ``interrupted``, and Interrupted is raised (instead of dying with a hook left running)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[signal.Signals] = []

        def stop(sig: signal.Signals) -> None:
            received.append(sig)
            logger.warning("%s received: stopping the running hooks; the deployment is recorded interrupted",
                           sig.name)  # fmt: skip
            task.cancel()

        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, stop, sig)
        try:
            yield
        except asyncio.CancelledError:
            if not received:
                raise
            for _ in received:
                task.uncancel()
            raise Interrupted(
                f"stopped by {received[0].name}: running hooks were stopped and the deployment was "
                "recorded interrupted (see `s3deploy status`)"
            ) from None
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    # ------------------------------------------------------------------ the state
    async def set_suspended(self, name: str, suspended: bool) -> None:
        """``suspend``/``resume``: the daemon keeps watching a suspended section but does not deploy it."""
        self.config.section(name)
        await asyncio.to_thread(self.state.set_suspended, name, suspended)

    async def status(self, names: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The SPEC's S object of each section named (default: every section of the config)."""
        sections = [self.config.section(n) for n in names] if names else list(self.config.sections.values())
        return await asyncio.to_thread(lambda: [section_status(self.state, s, self.layout) for s in sections])

    async def history(self, name: str, limit: int | None = None) -> list[Deployment]:
        """Past deployments of ``name``, newest first."""
        self.config.section(name)
        return await asyncio.to_thread(self.state.history, name, limit)
