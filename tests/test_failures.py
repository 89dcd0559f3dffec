"""Never half-deployed: rollback, kill -9 at every stage, retention, S3 faults, bad archives, signals,
reload and overlapping destinations — each through the real daemon, against SeaweedFS, with a second
section that keeps deploying meanwhile."""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.state.store import StateStore
from tests.agent import (
    DaemonProcess,
    appspec,
    assert_db_intact,
    assert_no_lock_held,
    cli,
    db_history,
    hook_script,
    pid_alive,
    revisions_in,
    status,
    tar_bytes,
    wait_until,
    write_config,
    zip_bytes,
)
from tests.faults import StallingProxy
from tests.s3server import Fault, FaultProxy

KEY = "app/bundle.zip"
POLL = 0.2


def keys(endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "s3_bucket": bucket,
        "target_file_key": KEY,
        "endpoint_url": endpoint,
        "poll_interval": POLL,
        **extra,
    }


def bundle(
    dest: Path, tag: str, *, hooks: dict[str, str] | None = None, app: dict[str, Any] | None = None
) -> bytes:
    """A release whose every installed file starts with ``tag``; ``hooks`` maps event -> script body."""
    hooks = hooks or {}
    files: dict[str, Any] = {
        "appspec.yml": appspec(dest, {event: f"scripts/{event}.sh" for event in hooks}),
        **{f"scripts/{event}.sh": hook_script(body) for event, body in hooks.items()},
    }
    files.update(app or {"app/index.html": f"{tag}\n", "app/lib/code.py": f"{tag}\nprint(1)\n"})
    return zip_bytes(files)


def other_section(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3: Any
) -> dict[str, Any]:
    """A healthy section that must deploy whatever happens to the others."""
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key=KEY, Body=bundle(tmp_path / "other", "other-v1"))
    return keys(seaweed.endpoint_url, bucket)


def last_of(config: Path, state_dir: Path, name: str) -> dict[str, Any]:
    return status(config, state_dir)[name]["last"] or {}


def wait_status(config: Path, state_dir: Path, name: str, want: str, timeout: float = 30, n: int = 1) -> Any:
    """Wait until ``name``'s history holds ``n`` deployments with status ``want``; returns the history."""

    def check() -> Any:
        deps = db_history(state_dir, name)
        return deps if sum(d["status"] == want for d in deps) >= n else None

    return wait_until(check, timeout=timeout, interval=0.15)


def assert_other_deployed(config: Path, state_dir: Path, tmp_path: Path) -> None:
    st = status(config, state_dir)["Other"]
    assert st["state"] == "idle" and st["current"]["status"] == "succeeded"
    assert revisions_in(tmp_path / "other") == {"other-v1"}


