"""CodeDeploy AppSpec conformance, through the real agent against SeaweedFS (SPEC §7, issue 3).

Each test publishes bundles built from CodeDeploy's documented examples and behaviours, runs the real
CLI (``run --once``, or a daemon process) and checks the host: files, modes, owners, hook order and
environment, what a failure leaves behind. Buckets are versioned, so re-uploads need no 1 s sleeps, and
several sections share one agent start where they test independent things.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from tests.agent import (
    APPSPEC_HEADER,
    DaemonProcess,
    Entry,
    cli,
    history,
    hook_script,
    pid_alive,
    status,
    tar_bytes,
    wait_until,
    write_config,
    zip_bytes,
)

IS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------------------------------------- helpers
class Host:
    """One agent set-up: a versioned bucket, a config.ini whose sections the test adds, a state dir."""

    def __init__(self, root: Path, seaweed: SeaweedServer, bucket: str, s3_client: Any) -> None:
        self.root = root
        self.seaweed = seaweed
        self.bucket = bucket
        self.s3 = s3_client
        self.config = root / "config.ini"
        self.state_dir = root / "state"
        self.trace = root / "trace"
        self.sections: dict[str, dict[str, Any]] = {}

    def section(self, name: str, **keys: Any) -> None:
        self.sections[name] = {
            "s3_bucket": self.bucket,
            "target_file_key": f"{name}.bundle",
            "endpoint_url": self.seaweed.endpoint_url,
            **keys,
        }
        write_config(self.config, self.sections)

    def publish(self, name: str, body: bytes) -> str:
        """Upload ``body`` as the section's bundle; returns its VersionId."""
        key = self.sections[name]["target_file_key"]
        version: str = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)["VersionId"]
        return version

    def run_once(self, *sections: str) -> subprocess.CompletedProcess[str]:
        """``s3deploy run --once`` for these sections (none: ``--all``)."""
        which = [arg for name in sections for arg in ("-s", name)] or ["--all"]
        return cli("run", *which, "--once", "-c", str(self.config), "--state-dir", str(self.state_dir))

    def status(self) -> dict[str, dict[str, Any]]:
        return status(self.config, self.state_dir)

    def history(self, name: str) -> list[dict[str, Any]]:
        return history(self.config, self.state_dir, name)

    def traced(self) -> list[list[str]]:
        """Lines the trace scripts wrote, split into words; the trace is emptied."""
        if not self.trace.exists():
            return []
        lines = [line.split() for line in self.trace.read_text().splitlines()]
        self.trace.write_text("")
        return lines

    def tracer(self, tag: str, *extra: str) -> str:
        """A hook script that appends ``<tag> <event> <extra...>`` to the trace file."""
        words = " ".join((tag, "$LIFECYCLE_EVENT", *extra))
        return hook_script(f'echo "{words}" >> {self.trace}\necho "{tag} $LIFECYCLE_EVENT ran"')


@pytest.fixture
def host(tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any) -> Host:
    return Host(tmp_path, seaweed, make_bucket(versioned=True), s3_client)


