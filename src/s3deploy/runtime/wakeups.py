"""The daemon's push wake-ups (SPEC §13): the queue listeners it runs, and whom they wake.

One :class:`~s3deploy.wake.QueueListener` per (queue URL, profile, region) among the sections that set
``wake_queue_url``. A message naming a bucket and key wakes the watchers of every section on that queue
URL that watches that object; a message it cannot read wakes every section on that queue URL. (Sections
naming one queue with different credentials get one listener each; since each message is received by
one of them, each wakes the sections of the others too, so no wake is lost to the wrong listener.)

A wake is only a hint: the watcher polls now (wake-triggered polls at least a second apart), reads the
object, and every check still applies. :meth:`Wakeups.sync` runs after every change of the watchers
(start, SIGHUP): listeners are started, stopped, or restarted when whom they wake changed. Listener
errors (a missing queue, access denied) are the listener's: logged, backed off, never stopping polling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from s3deploy.common.text import bounded
from s3deploy.config import Section
from s3deploy.errors import describe
from s3deploy.wake import QueueAddress, QueueListener, parse_queue_url
from s3deploy.watcher import Watcher

logger = logging.getLogger(__name__)

#: A listener that failed on a bug (never an SQS error: those stay in its loop) starts again after this.
RESTART_DELAY_S = 60.0

_Object = tuple[str, str]  # (bucket, key)


@dataclass(frozen=True)
class _Plan:
    """What one listener reads, as whom, and whom it wakes (sections by object; all of them)."""

    address: QueueAddress
    profile_name: str | None
    region: str | None
    targets: tuple[tuple[_Object, tuple[str, ...]], ...]
    everyone: tuple[str, ...]


@dataclass
class _Running:
    plan: _Plan
    stop: asyncio.Event
    task: asyncio.Task[None]


def plan_listeners(sections: Iterable[Section]) -> list[_Plan]:
    """The listeners ``sections`` need: one per (queue URL, profile, region), each waking every section
    on its queue URL by the object it watches."""
    by_url: dict[str, list[Section]] = {}
    for section in sections:
        if section.wake_queue_url:
            by_url.setdefault(section.wake_queue_url, []).append(section)
    plans = []
    for url, on_queue in sorted(by_url.items()):
        objects: dict[_Object, list[str]] = {}
        for s in on_queue:
            objects.setdefault((s.s3_bucket, s.target_file_key), []).append(s.name)
        targets = tuple(sorted((obj, tuple(sorted(names))) for obj, names in objects.items()))
        everyone = tuple(sorted(s.name for s in on_queue))
        credentials = sorted({(s.profile_name or "", s.region or "") for s in on_queue})
        address = parse_queue_url(url)  # checked when config.ini was loaded
        for profile, region in credentials:
            plans.append(_Plan(address, profile or None, region or None, targets, everyone))
    return plans


class Wakeups:
    """The daemon's listeners and SIGUSR1: who is woken by what."""

    def __init__(self) -> None:
        self._watchers: dict[str, Watcher] = {}
        self._running: dict[tuple[str, str | None, str | None], _Running] = {}

    def sync(self, tg: asyncio.TaskGroup, watchers: Mapping[str, Watcher]) -> None:
        """Run exactly the listeners the ``watchers``' sections need, waking those watchers."""
        self._watchers = dict(watchers)
        wanted = {(p.address.url, p.profile_name, p.region): p for p in plan_listeners(
            w.section for w in watchers.values()
        )}  # fmt: skip
        for key, running in list(self._running.items()):
            if wanted.get(key) != running.plan:
                running.stop.set()
                del self._running[key]
        for key, plan in wanted.items():
            if key not in self._running:
                stop = asyncio.Event()
                task = tg.create_task(self._listen(plan, stop), name=f"wake:{plan.address.name}")
                self._running[key] = _Running(plan, stop, task)

    def wake(self, names: Iterable[str]) -> None:
        """Wake the watchers of these sections (those still running)."""
        for name in names:
            watcher = self._watchers.get(name)
            if watcher is not None:
                watcher.wake()

    def wake_all(self) -> None:
        """SIGUSR1: every watcher of the daemon polls now."""
        logger.info("SIGUSR1 received: waking every watcher (%d)", len(self._watchers))
        self.wake(list(self._watchers))

    def stop(self) -> None:
        """Stop every listener (shutdown); their tasks end at once."""
        for running in self._running.values():
            running.stop.set()
        self._running.clear()

    async def _listen(self, plan: _Plan, stop: asyncio.Event) -> None:
        targets = {obj: functools.partial(self.wake, names) for obj, names in plan.targets}
        while not stop.is_set():
            listener = QueueListener(
                plan.address,
                targets=targets,
                on_any=functools.partial(self.wake, plan.everyone),
                profile_name=plan.profile_name,
                region=plan.region,
            )
            try:
                await listener.run(stop)
            except Exception as e:  # a bug: logged, and the listener starts again (polling goes on)
                logger.error(
                    "%s stopped on an unexpected error (%s); starting it again in %gs",
                    listener.label,
                    describe(e),
                    RESTART_DELAY_S,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                try:
                    await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
                except TimeoutError:
                    pass
        logger.info("wake-up queue %s: stopped listening", bounded(plan.address.name, 80))