# ------------------------------------------------------------------------------------------- 1. rollback
def test_auto_rollback_after_validate_and_after_a_disallow_conflict_then_a_new_upload_deploys(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket(versioned=True)
    dest, state_dir, trace = tmp_path / "www", tmp_path / "state", tmp_path / "trace"
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": keys(seaweed.endpoint_url, bucket),
            "Other": other_section(tmp_path, seaweed, make_bucket, s3_client),
        },
    )

    def traced(tag: str, validate: str = "true") -> dict[str, str]:
        return {
            "ApplicationStart": f'echo "{tag} start $DEPLOYMENT_ID" >> {trace}',
            "ValidateService": validate,
        }

    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(dest, "v1", hooks=traced("v1")))
    daemon = daemons(config, state_dir, "--all")
    v1 = wait_status(config, state_dir, "Web", "succeeded")[0]
    assert revisions_in(dest) == {"v1"}

    # v2 fails in ValidateService, after its files were installed: v1's release comes back from disk.
    s3_client.put_object(
        Bucket=bucket, Key=KEY, Body=bundle(dest, "v2", hooks=traced("v2", 'echo "port closed"; exit 1'))
    )
    deps = wait_status(config, state_dir, "Web", "succeeded", n=2)
    rollback, failed = deps[0], deps[1]
    assert failed["status"] == "failed" and failed["failed_event"] == "ValidateService"
    assert rollback["rollback_of"] == failed["id"] and rollback["restores"] == v1["id"]
    assert revisions_in(dest) == {"v1"}
    st = status(config, state_dir)["Web"]
    assert st["state"] == "failed"  # the newest revision in S3 failed, even though v1 runs again
    assert st["current"]["id"] == rollback["id"] and st["last"]["id"] == rollback["id"]
    # v1's ApplicationStart ran again under the rollback's id.
    assert trace.read_text().splitlines()[-1] == f"v1 start {rollback['id']}"

    # The failed revision is not retried: 10 polls later the history is the same.
    time.sleep(10 * POLL)
    assert len(db_history(state_dir, "Web")) == 3

    # v3 collides with a file this section did not install (DISALLOW): the destination is left exactly
    # as it was, and v1 (stopped by v3's ApplicationStop) is started again by the rollback.
    (dest / "intruder.txt").write_text("not ours\n")
    v3 = bundle(dest, "v3", hooks=traced("v3"), app={"app/index.html": "v3\n", "app/intruder.txt": "v3\n"})
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=v3)
    deps = wait_status(config, state_dir, "Web", "succeeded", n=3)
    assert deps[1]["failed_event"] == "Install" and "intruder.txt" in deps[1]["error"]
    assert deps[0]["rollback_of"] == deps[1]["id"] and deps[0]["restores"] == v1["id"]
    assert (dest / "intruder.txt").read_text() == "not ours\n"
    assert sorted(p.name for p in dest.rglob("*")) == ["code.py", "index.html", "intruder.txt", "lib"]
    assert trace.read_text().splitlines()[-1] == f"v1 start {deps[0]['id']}"

    # A new upload deploys normally.
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(dest, "v4", hooks=traced("v4")))
    wait_until(
        lambda: (
            last_of(config, state_dir, "Web").get("status") == "succeeded"
            and revisions_in(dest) - {"not ours"} == {"v4"}
        ),
        timeout=20,
    )
    assert status(config, state_dir)["Web"]["state"] == "idle"
    assert_other_deployed(config, state_dir, tmp_path)
    assert "[Web]" in daemon.output() and "rolling back" in daemon.output()


# ------------------------------------------------------------------------------------------- 2. crashes
def _stage_bundle(dest: Path, tag: str, stage: str, tmp: Path) -> bytes:
    """A release that blocks in the hook ``stage`` until tmp/gate exists, after touching tmp/reached.

    ApplicationStop runs from the previous release, so every release's ApplicationStop blocks while
    tmp/armed exists. "unpack" and "Install" get thousands of files (slow to unpack and install),
    "download" a body big enough for the proxy to stall.
    """
    block = f"touch {tmp / 'reached'}\nwhile [ ! -e {tmp / 'gate'} ]; do sleep 0.05; done"
    events = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
    hooks = {event: (block if event == stage else "true") for event in events}
    hooks["ApplicationStop"] = f"if [ -e {tmp / 'armed'} ]; then\n{block}\nfi"
    files: dict[str, Any] = {
        "appspec.yml": appspec(dest, {e: f"scripts/{e}.sh" for e in events}),
        **{f"scripts/{e}.sh": hook_script(body) for e, body in hooks.items()},
        "app/index.html": f"{tag}\n",
    }
    if stage == "download":
        files["app/big.bin"] = f"{tag}\n" + secrets.token_hex(150_000)  # does not compress
    if stage in ("unpack", "Install"):
        many = {f"app/many/{i // 1000}/{i}": f"{tag}\n" for i in range(1500)}  # slow to unpack and install
        return zip_bytes({**files, **many}, compression=zipfile.ZIP_STORED)
    return zip_bytes(files)


