"""`s3deploy demo --fleet N` (`make demo-fleet`): a fleet rollout on one machine (SPEC §10).

N real agents (``s3deploy run``), each with its own host id, config, state directory and destination,
watch one bundle in a local SeaweedFS with ``max_concurrent = 1``. Revision v1 rolls out one host at a
time while ``fleet status`` is redrawn as the hosts move; then v2, whose ValidateService fails, is
stopped after the first host (it rolls back to v1; every other host skips v2). A summary follows: each
host's state for both revisions, what it has installed, and the most hosts that deployed at once, from
the timestamps the hooks wrote. Everything lives under the work folder; everything started is stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s3deploy.bundle.pack import make_zip
from s3deploy.common.procgroup import Session, stop_session
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import S3DeployError
from s3deploy.fleet.coordinator import Coordinator, HostFleet
from s3deploy.fleet.policy import FleetSettings, MaxConcurrent
from s3deploy.fleet.view import FleetView
from s3deploy.source.s3 import Endpoint, Revision, S3Pool

BUCKET = "s3deploy-fleet-demo"
KEY = "web/app.zip"
SECTION = "Web"
MAX_HOSTS = 20
#: A rollout's end: every host done with the revision (or skipped it).
_DONE = frozenset({"succeeded", "failed", "rolled_back", "skipped"})


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


@dataclass
class Agent:
    name: str
    root: Path
    process: subprocess.Popen[bytes] | None = None
    session: Session | None = None

    @property
    def config(self) -> Path:
        return self.root / "config.ini"

    @property
    def www(self) -> Path:
        return self.root / "www"


def _bundle(folder: Path, trace: Path, version: str, *, broken: bool) -> Path:
    """A hooks-only bundle: index.html, ApplicationStart (stamps the trace, takes a second) and a
    ValidateService that fails in the broken version."""
    scripts = folder / "scripts"
    scripts.mkdir(parents=True)
    (folder / "index.html").write_text(f"<h1>{version}</h1>\n")
    (folder / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n"
        "  ApplicationStart:\n    - location: scripts/start.sh\n      timeout: 60\n"
        "  ValidateService:\n    - location: scripts/validate.sh\n      timeout: 60\n"
    )
    stamp = f'"$S3DEPLOY_HOST_ID $(date +%s.%N)" >> {trace}'
    start = f"#!/bin/sh\necho start {stamp}\nsleep 1\necho end {stamp}\necho started {version}\n"
    check = 'echo "health check: HTTP 500 from /health" >&2\nexit 1\n' if broken else "echo healthy\n"
    (scripts / "start.sh").write_text(start)
    (scripts / "validate.sh").write_text(f"#!/bin/sh\n{check}")
    for script in scripts.iterdir():
        script.chmod(0o755)
    archive = folder.with_suffix(".zip")
    make_zip(folder, archive)
    return archive


def _most_at_once(trace: Path) -> int:
    """The most hosts inside ApplicationStart at one moment, from the hooks' own timestamps."""
    events = []
    for line in trace.read_text().splitlines() if trace.exists() else []:
        kind, _, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    peak = current = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        current += step
        peak = max(peak, current)
    return peak


