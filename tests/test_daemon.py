"""The daemon in-process (runtime/daemon.py), against SeaweedFS and with real signals sent to this
process while its handlers are installed: startup (instance lock, recovery), drain, reload."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import s3deploy.runtime.daemon
from s3deploy.config import load_config
from s3deploy.errors import LockBusy
from s3deploy.runtime.agent import Selection
from s3deploy.runtime.daemon import Daemon
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import StateStore
from tests.agent import (
    appspec,
    assert_no_lock_held,
    db_history,
    eventually,
    hook_script,
    pid_alive,
    write_config,
    zip_bytes,
)

KEY = "app/bundle.zip"


@dataclass
class Host:
    """A config.ini on SeaweedFS buckets, a state directory, and the daemon that serves them."""

    tmp_path: Path
    endpoint: str
    make_bucket: Callable[..., str]
    s3: Any
    buckets: dict[str, str]

    @property
    def config(self) -> Path:
        return self.tmp_path / "config.ini"

    @property
    def state_dir(self) -> Path:
        return self.tmp_path / "state"

    def section(self, name: str, tag: str, hooks: dict[str, str] | None = None) -> dict[str, Any]:
        """Keys of section ``name``; its bucket gets a release installing ``tag`` into tmp/<name>."""
        bucket = self.buckets.setdefault(name, self.make_bucket(versioned=True))
        hooks = hooks or {}
        files: dict[str, Any] = {
            "appspec.yml": appspec(self.tmp_path / name, {e: f"scripts/{e}.sh" for e in hooks}),
            **{f"scripts/{e}.sh": hook_script(body) for e, body in hooks.items()},
            "app/index.html": f"{tag}\n",
        }
        self.s3.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes(files))
        return {
            "s3_bucket": bucket,
            "target_file_key": KEY,
            "endpoint_url": self.endpoint,
            "poll_interval": 0.2,
        }

    def daemon(self, **options: Any) -> Daemon:
        return Daemon(
            self.config, load_config(self.config), Selection(all_sections=True), self.state_dir, **options
        )

    def deployed(self, name: str) -> str | None:
        index = self.tmp_path / name / "index.html"
        return index.read_text().strip() if index.exists() else None

    def last(self, name: str) -> dict[str, Any] | None:
        deps = db_history(self.state_dir, name)
        return deps[0] if deps else None


@pytest.fixture
def host(tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any) -> Host:
    return Host(tmp_path, seaweed.endpoint_url, make_bucket, s3_client, {})


@asynccontextmanager
async def serving(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    """``daemon.serve()`` as a task, running once its signal handlers are in; stopped with SIGTERM."""
    task = asyncio.create_task(daemon.serve())
    await eventually(lambda: daemon._running or task.done())
    assert not task.done(), task
    try:
        yield task
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        assert await task == 0


# ------------------------------------------------------------------------------ startup
async def test_startup_recovers_a_deployment_a_dead_process_left_running_and_deploys_it_again(
    host: Host,
) -> None:
    write_config(host.config, {"Web": host.section("Web", "v1")})
    layout = StateLayout(host.state_dir)
    with StateStore(layout.database) as state:  # what a process killed mid-download leaves behind
        dead = state.start(
            section="Web", bucket=host.buckets["Web"], key=KEY, etag="e0", version_id=None,
            identity="e0", release_dir=layout.release_dir("Web", "d-DEAD00001"), log_path=None,
            deployment_id="d-DEAD00001",
        )  # fmt: skip
    partial = layout.release_dir("Web", dead.id)
    partial.mkdir(parents=True)
    (partial / "bundle.download").write_bytes(b"half")
    async with serving(host.daemon()):
        await eventually(lambda: host.deployed("Web") == "v1")
    history = db_history(host.state_dir, "Web")
    assert [d["status"] for d in history] == ["succeeded", "interrupted"]
    assert history[1]["id"] == dead.id and not partial.exists()


async def test_a_second_daemon_on_the_same_state_directory_is_lock_busy(host: Host) -> None:
    write_config(host.config, {"Web": host.section("Web", "v1")})
    async with serving(host.daemon()) as first:
        with pytest.raises(LockBusy, match="another s3deploy daemon"):
            await host.daemon().serve()
        assert not first.done()
        await eventually(lambda: host.deployed("Web") == "v1")


# ------------------------------------------------------------------------------ drain
async def test_shutdown_gives_running_deployments_the_grace_then_interrupts_them(host: Host) -> None:
    pid_file = host.tmp_path / "pid"
    hooks = {"AfterInstall": f"echo $$ > {pid_file}\nsleep 60"}
    write_config(host.config, {"Web": host.section("Web", "v1", hooks)})
    async with serving(host.daemon(shutdown_grace_s=0.5)) as task:
        pid = int(await eventually(lambda: pid_file.exists() and pid_file.read_text().strip()))
        os.kill(os.getpid(), signal.SIGTERM)
        assert await task == 0
    last = host.last("Web")
    assert last is not None and last["status"] == "interrupted"
    assert not pid_alive(pid)
    assert_no_lock_held(host.state_dir)


# ------------------------------------------------------------------------------ reload
async def test_reload_keeps_the_old_config_on_any_error_and_applies_a_good_one(
    host: Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    web = host.section("Web", "v1")
    write_config(host.config, {"Web": web})
    caplog.set_level(logging.INFO, logger="s3deploy.runtime.daemon")
    daemon = host.daemon()
    async with serving(daemon) as task:
        await eventually(lambda: host.deployed("Web") == "v1")

        # An endpoint_url that does not parse (a ValueError inside urllib, not only a ConfigError).
        write_config(host.config, {"Web": web, "Bad": {**web, "endpoint_url": "http://[::1"}})
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: caplog.text.count("keeping the current configuration") == 1)

        # Any exception at all while reloading (an unexpected type: patched in) keeps it too.
        with monkeypatch.context() as patch:
            patch.setattr(s3deploy.runtime.daemon, "load_config", _broken_load_config)
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: caplog.text.count("keeping the current configuration") == 2)
        assert "MemoryError: cannot read it now" in caplog.text
        assert not task.done() and sorted(daemon._running) == ["Web"]

        # A good file: the new section is watched and deployed, the old one goes on untouched.
        write_config(host.config, {"Web": web, "Api": host.section("Api", "a1")})
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: host.deployed("Api") == "a1")
        assert "watcher restarting" not in caplog.text
    assert [d["status"] for d in db_history(host.state_dir, "Web")] == ["succeeded"]


def _broken_load_config(path: Path) -> Any:
    raise MemoryError("cannot read it now")