@pytest.fixture
def open_host(seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any) -> Iterator[Host]:
    """A Host whose folders another user can traverse (tmp_path's parents are private to root)."""
    with tempfile.TemporaryDirectory(prefix="s3deploy-conformance-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        yield Host(root, seaweed, make_bucket(versioned=True), s3_client)


def spec(
    files: list[tuple[str, Path | str]] | None = None,
    hooks: Mapping[str, Sequence[str | Mapping[str, Any]]] | None = None,
    extra: str = "",
) -> str:
    """appspec.yml text: ``files`` as (source, destination), ``hooks`` as event → locations or dicts."""
    text = APPSPEC_HEADER
    if files:
        text += "files:\n" + "".join(f"  - source: {s}\n    destination: {d}\n" for s, d in files)
    if hooks:
        text += "hooks:\n"
        for event, scripts in hooks.items():
            text += f"  {event}:\n"
            for script in scripts:
                item: Mapping[str, Any] = {"location": script} if isinstance(script, str) else script
                text += "    - " + "\n      ".join(f"{k}: {v}" for k, v in item.items()) + "\n"
    return text + extra


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (root included) with its type, mode, owner, mtime and content."""
    tree: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if path.is_symlink():
            body: Any = ("link", os.readlink(path))
        elif path.is_dir():
            body = ("dir",)
        else:
            body = ("file", path.read_bytes(), st.st_mtime_ns)
        tree[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, *body)
    return tree


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def deployment_log(dep: Mapping[str, Any]) -> str:
    return Path(dep["log_path"]).read_text()


# ------------------------------------------------------------------------- lifecycle across releases
LIFECYCLE = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
ENV_NAMES = (
    "LIFECYCLE_EVENT",
    "DEPLOYMENT_ID",
    "APPLICATION_NAME",
    "DEPLOYMENT_GROUP_NAME",
    "DEPLOYMENT_GROUP_ID",
    "BUNDLE_BUCKET",
    "BUNDLE_KEY",
    "BUNDLE_VERSION",
    "BUNDLE_ETAG",
    "S3DEPLOY_BUNDLE_DIR",
)


def release_bundle(host: Host, dest: Path, tag: str, app: Mapping[str, Entry], **more: Entry) -> bytes:
    """A bundle whose every event has two scripts (a, b) that trace ``tag event script cwd``, and an env
    dump in ApplicationStop; ``app/`` goes to ``dest`` and ``config/app.conf`` (if given) to dest/etc."""
    files: dict[str, Entry] = {f"app/{name}": value for name, value in app.items()}
    files.update(more)
    hooks: dict[str, list[str | dict[str, Any]]] = {}
    for event in LIFECYCLE:
        hooks[event] = []
        for part in ("a", "b"):
            location = f"scripts/{event}-{part}.sh"
            files[location] = host.tracer(tag, part, "$(pwd)")
            hooks[event].append({"location": location, "timeout": 30})
    env_dump = f'for n in {" ".join(ENV_NAMES)}; do echo "$n=$(printenv $n)"; done > {host.root}/stop.env\n'
    files["scripts/ApplicationStop-a.sh"] = host.tracer(tag, "a", "$(pwd)") + env_dump
    mappings: list[tuple[str, Path | str]] = [("app", dest)]
    if "config/app.conf" in more:
        mappings.append(("config/app.conf", dest / "etc"))
    files["appspec.yml"] = spec(mappings, hooks)
    return zip_bytes(files)


def test_second_release_stops_the_first_from_its_own_bundle_and_removes_its_files(host: Host) -> None:
    """CodeDeploy's in-place cycle: ApplicationStop comes from the previous release (its scripts, its folder),
    the other events from the new one, each event's scripts in order; what release 1 installed is gone
    (emptied folders too) unless someone else put files in a folder."""
    dest = host.root / "www"
    host.section("Web")
    v1_app = {
        "index.html": "v1",
        "lib/deep/a.js": "a",
        "lib/b.js": "b",
        "static/css/site.css": "css",
        "bin/run.sh": "#!/bin/sh\necho run\n",
    }
    host.publish("Web", release_bundle(host, dest, "v1", v1_app, **{"config/app.conf": "conf=1"}))
    first = host.run_once()
    assert first.returncode == 0, first.stderr
    v1 = host.status()["Web"]["current"]
    v1_bundle = host.state_dir / "releases" / "Web" / v1["id"] / "bundle"
    # First deployment: no ApplicationStop; every other event runs script a, then b, from the new bundle.
    assert [(t, e, p) for t, e, p, _ in host.traced()] == [
        ("v1", event, part) for event in LIFECYCLE[1:] for part in ("a", "b")
    ]
    assert (dest / "index.html").read_text() == "v1"
    assert (dest / "etc" / "app.conf").read_text() == "conf=1"  # a file source lands in the folder
    assert mode(dest / "bin" / "run.sh") == 0o755

    # Someone else's file in a folder release 1 created: that folder must stay.
    (dest / "static" / "uploads.txt").write_text("user data")
    v2_version = host.publish("Web", release_bundle(host, dest, "v2", {"index.html": "v2", "new/x.txt": "x"}))
    second = host.run_once()
    assert second.returncode == 0, second.stderr
    v2 = host.status()["Web"]["current"]
    assert v2["id"] != v1["id"] and v2["status"] == "succeeded"
    lines = host.traced()
    # ApplicationStop: release 1's scripts, in order, with cwd = release 1's bundle.
    assert [tuple(line) for line in lines[:2]] == [
        ("v1", "ApplicationStop", "a", str(v1_bundle)),
        ("v1", "ApplicationStop", "b", str(v1_bundle)),
    ]
    v2_bundle = str(host.state_dir / "releases" / "Web" / v2["id"] / "bundle")
    assert [tuple(line) for line in lines[2:]] == [
        ("v2", event, part, v2_bundle) for event in LIFECYCLE[1:] for part in ("a", "b")
    ]
    # Release 1's ApplicationStop sees release 1's folder but the new deployment's identity (as CodeDeploy).
    env = dict(line.split("=", 1) for line in (host.root / "stop.env").read_text().splitlines())
    assert env == {
        "LIFECYCLE_EVENT": "ApplicationStop",
        "DEPLOYMENT_ID": v2["id"],
        "APPLICATION_NAME": "Web",
        "DEPLOYMENT_GROUP_NAME": "Web",
        "DEPLOYMENT_GROUP_ID": env["DEPLOYMENT_GROUP_ID"],
        "BUNDLE_BUCKET": host.bucket,
        "BUNDLE_KEY": "Web.bundle",
        "BUNDLE_VERSION": v2_version,
        "BUNDLE_ETAG": v2["etag"],
        "S3DEPLOY_BUNDLE_DIR": str(v1_bundle),
    }
    assert env["DEPLOYMENT_GROUP_ID"]
    # Cleanup: release 1's files and the folders it emptied are gone; the user's file and its folder stay.
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "index.html",
        "new",
        "new/x.txt",
        "static",
        "static/uploads.txt",
    ]
    assert (dest / "index.html").read_text() == "v2"


# ------------------------------------------------------------------------------- file_exists_behavior
def behavior_bundle(host: Host, dest: Path, behavior: str, tag: str, app: Mapping[str, Entry]) -> bytes:
    files: dict[str, Entry] = {f"app/{name}": value for name, value in app.items()}
    files["scripts/trace.sh"] = host.tracer(tag, behavior)
    hooks = {event: ["scripts/trace.sh"] for event in ("BeforeInstall", "AfterInstall")}
    files["appspec.yml"] = spec([("app", dest)], hooks, f"file_exists_behavior: {behavior}\n")
    return zip_bytes(files)


def test_file_exists_behavior_disallow_overwrite_retain(host: Host) -> None:
    """A file this section did not install: DISALLOW fails the Install before anything is removed or
    copied; OVERWRITE replaces it and adopts it (the next release removes it); RETAIN keeps it for good."""
    dests = {b: host.root / b.lower() for b in ("DISALLOW", "OVERWRITE", "RETAIN")}
    for behavior in dests:
        host.section(behavior.title(), auto_rollback="false")
    for behavior in ("OVERWRITE", "RETAIN"):
        dests[behavior].mkdir()
        (dests[behavior] / "config.php").write_text("operator's")
    v1 = {"index.html": "v1", "lib/a.js": "a", "config.php": "v1"}
    host.publish("Disallow", behavior_bundle(host, dests["DISALLOW"], "DISALLOW", "v1", v1))
    for behavior in ("OVERWRITE", "RETAIN"):
        host.publish(behavior.title(), behavior_bundle(host, dests[behavior], behavior, "v1", v1))
    first = host.run_once()
    assert first.returncode == 0, first.stderr
    assert (dests["OVERWRITE"] / "config.php").read_text() == "v1"
    assert (dests["RETAIN"] / "config.php").read_text() == "operator's"
    assert (dests["RETAIN"] / "index.html").read_text() == "v1"  # the other files are installed

    # Release 2: DISALLOW meets a file someone dropped where the release wants to put one.
    (dests["DISALLOW"] / "lib" / "new.js").write_text("hand-made")
    before = snapshot(dests["DISALLOW"])
    v2 = {"index.html": "v2", "lib/new.js": "new", "more/z.txt": "z"}
    host.publish("Disallow", behavior_bundle(host, dests["DISALLOW"], "DISALLOW", "v2", v2))
    for behavior in ("OVERWRITE", "RETAIN"):
        host.publish(
            behavior.title(), behavior_bundle(host, dests[behavior], behavior, "v2", {"index.html": "v2"})
        )
    host.traced()
    second = host.run_once()
    assert second.returncode == 1
    st = host.status()

    failed = st["Disallow"]["last"]
    assert failed["status"] == "failed" and failed["failed_event"] == "Install"
    assert str(dests["DISALLOW"] / "lib" / "new.js") in failed["error"] and "DISALLOW" in failed["error"]
    # Nothing changed: release 1's files were not removed, nothing of release 2 was copied.
    assert snapshot(dests["DISALLOW"]) == before
    ran = {(tag, event) for tag, event, behavior in host.traced() if behavior == "DISALLOW"}
    assert ran == {("v2", "BeforeInstall")}  # AfterInstall never ran
    assert st["Disallow"]["current"]["id"] != failed["id"]

    # OVERWRITE adopted config.php in release 1, so release 2 (without it) removed it.
    assert st["Overwrite"]["last"]["status"] == "succeeded"
    assert sorted(p.name for p in dests["OVERWRITE"].iterdir()) == ["index.html"]
    # RETAIN never counted it as installed: still there, untouched, after a release without it.
    assert st["Retain"]["last"]["status"] == "succeeded"
    assert sorted(p.name for p in dests["RETAIN"].iterdir()) == ["config.php", "index.html"]
    assert (dests["RETAIN"] / "config.php").read_text() == "operator's"


# -------------------------------------------------------------------------------------- permissions
def test_permissions_object_pattern_except_type_owner_group_mode(host: Host) -> None:
    """The documented permissions forms: "**" with a type filter, a glob on an object's direct children
    with an exception, owner/group, and modes written as unquoted (octal) or quoted numbers."""
    dest = host.root / "srv"
    host.section("Perms")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    owner_lines = f"    owner: nobody\n    group: {group}\n" if IS_ROOT else ""
    permissions = (
        "permissions:\n"
        f"  - object: {dest}\n"
        '    pattern: "**"\n'
        "    type:\n      - directory\n"
        "    mode: 750\n"
        f"  - object: {dest}/bin\n"
        '    pattern: "*.sh"\n'
        "    except: [skip.sh]\n"
        "    type:\n      - file\n"
        '    mode: "0700"\n'
        f"  - object: {dest}/conf\n"
        '    pattern: "*.txt"\n'
        "    type: [file]\n"
        f"{owner_lines}"
        "    mode: 0640\n"
    )
    app: dict[str, Entry] = {
        "bin/start.sh": "#!/bin/sh\n",
        "bin/skip.sh": "#!/bin/sh\n",
        "conf/a.txt": "a",
        "conf/a.ini": "ini",
        "conf/sub/b.txt": "b",
        "readme.txt": ("r", 0o604),
    }
    files: dict[str, Entry] = {f"app/{n}": v for n, v in app.items()}
    files["appspec.yml"] = spec([("app", dest)], extra=permissions)
    host.publish("Perms", zip_bytes(files))
    proc = host.run_once()
    assert proc.returncode == 0, proc.stderr
    assert {p: mode(dest / p) for p in ("", "bin", "conf", "conf/sub")} == dict.fromkeys(
        ("", "bin", "conf", "conf/sub"), 0o750
    )  # folders this install created, the object itself included
    assert mode(dest / "bin" / "start.sh") == 0o700
    assert mode(dest / "bin" / "skip.sh") == 0o755  # except
    assert mode(dest / "conf" / "a.txt") == 0o640  # unquoted 0640 is octal, as chmod reads it
    assert mode(dest / "conf" / "a.ini") == 0o644  # not the pattern
    assert mode(dest / "conf" / "sub" / "b.txt") == 0o644  # pattern globs direct children only (CodeDeploy)
    assert mode(dest / "readme.txt") == 0o604  # type: directory leaves files alone; archive modes kept
    owners = {p: (dest / p).stat()[4:6] for p in ("conf/a.txt", "conf/a.ini", "bin/start.sh")}
    if IS_ROOT:
        assert owners["conf/a.txt"] == (nobody.pw_uid, nobody.pw_gid)
    assert owners["conf/a.ini"] == owners["bin/start.sh"] == (os.geteuid(), os.getegid())


# ------------------------------------------------------------------------------------------- hooks
def test_runas_runs_the_script_as_that_user_with_its_login_environment(open_host: Host) -> None:
    """runas (as root): the script runs as the user, with the user's HOME/USER/LOGNAME, as CodeDeploy's
    ``su USER -c`` gives them on Debian (linux_util.rb: ``'su ' + script.runas + ' -c ' + ...``); the
    scripts without runas run as the agent's user."""
    host = open_host
    host.section("Runas", destination=host.root / "www")
    who = hook_script('echo "who $(id -un) $HOME ${USER:-} ${LOGNAME:-} $(pwd)"')
    files: dict[str, Entry] = {
        "appspec.yml": spec(
            hooks={
                "BeforeInstall": [{"location": "who.sh", "runas": "nobody"}],
                "AfterInstall": ["who.sh"],
            }
        ),
        "who.sh": who,
    }
    host.publish("Runas", zip_bytes(files))
    proc = host.run_once()
    last = host.status()["Runas"]["last"]
    if not IS_ROOT:
        assert proc.returncode == 1 and "not root" in last["error"]
        return
    assert proc.returncode == 0, proc.stderr + proc.stdout
    log = deployment_log(last)
    bundle = host.state_dir / "releases" / "Runas" / last["id"] / "bundle"
    nobody = pwd.getpwnam("nobody")
    root = pwd.getpwuid(os.geteuid())
    assert f"BeforeInstall: who nobody {nobody.pw_dir} nobody nobody {bundle}" in log
    assert f"AfterInstall: who {root.pw_name} " in log


@pytest.mark.skipif(not IS_ROOT, reason="runas another user needs root; test_runas_runs_... covers non-root")
def test_runas_user_blocked_by_a_private_state_dir_gets_a_message_naming_the_folder(
    open_host: Host,
) -> None:
    host = open_host
    private = host.root / "private"
    private.mkdir(mode=0o700)
    host.state_dir = private / "state"
    host.section("Runas", destination=host.root / "www")
    files: dict[str, Entry] = {
        "appspec.yml": spec(hooks={"BeforeInstall": [{"location": "who.sh", "runas": "nobody"}]}),
        "who.sh": hook_script("id -un"),
    }
    host.publish("Runas", zip_bytes(files))
    assert host.run_once().returncode == 1
    last = host.status()["Runas"]["last"]
    assert last["failed_event"] == "BeforeInstall"
    assert f"as nobody: folder {private} is not traversable by that user (mode 700" in last["error"]
    assert "--state-dir" in last["error"]


def test_per_script_timeout_fails_the_event_and_kills_its_process_group(host: Host) -> None:
    """``timeout: 1`` on a sleeping script: the event fails as timed out; nothing it started survives."""
    pids = host.root / "pids"
    host.section("Slow", destination=host.root / "www")
    slow = hook_script(f"sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nsleep 300")
    files: dict[str, Entry] = {
        "appspec.yml": spec(
            hooks={
                "BeforeInstall": ["first.sh"],
                "AfterInstall": [{"location": "slow.sh", "timeout": 1}, "never.sh"],
            }
        ),
        "first.sh": host.tracer("t"),
        "slow.sh": slow,
        "never.sh": host.tracer("t"),
    }
    host.publish("Slow", zip_bytes(files))
    started = time.monotonic()
    proc = host.run_once()
    assert proc.returncode == 1
    assert time.monotonic() - started < 15  # 1 s timeout + SIGTERM, not the 300 s sleep
    last = host.status()["Slow"]["last"]
    assert last["failed_event"] == "AfterInstall"
    assert "slow.sh timed out after 1 s" in last["error"]
    assert [event for _, event in host.traced()] == ["BeforeInstall"]  # never.sh did not run
    hook_pids = [int(p) for p in pids.read_text().split()]
    assert len(hook_pids) == 2
    wait_until(lambda: not any(pid_alive(p) for p in hook_pids), timeout=5)


def test_background_child_holding_stdout_does_not_hold_the_deployment(
    host: Host, daemons: Callable[..., DaemonProcess]
) -> None:
    """``sleep 60 &`` then exit 0 (the classic "start my app" hook): the daemon finishes the deployment
    within seconds, where CodeDeploy waits for the hook's whole timeout and fails it."""
    pid_file = host.root / "bg.pid"
    host.section("Bg", destination=host.root / "www", poll_interval=0.2)
    start = hook_script(f"sleep 60 &\necho $! > {pid_file}\necho started")
    files: dict[str, Entry] = {
        "appspec.yml": spec(
            hooks={
                "ApplicationStart": [{"location": "start.sh", "timeout": 300}],
                "ValidateService": ["ok.sh"],
            }
        ),
        "start.sh": start,
        "ok.sh": host.tracer("bg"),
    }
    daemon = daemons(host.config, host.state_dir, "--all")
    published = time.monotonic()
    host.publish("Bg", zip_bytes(files))
    try:

        def finished() -> dict[str, Any] | None:
            last: dict[str, Any] | None = host.status()["Bg"]["last"]
            return last if last and last["finished_at"] else None

        last = wait_until(finished, timeout=30)
        elapsed = time.monotonic() - published
        assert last["status"] == "succeeded", last["error"]
        assert elapsed < 10, f"the deployment took {elapsed:.1f}s"
        assert host.traced() == [["bg", "ValidateService"]]
        assert "still holds the hook's output" in daemon.output()
        assert pid_alive(int(pid_file.read_text()))  # a successful hook's children are left running
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


# ----------------------------------------------------------------------------- previous release stop
def test_ignore_application_stop_failures_and_traffic_hooks(host: Host) -> None:
    """A failing ApplicationStop of the previous release fails the deployment before anything of the new
    one runs, unless ignore_application_stop_failures; load-balancer hooks are accepted and skipped."""
    traffic = ("BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic", "AfterAllowTraffic")

    def bundle(dest: Path, tag: str) -> bytes:
        hooks: dict[str, list[str | dict[str, Any]]] = {e: ["trace.sh"] for e in (*LIFECYCLE[1:], *traffic)}
        hooks["ApplicationStop"] = ["stop.sh"]
        return zip_bytes(
            {
                "appspec.yml": spec([("app", dest)], hooks),
                "trace.sh": host.tracer(tag, dest.name),
                "stop.sh": host.tracer(tag, dest.name) + "echo 'cannot stop: no pid file' >&2\nexit 3\n",
                "app/version": tag,
            }
        )

    dests = {"Strict": host.root / "strict", "Lenient": host.root / "lenient"}
    host.section("Strict")
    host.section("Lenient", ignore_application_stop_failures="true")
    for name, dest in dests.items():
        host.publish(name, bundle(dest, "v1"))
    first = host.run_once()
    assert first.returncode == 0, first.stderr
    assert "BeforeAllowTraffic: skipped" in first.stderr and "AfterAllowTraffic: skipped" in first.stderr
    assert not any(event in traffic or event == "ApplicationStop" for _, event, _ in host.traced())

    for name, dest in dests.items():
        host.publish(name, bundle(dest, "v2"))
    second = host.run_once()
    assert second.returncode == 1
    st = host.status()
    ran: dict[str, list[tuple[str, str]]] = {"strict": [], "lenient": []}
    for tag, event, where in host.traced():
        ran[where].append((tag, event))
    # Strict: release 1's ApplicationStop failed; nothing of release 2 ran, release 1 stays installed.
    assert st["Strict"]["last"]["failed_event"] == "ApplicationStop"
    assert "exited with code 3" in st["Strict"]["last"]["error"]
    assert ran["strict"] == [("v1", "ApplicationStop")]
    assert (dests["Strict"] / "version").read_text() == "v1"
    # Lenient: the failure is logged and the deployment goes on.
    assert st["Lenient"]["last"]["status"] == "succeeded"
    assert ran["lenient"] == [("v1", "ApplicationStop")] + [("v2", e) for e in LIFECYCLE[1:]]
    assert (dests["Lenient"] / "version").read_text() == "v2"
    assert "ignore_application_stop_failures" in second.stderr
    # Release 1's block-traffic hooks were skipped too (they would run beside its ApplicationStop).
    assert "[Lenient] BeforeBlockTraffic: skipped" in second.stderr
    assert "[Lenient] AfterBlockTraffic: skipped" in second.stderr


# --------------------------------------------------------------------------- bundle shapes and formats
def test_zip_tar_tgz_hoisting_symlinks_and_appspec_yaml(host: Host) -> None:
    """One agent start, one section per shape: a zip of the application's folder itself (hoisted), a plain
    tar, a tar.gz using the appspec.yaml spelling. Exec bits survive, symlinks are installed as symlinks."""

    def tree(dest: Path, tag: str, appspec_name: str = "appspec.yml") -> dict[str, Entry]:
        return {
            appspec_name: spec([("app", dest)], {"AfterInstall": ["scripts/check.sh"]}),
            "scripts/check.sh": host.tracer(tag, "$(readlink current)"),
            "app/releases/1.2/run.sh": "#!/bin/sh\necho run\n",
            "app/releases/1.2/data.bin": (bytes(range(256)), 0o640),
        }

    links = {"app/current": "releases/1.2", "app/run": "current/run.sh", "current": "app/releases/1.2"}
    dests = {name: host.root / name.lower() for name in ("Hoisted", "Tar", "Tgz")}
    for name in dests:
        host.section(name)
    hoisted = tree(dests["Hoisted"], "hoisted")
    host.publish(
        "Hoisted",
        zip_bytes(
            {f"myapp-1.2/{n}": v for n, v in hoisted.items()}, {f"myapp-1.2/{n}": t for n, t in links.items()}
        ),
    )
    host.publish("Tar", tar_bytes(tree(dests["Tar"], "tar"), links))
    host.publish("Tgz", tar_bytes(tree(dests["Tgz"], "tgz", "appspec.yaml"), links, gzip=True))
    proc = host.run_once()
    assert proc.returncode == 0, proc.stderr
    # Each hook ran from its bundle root (hoisted out of myapp-1.2/), where the "current" link resolves.
    assert sorted(map(tuple, host.traced())) == [
        ("hoisted", "AfterInstall", "app/releases/1.2"),
        ("tar", "AfterInstall", "app/releases/1.2"),
        ("tgz", "AfterInstall", "app/releases/1.2"),
    ]
    for dest in dests.values():
        assert os.readlink(dest / "current") == "releases/1.2"
        assert os.readlink(dest / "run") == "current/run.sh"
        assert (dest / "releases" / "1.2").is_dir() and not (dest / "releases" / "1.2").is_symlink()
        assert mode(dest / "releases" / "1.2" / "run.sh") == 0o755
        assert mode(dest / "releases" / "1.2" / "data.bin") == 0o640
        assert (dest / "run").read_bytes() == b"#!/bin/sh\necho run\n"  # through the links
        assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
            "current",
            "releases",
            "releases/1.2",
            "releases/1.2/data.bin",
            "releases/1.2/run.sh",
            "run",
        ]


