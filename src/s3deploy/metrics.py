"""What the daemon tells the outside world: Prometheus metrics and a one-line summary per section.

The watchers report polls and deployments to a :class:`Monitor` (the watcher's ``Observer``). The monitor
keeps in-memory counters (polls, poll errors, deployments by status since the process started) and reads
everything else from the state database when asked, so a scrape always shows what is recorded. The
exposition format (text 0.0.4, or OpenMetrics when the scraper asks) and the standard process_* and
python_* metrics are prometheus_client's:

- ``run --metrics-port N``: an HTTP server on 127.0.0.1:N (metrics_endpoint.py) answering ``GET /metrics``
  with every family, process metrics included;
- ``run --metrics-textfile PATH``: the s3deploy_* families for node_exporter's textfile collector (not the
  process ones: node_exporter has its own), rewritten atomically after each poll or deployment;
- systemd ``STATUS=``: "2 sections: Production deploying d-XXXX, Staging idle", refreshed on changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from s3deploy import __version__
from s3deploy.common.files import atomic_write
from s3deploy.metrics_endpoint import MetricsEndpoint
from s3deploy.state.model import STATUSES, Deployment
from s3deploy.state.store import StateStore

logger = logging.getLogger(__name__)

SECTION_STATES = ("never", "idle", "deploying", "failed")
FINAL_STATUSES = STATUSES[1:]


class Observer(Protocol):
    """Told by the watchers what happens; must return quickly and never raise."""

    def polled(self, section: str, error: str | None) -> None: ...

    def deployment_started(self, section: str, deployment_id: str) -> None: ...

    def deployment_finished(self, deployment: Deployment) -> None: ...


def _last_finished(history: Iterable[Deployment]) -> Deployment | None:
    return next((d for d in history if d.finished_at is not None), None)


def section_activity(state: StateStore, section: str) -> str:
    """A few words on what ``section`` is doing: "deploying d-XXXX", "idle", "failed", "suspended" ..."""
    record = state.get_section(section)
    current_state = state.section_state(section)
    if current_state == "deploying":
        last = state.last_attempt(section)
        words = f"deploying {last.id}" if last is not None else "deploying"
    elif current_state == "never":
        words = "not deployed yet"
    else:
        words = current_state
    if record.suspended:
        words += " (suspended)"
    if record.last_error:
        words += " (S3 unreachable)"
    return words


def status_line(state: StateStore, sections: Sequence[str]) -> str:
    """The systemd STATUS text: "3 sections: Production deploying d-XXXX, Staging idle, Dev failed"."""
    if not sections:
        return "no sections"
    parts = ", ".join(f"{name} {section_activity(state, name)}" for name in sections)
    return f"{len(sections)} section{'s' if len(sections) != 1 else ''}: {parts}"


#: name -> (counter?, help, labels) of every s3deploy_* family, in the order they are exposed. Counters
#: are named without "_total": prometheus_client adds it to their samples.
_FAMILIES: dict[str, tuple[bool, str, tuple[str, ...]]] = {
    "s3deploy_info": (False, "The running agent's version.", ("version",)),
    "s3deploy_polls": (True, "S3 checks since the agent started.", ("section",)),
    "s3deploy_poll_errors": (True, "S3 checks that failed since the agent started.", ("section",)),
    "s3deploy_deployments": (
        True, "Deployments finished since the agent started, by status.", ("section", "status"),
    ),
    "s3deploy_section_state": (
        False, "1 for the section's current state (never/idle/deploying/failed).", ("section", "state"),
    ),
    "s3deploy_section_suspended": (False, "1 while the section is suspended.", ("section",)),
    "s3deploy_last_deployment_status": (
        False, "1 for the status of the latest finished deployment.", ("section", "status"),
    ),
    "s3deploy_last_deployment_duration_seconds": (
        False, "How long the latest finished deployment took.", ("section",),
    ),
    "s3deploy_last_deployment_timestamp_seconds": (
        False, "When the latest finished deployment ended (Unix time).", ("section",),
    ),
    "s3deploy_current_revision_info": (
        False, "The installed release: its deployment id, ETag and VersionId as labels.",
        ("section", "deployment_id", "etag", "version_id"),
    ),
}  # fmt: skip


class _SectionCollector(Collector):
    """The s3deploy_* families: the monitor's counters and what the state database records."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        families = {
            name: (CounterMetricFamily if counter else GaugeMetricFamily)(name, text, labels=list(labels))
            for name, (counter, text, labels) in _FAMILIES.items()
        }
        families["s3deploy_info"].add_metric([__version__], 1)
        for section in self.monitor.sections:
            for name, labels, value in self._samples(section):
                families[name].add_metric([section, *labels], value)
        yield from families.values()

    def _samples(self, section: str) -> Iterator[tuple[str, list[str], float]]:
        """(family, labels after ``section``, value) of one section."""
        monitor, state = self.monitor, self.monitor.state
        yield "s3deploy_polls", [], monitor.polls[section]
        yield "s3deploy_poll_errors", [], monitor.poll_errors[section]
        for status in FINAL_STATUSES:
            yield "s3deploy_deployments", [status], monitor.deployments[(section, status)]
        now_state = state.section_state(section)
        for value in SECTION_STATES:
            yield "s3deploy_section_state", [value], int(value == now_state)
        yield "s3deploy_section_suspended", [], int(state.get_section(section).suspended)
        latest = _last_finished(state.history(section, 10))
        if latest is not None and latest.finished_at is not None:
            for status in FINAL_STATUSES:
                yield "s3deploy_last_deployment_status", [status], int(latest.status == status)
            took = (latest.finished_at - latest.started_at).total_seconds()
            yield "s3deploy_last_deployment_duration_seconds", [], round(took, 3)
            yield "s3deploy_last_deployment_timestamp_seconds", [], round(latest.finished_at.timestamp(), 3)
        installed = state.current(section)
        if installed is not None:
            ids = [installed.restores or installed.id, installed.etag or "", installed.version_id or ""]
            yield "s3deploy_current_revision_info", ids, 1