class Screen:
    """The live ``fleet status``: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self._last: tuple[object, ...] | None = None
        self._lines = 0

    def show(self, view: FleetView) -> None:
        key = (view.stopped, tuple((h.host, h.state) for h in view.hosts), tuple(s.host for s in view.slots))
        if key == self._last:
            return
        self._last = key
        elapsed = time.monotonic() - self.started
        if not self.tty:
            states = "  ".join(f"{h.host} {h.state:<11}" for h in view.hosts)
            print(f"  {elapsed:5.1f}s  {states}{'  STOPPED' if view.stopped else ''}".rstrip(), flush=True)
            return
        lines = [f"  fleet status {SECTION}  (+{elapsed:.1f}s)  {'STOPPED' if view.stopped else ''}"]
        lines += [f"    {'HOST':<8}{'STATE':<13}{'DEPLOYMENT':<13}ERROR"]
        for h in view.hosts:
            error = (h.error or "")[:60]
            lines.append(f"    {h.host:<8}{h.state:<13}{h.deployment_id or '-':<13}{error}")
        holders = ", ".join(f"slot-{s.slot}: {s.host}" for s in view.slots) or "none"
        lines.append(f"    slots held: {holders}")
        if self._lines:
            sys.stdout.write(f"\x1b[{self._lines}F\x1b[J")  # back to the frame's first line, clear below
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self._lines = len(lines)

    def reset(self) -> None:
        self._last, self._lines, self.started = None, 0, time.monotonic()


async def _rollout(
    pool: S3Pool, coordinator: Coordinator, archive: Path, screen: Screen, timeout_s: float,
    done: Callable[[FleetView], bool],
) -> FleetView:  # fmt: skip
    """Publish ``archive`` and show the rollout until ``done`` (or the time limit)."""
    endpoint = coordinator.settings.endpoint
    revision: Revision = await pool.upload(endpoint, BUCKET, KEY, archive)
    screen.reset()
    deadline = time.monotonic() + timeout_s
    while True:
        view = await coordinator.view(revision)
        screen.show(view)
        if done(view) or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.2)


async def _demo(endpoint_url: str, agents: list[Agent], work: Path, timeout_s: float) -> int:
    endpoint = Endpoint(endpoint_url=endpoint_url)
    trace = work / "trace"
    settings = FleetSettings(SECTION, BUCKET, KEY, endpoint, MaxConcurrent(count=1), deployment_timeout_s=60)
    async with S3Pool() as pool:
        coordinator = HostFleet(pool, "demo").coordinator(settings)
        names = {a.name for a in agents}
        deadline = time.monotonic() + timeout_s
        while True:  # every agent in the fleet (its heartbeat written) before the first upload
            listing = await pool.listing(endpoint, BUCKET, settings.keys.hosts)
            if {k.rsplit("/", 1)[1] for k in listing.objects} >= names:
                break
            if time.monotonic() > deadline:
                raise S3DeployError(
                    f"the agents did not start within {timeout_s:g}s: see {work}/web-*/agent.log"
                )
            await asyncio.sleep(0.3)
        _say(f"{len(agents)} agents in the fleet; publishing v1 (max_concurrent = 1)")
        screen = Screen()
        archive = _bundle(work / "bundles" / "v1", trace, "v1", broken=False)
        v1 = await _rollout(
            pool, coordinator, archive, screen, timeout_s,
            lambda v: len(v.hosts) == len(agents) and all(h.state in _DONE for h in v.hosts),
        )  # fmt: skip
        most = _most_at_once(trace)
        _say("publishing v2, whose ValidateService fails")
        trace.rename(work / "trace-v1")
        archive = _bundle(work / "bundles" / "v2", trace, "v2", broken=True)
        v2 = await _rollout(
            pool, coordinator, archive, screen, timeout_s,
            lambda v: v.stopped and all(h.state in _DONE for h in v.hosts) and len(v.hosts) == len(agents),
        )  # fmt: skip
    return _summary(agents, v1, v2, most)


def _summary(agents: list[Agent], v1: FleetView, v2: FleetView, most: int) -> int:
    first = {h.host: h.state for h in v1.hosts}
    second = {h.host: h for h in v2.hosts}
    _say("summary")
    print(f"    {'HOST':<8}{'V1':<12}{'V2':<13}INSTALLED")
    for agent in agents:
        page = agent.www / "index.html"
        installed = (
            page.read_text().strip().removeprefix("<h1>").removesuffix("</h1>") if page.exists() else "-"
        )
        row = second.get(agent.name)
        print(
            f"    {agent.name:<8}{first.get(agent.name, '-'):<12}{row.state if row else '-':<13}{installed}"
        )
    failed = [h for h in v2.hosts if h.state in ("failed", "rolled_back")]
    skipped = [h for h in v2.hosts if h.state == "skipped"]
    ok = all(s == "succeeded" for s in first.values()) and v2.stopped and len(failed) == 1
    good = sum(s == "succeeded" for s in first.values())
    _say(f"v1: {good} of {len(agents)} hosts succeeded, at most {most} at once (from the hooks' timestamps)")
    if failed:
        why = (failed[0].error or "").split("; last output")[0][:100]
        _say(f"v2: {failed[0].host} {failed[0].state} ({why})")
        _say(f"v2: the rollout stopped; {len(skipped)} host(s) skipped it and still run v1")
    return 0 if ok else 1


def run_fleet_demo(workdir: Path, hosts: int, *, timeout_s: float = 120.0) -> int:
    """Run the fleet demo with ``hosts`` agents; 0 when v1 reached every host and v2 stopped after one."""
    if not 2 <= hosts <= MAX_HOSTS:
        raise S3DeployError(f"--fleet: expected 2 to {MAX_HOSTS} hosts, got {hosts}")
    work = workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    creds = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **creds}
    os.environ.update(creds)
    agents = [Agent(f"web-{i}", work / f"web-{i}") for i in range(1, hosts + 1)]
    with SeaweedServer(work / "seaweedfs") as server:
        _say(f"SeaweedFS serves S3 at {server.endpoint_url}")
        asyncio.run(_create_bucket(server.endpoint_url))
        for agent in agents:
            agent.root.mkdir()
            keys = {
                "s3_bucket": BUCKET, "target_file_key": KEY, "endpoint_url": server.endpoint_url,
                "poll_interval": "0.5", "deployment_timeout": "60", "destination": agent.www,
                "max_concurrent": "1",
            }  # fmt: skip
            agent.config.write_text(f"[{SECTION}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
        _say(
            f"starting {hosts} agents: s3deploy run --all --host-id web-N -c {work.name}/web-N/config.ini ..."
        )
        try:
            for agent in agents:
                agent.process = subprocess.Popen(
                    [sys.executable, "-m", "s3deploy", "run", "--all", "-c", str(agent.config),
                     "--state-dir", str(agent.root / "state"), "--host-id", agent.name,
                     "--log-file", str(agent.root / "agent.log"), "--log-level", "WARNING"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                agent.session = Session.led_by(agent.process.pid)
            return asyncio.run(_demo(server.endpoint_url, agents, work, timeout_s))
        finally:
            _say(f"stopping the {hosts} agents")
            for agent in agents:  # all at once; then each is waited for (SIGKILL after the grace)
                if agent.process is not None and agent.process.poll() is None:
                    agent.process.terminate()
            for agent in agents:
                if agent.process is not None and agent.session is not None:
                    stop_session(agent.session, grace_s=40, label=f"agent {agent.name}")
                    agent.process.wait()


async def _create_bucket(endpoint_url: str) -> None:
    async with S3Pool() as pool:
        client = await pool.client(Endpoint(endpoint_url=endpoint_url))
        await client.create_bucket(Bucket=BUCKET)
