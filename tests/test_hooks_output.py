"""A hook's output on its way to the agent's log, the deployment's log file and the state: escaped, capped,
private, never lost to a full disk, and never able to block the hook."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import HookFailed
from s3deploy.lifecycle.deploylog import OutputSink
from s3deploy.lifecycle.hooks import run_hook
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import StateStore
from tests.agent import appspec, cli, hook_script, status, write_config, zip_bytes
from tests.test_hooks import BASE_ENV, write_script

EVENT = "AfterInstall"


def sink_at(path: Path, **kwargs: int) -> OutputSink:
    sink = OutputSink(logging.getLogger("s3deploy.deployer"), path, **kwargs)
    sink.open()
    return sink


async def run_into(sink: OutputSink, script: Path, seen: list[str] | None = None, **kwargs: float) -> None:
    def on_line(line: str) -> None:
        if seen is not None:
            seen.append(line)
        sink.line(EVENT, line)

    try:
        await run_hook(
            script, event=EVENT, cwd=script.parent, env=BASE_ENV, on_line=on_line, timeout_s=20, **kwargs
        )
    finally:
        sink.close()


async def test_escape_sequences_and_bad_utf8_never_reach_a_log_a_file_or_the_state_raw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3deploy")
    script = write_script(
        tmp_path,
        "evil.sh",
        r"printf '\033]0;owned\007title\n\033[2J\033[31mred\033[0m\nbad \377\376 bytes\nbell\a\rover\n'"
        "\nexit 1\n",
    )
    sink = sink_at(tmp_path / "logs" / "d-1.log")
    seen: list[str] = []
    with pytest.raises(HookFailed) as info:
        await run_into(sink, script, seen)
    assert seen == [
        r"\x1b]0;owned\x07title",
        r"\x1b[2J\x1b[31mred\x1b[0m",
        r"bad \xff\xfe bytes",
        r"bell\x07\x0dover",
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    written = (tmp_path / "logs" / "d-1.log").read_bytes()
    for where in (logged, str(info.value), sink.text()):
        assert r"\x1b]0;owned\x07title" in where and "\x1b" not in where and "\x07" not in where
        assert "\r" not in where
    assert b"\x1b" not in written and b"\xff" not in written and rb"\x1b[31mred" in written


async def test_the_deployment_log_is_private(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "logs" / "Web" / "d-1.log"
    sink = sink_at(path)
    await run_into(sink, write_script(tmp_path, "hi.sh", "echo hi\n"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.read_text().endswith(f"{EVENT}: hi\n")


async def test_the_deployment_log_keeps_its_tail_and_says_how_much_was_dropped(tmp_path: Path) -> None:
    path = tmp_path / "d-1.log"
    sink = sink_at(path, max_bytes=64 * 1024, keep_bytes=32 * 1024)
    n = 20000
    seen: list[str] = []
    await run_into(sink, write_script(tmp_path, "many.sh", f"seq 1 {n}\n"), seen)
    assert seen == [str(i) for i in range(1, n + 1)], "every line is handed on, in order"
    text = path.read_text()
    assert len(text) <= 64 * 1024
    first, *rest = text.splitlines()
    dropped = re.fullmatch(r"\S+ s3deploy: (\d+) bytes of earlier output dropped here \(.*\)", first)
    assert dropped is not None, first
    assert rest[-1].endswith(f"{EVENT}: {n}")
    kept = [int(line.rsplit(" ", 1)[1]) for line in rest]
    assert kept == list(range(kept[0], n + 1)), "the newest lines, whole and in order"
    stamp = len("2024-01-01T00:00:00 ")
    total = sum(stamp + len(f"{EVENT}: {i}\n") for i in range(1, n + 1))
    assert int(dropped.group(1)) + len(text) - len(first) - 1 == total, "dropped + kept = all the output"


async def test_a_consumer_that_fails_does_not_block_the_hook(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(line: str) -> None:
        raise RuntimeError("consumer broke")

    script = write_script(tmp_path, "loud.sh", "seq 1 200000\necho done > done.txt\n")
    result = await run_hook(script, event=EVENT, cwd=tmp_path, env=BASE_ENV, timeout_s=30, on_line=broken)
    assert result.exit_code == 0 and (tmp_path / "done.txt").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "consumer broke" in errors[0]


@contextlib.contextmanager
def full_tmpfs(mount: Path) -> Iterator[Path]:
    """A real full disk at ``mount``: a 2 MiB tmpfs, filled up (needs root)."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    (tmp_path / "full").mkdir()
    with full_tmpfs(tmp_path / "full") as mount:
        yield mount


async def test_a_full_disk_neither_stops_the_hook_nor_loses_a_line_of_the_agents_log(
    full_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3deploy")
    path = full_disk / "logs" / "Web" / "d-1.log"
    sink = sink_at(path)
    n = 100000  # about 600 KB: far more than a pipe holds
    script = write_script(tmp_path, "loud.sh", f"seq 1 {n}\n")
    seen: list[str] = []
    await run_into(sink, script, seen)
    assert len(seen) == n
    logged = [r.getMessage() for r in caplog.records if r.name == "s3deploy.deployer"]
    failures = [m for m in logged if "cannot write the deployment log" in m]
    assert len(failures) == 1 and str(path) in failures[0] and "No space left on device" in failures[0]
    assert sum(m.startswith(f"{EVENT}: ") for m in logged) == n, "every line is still logged"
    assert sink.text().endswith(f"{EVENT}: {n}\ns3deploy: cannot write {path}: No space left on device")


def test_a_deployment_whose_log_file_cannot_be_written_succeeds_and_says_so(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    bucket, state_dir = make_bucket(), tmp_path / "state"
    body = zip_bytes(
        {
            "appspec.yml": appspec(None, {"AfterInstall": "scripts/after.sh"}),
            "scripts/after.sh": hook_script("seq 1 50000"),
        }
    )
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=body)
    section = {"s3_bucket": bucket, "target_file_key": "app.zip", "endpoint_url": seaweed.endpoint_url}
    config = write_config(tmp_path / "config.ini", {"Web": {**section, "destination": tmp_path / "www"}})
    logs = StateLayout(state_dir).logs_root
    logs.mkdir(parents=True)
    with full_tmpfs(logs):
        proc = cli("deploy", "Web", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    assert "cannot write the deployment log" in proc.stderr and "No space left on device" in proc.stderr
    assert status(config, state_dir)["Web"]["last"]["status"] == "succeeded"
    store = StateStore(StateLayout(state_dir).database)
    try:
        last = store.last_attempt("Web")
    finally:
        store.close()
    assert last is not None and last.status == "succeeded"
    assert last.output_tail.endswith(
        "AfterInstall: 50000\ns3deploy: cannot write " + str(last.log_path) + ": No space left on device"
    )
