"""The deployer in-process, against SeaweedFS: what one deployment records whatever goes wrong (errors
that are not ours, a full disk, a download or a lock wait past deployment_timeout), and the section
and deployment id on every log line it causes, threads included."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import logging
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import s3deploy.bundle.extract
import s3deploy.bundle.writer
import s3deploy.fetch
import s3deploy.install.copy
import s3deploy.install.installer
import s3deploy.lifecycle.pipeline
from s3deploy.config import Section
from s3deploy.log import ContextFilter, JsonFormatter
from s3deploy.runtime.agent import Agent
from s3deploy.state.layout import StateLayout
from s3deploy.watcher import Watcher
from tests.agent import appspec, hook_script, lock_is_free, open_agent, zip_bytes
from tests.faults import StallingProxy

KEY = "app/bundle.zip"


@dataclass
class Site:
    """Section "Web" on a versioned bucket, deploying into ``dest``."""

    section: Section
    state_dir: Path
    dest: Path
    s3: Any

    def put(self, body: bytes) -> None:
        self.s3.put_object(Bucket=self.section.s3_bucket, Key=KEY, Body=body)

    def release(self, tag: str, *, hooks: dict[str, str] | None = None, **app: str | bytes) -> bytes:
        """A bundle installing app/index.html = tag (plus ``app``), with hook scripts (event → body)."""
        hooks = hooks or {}
        files: dict[str, Any] = {
            "appspec.yml": appspec(self.dest, {e: f"scripts/{e}.sh" for e in hooks}),
            **{f"scripts/{e}.sh": hook_script(body) for e, body in hooks.items()},
            "app/index.html": f"{tag}\n",
            **{f"app/{name}": value for name, value in app.items()},
        }
        return zip_bytes(files)

    def deployed(self) -> str:
        return (self.dest / "index.html").read_text().strip()


@pytest.fixture
def site(tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any) -> Site:
    section = Section(
        name="Web",
        s3_bucket=make_bucket(versioned=True),
        target_file_key=KEY,
        endpoint_url=seaweed.endpoint_url,
        poll_interval_s=0.2,
    )
    return Site(section, tmp_path / "state", tmp_path / "www", s3_client)


async def deployed_watcher(agent: Agent, site: Site, **changes: Any) -> Watcher:
    return await agent.watcher(replace(site.section, **changes))


# ------------------------------------------------------------------------------ errors that are not ours
def _raise_in(stage: str, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make one stage raise ``error`` once: an exception type no stage raises on purpose (a bug, or an
    input nobody foresaw). Nothing real produces an unknown exception type on demand, hence the patch;
    the rollback that follows runs the stage for real."""
    module: Any = s3deploy.fetch if stage == "unpack" else s3deploy.lifecycle.pipeline
    name = {"unpack": "unpack", "Install": "install_copy"}.get(stage, "run_hook")
    real = getattr(module, name)
    raised = False

    def should_raise(kwargs: dict[str, Any]) -> bool:
        nonlocal raised
        if raised or (name == "run_hook" and kwargs["event"] != stage):
            return False
        raised = True
        return True

    if name == "run_hook":

        async def run_hook(*args: Any, **kwargs: Any) -> Any:
            if should_raise(kwargs):
                raise error
            return await real(*args, **kwargs)

        monkeypatch.setattr(module, name, run_hook)
    else:

        def stage_fn(*args: Any, **kwargs: Any) -> Any:
            if should_raise(kwargs):
                raise error
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, stage_fn)


@pytest.mark.parametrize(
    ("stage", "error", "failed_event"),
    [
        ("unpack", RecursionError("maximum recursion depth exceeded"), "DownloadBundle"),
        ("Install", ValueError("embedded null byte"), "Install"),
        ("ApplicationStart", OverflowError("timeout too large"), "ApplicationStart"),
    ],
)
async def test_an_unexpected_error_fails_the_deployment_with_its_type_rolls_back_and_is_not_retried(
    site: Site, monkeypatch: pytest.MonkeyPatch, stage: str, error: BaseException, failed_event: str
) -> None:
    hooks = {"ApplicationStart": "echo started"}
    site.put(site.release("v1", hooks=hooks))
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        watcher = await agent.watcher(site.section)
        first = await watcher.poll_once()
        assert first is not None and first.status == "succeeded"

        site.put(site.release("v2", hooks=hooks))
        with monkeypatch.context() as patch:
            _raise_in(stage, patch, error)
            failed = await watcher.poll_once()
        assert failed is not None and failed.status == "failed"
        assert failed.failed_event == failed_event
        assert failed.error == f"{type(error).__name__}: {error}" and not failed.transient
        history = agent.state.history("Web")
        assert all(d.status != "running" for d in history)
        if failed_event == "DownloadBundle":
            assert failed.release_dir is None  # the partial release is gone
            assert [d.id for d in history] == [failed.id, first.id]
        else:  # at or after Install: the previous release is back
            rollback = history[0]
            assert rollback.rollback_of == failed.id and rollback.restores == first.id
            assert rollback.status == "succeeded"
        assert site.deployed() == "v1"
        st = await agent.status(["Web"])
        assert st[0]["state"] == "failed" and st[0]["last"]["status"] != "running"

        # Not retried until the object changes; then it deploys.
        assert await watcher.poll_once() is None
        site.put(site.release("v3", hooks=hooks))
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded" and site.deployed() == "v3"


