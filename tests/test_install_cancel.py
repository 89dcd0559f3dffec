"""Install stops when the deployment is cancelled, and nothing else touches the destination before it
has (issue 9 item 5): deployment_timeout during Install, then the auto-rollback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.appspec import load_appspec
from s3deploy.config import Section
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import InstallError
from s3deploy.install import copy as copy_module
from s3deploy.install.cancel import InstallCancelled
from s3deploy.install.cleanup import read_list
from s3deploy.install.installer import install
from s3deploy.lifecycle.pipeline import Lifecycle, LifecycleResult, Release
from tests.agent import open_agent, zip_bytes
from tests.test_install import big_tree, make_bundle


def on_disk(dest: Path) -> set[str]:
    return {str(p) for p in dest.rglob("*") if not p.is_dir() or p.is_symlink()}


def app_spec(dest: Path) -> str:
    return f"files:\n  - source: app\n    destination: {dest}\n"


@pytest.mark.parametrize("threads", [False, True], ids=["sequential", "threads"])
def test_a_cancel_stops_the_copy_between_files_and_the_list_covers_what_was_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: bool
) -> None:
    dest, cleanup_list = tmp_path / "srv", tmp_path / "state" / "prod.list"
    v1 = make_bundle(tmp_path / "v1", {"app/old.txt": "1", "app/keep/a.txt": "1"}, app_spec(dest))
    install(v1, load_appspec(v1), default_destination=None, cleanup_list=cleanup_list)
    if not threads:
        monkeypatch.setattr(copy_module, "PARALLEL_MIN_FILES", 10_000)
    cancel, copied = threading.Event(), []
    real_copy_one = copy_module.copy_one

    def cancel_after_100(source: Path, folder: int, dest: str, mode: int | None) -> None:
        real_copy_one(source, folder, dest, mode)
        copied.append(dest)
        if len(copied) == 100:
            cancel.set()  # as the pipeline does when deployment_timeout cancels the deployment

    monkeypatch.setattr(copy_module, "copy_one", cancel_after_100)
    v2 = make_bundle(tmp_path / "v2", big_tree(10, 60), app_spec(dest))
    with pytest.raises(InstallCancelled, match="cancelled"):
        install(v2, load_appspec(v2), default_destination=None, cleanup_list=cleanup_list, cancel=cancel)
    assert 100 <= len(copied) < 100 + copy_module.COPY_THREADS  # at most one more file per thread
    assert on_disk(dest) <= set(read_list(cleanup_list).files)  # the next Install removes all of it
    assert isinstance(InstallCancelled("x"), InstallError)

    install(v1, load_appspec(v1), default_destination=None, cleanup_list=cleanup_list)  # the rollback
    assert (
        on_disk(dest)
        == {str(dest / "old.txt"), str(dest / "keep/a.txt")}
        == set(read_list(cleanup_list).files)
    )


def test_a_timed_out_install_is_awaited_before_the_deployment_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait_for`` cancels the lifecycle; before, it returned while the Install thread kept copying (the
    destination locks released, the rollback starting beside it). Now it returns once Install stopped."""
    dest, cleanup_list = tmp_path / "srv", tmp_path / "state" / "prod.list"
    bundle = make_bundle(tmp_path / "v2", big_tree(10, 60), app_spec(dest))
    monkeypatch.setattr(copy_module, "PARALLEL_MIN_FILES", 10_000)
    copied: list[str] = []
    real_copy_one = copy_module.copy_one
    started = time.monotonic()

    def slow_tenth(source: Path, folder: int, dest: str, mode: int | None) -> None:
        if len(copied) == 10:  # a big file: still copying well after the timeout
            time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        real_copy_one(source, folder, dest, mode)
        copied.append(dest)

    monkeypatch.setattr(copy_module, "copy_one", slow_tenth)
    lifecycle = Lifecycle(
        section="prod",
        release=Release("d-2", bundle, load_appspec(bundle)),
        previous=None,
        env={},
        default_destination=None,
        cleanup_list=cleanup_list,
        ignore_application_stop_failures=False,
        on_line=lambda event, line: None,
    )

    async def run() -> tuple[int, LifecycleResult]:
        result = LifecycleResult()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lifecycle.run(result), 0.3)
        return len(copied), result

    at_return, result = asyncio.run(run())
    assert result.current_event == "Install" and not result.install_completed
    time.sleep(1.5)  # had the thread gone on, it would have copied the rest meanwhile
    assert len(copied) == at_return <= 11  # the slow file finished, no other started after it
    assert on_disk(dest) <= set(read_list(cleanup_list).files)


