"""Detection cases (issue 15 item 1, issue 14 item 6), registered in ``benchmarks/__main__.py``:

* D1: 200 sections in ONE bucket, deployed one after another by the daemon, each deployment ending at
  its own moment (so a per-watcher schedule would poll at many moments per interval), poll 5 s, then
  nothing changing: the daemon's CPU on a quiet machine and beside two CPU-bound processes, its RSS; the
  naive HEAD loop measured alone as the baseline.
* D2: upload → first hook with push wake-ups (S3 event → SQS → the daemon), beside the same daemon's
  polling figure. SeaweedFS has no S3 notifications: both run on moto's server (S3 + SQS, a separate
  process on this machine).
"""

from __future__ import annotations

import contextlib
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

from benchmarks import inputs
from benchmarks.bench import HEAD_LOOP, Bench, _config, _cpu_s, _daemon, _rss_mib, _stop
from benchmarks.harness import Row, p95

CPU_HOG = "while True: pass"


def _bundle(b: Bench, name: str, hook_body: str = "true") -> bytes:
    """A one-page bundle with four hooks and no ``files``: each section installs it into its own
    ``destination``."""
    root = b.fresh(name)
    (root / "scripts").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hello</h1>\n")
    spec = "version: 0.0\nos: linux\nhooks:\n"
    for event in ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"):
        script = root / "scripts" / f"{event}.sh"
        script.write_text(inputs.hook(hook_body))
        script.chmod(0o755)
        spec += f"  {event}:\n    - location: scripts/{event}.sh\n      timeout: 300\n"
    (root / "appspec.yml").write_text(spec)
    return inputs.zipped(root, b.work / f"{name}.zip").read_bytes()


def _count(state: Path, query: str) -> int:
    """One number from the daemon's database, read-only (0 while it is being created)."""
    try:
        conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is being created
        return 0
    finally:
        conn.close()


def _succeeded(state: Path) -> int:
    """Sections with a succeeded deployment."""
    return _count(state, "SELECT COUNT(DISTINCT section) FROM deployments WHERE status = 'succeeded'")


def _baselines(state: Path) -> int:
    """Sections whose first poll recorded the object as already deployed."""
    return _count(state, "SELECT COUNT(*) FROM sections WHERE baseline_identity IS NOT NULL")


def _wait(what: str, done: Any, daemon: subprocess.Popen[bytes], log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done after {timeout_s:.0f}s; see {log}")
        time.sleep(0.5)


def _cpu_pct(pid: int, seconds: float, rss: list[float] | None = None, step_s: float = 5.0) -> float:
    """Percent of one core ``pid`` used over the next ``seconds`` (RSS sampled every ``step_s``)."""
    cpu0, started = _cpu_s(pid), time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(step_s, left))
        if rss is not None:
            rss.append(_rss_mib(pid))
    return 100 * (_cpu_s(pid) - cpu0) / (time.monotonic() - started)


@contextlib.contextmanager
def _cpu_hogs(n: int) -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", CPU_HOG]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# --------------------------------------------------------------------------- D1
def d1_idle_one_bucket(b: Bench, n_sections: int = 200, interval_s: float = 5.0) -> list[Row]:
    bucket = b.bucket("bench-d1")
    # Each deployment ends at its own moment: ValidateService outlasts the interval by 0-4.75 s, in 20
    # steps of 0.25 s (more than the old 0.2 s window), so a per-watcher schedule polls at 20 moments.
    spread = (
        '[ "$LIFECYCLE_EVENT" = ValidateService ] || exit 0\n'
        "n=$(echo \"$DEPLOYMENT_GROUP_NAME\" | sed 's/^app-0*//')\n"
        f'sleep "$(awk "BEGIN {{ print {interval_s} + (${{n:-0}} % 20) / 4 }}")"'
    )
    payload = _bundle(b, "d1-bundle", spread)
    keys = [f"apps/app{j:03d}/bundle.zip" for j in range(n_sections)]
    for key in keys:
        b.client.put_object(Bucket=bucket, Key=key, Body=payload)
    sections = {
        f"app-{j:03d}": {
            "s3_bucket": bucket,
            "target_file_key": key,
            "endpoint_url": b.endpoint,
            "poll_interval": interval_s,
            "destination": b.work / "d1-www" / str(j),
            # The first objects are a baseline; the daemon deploys the second ones, one after another.
            "last_fetch_time": "2099-01-01 00:00:00+0000",
        }
        for j, key in enumerate(keys)
    }
    state = b.fresh("d1-state")
    log = b.work / "d1-daemon.log"
    daemon = _daemon(b, _config(b.work / "d1.ini", sections), state, log, "WARNING")
    phase_s = max(30.0, b.idle_s / 2)
    rss: list[float] = []
    try:
        _wait("D1: the first polls", lambda: _baselines(state) == n_sections, daemon, log)
        b.log(f"  D1: uploading {n_sections} new bundles one after another; the daemon deploys each")
        for j, key in enumerate(keys):
            b.client.put_object(Bucket=bucket, Key=key, Body=payload + f"\n#{j}".encode())
            time.sleep(interval_s / 20)
        _wait("D1: the deployments", lambda: _succeeded(state) == n_sections, daemon, log)
        time.sleep(max(3 * interval_s, 15.0))  # warm-up: the last deployments' bookkeeping
        b.log(f"  D1: measuring the idle daemon {phase_s:.0f}s quiet, {phase_s:.0f}s beside 2 CPU hogs")
        quiet = _cpu_pct(daemon.pid, phase_s, rss, interval_s)
        with _cpu_hogs(2):
            busy = _cpu_pct(daemon.pid, phase_s, rss, interval_s)
        peak = _rss_mib(daemon.pid, "VmHWM")
    finally:
        _stop(daemon)
    targets = [f"{bucket}/{key}" for key in keys]
    naive = subprocess.Popen(
        [sys.executable, "-c", HEAD_LOOP, b.endpoint, str(interval_s), *targets],
        stdout=subprocess.DEVNULL,
        env=b.env,
    )
    try:
        time.sleep(2 * interval_s)
        b.log(f"  D1: measuring the naive HEAD loop {phase_s:.0f}s")
        base = _cpu_pct(naive.pid, phase_s)
    finally:
        _stop(naive)
    what = f"D1 idle, {n_sections} sections in ONE bucket deployed one by one, poll {interval_s:g} s"
    note = "baseline: a boto3 loop HEADing every object each interval, alone on a quiet machine"
    growth = rss[-1] - rss[0]
    return [
        Row(f"{what}: CPU, quiet", f"{quiet:.2f} %", f"{base:.2f} %", quiet / base if base else None,
            "≤1 %", quiet <= 1.0, note, {"ours": [quiet], "baseline": [base]}),
        Row(f"{what}: CPU beside 2 CPU-bound processes", f"{busy:.2f} %", f"{base:.2f} % (quiet)",
            busy / base if base else None, "≤1 %", busy <= 1.0, "the daemon's CPU only",
            {"ours": [busy]}),
        Row(f"{what}: RSS while idle", f"{max(rss):.0f} MiB ({growth:+.1f} over {2 * phase_s:.0f} s)", "—",
            None, "≤80 MiB", max(rss) <= 80,
            f"peak {peak:.0f} MiB including the {n_sections} deployments", {"rss": rss}),
    ]  # fmt: skip


