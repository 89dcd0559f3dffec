"""`make demo`: a local SeaweedFS, the sample bundle published to it, the real daemon deploying it.

Everything the demo makes lives under its work folder (``.demo/`` in the repo by default): the S3 server's
data, the config, the agent's state and the folder the app is installed into. Everything it starts is
stopped before it returns, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s3deploy.appspec import check_bundle
from s3deploy.bundle.pack import make_zip
from s3deploy.common.procgroup import Session, stop_session
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import S3DeployError
from s3deploy.source.s3 import Endpoint, Revision, S3Pool
from s3deploy.state.layout import StateLayout

BUCKET = "s3deploy-demo"
KEY = "example/app.zip"
SECTION = "Demo"
EXAMPLE_DESTINATION = "/opt/s3deploy-example"


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def example_bundle() -> Path:
    """examples/bundle of this checkout."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "bundle"
        if (candidate / "appspec.yml").is_file():
            return candidate
    raise S3DeployError("examples/bundle not found: run the demo from a checkout of s3deploy")


def stage_bundle(source: Path, staged: Path, app_dir: Path) -> None:
    """Copy the example bundle, pointing its install destination at ``app_dir`` (under the demo folder)."""
    shutil.copytree(source, staged, symlinks=True)
    for name in ("appspec.yml", "deploy.env"):
        path = staged / name
        path.write_text(path.read_text().replace(EXAMPLE_DESTINATION, str(app_dir)))


async def _publish(endpoint_url: str, archive: Path) -> Revision:
    ep = Endpoint(endpoint_url=endpoint_url)
    async with S3Pool() as pool:
        client = await pool.client(ep)
        await client.create_bucket(Bucket=BUCKET)
        return await pool.upload(ep, BUCKET, KEY, archive)


def _write_config(path: Path, endpoint_url: str) -> None:
    path.write_text(
        f"[{SECTION}]\n"
        f"s3_bucket = {BUCKET}\n"
        f"target_file_key = {KEY}\n"
        f"endpoint_url = {endpoint_url}\n"
        "poll_interval = 0.5\n"
        "deployment_timeout = 120\n"
    )


def _status(env: dict[str, str], config: Path, state_dir: Path) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "s3deploy",
            "status",
            SECTION,
            "--json",
            "-c",
            str(config),
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return {}
    sections = json.loads(proc.stdout)["sections"]
    return dict(sections[0])


def run_demo(workdir: Path, *, timeout_s: float = 120.0) -> int:
    """Run the whole demo; 0 when the sample bundle ended up deployed."""
    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    app_dir, state_dir, config = workdir / "www", workdir / "state", workdir / "config.ini"
    env = dict(
        os.environ, AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.update(
        {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    )
    with SeaweedServer(workdir / "seaweedfs") as server:
        _say(f"SeaweedFS serves S3 at {server.endpoint_url}")
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            staged = Path(tmp) / "bundle"
            stage_bundle(example_bundle(), staged, app_dir)
            problems = check_bundle(staged)
            if problems:
                raise S3DeployError("examples/bundle is invalid:\n" + "\n".join(problems))
            archive = Path(tmp) / "app.zip"
            entries = make_zip(staged, archive)
            rev = asyncio.run(_publish(server.endpoint_url, archive))
        _say(f"published examples/bundle ({entries} entries) as s3://{BUCKET}/{KEY}, etag {rev.etag}")
        _write_config(config, server.endpoint_url)
        _say(f"starting the agent: s3deploy run --all -c {config} --state-dir {state_dir}")
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "s3deploy",
                "run",
                "--all",
                "-c",
                str(config),
                "--state-dir",
                str(state_dir),
            ],
            env=env,
            start_new_session=True,
        )
        session = Session.led_by(agent.pid)
        try:
            status = _wait_deployed(env, config, state_dir, timeout_s)
        finally:
            # The agent's own shutdown grace is 30 s: give it that and a little more before SIGKILL.
            stop_session(session, grace_s=40, label=f"the demo's agent (pid {agent.pid})")
            agent.wait()
    return _report(status, app_dir, state_dir)


def _wait_deployed(env: dict[str, str], config: Path, state_dir: Path, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = _status(env, config, state_dir)
        last = status.get("last")
        if isinstance(last, dict) and last.get("status") in ("succeeded", "failed"):
            return status
        time.sleep(0.5)
    return status


def _report(status: dict[str, object], app_dir: Path, state_dir: Path) -> int:
    last = status.get("last")
    if not isinstance(last, dict):
        _say("the agent did not deploy within the time limit")
        return 1
    _say(f"deployment {last['id']}: {last['status']}")
    log = StateLayout(state_dir).log_file(SECTION, str(last["id"]))
    if log.is_file():
        _say(f"hook output ({log.relative_to(state_dir.parent)}):")
        for line in log.read_text().splitlines():
            print(f"    {line}")
    if last["status"] != "succeeded":
        _say(f"failed in {last['failed_event']}: {last['error']}")
        return 1
    _say(f"installed into {app_dir}:")
    for path in sorted(app_dir.rglob("*")):
        mode = oct(path.lstat().st_mode & 0o777)
        print(f"    {mode} {path.relative_to(app_dir)}")
    _say("all stopped. Try: .venv/bin/s3deploy status -c .demo/config.ini --state-dir .demo/state")
    return 0
