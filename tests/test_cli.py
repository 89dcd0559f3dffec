"""The operator's commands against SeaweedFS while a real daemon runs: deploy, rollback, history,
suspend/resume, publish; human output (TTY vs plain), progress bars, shell completion."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer, free_port
from tests.agent import (
    DaemonProcess,
    appspec,
    assert_no_lock_held,
    cli,
    history,
    hook_script,
    pid_alive,
    status,
    wait_until,
    write_config,
    zip_bytes,
)
from tests.test_metrics import wait_for_polls

KEY = "app/bundle.zip"
BOX_DRAWING = {chr(c) for c in range(0x2500, 0x2580)}


def web_config(tmp_path: Path, seaweed: SeaweedServer, bucket: str, **extra: Any) -> Path:
    keys = {"s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": seaweed.endpoint_url}
    return write_config(tmp_path / "config.ini", {"Web": {**keys, **extra}})


def web_bundle(dest: Path, tag: str, *, fail: bool = False, gate: Path | None = None) -> bytes:
    """index.html = tag; ValidateService fails when ``fail``; AfterInstall waits for ``gate`` if given."""
    hooks = {"ValidateService": "scripts/validate.sh"}
    files: dict[str, Any] = {
        "app/index.html": tag,
        "scripts/validate.sh": hook_script("exit 1" if fail else "echo healthy"),
    }
    if gate is not None:
        hooks["AfterInstall"] = "scripts/wait.sh"
        files["scripts/wait.sh"] = hook_script(f"while [ ! -e {gate} ]; do sleep 0.05; done")
    return zip_bytes({"appspec.yml": appspec(dest, hooks), **files})


def last_status(config: Path, state_dir: Path) -> str | None:
    last = status(config, state_dir)["Web"]["last"]
    return last["status"] if last else None


@dataclass
class Web:
    """One section "Web" on a versioned bucket, its config.ini and the daemon serving it."""

    bucket: str
    config: Path
    state_dir: Path
    dest: Path
    s3: Any
    daemon: DaemonProcess | None = None
    port: int | None = None  # the daemon's --metrics-port, when asked for

    @property
    def args(self) -> tuple[str, ...]:
        return ("-c", str(self.config), "--state-dir", str(self.state_dir))

    def put(self, tag: str, **kw: Any) -> None:
        """Upload web_bundle(dest, tag, **kw) as the section's object."""
        self.s3.put_object(Bucket=self.bucket, Key=KEY, Body=web_bundle(self.dest, tag, **kw))

    def last_status(self) -> str | None:
        return last_status(self.config, self.state_dir)

    def history(self) -> list[dict[str, Any]]:
        return history(self.config, self.state_dir, "Web")

    def wait_succeeded(self) -> None:
        wait_until(lambda: self.last_status() == "succeeded", timeout=30)


