"""The daemon: one watcher task per section in one TaskGroup, signals, drain then force, SIGHUP reload.

``serve()`` runs three phases:

- startup: the Agent opens the runtime (instance lock: a second daemon on the same state directory gets
  LockBusy → exit 3; the state; recovery of deployments a dead process left ``running``), then metrics,
  signal handlers, one watcher per section, READY to systemd;
- main loop: wait for a signal. SIGHUP reloads config.ini: watchers (and wake-up queue listeners) are
  added, removed or restarted; an invalid file (or any error while reloading) keeps the old configuration.
  SIGUSR1 wakes every watcher (runtime/wakeups.py, which also runs the ``wake_queue_url`` listeners);
- shutdown (SIGTERM/SIGINT): stop polling, give a running deployment ``shutdown_grace_s``, then cancel it
  (its hooks are killed, it is recorded ``interrupted``); a second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from s3deploy.config import Config, Section, load_config
from s3deploy.errors import describe
from s3deploy.metrics import Monitor
from s3deploy.notify import Notifier
from s3deploy.runtime.agent import Agent, Selection
from s3deploy.runtime.wakeups import Wakeups
from s3deploy.watcher import Watcher

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        config: Config,
        selection: Selection,
        state_dir: Path,
        *,
        shutdown_grace_s: float = 30.0,
        metrics_port: int | None = None,
        metrics_textfile: Path | None = None,
        host_id: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.selection = selection
        self.state_dir = state_dir
        self.shutdown_grace_s = shutdown_grace_s
        self.metrics_port = metrics_port
        self.metrics_textfile = metrics_textfile
        self.host_id = host_id
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._running: dict[str, _Running] = {}
        self._signals = 0
        self._notify = Notifier()
        self._shutdown = asyncio.Event()
        self._monitor: Monitor | None = None
        self._wakeups = Wakeups()

    async def serve(self) -> int:
        """Startup → main loop → shutdown. LockBusy (exit 3) when another daemon holds the state."""
        sections = self.selection.pick(self.config)
        async with Agent(self.config, self.state_dir, exclusive=True, host_id=self.host_id) as agent:
            monitor = await self.startup(agent)
            try:
                async with asyncio.TaskGroup() as tg:
                    await self._sync_watchers(tg, agent, sections)
                    tg.create_task(self._notify.watchdog(self._shutdown), name="watchdog")
                    tg.create_task(monitor.run(self._shutdown), name="monitor")
                    logger.info(
                        "watching %d section(s): %s", len(sections), ", ".join(s.name for s in sections)
                    )
                    self._notify.ready(monitor.status_text())
                    await self.main_loop(tg, agent, monitor)
                    await self.shutdown()
            finally:
                loop = asyncio.get_running_loop()
                for sig in (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1):
                    loop.remove_signal_handler(sig)
        logger.info("stopped")
        return 0

    # ------------------------------------------------------------------ the three phases
    async def startup(self, agent: Agent) -> Monitor:
        """Metrics and signal handlers, on the runtime the agent opened."""
        monitor = Monitor(
            agent.state, port=self.metrics_port, textfile=self.metrics_textfile, on_status=self._notify.status
        )
        agent.observer = self._monitor = monitor
        await monitor.start()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._events.put_nowait, "reload")
        loop.add_signal_handler(signal.SIGUSR1, self._wakeups.wake_all)
        return monitor

    async def main_loop(self, tg: asyncio.TaskGroup, agent: Agent, monitor: Monitor) -> None:
        """Handle signals until a stop signal."""
        while (event := await self._events.get()) != "stop":
            if event == "reload":
                self._notify.reloading()
                await self.reload(tg, agent)
                self._notify.ready(monitor.status_text())

    async def shutdown(self) -> None:
        """Stop polling; give running deployments the grace, then cancel them; stop the helpers."""
        self._notify.stopping()
        self._wakeups.stop()
        for running in self._running.values():
            running.stop.set()
        tasks = [r.task for r in self._running.values()]
        if tasks:
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
        self._shutdown.set()

    # ------------------------------------------------------------------ signals and reload
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

    async def reload(self, tg: asyncio.TaskGroup, agent: Agent) -> None:
        """SIGHUP: read config.ini again and apply it; any error keeps the current configuration."""
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
            sections = self.selection.pick(config)
        except Exception as e:
            logger.error("SIGHUP: %s; keeping the current configuration", describe(e))
            return
        logger.info("SIGHUP: reloaded %s", self.config_path)
        previous, agent.config = agent.config, config
        try:
            await self._sync_watchers(tg, agent, sections)
        except Exception as e:
            agent.config = previous
            logger.error("SIGHUP: %s; keeping the current configuration", describe(e))

    async def _sync_watchers(self, tg: asyncio.TaskGroup, agent: Agent, sections: list[Section]) -> None:
        """Start, stop or restart watchers so that exactly ``sections`` run with their current settings."""
        wanted = {s.name: s for s in sections}
        fresh = {
            name: await agent.watcher(section)
            for name, section in wanted.items()
            if name not in self._running or self._changed(self._running[name].watcher, section, agent)
        }
        for name, running in list(self._running.items()):
            if name in wanted and name not in fresh:
                continue
            what = "removed" if name not in wanted else "restarting with new settings"
            logger.info("watcher %s", what, extra={"section": name})
            running.stop.set()
            del self._running[name]
        for name, watcher in fresh.items():
            stop = asyncio.Event()
            task = tg.create_task(self._supervise(watcher, stop), name=f"watcher:{name}")
            self._running[name] = _Running(watcher, stop, task)
        self._wakeups.sync(tg, {name: running.watcher for name, running in self._running.items()})
        if self._monitor is not None:
            self._monitor.watch(wanted)

    @staticmethod
    def _changed(watcher: Watcher, section: Section, agent: Agent) -> bool:
        return section != watcher.section or agent.lock_names(section.name) != watcher.lock_names

    async def _supervise(self, watcher: Watcher, stop: asyncio.Event) -> None:
        """Run a watcher; should one ever fail (a bug), it is logged and restarted: the others go on."""
        while not stop.is_set():
            try:
                await watcher.run(stop)
            except Exception as e:
                logger.error(
                    "watcher crashed (%s); restarting it",
                    describe(e),
                    extra={"section": watcher.section.name},
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                try:
                    await asyncio.wait_for(stop.wait(), watcher.section.poll_interval_s)
                except TimeoutError:
                    pass