def test_kill_9_at_every_stage_is_recovered_as_interrupted_and_redeployed(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    stalling_proxy: StallingProxy,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket(versioned=True)
    dest, state_dir = tmp_path / "www", tmp_path / "state"
    reached, gate = tmp_path / "reached", tmp_path / "gate"
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": keys(stalling_proxy.endpoint_url, bucket),
            "Other": other_section(tmp_path, seaweed, make_bucket, s3_client),
        },
    )
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=_stage_bundle(dest, "v0", "none", tmp_path))
    daemon = daemons(config, state_dir, "--all")
    wait_status(config, state_dir, "Web", "succeeded")
    wait_status(config, state_dir, "Other", "succeeded")
    stages = [
        "download",
        "unpack",
        "ApplicationStop",
        "BeforeInstall",
        "Install",
        "AfterInstall",
        "ApplicationStart",
        "ValidateService",
    ]
    releases = state_dir / "releases" / "Web"
    for n, stage in enumerate(stages, start=1):
        tag = f"v{n}"
        reached.unlink(missing_ok=True)
        gate.unlink(missing_ok=True)
        body = _stage_bundle(dest, tag, stage, tmp_path)
        if stage == "ApplicationStop":
            (tmp_path / "armed").touch()
        if stage == "download":
            stalling_proxy.release.clear()
            stalling_proxy.stalled.clear()
            stalling_proxy.stalling.set()
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
        if stage == "download":
            wait_until(stalling_proxy.stalled.is_set, timeout=20, interval=0.05)
        elif stage == "unpack":
            wait_until(lambda: any(releases.glob("*/unpacked/app/many")), timeout=20, interval=0.02)
        elif stage == "Install":
            wait_until(lambda: (dest / "many").exists(), timeout=30, interval=0.02)
        else:
            wait_until(reached.exists, timeout=20, interval=0.05)
        os.kill(daemon.proc.pid, signal.SIGKILL)  # hooks run in their own sessions: they are orphaned
        daemon.proc.wait(10)
        killed = db_history(state_dir, "Web")[0]
        assert killed["status"] == "running", (stage, killed)  # as the dead process left it
        (tmp_path / "armed").unlink(missing_ok=True)
        stalling_proxy.stalling.clear()
        stalling_proxy.release.set()
        gate.touch()
        assert_no_lock_held(state_dir)

        daemon = daemons(config, state_dir, "--all")
        deps = wait_until(
            lambda: (h := db_history(state_dir, "Web"))[0]["status"] == "succeeded" and h,
            timeout=40,  # noqa: B023
        )
        assert deps[1]["id"] == killed["id"] and deps[1]["status"] == "interrupted", stage
        assert deps[0]["etag"] == killed["etag"] and deps[0]["rollback_of"] is None
        assert revisions_in(dest) == {tag}, stage  # nothing of the previous revision left
        installed_before_kill = stage in ("AfterInstall", "ApplicationStart", "ValidateService")
        # A release folder of a deployment that never completed Install is removed at recovery.
        assert (releases / killed["id"]).exists() == installed_before_kill, stage
        assert not list(releases.glob("*/bundle.download")) and not list(releases.glob("*/unpacked"))
        assert_db_intact(state_dir)
        st = status(config, state_dir)["Web"]
        assert st["state"] == "idle" and st["current"]["id"] == deps[0]["id"]
    assert_other_deployed(config, state_dir, tmp_path)