@pytest.fixture
def web(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> Callable[..., Web]:
    """``web(first=None, *, metrics=False, gate=None, **keys)``: upload ``first`` (a tag for web_bundle),
    start the daemon (with ``--metrics-port`` when ``metrics``) and return the Web it serves."""

    def start(
        first: str | None = None, *, metrics: bool = False, gate: Path | None = None, **keys: Any
    ) -> Web:
        bucket = make_bucket(versioned=True)
        site = Web(
            bucket,
            web_config(tmp_path, seaweed, bucket, **keys),
            tmp_path / "state",
            tmp_path / "www",
            s3_client,
        )
        if first is not None:
            site.put(first, gate=gate)
        site.port = free_port() if metrics else None
        extra = ("--metrics-port", str(site.port)) if site.port else ()
        site.daemon = daemons(site.config, site.state_dir, "--all", *extra)
        return site

    return start


def run_in_pty(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 90,
    columns: int = 120,
    stderr: bool = False,
) -> tuple[int, str]:
    """Run ``python -m s3deploy ARGS`` with stdout (and stderr with ``stderr``) on a pseudo-terminal
    ``columns`` wide; (exit code, what it showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    # The terminal's size decides, not COLUMNS/LINES (pytest-xdist sets them to 80x24 in its workers).
    inherited = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3deploy", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave if stderr else subprocess.DEVNULL,
        env={**inherited, "TERM": "xterm-256color", **(env or {})},
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output from {args} in {timeout}s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


# ------------------------------------------------------------------------------ deploy


def test_deploy_while_the_daemon_runs_nothing_new_force_and_failed_revisions(
    web: Callable[..., Web],
) -> None:
    # A long poll interval: the daemon checks at start only, the rest is the `deploy` command's work.
    site = web("v1", poll_interval=300, auto_rollback="false")
    site.wait_succeeded()
    dest, args = site.dest, site.args

    site.put("v2")
    deployed = cli("deploy", "Web", *args)
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith("Web: d-") and "succeeded" in deployed.stdout
    assert (dest / "index.html").read_text() == "v2"

    unchanged = cli("deploy", "Web", *args)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "nothing new to deploy: the object is unchanged" in unchanged.stdout
    assert len(site.history()) == 2

    forced = cli("deploy", "Web", "--force", "--json", *args)
    assert forced.returncode == 0, forced.stderr
    dep = json.loads(forced.stdout)
    assert dep["status"] == "succeeded" and dep["section"] == "Web"
    assert [d["id"] for d in site.history()][0] == dep["id"]

    site.put("v3", fail=True)
    failed = cli("deploy", "Web", *args)
    assert failed.returncode == 1
    assert "failed in ValidateService" in failed.stdout
    again = cli("deploy", "Web", "--json", *args)
    assert again.returncode == 0
    assert json.loads(again.stdout)["deployment"] is None  # a failed revision is not retried ...
    said = cli("deploy", "Web", *args).stdout
    assert "not deploying: this revision failed in deployment d-" in said and "ValidateService" in said
    retried = cli("deploy", "Web", "--force", *args)
    assert retried.returncode == 1  # ... unless forced
    deps = site.history()
    assert [d["status"] for d in deps] == ["failed", "failed", "succeeded", "succeeded", "succeeded"]
    assert site.daemon and site.daemon.proc.poll() is None


def test_commands_exit_3_while_the_daemon_deploys_the_section(
    tmp_path: Path, web: Callable[..., Web]
) -> None:
    gate = tmp_path / "gate"
    site = web("v1", gate=gate, poll_interval=0.2)
    config, state_dir, args = site.config, site.state_dir, site.args
    wait_until(lambda: (site.dest / "index.html").exists(), timeout=30)  # AfterInstall is waiting now

    for command in (("deploy", "Web"), ("deploy", "Web", "--force"), ("rollback", "Web")):
        proc = cli(*command, *args)
        assert proc.returncode == 3, (command, proc.stdout, proc.stderr)
        assert "[Web] is being deployed by another s3deploy process" in proc.stderr
    assert status(config, state_dir)["Web"]["state"] == "deploying"

    gate.touch()
    site.wait_succeeded()
    assert cli("deploy", "Web", *args).returncode == 0


# ------------------------------------------------------------------------------ rollback, history


def test_rollback_and_rollback_to_while_the_daemon_runs_and_history(web: Callable[..., Web]) -> None:
    site = web("v1", metrics=True, poll_interval=0.2)
    config, state_dir, dest, args, port = site.config, site.state_dir, site.dest, site.args, site.port
    site.wait_succeeded()
    site.put("v2")
    wait_until(lambda: len(site.history()) == 2 and site.last_status(), timeout=30)
    site.wait_succeeded()
    v2_id, v1_id = (d["id"] for d in site.history())
    assert (dest / "index.html").read_text() == "v2"

    back = cli("rollback", "Web", "--json", *args)
    assert back.returncode == 0, back.stderr
    rolled = json.loads(back.stdout)
    assert (rolled["status"], rolled["rollback_of"], rolled["restores"]) == ("succeeded", v2_id, v1_id)
    assert (dest / "index.html").read_text() == "v1"
    # The daemon keeps polling and does not redeploy v2, which is still the object in S3.
    wait_for_polls(port, "Web", more=3)
    assert len(site.history()) == 3
    assert (dest / "index.html").read_text() == "v1"
    st = status(config, state_dir)["Web"]
    assert st["state"] == "idle" and st["current"]["id"] == rolled["id"]

    forward = cli("rollback", "Web", "--to", v2_id, *args)
    assert forward.returncode == 0, forward.stderr
    assert f"release of {v2_id} reinstalled" in forward.stdout
    assert (dest / "index.html").read_text() == "v2"
    unknown = cli("rollback", "Web", "--to", "d-NOSUCHONE", *args)
    assert unknown.returncode == 1
    assert "no deployment d-NOSUCHONE" in unknown.stderr and "s3deploy history Web" in unknown.stderr

    newest = cli("history", "Web", "--limit", "2", "--json", *args)
    assert newest.returncode == 0, newest.stderr
    two = json.loads(newest.stdout)
    assert [d["restores"] for d in two] == [v2_id, v1_id]
    assert set(two[0]) >= {"id", "etag", "version_id", "status", "started_at", "finished_at", "rollback_of"}

    # Plain text when stdout is not a terminal: a header, one line per deployment, no box drawing.
    plain = cli("history", "Web", *args)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert not BOX_DRAWING & set(plain.stdout)
    assert lines[0].split() == ["ID", "STATUS", "STARTED", "TOOK", "REVISION", "EVENT", "NOTE"]
    assert [line.split()[0] for line in lines[1:]] == [d["id"] for d in site.history()]
    assert lines[1].split()[1] == "succeeded" and f"restores {v2_id}" in lines[1]
    assert len(cli("history", "Web", "-n", "1", *args).stdout.splitlines()) == 2


# ------------------------------------------------------------------------------ suspend, resume


def test_suspended_section_is_watched_but_not_deployed_until_resumed(web: Callable[..., Web]) -> None:
    site = web("v1", metrics=True, poll_interval=0.2)
    config, state_dir, dest, args, port = site.config, site.state_dir, site.dest, site.args, site.port
    site.wait_succeeded()

    suspended = cli("suspend", "Web", *args)
    assert suspended.returncode == 0 and "suspended" in suspended.stdout
    site.put("v2")
    wait_for_polls(port, "Web", more=3)  # the daemon keeps checking ...
    assert len(site.history()) == 1  # ... but does not deploy
    assert (dest / "index.html").read_text() == "v1"
    st = status(config, state_dir)["Web"]
    assert st["suspended"] is True
    plain = cli("status", *args).stdout.splitlines()
    assert plain[0].split()[:3] == ["SECTION", "STATE", "SUSPENDED"]
    assert plain[1].split()[:3] == ["Web", "idle", "yes"]
    refused = cli("deploy", "Web", *args)
    assert refused.returncode == 0 and "suspended" in refused.stdout
    assert len(site.history()) == 1

    resumed = cli("resume", "Web", *args)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    wait_until(lambda: (dest / "index.html").read_text() == "v2", timeout=30)
    assert status(config, state_dir)["Web"]["suspended"] is False


# ------------------------------------------------------------------------------ publish


def make_bundle_dir(root: Path, dest: Path) -> Path:
    """A bundle folder with an executable, a plain file, a symlink and a hook without a shebang's help."""
    (root / "app" / "bin").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "appspec.yml").write_text(appspec(dest, {"AfterInstall": "scripts/after.sh"}))
    (root / "scripts" / "after.sh").write_text(hook_script(f"touch {dest.parent / 'after-ran'}"))
    (root / "scripts" / "after.sh").chmod(0o755)
    (root / "app" / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "app" / "bin" / "run.sh").chmod(0o750)
    (root / "app" / "data.txt").write_text("data")
    (root / "app" / "data.txt").chmod(0o640)
    (root / "app" / "current").symlink_to("data.txt")
    return root


