"""The whole path against a real SeaweedFS: detect → download → unpack → lifecycle → state, via the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer, free_port
from tests.agent import (
    DaemonProcess,
    appspec,
    cli,
    history,
    hook_script,
    pid_alive,
    status,
    trace_hooks,
    wait_until,
    write_config,
    zip_bytes,
)

ALL_HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
KEY = "app/bundle.zip"


def section_keys(seaweed: SeaweedServer, bucket: str, **extra: Any) -> dict[str, Any]:
    return {"s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": seaweed.endpoint_url, **extra}


def traced_bundle(trace: Path, dest: Path, tag: str, app_files: dict[str, Any] | None = None) -> bytes:
    hooks = {event: f"scripts/{event}.sh" for event in ALL_HOOKS}
    files: dict[str, Any] = {"appspec.yml": appspec(dest, hooks)}
    files.update(trace_hooks(trace, ALL_HOOKS, tag))
    files.update(
        app_files or {"app/index.html": f"<h1>{tag}</h1>", "app/bin/run.sh": "#!/bin/sh\necho run\n"}
    )
    return zip_bytes(files)


def test_once_deploys_through_the_lifecycle_then_stops_the_previous_release(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = make_bucket()
    trace, dest, state_dir = tmp_path / "trace", tmp_path / "www", tmp_path / "state"
    config = write_config(tmp_path / "config.ini", {"Production": section_keys(seaweed, bucket)})
    s3_client.put_object(
        Bucket=bucket,
        Key=KEY,
        Body=traced_bundle(
            trace, dest, "v1", {"app/index.html": "v1", "app/old.txt": "x", "app/bin/run.sh": "#!/bin/sh\n"}
        ),
    )
    args = ("-c", str(config), "--state-dir", str(state_dir))

    first = cli("run", "-s", "Production", "--once", *args)
    assert first.returncode == 0, first.stderr
    assert "succeeded" in first.stdout
    st = status(config, state_dir)["Production"]
    assert st["state"] == "idle"
    assert st["current"]["id"] == st["last"]["id"] and st["last"]["status"] == "succeeded"
    dep_id = st["current"]["id"]
    assert set(st["current"]) >= {
        "id",
        "etag",
        "version_id",
        "status",
        "started_at",
        "finished_at",
        "failed_event",
        "error",
        "rollback_of",
        "restores",
    }
    # First deployment: no ApplicationStop; the others in order, each seeing this deployment's id.
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert [(tag, event) for tag, event, *_ in lines] == [
        ("v1", "BeforeInstall"),
        ("v1", "AfterInstall"),
        ("v1", "ApplicationStart"),
        ("v1", "ValidateService"),
    ]
    assert {line[2] for line in lines} == {dep_id}
    assert (dest / "index.html").read_text() == "v1"
    assert os.stat(dest / "bin" / "run.sh").st_mode & 0o777 == 0o755

    # Unchanged object: nothing happens.
    again = cli("run", "-s", "Production", "--once", *args)
    assert again.returncode == 0 and "nothing to deploy" in again.stdout
    assert len(history(config, state_dir, "Production")) == 1

    # v2: ApplicationStop runs v1's script from v1's release folder; v1's leftover file is cleaned up.
    trace.write_text("")
    time.sleep(1.1)  # LastModified has 1 s resolution on SeaweedFS
    s3_client.put_object(
        Bucket=bucket, Key=KEY, Body=traced_bundle(trace, dest, "v2", {"app/index.html": "v2"})
    )
    second = cli("run", "-s", "Production", "--once", *args)
    assert second.returncode == 0, second.stderr
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert (lines[0][0], lines[0][1]) == ("v1", "ApplicationStop")
    assert dep_id in lines[0][3]  # cwd/S3DEPLOY_BUNDLE_DIR: the previous release's bundle
    assert [event for _, event, *_ in lines[1:]] == list(ALL_HOOKS[1:])
    assert (dest / "index.html").read_text() == "v2"
    assert not (dest / "old.txt").exists() and not (dest / "bin").exists()
    log = Path(status(config, state_dir)["Production"]["last"]["log_path"]).read_text()
    assert "ValidateService: ValidateService ran" in log


def test_failing_hook_fails_the_deployment_and_is_not_retried(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = make_bucket()
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "config.ini", {"Staging": section_keys(seaweed, bucket, auto_rollback="false")}
    )
    bundle = zip_bytes(
        {
            "appspec.yml": appspec(tmp_path / "www", {"ValidateService": "scripts/check.sh"}),
            "scripts/check.sh": hook_script('echo "health check failed: port 8080 closed"\nexit 1'),
            "app/x": "x",
        }
    )
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle)
    args = ("-c", str(config), "--state-dir", str(state_dir))
    proc = cli("run", "-s", "Staging", "--once", *args)
    assert proc.returncode == 1
    st = status(config, state_dir)["Staging"]
    assert st["state"] == "failed"
    assert st["last"]["failed_event"] == "ValidateService"
    assert "exited with code 1" in st["last"]["error"]
    assert "port 8080 closed" in st["last"]["error"] or "port 8080 closed" in st["last"]["output_tail"]
    # The failed revision is not retried until the object changes.
    again = cli("run", "-s", "Staging", "--once", *args)
    assert again.returncode == 0 and "nothing to deploy" in again.stdout
    assert len(history(config, state_dir, "Staging")) == 1


def test_deployment_timeout_kills_the_hooks_whole_process_group(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = make_bucket()
    state_dir, pids = tmp_path / "state", tmp_path / "pids"
    config = write_config(
        tmp_path / "config.ini", {"Production": section_keys(seaweed, bucket, deployment_timeout=2)}
    )
    hang = hook_script(f"sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nsleep 300")
    s3_client.put_object(
        Bucket=bucket,
        Key=KEY,
        Body=zip_bytes(
            {
                "appspec.yml": appspec(tmp_path / "www", {"BeforeInstall": "scripts/hang.sh"}),
                "scripts/hang.sh": hang,
                "app/x": "1",
            }
        ),
    )
    args = ("-c", str(config), "--state-dir", str(state_dir))
    started = time.monotonic()
    proc = cli("run", "-s", "Production", "--once", *args)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    st = status(config, state_dir)["Production"]
    assert st["last"]["failed_event"] == "BeforeInstall"
    assert "deployment_timeout" in st["last"]["error"]
    hook_pids = [int(p) for p in pids.read_text().split()]
    assert len(hook_pids) == 2
    wait_until(lambda: not any(pid_alive(p) for p in hook_pids), timeout=10)

    # The next revision deploys.
    time.sleep(1.1)
    s3_client.put_object(
        Bucket=bucket, Key=KEY, Body=zip_bytes({"appspec.yml": appspec(tmp_path / "www", {}), "app/x": "2"})
    )
    proc = cli("run", "-s", "Production", "--once", *args)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "www" / "x").read_text() == "2"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"this is not an archive at all" * 10, "not a zip or tar"),
        (zip_bytes({"appspec.yml": "version: 0.0\nos: linux\n"})[:-60], "bundle"),
        (zip_bytes({"appspec.yml": "version: 0.0\nos: linux\n", "../x": "escaped"}), "../x"),
    ],
    ids=["garbage", "truncated", "traversal"],
)
def test_bad_archive_fails_in_download_bundle_and_writes_nothing(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    body: bytes,
    expected: str,
) -> None:
    bucket = make_bucket()
    state_dir, dest = tmp_path / "state", tmp_path / "www"
    config = write_config(
        tmp_path / "config.ini", {"Production": section_keys(seaweed, bucket, destination=dest)}
    )
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
    state_dir.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli("run", "-s", "Production", "--once", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 1
    last = status(config, state_dir)["Production"]["last"]
    assert last["status"] == "failed" and last["failed_event"] == "DownloadBundle"
    assert expected in last["error"]
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ../x next to the state folder
    releases = list((state_dir / "releases").rglob("*"))
    assert releases == [] or all(p.is_dir() for p in releases)  # the failed release folder was removed


def test_daemon_deploys_two_sections_at_once_while_a_third_is_unreachable(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    state_dir = tmp_path / "state"
    sections: dict[str, dict[str, Any]] = {}
    for name in ("Alpha", "Beta"):
        bucket = make_bucket()
        times = tmp_path / f"{name}.times"
        s3_client.put_object(
            Bucket=bucket,
            Key=KEY,
            Body=zip_bytes(
                {
                    "appspec.yml": appspec(tmp_path / name, {"BeforeInstall": "scripts/slow.sh"}),
                    "scripts/slow.sh": hook_script(
                        f"date +%s.%N >> {times}\nsleep 2\ndate +%s.%N >> {times}"
                    ),
                    "app/name": name,
                }
            ),
        )
        sections[name] = section_keys(seaweed, bucket, poll_interval=0.3)
    sections["Gamma"] = {
        "s3_bucket": "nowhere",
        "target_file_key": KEY,
        "poll_interval": 0.3,
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
    }
    config = write_config(tmp_path / "config.ini", sections)
    daemon = daemons(config, state_dir, "--all")

    def both_done() -> bool:
        st = status(config, state_dir)
        return all(st[n]["last"] and st[n]["last"]["status"] == "succeeded" for n in ("Alpha", "Beta"))

    wait_until(both_done, timeout=40)
    (a_start, a_end), (b_start, b_end) = (
        [float(x) for x in (tmp_path / f"{n}.times").read_text().split()] for n in ("Alpha", "Beta")
    )
    assert a_start < b_end and b_start < a_end, "the two sections did not deploy at the same time"
    assert (tmp_path / "Alpha" / "name").read_text() == "Alpha"

    # Gamma's HEAD fails only after the client's retries: not necessarily before the others deployed.
    def gamma_failed() -> dict[str, Any] | None:
        gamma = status(config, state_dir)["Gamma"]
        return gamma if gamma["last_poll_error"] else None

    gamma = wait_until(gamma_failed, timeout=40)
    assert gamma["state"] == "never" and "cannot connect" in gamma["last_poll_error"]
    assert "[Gamma]" in daemon.output()

    # No redeploy while the objects stay the same.
    time.sleep(1.5)
    assert len(history(config, state_dir, "Alpha")) == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0


def test_second_daemon_on_the_same_state_dir_exits_3(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket()
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "config.ini", {"Settings": section_keys(seaweed, bucket)})
    first = daemons(config, state_dir)
    wait_until(lambda: (state_dir / "daemon.lock").exists() and "watching" in first.output(), timeout=20)
    second = cli("run", "-c", str(config), "--state-dir", str(state_dir))
    assert second.returncode == 3
    assert "daemon" in second.stderr.lower() or "lock" in second.stderr.lower()
    assert first.proc.poll() is None


def test_sigterm_during_a_hook_records_interrupted_and_the_restart_redeploys(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket()
    state_dir, pids, gate = tmp_path / "state", tmp_path / "pids", tmp_path / "gate"
    config = write_config(tmp_path / "config.ini", {"Settings": section_keys(seaweed, bucket)})
    # Hangs until the gate file exists.
    script = hook_script(f"echo $$ >> {pids}\nwhile [ ! -e {gate} ]; do sleep 0.1; done")
    s3_client.put_object(
        Bucket=bucket,
        Key=KEY,
        Body=zip_bytes(
            {
                "appspec.yml": appspec(tmp_path / "www", {"AfterInstall": "scripts/wait.sh"}),
                "scripts/wait.sh": script,
                "app/x": "x",
            }
        ),
    )
    daemon = daemons(config, state_dir, "--shutdown-grace", "1")
    wait_until(lambda: pids.exists(), timeout=30)
    hook_pid = int(pids.read_text().split()[0])
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert not pid_alive(hook_pid)
    last = status(config, state_dir)["Settings"]["last"]
    assert last["status"] == "interrupted"

    gate.touch()
    daemon = daemons(config, state_dir)
    wait_until(
        lambda: (status(config, state_dir)["Settings"]["last"] or {}).get("status") == "succeeded", timeout=30
    )
    deps = history(config, state_dir, "Settings")
    assert [d["status"] for d in deps] == ["succeeded", "interrupted"]


def test_seed_config_lists_and_bad_config_exits_2(tmp_path: Path) -> None:
    seed = tmp_path / "config.ini"
    seed.write_text(
        "[Settings]\ns3_bucket = codedeploy-202107\ntarget_file_key = business-services-test.zip\n"
        "profile_name = 1tiklahost\nlast_fetch_time = 2023-07-30 19:41:09+0000\n"
        "installation_in_progress = false\n"
    )
    listed = cli("run", "--list-configs", "-c", str(seed))
    assert listed.returncode == 0, listed.stderr
    assert "codedeploy-202107" in listed.stdout and "1tiklahost" in listed.stdout
    bad = tmp_path / "bad.ini"
    bad.write_text("[Production]\ns3_bucket = b-1\ntarget_file_key = k\npoll_interval = fast\n")
    proc = cli("run", "--all", "-c", str(bad), "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert "[Production] poll_interval" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "state").exists()  # nothing ran


def test_seed_spellings_overrides_and_json_log_file(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """--config-section, per-run overrides (--s3-bucket, --target-key-file, --profile_name), JSON log file."""
    configured, real = make_bucket(), make_bucket()
    state_dir, log_file = tmp_path / "state", tmp_path / "agent.log"
    config = write_config(tmp_path / "config.ini", {"Settings": section_keys(seaweed, configured)})
    original = config.read_text()
    s3_client.put_object(
        Bucket=real,
        Key="other.zip",
        Body=zip_bytes({"appspec.yml": appspec(tmp_path / "www", {}), "app/hello": "from the override"}),
    )
    proc = cli(
        "run",
        "--config-section",
        "Settings",
        "--once",
        "--s3-bucket",
        real,
        "--target-key-file",
        "other.zip",
        "-c",
        str(config),
        "--state-dir",
        str(state_dir),
        "--log-format",
        "json",
        "--log-file",
        str(log_file),
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "www" / "hello").read_text() == "from the override"
    assert config.read_text() == original  # overrides are never written back
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r.get("section") == "Settings" and "succeeded" in r["msg"] for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    # Every line of the deployment, whichever module wrote it, names the section and the deployment.
    dep_id = status(config, state_dir)["Settings"]["current"]["id"]
    ours = [r for r in records if r.get("deployment_id") == dep_id]
    assert {"s3deploy.deployer", "s3deploy.source.s3", "s3deploy.install.installer"} <= {
        r["logger"] for r in ours
    }
    assert all(r["section"] == "Settings" for r in ours)
    assert "succeeded" in proc.stderr  # stderr is still written

    bad = cli(
        "run",
        "-s",
        "Settings",
        "--once",
        "--profile_name",
        "no-such-profile",
        "-c",
        str(config),
        "--state-dir",
        str(state_dir),
    )
    assert bad.returncode == 1
    assert "no-such-profile" in bad.stdout + bad.stderr