# ------------------------------------------------------------------------------------------- 3. retention
def test_keep_revisions_prunes_old_releases_keeps_the_current_one_and_reports_disk_use(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket(versioned=True)
    dest, state_dir = tmp_path / "www", tmp_path / "state"
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": keys(
                seaweed.endpoint_url, bucket, keep_revisions=2, keep_history=4, auto_rollback="false"
            ),
            "Other": other_section(tmp_path, seaweed, make_bucket, s3_client),
        },
    )
    daemons(config, state_dir, "--all")
    releases, logs = state_dir / "releases" / "Web", state_dir / "logs" / "Web"

    def pruned(kept: Callable[[list[dict[str, Any]]], list[str]], rows: int) -> list[dict[str, Any]]:
        """The history once it has ``rows`` rows, a log file each, and the release folders ``kept(history)``:
        pruning runs right after a deployment is recorded, so wait for it instead of racing it."""

        def check() -> list[dict[str, Any]] | None:
            deps = db_history(state_dir, "Web")
            ids = sorted(d["id"] for d in deps)
            done = len(deps) == rows and sorted(p.name for p in releases.iterdir()) == sorted(kept(deps))
            return deps if done and sorted(p.stem for p in logs.iterdir()) == ids else None

        return wait_until(check, timeout=10, interval=0.1)

    for n in range(1, 5):
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(dest, f"v{n}"))
        wait_status(config, state_dir, "Web", "succeeded", n=n)
    good = pruned(lambda deps: [d["id"] for d in deps[:2]], rows=4)[0]
    # Two failures in a row: the last successful release (v4) is still kept, whatever keep_revisions says.
    for n in (5, 6):
        s3_client.put_object(
            Bucket=bucket, Key=KEY, Body=bundle(dest, f"v{n}", hooks={"ValidateService": "exit 1"})
        )
        wait_status(config, state_dir, "Web", "failed", n=n - 4)
    # keep_history=4: of six deployments, the two oldest records (v1, v2) are deleted with their logs.
    deps = pruned(lambda deps: [good["id"], deps[0]["id"]], rows=4)
    st = status(config, state_dir)["Web"]
    assert st["current"]["id"] == good["id"]
    on_disk = sum(p.lstat().st_size for p in releases.rglob("*") if p.is_file() or p.is_symlink())
    assert st["releases_bytes"] == on_disk > 0
    assert deps[2]["id"] == good["id"] and deps[3]["status"] == "succeeded"  # v4 and v3
    assert_other_deployed(config, state_dir, tmp_path)

    # A running deployment's folder is never pruned (what _prune asks the state for).
    store = StateStore(state_dir / "state.db")
    try:
        running = store.start(
            section="Web",
            bucket=bucket,
            key=KEY,
            etag="e",
            version_id=None,
            identity="i",
            release_dir=str(releases / "d-RUNNING01"),
            log_path=None,
        )
        (releases / "d-RUNNING01").mkdir()
        doomed = {d.id for d in store.releases_to_prune("Web", 1)}
        assert running.id not in doomed and good["id"] not in doomed
    finally:
        store.close()


