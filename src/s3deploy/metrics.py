"""What the daemon tells the outside world: Prometheus metrics and a one-line summary per section.

The watchers report polls and deployments to a :class:`Monitor` (the watcher's ``Observer``). The monitor
keeps in-memory counters (polls, poll errors, deployments by status since the process started) and reads
everything else from the state database when asked, so a scrape always shows what is recorded:

- ``run --metrics-port N``: a tiny HTTP/1.0 server on 127.0.0.1:N (asyncio streams: no web framework for
  one read-only page) answering ``GET /metrics``;
- ``run --metrics-textfile PATH``: the same text for node_exporter's textfile collector, rewritten
  atomically (temporary file + rename) after each poll or deployment;
- systemd ``STATUS=``: "2 sections: Production deploying d-XXXX, Staging idle", refreshed on changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from s3deploy import __version__
from s3deploy.common.files import atomic_write
from s3deploy.errors import ConfigError
from s3deploy.state.model import STATUSES, Deployment
from s3deploy.state.store import StateStore

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECTION_STATES = ("never", "idle", "deploying", "failed")
_REQUEST_TIMEOUT_S = 5.0


class Observer(Protocol):
    """Told by the watchers what happens; must return quickly and never raise."""

    def polled(self, section: str, error: str | None) -> None: ...

    def deployment_started(self, section: str, deployment_id: str) -> None: ...

    def deployment_finished(self, deployment: Deployment) -> None: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str | None) -> str:
    return "{" + ",".join(f'{k}="{_escape(v or "")}"' for k, v in labels.items()) + "}"


class _Family:
    """One metric family in the text exposition format: HELP, TYPE, then its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name = name

    def add(self, value: float, **labels: str | None) -> None:
        number = (
            repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
        )
        self.lines.append(f"{self.name}{_labels(**labels)} {number}")


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
        self.bound_port: int | None = None
        self._server: asyncio.Server | None = None

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
        """Every metric in the Prometheus text exposition format (reads the state database)."""
        info = _Family("s3deploy_info", "gauge", "The running agent's version.")
        info.add(1, version=__version__)
        polls = _Family("s3deploy_polls_total", "counter", "S3 checks since the agent started.")
        errors = _Family(
            "s3deploy_poll_errors_total", "counter", "S3 checks that failed since the agent started."
        )
        deps = _Family(
            "s3deploy_deployments_total",
            "counter",
            "Deployments finished since the agent started, by status.",
        )
        state = _Family(
            "s3deploy_section_state",
            "gauge",
            "1 for the section's current state (never/idle/deploying/failed).",
        )
        suspended = _Family("s3deploy_section_suspended", "gauge", "1 while the section is suspended.")
        last = _Family(
            "s3deploy_last_deployment_status", "gauge", "1 for the status of the latest finished deployment."
        )
        duration = _Family(
            "s3deploy_last_deployment_duration_seconds",
            "gauge",
            "How long the latest finished deployment took.",
        )
        finished = _Family(
            "s3deploy_last_deployment_timestamp_seconds",
            "gauge",
            "When the latest finished deployment ended (Unix time).",
        )
        current = _Family(
            "s3deploy_current_revision_info",
            "gauge",
            "The installed release: its deployment id, ETag and VersionId as labels.",
        )
        for name in self.sections:
            polls.add(self.polls[name], section=name)
            errors.add(self.poll_errors[name], section=name)
            for status in STATUSES[1:]:
                deps.add(self.deployments[(name, status)], section=name, status=status)
            now_state = self.state.section_state(name)
            for value in SECTION_STATES:
                state.add(int(value == now_state), section=name, state=value)
            suspended.add(int(self.state.get_section(name).suspended), section=name)
            latest = _last_finished(self.state.history(name, 10))
            if latest is not None and latest.finished_at is not None:
                for status in STATUSES[1:]:
                    last.add(int(latest.status == status), section=name, status=status)
                duration.add(round((latest.finished_at - latest.started_at).total_seconds(), 3), section=name)
                finished.add(round(latest.finished_at.timestamp(), 3), section=name)
            installed = self.state.current(name)
            if installed is not None:
                current.add(
                    1,
                    section=name,
                    deployment_id=installed.restores or installed.id,
                    etag=installed.etag,
                    version_id=installed.version_id,
                )
        families = (info, polls, errors, deps, state, suspended, last, duration, finished, current)
        return "\n".join(line for family in families for line in family.lines) + "\n"

    def status_text(self) -> str:
        return status_line(self.state, self.sections)

    # ---- the loop ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on 127.0.0.1:port when a port is set; ConfigError when it cannot (exit 2 at startup)."""
        if self.port is not None and self._server is None:
            self._server = await self._serve()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh STATUS and the textfile on every change until ``stop``; then close the endpoint."""
        server = self._server
        try:
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
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()

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

    async def _serve(self) -> asyncio.Server:
        assert self.port is not None
        try:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        except OSError as e:
            raise ConfigError(
                f"--metrics-port {self.port}: cannot listen on 127.0.0.1: {e.strerror}; pick a free port"
            ) from e
        self.bound_port = server.sockets[0].getsockname()[1]
        logger.info("metrics on http://127.0.0.1:%d/metrics", self.bound_port)
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.0: read the request head, answer, close. Only GET/HEAD of /metrics (or /)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT_S)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path not in ("/metrics", "/"):
                status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, ctype = "200 OK", CONTENT_TYPE
                body = (await asyncio.to_thread(self.render)).encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception as e:
            logger.warning("metrics request failed: %s", e)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def write_textfile(path: Path, body: str) -> None:
    """Write ``body`` to ``path`` atomically (node_exporter never reads half a file)."""
    atomic_write(path, body, mode=0o644, durable=False)