class Monitor:
    """In-memory counters the watchers update, plus the metrics endpoint, textfile and STATUS updates."""

    def __init__(
        self,
        state: StateStore,
        *,
        port: int | None = None,
        textfile: Path | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.port = port
        self.textfile = textfile
        self.on_status = on_status
        self.sections: list[str] = []
        self.polls: Counter[str] = Counter()
        self.poll_errors: Counter[str] = Counter()
        self.deployments: Counter[tuple[str, str]] = Counter()
        self._changed = asyncio.Event()
        self._last_status = ""
        #: The s3deploy_* families (the textfile); ``registry`` adds the process and Python ones.
        self.own_registry = CollectorRegistry()
        self.registry = CollectorRegistry()
        collector = _SectionCollector(self)
        for registry in (self.own_registry, self.registry):
            registry.register(collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._endpoint: MetricsEndpoint | None = None

    # ---- Observer ------------------------------------------------------------------------------------
    def polled(self, section: str, error: str | None) -> None:
        self.polls[section] += 1
        if error is not None:
            self.poll_errors[section] += 1
        self._changed.set()

    def deployment_started(self, section: str, deployment_id: str) -> None:
        self._changed.set()

    def deployment_finished(self, deployment: Deployment) -> None:
        self.deployments[(deployment.section, deployment.status)] += 1
        self._changed.set()

    def watch(self, sections: Iterable[str]) -> None:
        """The sections the daemon runs now (after start and after each SIGHUP)."""
        self.sections = list(sections)
        self._changed.set()

    # ---- output --------------------------------------------------------------------------------------
    def render(self) -> str:
        """The s3deploy_* families in the Prometheus text format (reads the state database)."""
        return generate_latest(self.own_registry).decode()

    def status_text(self) -> str:
        return status_line(self.state, self.sections)

    # ---- the loop ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on 127.0.0.1:port when a port is set; ConfigError when it cannot (exit 2 at startup)."""
        if self.port is not None and self._endpoint is None:
            self._endpoint = MetricsEndpoint.listen(self.registry, self.port)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the endpoint, and refresh STATUS and the textfile on every change, until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(self._endpoint.serve()) if self._endpoint is not None else None
            try:
                await self._follow(stop)
            finally:
                if server is not None:
                    server.cancel()

    async def _follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            waiter = asyncio.ensure_future(self._changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            self._changed.clear()
            await self._publish()

    async def _publish(self) -> None:
        try:
            if self.on_status is not None:
                text = await asyncio.to_thread(self.status_text)
                if text != self._last_status:
                    self._last_status = text
                    self.on_status(text)
            if self.textfile is not None:
                body = await asyncio.to_thread(self.render)
                await asyncio.to_thread(write_textfile, self.textfile, body)
        except Exception as e:  # metrics must never take the agent down
            logger.warning("could not update the metrics/status: %s", e)


def write_textfile(path: Path, body: str) -> None:
    """Write ``body`` to ``path`` atomically (node_exporter never reads half a file)."""
    atomic_write(path, body, mode=0o644, durable=False)
