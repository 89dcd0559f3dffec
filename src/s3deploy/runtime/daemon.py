"""The daemon: one watcher task per section in one TaskGroup, signals, drain then force, SIGHUP reload.

Startup: take the instance lock (a second daemon on the same state directory gets LockBusy → exit 3),
mark deployments left ``running`` by a dead process as ``interrupted``, open the shared S3 client pool.
Main loop: wait for a signal. SIGTERM/SIGINT: stop polling, give a running deployment
``shutdown_grace_s``, then cancel it (its hooks are killed, it is recorded ``interrupted``); a second
signal cancels at once. SIGHUP: reload config.ini, add/remove/restart watchers; an invalid file keeps
the old configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s3deploy.config import Config, Section, load_config
from s3deploy.deployer import Agent, recover_interrupted
from s3deploy.errors import ConfigError, LockBusy, S3DeployError, SourceError
from s3deploy.metrics import Monitor
from s3deploy.notify import Notifier
from s3deploy.source.s3 import S3Pool
from s3deploy.state.locks import InstanceLock, SectionLocks
from s3deploy.state.store import Deployment, StateStore
from s3deploy.watcher import Watcher

logger = logging.getLogger(__name__)


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
    ``destination`` is the same, inside or around it."""
    groups: dict[str, list[str]] = {}
    for a in sections:
        groups[a.name] = sorted(
            b.name
            for b in sections
            if a.name == b.name
            or a.destination is not None
            and b.destination is not None
            and (a.destination.is_relative_to(b.destination) or b.destination.is_relative_to(a.destination))
        )
    return groups


@dataclass
class _Running:
    watcher: Watcher
    stop: asyncio.Event
    task: asyncio.Task[None]