# ------------------------------------------------------------------------------------------- 4. S3 faults
def test_s3_faults_are_retried_logged_once_and_never_stop_another_section(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    fault_proxy: FaultProxy,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket()
    dest, state_dir = tmp_path / "www", tmp_path / "state"
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": keys(fault_proxy.endpoint_url, bucket),
            "NoKey": keys(seaweed.endpoint_url, bucket, target_file_key="missing.zip"),
            "NoBucket": keys(seaweed.endpoint_url, "no-such-bucket-here"),
            "Other": other_section(tmp_path, seaweed, make_bucket, s3_client),
        },
    )
    v1 = bundle(dest, "v1")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=v1)
    # Every HEAD fails for a while, with three kinds of error one after the other (a HEAD error has no
    # body, so only its status tells them apart: 503 is also what SlowDown looks like on a HEAD).
    for http, times in ((503, 9), (403, 3), (400, 3)):
        fault_proxy.add(Fault("HEAD", times, status=http, code="x"))
    # Then the GETs: SlowDown (botocore retries it), a body cut mid-way, a corrupt byte (checksum
    # mismatch): each of the last two costs one of the deployment's three GETs; the third one is clean.
    fault_proxy.add(Fault("GET", 1, status=503, code="SlowDown"))
    fault_proxy.add(Fault("GET", 1, truncate_to=len(v1) // 2))
    fault_proxy.add(Fault("GET", 1, corrupt=True))
    daemon = daemons(config, state_dir, "--all")
    wait_status(config, state_dir, "Other", "succeeded")  # while Web's S3 is broken
    deps = wait_status(config, state_dir, "Web", "succeeded", timeout=60)
    assert len(deps) == 1 and revisions_in(dest) == {"v1"}
    log = daemon.output()
    web_warnings = [line for line in log.splitlines() if "[Web]" in line and "S3 check failed" in line]
    # Logged once per change of error, not at each failed poll.
    assert len(web_warnings) == 3, web_warnings
    # Matched after "failed: ": a bare "400" also turns up in the proxy's port now and then.
    for word in ("ServiceUnavailable (503)", "AccessDenied (403)", "400: bad request, no detail"):
        assert sum(f"failed: {word}" in line for line in web_warnings) == 1, word
    assert "SlowDown looks the same" in web_warnings[0] and "expired credentials" in web_warnings[2]
    again = re.search(r"\[Web\] S3 reachable again after (\d+) failed checks", log)
    assert again and int(again.group(1)) >= 5, again
    assert "attempt 1 of 3 failed" in log and "Not enough data" in log and "checksum mismatch" in log
    st = status(config, state_dir)
    assert st["Web"]["state"] == "idle" and st["Web"]["last_poll_error"] is None
    for name, word in (("NoKey", "NoSuchKey"), ("NoBucket", "NoSuchBucket")):
        assert st[name]["state"] == "never" and word in st[name]["last_poll_error"]
        assert sum(f"[{name}]" in line and "S3 check failed" in line for line in log.splitlines()) == 1
    assert_other_deployed(config, state_dir, tmp_path)

    # v2: expired credentials on the GET, then a body corrupted on each of the next deployment's three
    # GETs: neither deploys anything, both are S3 trouble (not a bad bundle), so the revision is tried
    # again at the next poll and, once S3 serves it intact, deployed.
    fault_proxy.add(Fault("GET", 1, status=400, code="ExpiredToken"))
    fault_proxy.add(Fault("GET", 3, corrupt=True))
    time.sleep(1.1)  # unversioned bucket: LastModified has 1 s resolution
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(dest, "v2"))
    deps = wait_status(config, state_dir, "Web", "succeeded", n=2, timeout=40)
    assert [d["status"] for d in deps] == ["succeeded", "failed", "failed", "succeeded"]
    for failed, word in ((deps[2], "ExpiredToken"), (deps[1], "checksum mismatch")):
        assert failed["failed_event"] == "DownloadBundle" and word in failed["error"], failed
        assert failed["install_completed_at"] is None and failed["etag"] == deps[0]["etag"]
    assert revisions_in(dest) == {"v2"}
    assert status(config, state_dir)["Web"]["state"] == "idle"


# ------------------------------------------------------------------------------------------- 5. bad archives
def test_bad_archives_fail_naming_the_entry_and_leave_the_installed_release_untouched(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    state_dir = tmp_path / "state"
    spec = b"version: 0.0\nos: linux\n"
    bad: dict[str, tuple[bytes, str]] = {
        "Bomb": (zip_bytes({"appspec.yml": spec, "app/zeros.bin": b"\0" * 3_000_000}), "app/zeros.bin"),
        "Symlink": (tar_bytes({"appspec.yml": spec}, {"app/etc": "../../../../etc"}, gzip=True), "app/etc"),
        "Hardlink": (
            tar_bytes({"appspec.yml": spec}, hardlinks={"app/pw": "/etc/passwd"}, gzip=True),
            "app/pw",
        ),
        "Many": (
            zip_bytes({"appspec.yml": spec, **{f"app/f{i}": "x" for i in range(60)}}),
            "exceed max_files=50",
        ),
    }
    sections: dict[str, dict[str, Any]] = {}
    buckets = {}
    for name in bad:
        buckets[name] = make_bucket(versioned=True)
        s3_client.put_object(Bucket=buckets[name], Key=KEY, Body=bundle(tmp_path / name, f"{name}-v1"))
        sections[name] = keys(seaweed.endpoint_url, buckets[name], max_unpacked_bytes="1MiB", max_files=50)
    sections["Other"] = other_section(tmp_path, seaweed, make_bucket, s3_client)
    config = write_config(tmp_path / "config.ini", sections)
    daemons(config, state_dir, "--all")
    for name in bad:
        wait_status(config, state_dir, name, "succeeded")
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    for name, (body, _) in bad.items():
        s3_client.put_object(Bucket=buckets[name], Key=KEY, Body=body)
    for name in bad:
        wait_status(config, state_dir, name, "failed")
    st = status(config, state_dir)
    for name, (_, entry) in bad.items():
        deps = db_history(state_dir, name)
        assert len(deps) == 2  # no rollback: nothing of the bad bundle ran or was installed
        failed = st[name]["last"]
        assert failed["id"] == deps[0]["id"] and failed["failed_event"] == "DownloadBundle"
        assert entry in failed["error"], (name, failed["error"])
        assert st[name]["state"] == "failed" and st[name]["current"]["id"] == deps[1]["id"]
        assert revisions_in(tmp_path / name) == {f"{name}-v1"}  # the good release is untouched
        assert not (state_dir / "releases" / name / failed["id"]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert_other_deployed(config, state_dir, tmp_path)


# ------------------------------------------------------------------------------------------- 6. signals
def test_sigterm_grace_then_kill_and_a_second_sigterm_ends_at_once(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    state_dir, pids = tmp_path / "state", tmp_path / "pids"
    buckets = {name: make_bucket() for name in ("Slow", "Stuck")}
    # Slow finishes within the grace; Stuck never does (it ignores SIGTERM, so SIGKILL ends it).
    slow = f"echo $$ >> {pids}\nsleep 1.5"
    stuck = f"trap '' TERM\necho $$ >> {pids}\nwhile true; do sleep 0.1; done"
    for name, body in (("Slow", slow), ("Stuck", stuck)):
        release = bundle(tmp_path / name, name, hooks={"AfterInstall": body})
        s3_client.put_object(Bucket=buckets[name], Key=KEY, Body=release)
    config = write_config(
        tmp_path / "config.ini", {n: keys(seaweed.endpoint_url, b) for n, b in buckets.items()}
    )
    daemon = daemons(config, state_dir, "--all", "--shutdown-grace", "3")
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=30)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert 2.5 < time.monotonic() - started < 12  # the grace, then TERM → 5 s → KILL at most
    st = status(config, state_dir)
    assert st["Slow"]["last"]["status"] == "succeeded"  # finished within the grace
    assert st["Stuck"]["last"]["status"] == "interrupted" and st["Stuck"]["state"] == "idle"
    assert not any(pid_alive(int(p)) for p in pids.read_text().split())
    assert_no_lock_held(state_dir)

    # A second SIGTERM ends at once, well before a 60 s grace.
    pids.unlink()
    daemon = daemons(config, state_dir, "--all", "--shutdown-grace", "60")
    wait_until(lambda: pids.exists(), timeout=30)
    daemon.signal(signal.SIGTERM)
    wait_until(lambda: "received" in daemon.output(), timeout=10)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert time.monotonic() - started < 8
    assert status(config, state_dir)["Stuck"]["last"]["status"] == "interrupted"
    assert not any(pid_alive(int(p)) for p in pids.read_text().split())
    assert_db_intact(state_dir)


def test_sighup_adds_removes_and_restarts_watchers_and_keeps_the_old_config_when_invalid(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    state_dir = tmp_path / "state"
    buckets = {name: make_bucket(versioned=True) for name in ("Keep", "Drop", "Add", "Same")}
    for name, bucket in buckets.items():
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(tmp_path / name, f"{name}-v1"))
    path = tmp_path / "config.ini"
    write_config(path, {n: keys(seaweed.endpoint_url, buckets[n]) for n in ("Keep", "Drop", "Same")})
    daemon = daemons(path, state_dir, "--all")
    for name in ("Keep", "Drop", "Same"):
        wait_status(path, state_dir, name, "succeeded")

    # An invalid file: the old configuration stays, the log says why.
    path.write_text(path.read_text() + "\n[Broken]\ns3_bucket = b\n")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current configuration" in daemon.output(), timeout=10)
    assert "[Broken]" in daemon.output() and "target_file_key" in daemon.output()

    # Add one, remove one, change one (Keep now watches another key: restarted with it), and leave
    # one as it was (Same: its watcher runs on untouched).
    write_config(
        path,
        {
            "Keep": keys(seaweed.endpoint_url, buckets["Keep"], target_file_key="v2.zip"),
            "Add": keys(seaweed.endpoint_url, buckets["Add"]),
            "Same": keys(seaweed.endpoint_url, buckets["Same"]),
        },
    )
    s3_client.put_object(Bucket=buckets["Keep"], Key="v2.zip", Body=bundle(tmp_path / "Keep", "Keep-v2"))
    daemon.signal(signal.SIGHUP)
    wait_status(path, state_dir, "Add", "succeeded")
    wait_until(lambda: revisions_in(tmp_path / "Keep") == {"Keep-v2"}, timeout=20)
    s3_client.put_object(Bucket=buckets["Drop"], Key=KEY, Body=bundle(tmp_path / "Drop", "Drop-v2"))
    time.sleep(10 * POLL)
    assert revisions_in(tmp_path / "Drop") == {"Drop-v1"}  # its watcher stopped
    out = daemon.output()
    assert "[Drop] watcher removed" in out and "[Keep] watcher restarting with new settings" in out
    assert "[Same] watcher" not in out
    st = status(path, state_dir)
    assert st["Add"]["current"]["status"] == "succeeded" and st["Keep"]["last"]["status"] == "succeeded"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0


# ------------------------------------------------------------------------------------------- 7. overlap
def wait_first_deployments(
    state_dir: Path, names: list[str], timeout: float = 60
) -> dict[str, dict[str, Any]]:
    """Each section's newest deployment, once every section in ``names`` has one that is settled.

    Settled: succeeded, or failed for good (a download failing on an S3 error is retried, so it is not).
    A deployment that failed is then reported with its error at once: waiting for a success would only
    time out, since a failed revision is not retried until the object changes.
    """

    def settled() -> dict[str, dict[str, Any]] | None:
        last = {}
        for name in names:
            deps = db_history(state_dir, name)
            if (
                not deps
                or deps[0]["status"] == "running"
                or (deps[0]["status"] == "failed" and deps[0]["transient"])
            ):
                return None
            last[name] = deps[0]
        return last

    result: dict[str, dict[str, Any]] = wait_until(settled, timeout=timeout, interval=0.15)
    return result


def test_sections_with_overlapping_appspec_destinations_never_deploy_at_once(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """No `destination` key at all: the overlap is only in the bundles' appspec `files`."""
    state_dir, times = tmp_path / "state", tmp_path / "times"
    dests = {
        "Site": tmp_path / "srv" / "www",
        "Static": tmp_path / "srv" / "www" / "static",
        "Apart": tmp_path / "srv" / "api",
    }
    sections = {}
    stamp = "$(date +%s.%N)"
    for name, dest in dests.items():
        bucket = make_bucket()
        record = f'echo "{name} start {stamp}" >> {times}\nsleep 1\necho "{name} end {stamp}" >> {times}'
        body = bundle(dest, name, hooks={"BeforeInstall": record}, app={f"app/{name}.txt": f"{name}\n"})
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
        sections[name] = keys(seaweed.endpoint_url, bucket)
    config = write_config(tmp_path / "config.ini", sections)
    daemons(config, state_dir, "--all")
    last = wait_first_deployments(state_dir, list(dests))
    failed = {
        name: (dep["failed_event"], dep["error"])
        for name, dep in last.items()
        if dep["status"] != "succeeded"
    }
    assert not failed, failed
    spans: dict[str, list[float]] = {}
    for line in times.read_text().splitlines():
        name, _, at = line.split()
        spans.setdefault(name, []).append(float(at))

    def overlap(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    assert not overlap("Site", "Static"), spans
    assert overlap("Apart", "Site") or overlap("Apart", "Static"), spans  # disjoint folders deploy at once
    st = status(config, state_dir)
    assert all(st[name]["state"] == "idle" for name in dests)
    assert (dests["Site"] / "Site.txt").exists() and (dests["Static"] / "Static.txt").exists()


def test_one_shot_deploy_never_runs_while_the_daemon_deploys_the_same_section(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket()
    state_dir, gate, reached = tmp_path / "state", tmp_path / "gate", tmp_path / "reached"
    config = write_config(tmp_path / "config.ini", {"Web": keys(seaweed.endpoint_url, bucket)})
    hold = f"touch {reached}\nwhile [ ! -e {gate} ]; do sleep 0.05; done"
    s3_client.put_object(
        Bucket=bucket, Key=KEY, Body=bundle(tmp_path / "www", "v1", hooks={"AfterInstall": hold})
    )
    daemons(config, state_dir, "--all")
    wait_until(reached.exists, timeout=30)
    proc = cli("deploy", "Web", "--force", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 3, proc.stderr
    assert "[Web] is being deployed by another s3deploy process" in proc.stderr
    gate.touch()
    wait_status(config, state_dir, "Web", "succeeded")
    assert len(db_history(state_dir, "Web")) == 1
    assert status(config, state_dir)["Web"]["state"] == "idle"
    assert_db_intact(state_dir)