# --------------------------------------------------------------------------- D2
ACCOUNT = "123456789012"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _moto(b: Bench) -> Iterator[str]:
    """moto's server (S3, SQS) in its own process; yields its URL."""
    port = _free_port()
    log = open(b.work / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=b.env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not start; see {b.work / 'moto.log'}")
            time.sleep(0.1)
        yield url
    finally:
        _stop(proc)
        log.close()


def _clients(url: str) -> tuple[Any, Any]:
    kw: dict[str, Any] = dict(endpoint_url=url, region_name="us-east-1")
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


def _stamps(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def d2_wake_latency(b: Bench, interval_s: float = 5.0) -> list[Row]:
    stamps = b.work / "d2-stamps"
    stamps.mkdir(exist_ok=True)
    body = (
        f'[ "$LIFECYCLE_EVENT" = BeforeInstall ] && date +%s.%N >> {stamps}/"$DEPLOYMENT_GROUP_NAME" || true'
    )
    payload = _bundle(b, "d2-bundle", body)
    samples = max(6, 2 * b.reps)
    with _moto(b) as url:
        s3, sqs = _clients(url)
        queue = sqs.create_queue(QueueName="d2-wakeups")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sections: dict[str, dict[str, Any]] = {}
        for name, wake in (("woken", True), ("polled", False)):
            bucket = f"bench-d2-{name}"
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            if wake:
                config = {"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]}
                s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
            s3.put_object(Bucket=bucket, Key="app.zip", Body=payload)
            sections[name] = {
                "s3_bucket": bucket,
                "target_file_key": "app.zip",
                "endpoint_url": url,
                "poll_interval": interval_s,
                "destination": b.work / "d2-www" / name,
                "last_fetch_time": "2099-01-01 00:00:00+0000",
            } | ({"wake_queue_url": queue} if wake else {})
        log = b.work / "d2-daemon.log"
        daemon = _daemon(b, _config(b.work / "d2.ini", sections), b.fresh("d2-state"), log, "INFO")
        latency: dict[str, list[float]] = {"woken": [], "polled": []}
        rng = random.Random(6)
        try:
            time.sleep(interval_s + 3)  # past the first (baseline) polls and the listener's start
            for n in range(samples):
                for name in ("woken", "polled"):
                    time.sleep(rng.uniform(0, interval_s))
                    before = len(_stamps(stamps / name))
                    s3.put_object(Bucket=f"bench-d2-{name}", Key="app.zip", Body=payload + f"\n#{n}".encode())
                    uploaded = time.time()
                    deadline = time.monotonic() + 3 * interval_s + 30
                    while len(found := _stamps(stamps / name)) == before:
                        if daemon.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"D2: upload {n} of {name} not deployed; see {log}")
                        time.sleep(0.01)
                    latency[name].append(found[before] - uploaded)
        finally:
            _stop(daemon)
    woken, polled = p95(latency["woken"]), p95(latency["polled"])
    return [
        Row(f"D2 upload → first hook p95 with wake-ups, poll {interval_s:g} s ({samples} uploads)",
            f"{woken:.2f} s", f"{polled:.2f} s (polling)", woken / polled, "≤1 s", woken <= 1.0,
            "moto's server for S3 + SQS (S3 → SQS notifications), not SeaweedFS; baseline: the same "
            "daemon's polling on a bucket without notifications",
            {"ours": latency["woken"], "baseline": latency["polled"]}),
    ]  # fmt: skip


DETECTION_CASES = {"D1": d1_idle_one_bucket, "D2": d2_wake_latency}
