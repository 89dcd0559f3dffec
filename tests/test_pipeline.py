"""The lifecycle in-process (lifecycle/pipeline.py): the events in order, from the right release, with
real shell-script hooks and a real Install; where it stops, and what it tells its caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from s3deploy.appspec import AppSpec, FileMapping, HookScript
from s3deploy.lifecycle.pipeline import Lifecycle, LifecycleResult, Release
from tests.agent import hook_script, pid_alive

EVENTS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")


def release(root: Path, tag: str, dest: Path, hooks: dict[str, str], **spec: object) -> Release:
    """A release folder ``root``/bundle whose app/index.html is ``tag``; ``hooks`` maps an event to the
    body of its script, which runs with ``set -eu``."""
    bundle = root / "bundle"
    (bundle / "app").mkdir(parents=True)
    (bundle / "app" / "index.html").write_text(f"{tag}\n")
    for event, body in hooks.items():
        script = bundle / "scripts" / f"{event}.sh"
        script.parent.mkdir(exist_ok=True)
        script.write_text(hook_script(body))
        script.chmod(0o755)
    appspec = AppSpec(
        files=(FileMapping("app", str(dest)),),
        hooks={event: (HookScript(f"scripts/{event}.sh", timeout_s=30),) for event in hooks},
        **spec,  # type: ignore[arg-type]
    )
    return Release(root.name, bundle, appspec)


def traced(event: str) -> str:
    """A hook body that says which event it is, from which bundle, and what it sees installed."""
    return 'echo "$LIFECYCLE_EVENT from $(basename $(dirname $S3DEPLOY_BUNDLE_DIR)) in $(basename $PWD)"'


class Run:
    """A lifecycle run's outputs: every hook line, and the moments the caller was told about."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.lines: list[str] = []

    def lifecycle(self, new: Release, previous: Release | None, **options: object) -> Lifecycle:
        async def install_completed() -> None:
            self.lines.append("<install completed>")

        values: dict[str, object] = dict(
            section="Web",
            release=new,
            previous=previous,
            env={"PATH": "/usr/bin:/bin", "DEPLOYMENT_ID": new.deployment_id},
            default_destination=None,
            cleanup_list=self.tmp_path / "installed.list",
            ignore_application_stop_failures=False,
            on_line=lambda event, line: self.lines.append(f"{event}: {line}"),
            on_install_completed=install_completed,
        )
        values.update(options)
        return Lifecycle(**values)  # type: ignore[arg-type]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


async def test_events_run_in_order_application_stop_from_the_previous_release(
    tmp_path: Path, run: Run
) -> None:
    dest = tmp_path / "www"
    old = release(tmp_path / "d-OLD", "v1", dest, {e: traced(e) for e in EVENTS})
    new = release(tmp_path / "d-NEW", "v2", dest, {e: traced(e) for e in EVENTS})
    new.spec.hooks["AfterInstall"] = (HookScript("scripts/AfterInstall.sh"),)
    (new.bundle_root / "scripts" / "AfterInstall.sh").write_text(
        hook_script(f'echo "AfterInstall sees $(cat {dest}/index.html)"')
    )
    result = await run.lifecycle(new, old).run()
    assert result.ok and result.install_completed and result.failed_event is None
    assert run.lines == [
        "ApplicationStop: ApplicationStop from d-OLD in bundle",  # the previous release's own stop
        "BeforeInstall: BeforeInstall from d-NEW in bundle",
        "<install completed>",  # told before AfterInstall starts
        "AfterInstall: AfterInstall sees v2",
        "ApplicationStart: ApplicationStart from d-NEW in bundle",
        "ValidateService: ValidateService from d-NEW in bundle",
    ]


async def test_the_first_deployment_skips_application_stop(tmp_path: Path, run: Run) -> None:
    new = release(tmp_path / "d-NEW", "v1", tmp_path / "www", {e: traced(e) for e in EVENTS})
    result = await run.lifecycle(new, None).run()
    assert result.ok
    assert [line.split(":")[0] for line in run.lines if not line.startswith("<")] == list(EVENTS[1:])