def test_seed_style_bundles_and_the_missing_destination_error(host: Host) -> None:
    """Bundles made for the seed agent: no appspec hooks, ``<Event>.sh`` in scripts/ or at the root; no
    ``files``, so the whole bundle goes to the section's destination. An appspec with no ``files`` and no
    ``destination`` installs nothing and runs its hooks, as CodeDeploy does (its own sample bundle is
    hooks-only; installer.rb ``generate_instructions`` simply emits no copy for an empty ``files``). A
    bundle with no appspec at all and no ``destination``: a failure that says so."""
    seed_dest, hooks_only_dest = host.root / "seed", host.root / "hooks-only"
    host.section("Seed", destination=seed_dest)
    host.section("HooksOnly", destination=hooks_only_dest)
    host.section("Nowhere")
    host.section("Bare")
    seed: dict[str, Entry] = {
        f"scripts/{event}.sh": host.tracer("seed", "$(pwd)")
        for event in LIFECYCLE
        if event != "ApplicationStart"
    }
    seed["ApplicationStart.sh"] = host.tracer("seed", "$(pwd)")
    seed["index.php"] = "<?php echo 1;"
    host.publish("Seed", zip_bytes(seed))  # no appspec at all
    host.publish(
        "HooksOnly",
        zip_bytes(
            {"appspec.yaml": APPSPEC_HEADER, "scripts/AfterInstall.sh": host.tracer("hooks-only"), "a": "a"}
        ),
    )
    host.publish(
        "Nowhere", zip_bytes({"appspec.yml": APPSPEC_HEADER, "BeforeInstall.sh": host.tracer("nowhere")})
    )
    host.publish("Bare", zip_bytes({"BeforeInstall.sh": host.tracer("bare"), "index.html": "x"}))
    proc = host.run_once()
    assert proc.returncode == 1  # Bare failed
    st = host.status()
    assert st["Seed"]["last"]["status"] == "succeeded"
    bundle = host.state_dir / "releases" / "Seed" / st["Seed"]["last"]["id"] / "bundle"
    traced = host.traced()
    assert [line[1:] for line in traced if line[0] == "seed"] == [[e, str(bundle)] for e in LIFECYCLE[1:]]
    assert (seed_dest / "index.php").read_text() == "<?php echo 1;"
    assert (seed_dest / "scripts" / "BeforeInstall.sh").is_file()  # the whole bundle, as `source: /`
    assert st["HooksOnly"]["last"]["status"] == "succeeded"
    assert sorted(p.name for p in hooks_only_dest.iterdir()) == ["a", "appspec.yaml", "scripts"]
    assert ["hooks-only", "AfterInstall"] in traced
    assert st["Nowhere"]["last"]["status"] == "succeeded"  # hooks-only: nothing installed, hooks ran
    assert ["nowhere", "BeforeInstall"] in traced  # seed-style hook found at the root
    bare = st["Bare"]["last"]
    assert bare["status"] == "failed" and bare["failed_event"] == "Install"
    assert "no appspec" in bare["error"] and "`destination`" in bare["error"]
    assert ["bare", "BeforeInstall"] in traced  # Install is where it fails, after BeforeInstall


