"""Soak: hundreds of deployments across sections with random S3 faults and random kill -9 + restarts,
then the end state is checked. ``make soak`` (``pytest -m soak``); not part of CI.

S3DEPLOY_SOAK_SECONDS sets how long the random phase runs (default 300); the counts are printed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from tests.agent import (
    DaemonProcess,
    appspec,
    assert_db_intact,
    assert_no_lock_held,
    db_history,
    hook_script,
    revisions_in,
    status,
    wait_until,
    write_config,
    zip_bytes,
)
from tests.s3server import Fault, FaultProxy

KEY = "app/bundle.zip"
SECTIONS = ("Alpha", "Beta", "Gamma")


def release(dest: Path, tag: str, rng: random.Random) -> bytes:
    """Every installed file starts with ``tag``; hooks sometimes take a while, sometimes fail."""
    pause = f"sleep {rng.choice(('0', '0', '0.1', '0.3'))}"
    validate = "exit 1" if rng.random() < 0.15 else "true"
    hooks = {
        "BeforeInstall": pause,
        "AfterInstall": pause,
        "ApplicationStart": "true",
        "ValidateService": validate,
    }
    files: dict[str, Any] = {
        "appspec.yml": appspec(dest, {e: f"scripts/{e}.sh" for e in hooks}),
        **{f"scripts/{e}.sh": hook_script(body) for e, body in hooks.items()},
    }
    for i in range(rng.randint(1, 40)):
        files[f"app/d{i % 5}/f{i}.txt"] = f"{tag}\n{i}\n"
    files["app/index.html"] = f"{tag}\n"
    return zip_bytes(files)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_random_faults_and_kills(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    fault_proxy: FaultProxy,
) -> None:
    seconds = float(os.environ.get("S3DEPLOY_SOAK_SECONDS", "300"))
    rng = random.Random(int(os.environ.get("S3DEPLOY_SOAK_SEED", str(int(time.time())))))
    state_dir = tmp_path / "state"
    buckets = {name: make_bucket(versioned=True) for name in SECTIONS}
    tags: dict[tuple[str, str], str] = {}  # (section, VersionId) -> tag
    latest: dict[str, str] = {}  # section -> VersionId of its newest upload
    config = write_config(
        tmp_path / "config.ini",
        {
            name: {
                "s3_bucket": buckets[name],
                "target_file_key": KEY,
                # Gamma talks to S3 directly, the others through the fault proxy.
                "endpoint_url": seaweed.endpoint_url if name == "Gamma" else fault_proxy.endpoint_url,
                "poll_interval": 0.2,
                "keep_revisions": 3,
                "deployment_timeout": 30,
            }
            for name in SECTIONS
        },
    )
    counts = {"uploads": 0, "faults": 0, "kills": 0, "restarts": 0}
    daemons: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        daemon = DaemonProcess(config, state_dir, tmp_path / f"daemon{len(daemons)}.log", "--all")
        daemons.append(daemon)
        return daemon

    def upload(name: str) -> None:
        counts["uploads"] += 1
        tag = f"{name}-r{counts['uploads']}"
        put = s3_client.put_object(Bucket=buckets[name], Key=KEY, Body=release(tmp_path / name, tag, rng))
        tags[(name, put["VersionId"])] = tag
        latest[name] = put["VersionId"]

    daemon = start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            upload(rng.choice(SECTIONS))
            if rng.random() < 0.3:
                counts["faults"] += 1
                fault_proxy.add(random_fault(rng))
            time.sleep(rng.uniform(0.1, 1.2))
            if rng.random() < 0.15:
                os.kill(daemon.proc.pid, signal.SIGKILL)
                daemon.proc.wait(10)
                counts["kills"] += 1
                daemon.stop()
                daemon = start()
                counts["restarts"] += 1
        fault_proxy.faults.clear()
        # Settle: every section ends idle or failed on its newest object, nothing running.
        for name in SECTIONS:
            if name not in latest:
                upload(name)

        wait_until(lambda: settled(state_dir, latest), timeout=120, interval=0.5)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        for d in daemons:
            d.stop()
    duration = time.monotonic() - started

    totals = check_end_state(config, state_dir, tmp_path, tags)
    report = (
        f"soak: {duration:.0f}s, {counts['uploads']} uploads, {sum(totals.values())} deployments "
        f"{dict(sorted(totals.items()))}, {counts['faults']} S3 faults injected, {counts['kills']} kill -9"
    )
    print(report)
    (tmp_path.parent / "soak-report.txt").write_text(report + "\n")


def check_end_state(
    config: Path, state_dir: Path, tmp_path: Path, tags: dict[tuple[str, str], str]
) -> dict[str, int]:
    """No lock held, db intact, each destination holds one revision: the one state says is installed."""
    assert_no_lock_held(state_dir)
    assert_db_intact(state_dir)
    st = status(config, state_dir)
    totals: dict[str, int] = {}
    for name in SECTIONS:
        deps = db_history(state_dir, name)
        for d in deps:
            key = "rollback" if d["restores"] else d["status"]
            totals[key] = totals.get(key, 0) + 1
        on_disk = revisions_in(tmp_path / name)
        assert len(on_disk) <= 1, f"[{name}] the destination mixes revisions: {on_disk}"
        current = st[name]["current"]
        if current is None:
            assert on_disk == set(), name
            continue
        installed = next(d for d in deps if d["id"] == (current["restores"] or current["id"]))
        assert on_disk == {tags[(name, installed["version_id"])]}, (name, on_disk, installed)
        kept = list((state_dir / "releases" / name).iterdir())
        assert len(kept) <= 3 + 1, kept  # keep_revisions, plus the current one when older
    return totals


def random_fault(rng: random.Random) -> Fault:
    return rng.choice(
        [
            Fault("HEAD", rng.randint(1, 6), status=503, code="x"),
            Fault("GET", 1, status=503, code="SlowDown"),
            Fault("GET", 1, truncate_to=100),
            Fault("GET", 1, corrupt=True),
            Fault("GET", 1, status=500, code="InternalError"),
        ]
    )


def settled(state_dir: Path, latest: dict[str, str]) -> bool:
    """Every section's newest upload was attempted to the end, and nothing is running."""
    for name in SECTIONS:
        deps = db_history(state_dir, name)
        revision = next((d for d in deps if d["restores"] is None), None)
        if not deps or deps[0]["status"] in ("running", "interrupted") or revision is None:
            return False
        if revision["version_id"] != latest[name] or revision["status"] == "interrupted":
            return False
    return True