def test_publish_then_the_daemon_deploys_it_with_exec_bits_and_symlinks(
    tmp_path: Path, s3_client: Any, web: Callable[..., Web]
) -> None:
    site = web(poll_interval=0.2)  # nothing in S3 yet: it logs and keeps polling
    bucket, config, dest = site.bucket, site.config, site.dest
    bundle = make_bundle_dir(tmp_path / "bundle", dest)

    dry = cli("publish", str(bundle), "-s", "Web", "--dry-run", "-c", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "8 entries" in dry.stdout
    assert "Versions" not in s3_client.list_object_versions(Bucket=bucket)

    published = cli("publish", str(bundle), "-s", "Web", "-c", str(config))
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith(f"published s3://{bucket}/{KEY}: ")
    version = s3_client.head_object(Bucket=bucket, Key=KEY)["VersionId"]
    assert f"version {version}" in published.stdout

    site.wait_succeeded()
    assert status(config, site.state_dir)["Web"]["current"]["version_id"] == version
    assert (dest.parent / "after-ran").exists()
    assert os.stat(dest / "bin" / "run.sh").st_mode & 0o777 == 0o750
    assert os.stat(dest / "data.txt").st_mode & 0o777 == 0o640
    assert os.readlink(dest / "current") == "data.txt"
    assert site.daemon and site.daemon.proc.poll() is None


def test_publish_with_bucket_key_endpoint_url_or_aws_endpoint_url_s3(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = make_bucket()
    bundle = make_bundle_dir(tmp_path / "bundle", tmp_path / "www")
    flags = cli(
        "publish", str(bundle), "--bucket", bucket, "--key", "a.zip",
        "--endpoint-url", seaweed.endpoint_url, "--json",
    )  # fmt: skip
    assert flags.returncode == 0, flags.stderr
    summary = json.loads(flags.stdout)
    head = s3_client.head_object(Bucket=bucket, Key="a.zip")
    assert summary["etag"] == head["ETag"].strip('"') and summary["size"] == head["ContentLength"]
    assert (summary["bucket"], summary["key"], summary["entries"]) == (bucket, "a.zip", 8)

    env = {**os.environ, "AWS_ENDPOINT_URL_S3": seaweed.endpoint_url}
    from_env = cli("publish", str(bundle), "--bucket", bucket, "--key", "b.zip", env=env)
    assert from_env.returncode == 0, from_env.stderr
    assert s3_client.head_object(Bucket=bucket, Key="b.zip")["ContentLength"] > 0

    # A bundle whose appspec names a missing script is not uploaded; every problem is listed.
    (bundle / "scripts" / "after.sh").unlink()
    broken = cli("publish", str(bundle), "--bucket", bucket, "--key", "c.zip", env=env)
    assert broken.returncode == 1
    assert "scripts/after.sh" in broken.stderr and "not published" in broken.stderr
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == ["a.zip", "b.zip"]
    usage = cli("publish", str(bundle))
    assert usage.returncode == 2 and "--bucket and --key" in usage.stderr


# ------------------------------------------------------------------------------ terminal output


def test_terminal_gets_tables_and_progress_bars_pipes_get_plain_text(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str]
) -> None:
    bucket = make_bucket()
    state_dir, dest = tmp_path / "state", tmp_path / "www"
    config = web_config(tmp_path, seaweed, bucket)
    args = ("-c", str(config), "--state-dir", str(state_dir))
    bundle = make_bundle_dir(tmp_path / "bundle", dest)
    (bundle / "app" / "blob.bin").write_bytes(os.urandom(5 * 2**20))  # incompressible: > 4 MiB zipped

    code, shown = run_in_pty("publish", str(bundle), "-s", "Web", "-c", str(config))
    assert code == 0, shown
    assert "━" in shown and f"s3://{bucket}/{KEY}" in shown  # the upload's progress bar
    code, shown = run_in_pty("deploy", "Web", *args)
    assert code == 0, shown
    assert "━" in shown and "MB" in shown  # the download's progress bar
    for command in (("status",), ("history", "Web"), ("list",)):
        code, shown = run_in_pty(*command, *args)
        assert code == 0, shown
        assert "│" in shown and "Web" in shown, command  # a rich table

    # The same commands into a pipe: no bars, no boxes.
    piped = cli("deploy", "Web", "--force", *args)
    assert piped.returncode == 0, piped.stderr
    assert not BOX_DRAWING & set(piped.stdout)
    for command in (("status",), ("history", "Web"), ("list",)):
        proc = cli(*command, *args)
        assert proc.returncode == 0 and not BOX_DRAWING & set(proc.stdout), command
    assert len(cli("list", *args).stdout.splitlines()) == 2


# ------------------------------------------------------------------------------ shell completion


def test_shell_completion_script_and_section_names(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "s3deploy"
    assert exe.exists(), "the console script is installed with the project"
    # typer detects the shell from the parent process: run it from bash, as a user would.
    script = subprocess.run(
        ["bash", "-c", f"'{exe}' --show-completion; exit $?"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 0 and "_S3DEPLOY_COMPLETE=complete_bash" in script.stdout
    config = write_config(
        tmp_path / "config.ini",
        {n: {"s3_bucket": "b", "target_file_key": "k"} for n in ("Production", "Preview", "Staging")},
    )

    def complete(words: str) -> list[str]:
        env = {
            **os.environ,
            "_S3DEPLOY_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
            "S3DEPLOY_CONFIG": str(config),
        }
        proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60, check=False)
        return proc.stdout.split()

    assert complete("s3deploy roll") == ["rollback"]
    assert complete("s3deploy deploy P") == ["Production", "Preview"]
    assert complete("s3deploy history ") == ["Production", "Preview", "Staging"]


# ------------------------------------------------------------------------------ hostile strings
def test_status_history_and_errors_show_markup_and_escape_sequences_as_text(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """A hook's output stored as the error holds rich markup and a terminal title sequence; a section
    name on the command line holds a closing tag. Shown on a terminal: as written, escaped, exit 0/2."""
    bucket = make_bucket()
    config = web_config(tmp_path, seaweed, bucket)
    args = ("-c", str(config), "--state-dir", str(tmp_path / "state"))
    hostile = r"copied to [/var/www/html] [bold]x[/bold] \033]0;pwned\007"
    bundle = zip_bytes(
        {
            "appspec.yml": appspec(tmp_path / "www", {"ValidateService": "scripts/v.sh"}),
            "scripts/v.sh": hook_script(f'printf "{hostile}\\n"; exit 1'),
            "app/index.html": "x",
        }
    )
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle)
    code, shown = run_in_pty("deploy", "Web", *args, columns=400, stderr=True)
    assert code == 1, shown
    assert "copied to [/var/www/html] [bold]x[/bold] \\x1b]0;pwned\\x07" in shown
    for command in (("status",), ("history", "Web")):
        code, shown = run_in_pty(*command, *args, columns=400)
        assert code == 0, shown
        assert "[/var/www/html] [bold]x[/bold]" in shown, command  # markup shown, not applied
        assert "\x1b]0;pwned" not in shown and "\\x1b]0;pwned\\x07" in shown, command
    code, shown = run_in_pty("status", "[/x]", *args, stderr=True)
    assert code == 2 and "no section [[/x]]" in shown and "Traceback" not in shown, shown
    piped = cli("history", "Web", *args)
    assert piped.returncode == 0 and "\x1b" not in piped.stdout and "\\x1b]0;pwned" in piped.stdout


def test_bad_option_values_are_usage_errors_not_tracebacks(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.ini", {"Web": {"s3_bucket": "b", "target_file_key": "k"}})
    args = ("-c", str(config), "--state-dir", str(tmp_path / "state"))
    huge = cli("history", "Web", "--limit", str(10**30), *args)
    assert huge.returncode == 2 and "--limit" in huge.stderr and "Traceback" not in huge.stderr
    for log_file, says in ((tmp_path, "is a folder"), (tmp_path / "missing" / "agent.log", "does not exist")):
        proc = cli("deploy", "Web", "--log-file", str(log_file), *args)
        assert proc.returncode == 2, proc.stderr
        assert f"--log-file {log_file}: " in proc.stderr and says in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "missing").exists()
    for command in ("status", "history", "suspend", "deploy", "rollback"):
        typo = cli(command, "Wbe", *args)
        assert typo.returncode == 2 and "no section [Wbe]" in typo.stderr, command
    assert not (tmp_path / "state").exists()  # a usage error opens nothing


# ------------------------------------------------------------------------------ signals
@pytest.mark.parametrize(
    ("command", "sig"),
    [("deploy", signal.SIGTERM), ("run --once", signal.SIGINT), ("rollback", signal.SIGTERM)],
)
def test_a_one_shot_command_stopped_by_a_signal_stops_its_hooks_and_records_interrupted(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any,
    command: str, sig: signal.Signals,
) -> None:  # fmt: skip
    bucket = make_bucket(versioned=True)
    config = web_config(tmp_path, seaweed, bucket, poll_interval=0.2)
    state_dir, gate, pid_file = tmp_path / "state", tmp_path / "gate", tmp_path / "pid"
    args = ("-c", str(config), "--state-dir", str(state_dir))
    hooks = {"AfterInstall": "scripts/after.sh"}
    after = f"if [ -e {gate} ]; then echo $$ > {pid_file}; sleep 60; fi"

    def put(tag: str) -> None:
        files = {"appspec.yml": appspec(tmp_path / "www", hooks), "scripts/after.sh": hook_script(after)}
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes({**files, "app/index.html": tag}))

    put("v1")
    if command == "rollback":  # two releases on disk, then the rollback's AfterInstall hangs
        assert cli("deploy", "Web", *args).returncode == 0
        put("v2")
        assert cli("deploy", "Web", *args).returncode == 0
    gate.touch()
    argv = [
        sys.executable,
        "-m",
        "s3deploy",
        *command.split(),
        *(("Web",) if command != "run --once" else ("-s", "Web")),
        *args,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hook_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    assert not pid_alive(hook_pid)
    last = history(config, state_dir, "Web")[0]
    assert last["status"] == "interrupted" and (last["restores"] is not None) is (command == "rollback")
    assert_no_lock_held(state_dir)


# ------------------------------------------------------------------------------ start-up cost
def test_the_cli_loads_neither_the_s3_stack_nor_the_daemon_until_a_command_needs_them() -> None:
    heavy = ("aioboto3", "aiobotocore", "botocore", "boto3", "aiohttp", "s3deploy.runtime.daemon",
             "s3deploy.watcher", "s3deploy.source.s3")  # fmt: skip
    code = f"import sys, s3deploy.cli.app; print([m for m in {heavy!r} if m in sys.modules])"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


S3_STACK = ("aioboto3", "aiobotocore", "botocore", "boto3", "aiohttp", "s3deploy.runtime.daemon",
            "s3deploy.watcher", "s3deploy.source.s3")  # fmt: skip
# What a command that opens no state database does not need either (issue 15: each answers in 0.25 s).
NO_STATE = ("asyncio", "sqlite3", "s3deploy.runtime.agent")


@pytest.mark.parametrize(
    ("command", "unused"),
    [
        ("--help", S3_STACK + NO_STATE),
        ("list", S3_STACK + NO_STATE),
        ("validate", S3_STACK + NO_STATE),
        ("<TAB>", S3_STACK + NO_STATE),  # bash completing section names
        ("status", S3_STACK),
        ("history Web", S3_STACK),
        ("suspend Web", S3_STACK),
        ("resume Web", S3_STACK),
    ],
)
def test_commands_that_do_not_talk_to_s3_run_without_loading_what_they_do_not_use(
    tmp_path: Path, command: str, unused: tuple[str, ...]
) -> None:
    keys = {"s3_bucket": "b", "target_file_key": KEY, "endpoint_url": "http://127.0.0.1:9"}
    config = write_config(tmp_path / "config.ini", {"Web": keys, "Api": {**keys, "target_file_key": "api"}})
    loaded = tmp_path / "loaded"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(' '.join(m for m in {unused!r} "
        "if m in sys.modules)))\n"
        "sys.argv = ['s3deploy', *sys.argv[1:]]\n"
        "from s3deploy.cli.app import main\n"
        "main()\n"
    )
    env = {**os.environ, "S3DEPLOY_CONFIG": str(config)}
    args = command.split()
    if command == "<TAB>":
        args = []
        env.update(_S3DEPLOY_COMPLETE="complete_bash", COMP_WORDS="s3deploy status ", COMP_CWORD="2")
    elif unused == S3_STACK:  # the commands that open the state database
        args += ["--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if command == "<TAB>":
        assert proc.stdout.split() == ["Web", "Api"]
    assert loaded.read_text() == "", f"{command} loaded {loaded.read_text()}"
