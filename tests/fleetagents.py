"""Helpers for tests with several real agent processes in one fleet (SPEC §10): one SeaweedFS bucket, a
host per agent with its own config, state directory, destination and ``--host-id``, bundles whose hooks
write timestamps to a shared trace, and readers of the coordination objects and of the trace."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3deploy.fleet.keys import DEFAULT_PREFIX, SectionKeys
from s3deploy.source.revision import Revision
from tests.agent import DaemonProcess, appspec, cli, db_history, hook_script, write_config, zip_bytes

SECTION = "Production"
KEY = "web/app.zip"


@dataclass
class Host:
    """One agent's files: ``tmp/<name>/{config.ini, state/, www/}``."""

    name: str
    root: Path
    daemon: DaemonProcess | None = None

    @property
    def config(self) -> Path:
        return self.root / "config.ini"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def www(self) -> Path:
        return self.root / "www"

    def configure(self, bucket: str, endpoint_url: str, **keys: Any) -> Host:
        self.root.mkdir(parents=True, exist_ok=True)
        section = {
            "s3_bucket": bucket,
            "target_file_key": KEY,
            "endpoint_url": endpoint_url,
            "poll_interval": 0.5,
            "deployment_timeout": 60,
            "destination": self.www,
            **keys,
        }
        write_config(self.config, {SECTION: section})
        return self

    def start(self, daemons: Callable[..., DaemonProcess]) -> DaemonProcess:
        self.daemon = daemons(self.config, self.state, "--all", "--host-id", self.name)
        return self.daemon

    def history(self) -> list[dict[str, Any]]:
        return db_history(self.state, SECTION)

    def last_status(self) -> str | None:
        found = self.history()
        return found[0]["status"] if found else None

    def cli(self, *args: str) -> Any:
        """``s3deploy ARGS -c config --state-dir state`` (``--host-id name`` for the commands with it)."""
        named = ("--host-id", self.name) if args[0] in ("run", "deploy", "rollback", "fleet") else ()
        return cli(*args, "-c", str(self.config), "--state-dir", str(self.state), *named)

    def kill9(self) -> None:
        """SIGKILL the agent alone (its hooks run on in their own sessions, as after a crash)."""
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)


def hosts(tmp: Path, count: int, bucket: str, endpoint_url: str, **keys: Any) -> list[Host]:
    return [
        Host(f"web-{i}", tmp / f"web-{i}").configure(bucket, endpoint_url, **keys)
        for i in range(1, count + 1)
    ]


def bundle(
    trace: Path,
    version: str,
    *,
    sleep_s: float = 0.5,
    hold: Path | None = None,
    together: Path | None = None,
    fail_in: str | None = None,
) -> bytes:
    """A hooks-only bundle (installed whole into the section's destination) whose ApplicationStart
    appends ``start|end <host> <epoch> <pid> <version>`` to ``trace``. ``hold``: it waits while that file
    exists. ``together``: it waits (up to 10 s) until a second host is inside too, so that k > 1 shows
    overlap whenever the cap allows it. ``fail_in``: that event's hook fails."""
    stamp = f'"$S3DEPLOY_HOST_ID $(date +%s.%N) $$ {version}" >> {trace}'
    body = f"echo start {stamp}\n"
    if hold is not None:
        body += f"while [ -e {hold} ]; do sleep 0.1; done\n"
    if together is not None:
        body += (
            f"mkdir -p {together}; touch {together}/$S3DEPLOY_HOST_ID; i=0\n"
            f'while [ "$(ls {together} | wc -l)" -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n'
        )
    body += f"sleep {sleep_s}\n"
    if together is not None:
        body += f"rm -f {together}/$S3DEPLOY_HOST_ID\n"
    body += f"echo end {stamp}"
    hooks = {"ApplicationStart": "scripts/start.sh"}
    files: dict[str, Any] = {"scripts/start.sh": hook_script(body), "index.html": f"{version}\n"}
    if fail_in is not None:
        hooks[fail_in] = "scripts/fail.sh"
        files["scripts/fail.sh"] = hook_script('echo "broken release: \\033[31mred\\033[0m" >&2\nexit 1')
    files["appspec.yml"] = appspec(None, hooks)
    return zip_bytes(files)


@dataclass(frozen=True)
class Stamp:
    kind: str
    host: str
    at: float
    pid: int
    version: str


def stamps(trace: Path) -> list[Stamp]:
    if not trace.exists():
        return []
    found = []
    for line in trace.read_text().splitlines():
        kind, host, at, pid, version = line.split()
        found.append(Stamp(kind, host, float(at), int(pid), version))
    return found


def intervals(trace: Path, version: str) -> dict[str, tuple[float, float]]:
    """(start, end) of each host's completed ApplicationStart of ``version``, by host."""
    starts: dict[tuple[str, int], float] = {}
    done = {}
    for s in stamps(trace):
        if s.version != version:
            continue
        if s.kind == "start":
            starts[(s.host, s.pid)] = s.at
        elif (s.host, s.pid) in starts:
            done[s.host] = (starts[(s.host, s.pid)], s.at)
    return done


def most_at_once(spans: Iterator[tuple[float, float]] | list[tuple[float, float]]) -> int:
    """The largest number of spans open at one moment (an end before a start at the same time)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def rollout_keys(s3: Any, bucket: str) -> Any:
    """The keys of the rollout of the revision S3 serves now (as the agents name them)."""
    rev = Revision.from_response(bucket, KEY, s3.head_object(Bucket=bucket, Key=KEY))
    return SectionKeys(DEFAULT_PREFIX, KEY).rollout(rev.identity)


def reports(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Each host's report of the current revision's rollout, read straight from the bucket."""
    keys = rollout_keys(s3, bucket)
    found = s3.list_objects_v2(Bucket=bucket, Prefix=keys.reports).get("Contents", [])
    out = {}
    for item in found:
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        out[item["Key"].rsplit("/", 1)[1]] = json.loads(body)
    return out


def states(s3: Any, bucket: str) -> dict[str, str]:
    return {host: report["state"] for host, report in reports(s3, bucket).items()}


def heartbeats(s3: Any, bucket: str) -> set[str]:
    prefix = SectionKeys(DEFAULT_PREFIX, KEY).hosts
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"].rsplit("/", 1)[1] for item in found}


def fleet_status(host: Host) -> dict[str, Any]:
    proc = cli("fleet", "status", SECTION, "--json", "-c", str(host.config), "--host-id", host.name)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def section_status(host: Host) -> dict[str, Any]:
    proc = host.cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)["sections"][0]
    return result


def kill_session(pid: int) -> None:
    """SIGKILL a hook left running by a killed agent (its own session, pgid = pid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