class Daemon:
    """One long-running agent process. ``serve()`` returns the exit code."""

    def __init__(
        self,
        config_path: Path,
        selection: Selection,
        state_dir: Path,
        *,
        shutdown_grace_s: float = 30.0,
        metrics_port: int | None = None,
        metrics_textfile: Path | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        self.metrics_textfile = metrics_textfile
        self._monitor: Monitor | None = None
        self.config_path = config_path
        self.selection = selection
        self.state_dir = state_dir
        self.shutdown_grace_s = shutdown_grace_s
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._running: dict[str, _Running] = {}
        self._signals = 0
        self._notify = Notifier()
        self._shutdown = asyncio.Event()

    async def serve(self, config: Config) -> int:
        sections = self.selection.pick(config)
        lock = InstanceLock(self.state_dir)
        lock.acquire()
        try:
            state = StateStore.open(self.state_dir)
            try:
                recover_interrupted(state)  # logs each one; removes their partial release folders
                self._monitor = Monitor(
                    state,
                    port=self.metrics_port,
                    textfile=self.metrics_textfile,
                    on_status=self._notify.status,
                )
                await self._monitor.start()
                async with S3Pool() as pool:
                    agent = Agent(
                        self.state_dir, state, pool, SectionLocks(self.state_dir), observer=self._monitor
                    )
                    return await self._main(agent, sections)
            finally:
                state.close()
        finally:
            lock.release()

    async def _main(self, agent: Agent, sections: list[Section]) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._events.put_nowait, "reload")
        try:
            async with asyncio.TaskGroup() as tg:
                self._sync_watchers(tg, agent, sections)
                tg.create_task(self._notify.watchdog(self._shutdown), name="watchdog")
                assert self._monitor is not None
                tg.create_task(self._monitor.run(self._shutdown), name="monitor")
                logger.info("watching %d section(s): %s", len(sections), ", ".join(s.name for s in sections))
                self._notify.ready(self._monitor.status_text())
                while True:
                    event = await self._events.get()
                    if event == "reload":
                        self._notify.reloading()
                        self._reload(tg, agent)
                        self._notify.ready(self._monitor.status_text())
                    elif event == "stop":
                        break
                self._notify.stopping()
                await self._drain()
                self._shutdown.set()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        logger.info("stopped")
        return 0

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info(
                "%s received: stopping (a running deployment gets %gs; signal again to stop now)",
                sig.name,
                self.shutdown_grace_s,
            )
            self._events.put_nowait("stop")
        else:
            logger.warning("%s received again: cancelling running deployments now", sig.name)
            for running in self._running.values():
                running.task.cancel()

    async def _drain(self) -> None:
        for running in self._running.values():
            running.stop.set()
        tasks = [r.task for r in self._running.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
        if pending:
            logger.warning(
                "shutdown grace of %gs over: cancelling %d running deployment(s)",
                self.shutdown_grace_s,
                len(pending),
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    def _reload(self, tg: asyncio.TaskGroup, agent: Agent) -> None:
        try:
            config = load_config(self.config_path)
            sections = self.selection.pick(config)
        except ConfigError as e:
            logger.error("SIGHUP: %s; keeping the current configuration", e)
            return
        logger.info("SIGHUP: reloaded %s", self.config_path)
        self._sync_watchers(tg, agent, sections)

    def _sync_watchers(self, tg: asyncio.TaskGroup, agent: Agent, sections: list[Section]) -> None:
        """Start, stop or restart watchers so that exactly ``sections`` run with their current settings."""
        wanted = {s.name: s for s in sections}
        groups = overlapping_groups(sections)
        for name, running in list(self._running.items()):
            new = wanted.get(name)
            if new is None or new != running.watcher.section or groups[name] != running.watcher.lock_names:
                logger.info(
                    "[%s] watcher %s", name, "removed" if new is None else "restarting with new settings"
                )
                running.stop.set()
                del self._running[name]
        for name, section in wanted.items():
            if name in self._running:
                continue
            watcher = Watcher(section, agent, lock_names=groups[name])
            stop = asyncio.Event()
            task = tg.create_task(self._supervise(watcher, stop), name=f"watcher:{name}")
            self._running[name] = _Running(watcher, stop, task)
        if self._monitor is not None:
            self._monitor.watch(wanted)

    async def _supervise(self, watcher: Watcher, stop: asyncio.Event) -> None:
        """Run a watcher; a bug in one section is logged and retried, it never stops the others."""
        while not stop.is_set():
            try:
                await watcher.run(stop)
            except Exception:
                logger.exception("[%s] watcher crashed; restarting it", watcher.section.name)
                try:
                    await asyncio.wait_for(stop.wait(), watcher.section.poll_interval_s)
                except TimeoutError:
                    pass


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one section's check in ``run --once``."""

    section: str
    deployment: Deployment | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or (
            self.deployment is not None and self.deployment.status != "succeeded"
        )


async def run_once(config: Config, selection: Selection, state_dir: Path) -> list[CheckResult]:
    """One check per selected section, deploying where needed (``run --once``). Takes the instance lock."""
    sections = selection.pick(config)
    lock = InstanceLock(state_dir)
    lock.acquire()
    try:
        state = StateStore.open(state_dir)
        try:
            recover_interrupted(state)
            async with S3Pool() as pool:
                agent = Agent(state_dir, state, pool, SectionLocks(state_dir))
                groups = overlapping_groups(sections)
                watchers = [Watcher(s, agent, lock_names=groups[s.name]) for s in sections]
                return list(await asyncio.gather(*(check(w) for w in watchers)))
        finally:
            state.close()
    finally:
        lock.release()


async def check(watcher: Watcher, *, force: bool = False) -> CheckResult:
    """One poll of one watcher, with its errors turned into a result (they are logged once here)."""
    name = watcher.section.name
    started = time.monotonic()
    try:
        dep = await watcher.poll_once(force=force)
    except LockBusy:
        raise
    except SourceError as e:
        watcher.log.error("S3 check failed: %s", e)
        return CheckResult(name, error=str(e))
    except S3DeployError as e:
        watcher.log.error("%s", e)
        return CheckResult(name, error=str(e))
    if dep is None:
        watcher.log.info("nothing to deploy (checked in %.2fs)", time.monotonic() - started)
    return CheckResult(name, dep)