async def test_deployment_timeout_during_install_then_rollback_leaves_only_the_previous_release(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any, monkeypatch: Any
) -> None:
    """Through the agent's runtime: v2's Install outlives deployment_timeout; the rollback to v1 runs
    only after v2's copy stopped, so the destination holds v1's files and nothing else, exactly what the
    cleanup list says, and no file of v2 appears afterwards.

    Each file of v2 takes 20 ms to copy (a slow disk: 600 files, 12 s), so the 4 s timeout strikes in the
    middle of the copy whatever the machine's load (fetching the small bundle takes well under a second);
    without the cancel flag the copy would go on for seconds after the rollback."""
    real = copy_module._install_file
    copied_after_rollback: list[str] = []
    copied_of_v2: list[str] = []
    rolling_back = threading.Event()

    def slow_disk(source: Path, *args: Any, **kwargs: Any) -> None:
        if "v2" in source.read_bytes().decode(errors="replace"):
            copied_of_v2.append(str(source))
            if rolling_back.is_set():
                copied_after_rollback.append(str(source))
            time.sleep(0.02)
        real(source, *args, **kwargs)

    monkeypatch.setattr(copy_module, "_install_file", slow_disk)
    dest, state_dir = tmp_path / "www", tmp_path / "state"
    section = Section(
        name="Production",
        s3_bucket=make_bucket(versioned=True),
        target_file_key="app.zip",
        endpoint_url=seaweed.endpoint_url,
        deployment_timeout_s=4.0,
    )
    appspec = "version: 0.0\nos: linux\n" + app_spec(dest)
    v1 = {"appspec.yml": appspec, "app/index.html": "v1", "app/v1/only.txt": "v1"}
    v2 = {"appspec.yml": appspec, **dict.fromkeys(big_tree(6, 100), "v2")}
    s3_client.put_object(Bucket=section.s3_bucket, Key="app.zip", Body=zip_bytes(v1))
    async with open_agent(state_dir, section, exclusive=True) as agent:
        watcher = await agent.watcher(section)
        first = await watcher.poll_once()
        assert first is not None and first.status == "succeeded"
        s3_client.put_object(Bucket=section.s3_bucket, Key="app.zip", Body=zip_bytes(v2))
        real_rollback = watcher.deployer.rollback_to

        async def rollback_to(*args: Any, **kwargs: Any) -> Any:
            rolling_back.set()
            return await real_rollback(*args, **kwargs)

        monkeypatch.setattr(watcher.deployer, "rollback_to", rollback_to)
        done = await watcher.poll_once()
        history = await agent.history("Production", None)
    await asyncio.sleep(0.5)  # had the copy gone on, more of v2 would land meanwhile

    assert done is not None and done.status == "failed"
    assert done.failed_event == "Install" and "deployment_timeout" in (done.error or ""), done.error
    rolled_back = history[0]
    assert rolled_back.rollback_of == done.id and rolled_back.status == "succeeded", rolled_back.error
    assert copied_after_rollback == []
    assert 0 < len(copied_of_v2) < 600  # the copy stopped between files, long before its end
    assert on_disk(dest) == {str(dest / "index.html"), str(dest / "v1/only.txt")}
    assert (dest / "index.html").read_text() == "v1"
    listed = json.loads((state_dir / "installed" / "Production.list").read_text())
    assert set(listed["files"]) == on_disk(dest)