# ----------------------------------------------------------------------------------------- validate
def test_validate_lists_every_problem_of_a_folder_or_an_archive(tmp_path: Path) -> None:
    """``s3deploy validate PATH`` on a bundle folder or archive: every problem, each naming its key (exit
    1), and every warning (a key CodeDeploy ignores); a good bundle is OK (exit 0). Nothing is deployed,
    no S3 involved."""
    bad_spec = (
        "version: 1.0\nos: linux\n"
        "files:\n  - source: missing-dir\n    destination: /srv/app\n"
        "  - source: app\n    destination: relative/path\n"
        "permissions:\n  - object: /srv/app\n    mode: rwx\n"
        "hooks:\n"
        "  BeforeInstall:\n    - location: scripts/nope.sh\n      timeout: soon\n"
        "  Install:\n    - location: scripts/ok.sh\n"
        "  AfterInstal:\n    - location: scripts/ok.sh\n"
        "  ValidateService:\n    - location: scripts/absent.sh\n"
        "file_exists_behaviour: OVERWRITE\n"
    )
    bad_files: dict[str, Entry] = {
        "appspec.yml": bad_spec,
        "scripts/ok.sh": hook_script("true"),
        "app/x": "x",
    }
    expected = [
        "warning: appspec.yml: file_exists_behaviour: unknown key, ignored (as CodeDeploy ignores it); "
        'did you mean "file_exists_behavior"?',
        "appspec.yml: version: expected 0.0",
        'appspec.yml: files[0].source: "missing-dir" is not in the bundle',
        "appspec.yml: files[1].destination: expected an absolute path",
        "appspec.yml: permissions[0].mode: expected an octal mode",
        "appspec.yml: hooks.BeforeInstall[0].timeout: expected a number of seconds",
        "appspec.yml: hooks.Install: is reserved",
        "appspec.yml: hooks.AfterInstal: unknown event",
        'appspec.yml: hooks.ValidateService[0].location: script "scripts/absent.sh" is not in the bundle',
    ]
    folder = tmp_path / "bad"
    for name, value in bad_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(value if isinstance(value, str) else "")
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zip_bytes({f"bad/{n}": v for n, v in bad_files.items()}))
    for target in (folder, archive):
        proc = cli("validate", str(target))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        for problem in expected:
            assert sum(line.startswith(problem) for line in lines) == 1, (problem, proc.stdout)
        assert len(lines) == len(expected)

    good_files: dict[str, Entry] = {
        "appspec.yaml": spec([("app", "/srv/app")], {"AfterInstall": ["scripts/ok.sh"]}),
        "scripts/ok.sh": hook_script("true"),
        "app/x": "x",
    }
    good_archive = tmp_path / "good.tgz"
    good_archive.write_bytes(tar_bytes({f"release/{n}": v for n, v in good_files.items()}, gzip=True))
    with tarfile.open(good_archive) as tf:
        tf.extractall(tmp_path / "good", filter="data")
    for target in (good_archive, tmp_path / "good" / "release"):
        proc = cli("validate", str(target))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip() == f"{target}: OK"