async def test_an_archive_entry_name_that_is_not_utf8_is_stored_escaped(site: Site) -> None:
    """A refused entry whose name is not valid UTF-8: the error still reaches the state (SQLite refuses
    lone surrogates), escaped, and the deployment ends failed instead of staying running."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", encoding="utf-8", errors="surrogateescape") as tf:
        spec = appspec(site.dest, {}).encode()
        info = tarfile.TarInfo("appspec.yml")
        info.size = len(spec)
        tf.addfile(info, io.BytesIO(spec))
        link = tarfile.TarInfo(os.fsdecode(b"app/\xff\xfe-escape"))
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(link)
    site.put(buf.getvalue())
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        watcher = await agent.watcher(site.section)
        failed = await watcher.poll_once()
        assert failed is not None and failed.status == "failed" and failed.failed_event == "DownloadBundle"
        assert failed.error is not None and "app/\\udcff\\udcfe-escape" in failed.error
        assert await watcher.poll_once() is None


# ------------------------------------------------------------------------------ a full disk
@pytest.fixture
def tiny_disk() -> Iterator[Callable[[Path], Path]]:
    """``tiny_disk(folder)`` mounts a 2 MiB tmpfs on ``folder``: a real full disk (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("where", ["download", "unpack"])
async def test_a_full_disk_is_transient_retried_with_backoff_then_deploys(
    site: Site, tiny_disk: Callable[[Path], Path], where: str
) -> None:
    releases = tiny_disk(StateLayout(site.state_dir).releases_root)  # the releases live on a tiny disk
    if where == "download":
        big = secrets.token_bytes(3 * 2**20)  # does not compress: the download does not fit
    else:
        big = b"\0" * (3 * 2**20)  # a few KB zipped: the download fits, the unpacked file does not
    site.put(site.release("v1", **{"big.bin": big}))
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        watcher = await agent.watcher(site.section)
        failed = await watcher.poll_once()
        assert failed is not None and failed.status == "failed" and failed.failed_event == "DownloadBundle"
        assert failed.transient and failed.error is not None
        assert failed.error.startswith("disk full:") and "No space left on device" in failed.error
        assert list(releases.rglob("*")) in ([], [releases / "Web"])  # the partial release is removed
        # Retried, with backoff: not at every poll.
        assert watcher._download_retry_at > time.monotonic()
        assert await watcher.poll_once() is None
        remount = ["mount", "-o", "remount,size=64m", str(releases)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        watcher._download_retry_at = 0.0  # as if the backoff had passed
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded" and site.deployed() == "v1"


# ------------------------------------------------------------------------------ deployment_timeout
async def test_deployment_timeout_bounds_the_download(
    site: Site, stalling_proxy: StallingProxy, seaweed: Any
) -> None:
    section = replace(site.section, endpoint_url=stalling_proxy.endpoint_url, deployment_timeout_s=1.5)
    site.put(site.release("v1", **{"big.bin": secrets.token_hex(100_000)}))
    stalling_proxy.stalling.set()  # the GET body stops half-way and never goes on
    async with open_agent(site.state_dir, section, exclusive=True) as agent:
        watcher = await agent.watcher(section)
        failed = await watcher.poll_once()  # the proxy would hold the body for 60 s
        assert stalling_proxy.stalled.is_set()
        assert failed is not None and failed.status == "failed" and failed.failed_event == "DownloadBundle"
        assert failed.error == "deployment_timeout of 1.5s reached during DownloadBundle"
        assert failed.transient  # the server's fault, not the bundle's: tried again later
        assert lock_is_free(StateLayout(site.state_dir).section_lock("Web"))


async def test_deployment_timeout_bounds_the_wait_for_a_destination_lock(site: Site) -> None:
    """Another process holds the destination's lock (and never lets go): the wait is part of the
    deployment and ends with it."""
    site.put(site.release("v1"))
    site.dest.mkdir()
    lock_path = StateLayout(site.state_dir).destination_lock(str(site.dest.resolve()))
    lock_path.parent.mkdir(parents=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        section = replace(site.section, deployment_timeout_s=1.0)
        async with open_agent(site.state_dir, section, exclusive=True) as agent:
            failed = await (await agent.watcher(section)).poll_once()
    finally:
        os.close(fd)
    assert failed is not None and failed.status == "failed"
    # The wait ends just before the deadline, naming what holds the folder (not just "timed out").
    assert failed.failed_event == "BeforeInstall"
    assert "gave up after waiting" in failed.error and "lock file" in failed.error
    assert not (site.dest / "index.html").exists()


# ------------------------------------------------------------------------------ log context
@pytest.fixture
def log_lines() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every record at DEBUG and above, as JSON lines and as text lines, through the agent's filter."""
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_out), logging.StreamHandler(text_out)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(logging.Formatter("%(name)s %(threadName)s %(context)s%(message)s"))
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    try:
        yield json_out, text_out
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(saved)


async def test_every_line_of_a_deployment_carries_section_and_deployment_id_threads_included(
    site: Site, log_lines: tuple[io.StringIO, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many files: unpack and Install run over their thread pools; each file logs from its thread.
    monkeypatch.setattr(s3deploy.bundle.extract, "PARALLEL_MIN_ENTRIES", 1)
    monkeypatch.setattr(s3deploy.install.copy, "PARALLEL_MIN_FILES", 1)
    thread_logger = logging.getLogger("tests.threads")
    for module, name in (
        (s3deploy.bundle.writer.Writer, "file"),
        (s3deploy.install.copy, "_install_file"),
    ):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            thread_logger.debug("%s in a worker thread", _name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    files = {f"f{i}.txt": f"{i}\n" for i in range(20)}
    site.put(site.release("v1", hooks={"AfterInstall": "echo hook says hi"}, **files))
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        dep = await (await agent.watcher(site.section)).poll_once()
    assert dep is not None and dep.status == "succeeded"

    json_out, text_out = log_lines
    records = [json.loads(line) for line in json_out.getvalue().splitlines()]
    ours = [r for r in records if r.get("deployment_id") == dep.id]
    assert all(r["section"] == "Web" for r in ours)
    loggers = {r["logger"] for r in ours}
    for module in (
        "s3deploy.deployer", "s3deploy.fetch", "s3deploy.source.s3", "s3deploy.bundle.extract",
        "s3deploy.lifecycle.pipeline", "s3deploy.lifecycle.hooks", "s3deploy.install.installer",
        "tests.threads",
    ):  # fmt: skip
        assert module in loggers, f"no line of {module} carries the deployment: {sorted(loggers)}"
    started = next(i for i, r in enumerate(records) if r["msg"].startswith(f"deployment {dep.id}"))
    ended = next(
        i for i, r in enumerate(records) if "succeeded in" in r["msg"] and r["logger"] == "s3deploy.deployer"
    )
    stray = [r for r in records[started : ended + 1] if r.get("deployment_id") != dep.id]
    assert stray == [], "lines logged during the deployment without its id"
    hook_line = next(r for r in ours if r["msg"] == "AfterInstall: hook says hi")
    assert hook_line["event"] == "AfterInstall"

    text = text_out.getvalue().splitlines()
    threads = [line for line in text if "in a worker thread" in line]
    assert {line.split()[1].split("-")[0] for line in threads} == {"unpack", "install"}
    assert all(f" {dep.id} [Web] " in line for line in threads)
    assert any(line.endswith(f"{dep.id} [Web] AfterInstall: hook says hi") for line in text)


def fill(path: Path) -> None:
    """Write ``path`` until its disk is full: not one more block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


@pytest.mark.parametrize("broken", ["a file where the folder goes", "a full disk"])
async def test_a_deployment_log_file_that_cannot_be_written_does_not_stop_the_hooks(
    site: Site, broken: str, tiny_disk: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The hooks run, the deployment succeeds, the output still reaches the state's tail."""
    logs = StateLayout(site.state_dir).logs_root
    if broken == "a full disk":
        tiny_disk(logs)
        (logs / "Web").mkdir()
        fill(logs / "filler")
    else:
        logs.mkdir(parents=True)
        (logs / "Web").write_text("not a folder")
    lines = "; ".join(f"echo started ok {i}" for i in range(50))
    site.put(site.release("v1", hooks={"ApplicationStart": lines}))
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        dep = await (await agent.watcher(site.section)).poll_once()
    assert dep is not None and dep.status == "succeeded"
    assert "ApplicationStart: started ok 49" in dep.output_tail
    assert "cannot write the deployment log" in caplog.text