@pytest.mark.parametrize(
    ("failing", "install_completed"),
    [("ApplicationStop", False), ("BeforeInstall", False), ("AfterInstall", True), ("ValidateService", True)],
)
async def test_the_first_failure_stops_the_run_and_names_its_event(
    tmp_path: Path, run: Run, failing: str, install_completed: bool
) -> None:
    dest = tmp_path / "www"
    hooks = {e: (f"echo {e} broke; exit 3" if e == failing else traced(e)) for e in EVENTS}
    old = release(tmp_path / "d-OLD", "v1", dest, hooks)
    new = release(tmp_path / "d-NEW", "v2", dest, hooks)
    result = await run.lifecycle(new, old).run()
    assert not result.ok and result.failed_event == failing
    assert (
        result.error is not None
        and "exited with code 3" in result.error
        and f"{failing} broke" in result.error
    )
    assert result.install_completed is install_completed
    ran = [line.split(":")[0] for line in run.lines if not line.startswith("<")]
    assert ran == list(EVENTS[: EVENTS.index(failing) + 1])  # nothing after the failure
    assert (dest / "index.html").exists() is install_completed


async def test_a_failing_application_stop_can_be_ignored(tmp_path: Path, run: Run) -> None:
    dest = tmp_path / "www"
    old = release(tmp_path / "d-OLD", "v1", dest, {"ApplicationStop": "exit 1"})
    new = release(tmp_path / "d-NEW", "v2", dest, {"ValidateService": "echo fine"})
    result = await run.lifecycle(new, old, ignore_application_stop_failures=True).run()
    assert result.ok and (dest / "index.html").read_text() == "v2\n"


async def test_traffic_events_are_skipped(tmp_path: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    new = release(tmp_path / "d-NEW", "v1", tmp_path / "www", {"BeforeAllowTraffic": "exit 1"})
    with caplog.at_level("INFO", logger="s3deploy.lifecycle.pipeline"):
        result = await run.lifecycle(new, None).run()
    assert result.ok and run.lines == ["<install completed>"]
    assert "BeforeAllowTraffic: skipped, s3deploy does not manage load balancer traffic" in caplog.text


def link_the_script(bundle: Path) -> None:
    (bundle / "scripts" / "ApplicationStart.sh").symlink_to("/bin/true")


def link_its_folder(bundle: Path) -> None:
    (bundle / "scripts").rmdir()
    (bundle / "scripts").symlink_to(bundle.parent.parent)  # holds an ApplicationStart.sh of its own
    (bundle.parent.parent / "ApplicationStart.sh").write_text(hook_script("echo outside"))


@pytest.mark.parametrize("plant", [link_the_script, link_its_folder])
async def test_a_hook_location_that_leads_outside_the_bundle_fails_its_event(
    tmp_path: Path, run: Run, plant: Callable[[Path], object]
) -> None:
    new = release(tmp_path / "d-NEW", "v1", tmp_path / "www", {"ApplicationStart": "echo never"})
    (new.bundle_root / "scripts" / "ApplicationStart.sh").unlink()
    plant(new.bundle_root)
    result = await run.lifecycle(new, None).run()
    assert result.failed_event == "ApplicationStart" and result.error is not None
    assert "points outside the bundle" in result.error
    assert not any(line.startswith("ApplicationStart") for line in run.lines)


async def test_a_caller_that_times_the_run_out_knows_the_running_event(tmp_path: Path, run: Run) -> None:
    new = release(tmp_path / "d-NEW", "v1", tmp_path / "www", {"ApplicationStart": "echo $$; sleep 30"})
    started = asyncio.Event()
    pids: list[int] = []

    def on_line(event: str, line: str) -> None:
        pids.append(int(line))
        started.set()

    result = LifecycleResult()
    task = asyncio.create_task(run.lifecycle(new, None, on_line=on_line).run(result))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert result.current_event == "ApplicationStart" and result.install_completed
    assert not pid_alive(pids[0])  # cancellation killed the hook
