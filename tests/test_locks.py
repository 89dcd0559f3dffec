"""InstanceLock and SectionLocks against real processes holding real flocks."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import s3deploy
from s3deploy.errors import LockBusy
from s3deploy.state.locks import InstanceLock, SectionLocks, read_holder_pid
from tests.agent import appspec, cli, history, write_config, zip_bytes

SRC_DIR = Path(s3deploy.__file__).resolve().parents[1]

# Holds the instance lock or some section locks, says "held", releases them on a line from stdin, says
# "released" and then stays alive until stdin closes: a release is not confused with the process's exit.
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from s3deploy.state.locks import InstanceLock, SectionLocks
    state_dir, kind, *sections = sys.argv[1:]
    if kind == "instance":
        lock = InstanceLock(Path(state_dir))
        lock.acquire()
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
    elif kind == "destination":
        async def main():
            async with SectionLocks(Path(state_dir)).hold_destinations("Other", sections, wait=False):
                print("held", flush=True)
                sys.stdin.readline()
        asyncio.run(main())
    else:
        async def main():
            async with SectionLocks(Path(state_dir)).hold(sections, wait=False):
                print("held", flush=True)
                sys.stdin.readline()
        asyncio.run(main())
    print("released", flush=True)
    sys.stdin.readline()
    """
)

Holder = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    """Start a process holding locks in tmp_path; every process is killed at the end of the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(kind: str, *sections: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path), kind, *sections],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(SRC_DIR)),
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "held\n", proc.communicate(timeout=10)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate(timeout=10)


def release(proc: subprocess.Popen[str]) -> None:
    """Ask a holder to release its locks and wait until it has (it stays alive)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "released\n"
    assert proc.poll() is None


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def locked(state_dir: Path, section: str) -> bool:
    """True when some open file (another process, or a SectionLocks of this one) holds the section's
    flock: a shared, non-blocking probe on a file of our own, as another process would try."""
    path = SectionLocks(state_dir).lock_path(section)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ---- InstanceLock --------------------------------------------------------------------------------------


def test_second_daemon_in_another_process_is_busy(tmp_path: Path, holder: Holder) -> None:
    other = holder("instance")
    lock = InstanceLock(tmp_path)
    with pytest.raises(LockBusy, match=rf"pid {other.pid}\b.*{tmp_path}"):
        lock.acquire()
    release(other)
    lock.acquire()
    assert read_holder_pid(tmp_path / "daemon.lock") == os.getpid()
    with pytest.raises(LockBusy):
        InstanceLock(tmp_path).acquire()
    lock.release()


def test_instance_lock_dies_with_its_process(tmp_path: Path, holder: Holder) -> None:
    other = holder("instance")
    assert read_holder_pid(tmp_path / "daemon.lock") == other.pid
    kill(other)
    with InstanceLock(tmp_path):
        assert read_holder_pid(tmp_path / "daemon.lock") == os.getpid()


def test_instance_lock_in_this_process_context_manager_and_pid(tmp_path: Path) -> None:
    with InstanceLock(tmp_path / "new-state-dir") as lock:
        assert (tmp_path / "new-state-dir" / "daemon.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockBusy, match="another s3deploy daemon"):
            InstanceLock(tmp_path / "new-state-dir").acquire()  # a second open file conflicts too
        lock.acquire()  # already held by this object: no-op
    assert read_holder_pid(tmp_path / "new-state-dir" / "daemon.lock") is None
    with InstanceLock(tmp_path / "new-state-dir"):
        pass


def test_hook_processes_do_not_inherit_the_lock(tmp_path: Path) -> None:
    lock = InstanceLock(tmp_path)
    lock.acquire()
    # Even with close_fds=False a hook must not keep the agent's lock alive after the agent lets go.
    sleeper = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.release()
        with InstanceLock(tmp_path):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- SectionLocks: across processes ---------------------------------------------------------------------


async def test_busy_section_without_wait_names_section_and_pid(tmp_path: Path, holder: Holder) -> None:
    section = "Prod east/1 ü"
    other = holder("section", section)
    locks = SectionLocks(tmp_path)
    assert locked(tmp_path, section)
    with pytest.raises(LockBusy, match=rf"section \[{section}\].*pid {other.pid}\b"):
        async with locks.hold([section], wait=False):
            pytest.fail("the body must not run while another process holds the section")
    release(other)
    assert not locked(tmp_path, section)
    # The asyncio part was given back when LockBusy was raised, else this would hang.
    async with asyncio.timeout(5), locks.hold([section], wait=False):
        assert locked(tmp_path, section)


async def test_section_lock_dies_with_its_process(tmp_path: Path, holder: Holder) -> None:
    other = holder("section", "Production", "Staging")
    locks = SectionLocks(tmp_path)
    assert locked(tmp_path, "Production") and locked(tmp_path, "Staging")
    kill(other)
    assert not locked(tmp_path, "Production") and not locked(tmp_path, "Staging")
    async with asyncio.timeout(5), locks.hold(["Production", "Staging"], wait=False):
        pass


async def test_wait_acquires_after_the_other_process_releases(tmp_path: Path, holder: Holder) -> None:
    other = holder("section", "Production")
    locks = SectionLocks(tmp_path)
    acquired = asyncio.Event()

    async def deploy() -> None:
        async with locks.hold(["Production"], wait=True):
            acquired.set()

    task = asyncio.create_task(deploy())
    await asyncio.sleep(0.3)
    assert not acquired.is_set()
    await asyncio.to_thread(release, other)
    async with asyncio.timeout(5):
        await task
    assert acquired.is_set()


async def test_sorted_order_and_cancel_while_waiting_releases_all(tmp_path: Path, holder: Holder) -> None:
    holder("section", "alpha")
    locks = SectionLocks(tmp_path)
    task = asyncio.create_task(locks.hold(["zeta", "alpha"], wait=True).__aenter__())
    await asyncio.sleep(0.3)
    # "alpha" sorts first and is busy, so "zeta" must not have been taken while waiting for it.
    assert not task.done()
    assert not locked(tmp_path, "zeta")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5), locks.hold(["zeta"], wait=False):
        assert locked(tmp_path, "zeta")


async def test_waiting_on_second_section_holds_the_first(tmp_path: Path, holder: Holder) -> None:
    other = holder("section", "zeta")
    locks = SectionLocks(tmp_path)
    task = asyncio.create_task(locks.hold(["zeta", "alpha"], wait=True).__aenter__())
    await asyncio.sleep(0.3)
    assert locked(tmp_path, "alpha")  # taken first (sorted), kept while waiting for zeta
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not locked(tmp_path, "alpha")  # released on cancellation
    release(other)
    assert not locked(tmp_path, "zeta")


# ---- SectionLocks: inside one process --------------------------------------------------------------------


async def test_asyncio_lock_serializes_tasks(tmp_path: Path) -> None:
    locks = SectionLocks(tmp_path)
    events: list[str] = []

    async def deploy(name: str) -> None:
        async with locks.hold(["Production"], wait=False):  # in-process the asyncio lock always waits
            events.append(f"{name} in")
            await asyncio.sleep(0.05)
            events.append(f"{name} out")

    async with asyncio.timeout(5):
        await asyncio.gather(deploy("one"), deploy("two"))
    assert events == ["one in", "one out", "two in", "two out"]


async def test_opposite_orders_do_not_deadlock(tmp_path: Path) -> None:
    locks = SectionLocks(tmp_path)
    inside: list[str] = []

    async def deploy(order: list[str]) -> None:
        for _ in range(20):
            async with locks.hold(order, wait=True):
                assert not inside
                inside.append("x")
                await asyncio.sleep(0.001)
                inside.pop()
            await asyncio.sleep(0)

    async with asyncio.timeout(10):
        await asyncio.gather(deploy(["a", "b"]), deploy(["b", "a"]), deploy(["b", "a", "b"]))


async def test_exception_in_body_releases_everything(tmp_path: Path) -> None:
    locks = SectionLocks(tmp_path)
    with pytest.raises(RuntimeError, match="hook failed"):
        async with locks.hold(["a", "b"], wait=False):
            assert locked(tmp_path, "a") and locked(tmp_path, "b")
            raise RuntimeError("hook failed")
    assert not locked(tmp_path, "a") and not locked(tmp_path, "b")
    async with asyncio.timeout(5), locks.hold("a", wait=False):  # a bare string is one section
        assert locked(tmp_path, "a")


def test_lock_file_names_are_safe(tmp_path: Path) -> None:
    locks = SectionLocks(tmp_path)
    names = ["../../etc/passwd", "a/b", " ", ".", "..", "Prod:east*?", "x" * 300, "é" * 300]
    paths = [locks.lock_path(name) for name in names]
    assert all(p.parent == tmp_path / "locks" for p in paths)
    assert all(len(p.name.encode()) < 255 for p in paths)
    assert len(set(paths)) == len(names)
    assert locks.lock_path("x" * 300) != locks.lock_path("x" * 301)
    assert not locked(tmp_path, "never locked")


# ---- SectionLocks: destination folders ---------------------------------------------------------------------


async def test_nested_destinations_exclude_each_other_disjoint_ones_do_not(tmp_path: Path) -> None:
    """What keeps a section deploying into srv/www and one into srv/www/static apart (the folders need not
    exist: a first deployment locks them before its Install creates them)."""
    locks, srv = SectionLocks(tmp_path / "state"), tmp_path / "srv"
    async with asyncio.timeout(5), locks.hold_destinations("Site", [srv / "www"], wait=False):
        # Site holds srv/www exclusively (its pid is in the lock file) and srv shared (no pid: many may).
        for name, inside_or_around, holder_pid in [
            ("Static", srv / "www" / "static", f"pid {os.getpid()}"),
            ("Again", srv / "www", f"pid {os.getpid()}"),
            ("Root", srv, "held by deployments into folders inside it"),
        ]:
            with pytest.raises(LockBusy, match=rf"\[{name}\] destination .*\({holder_pid};"):
                async with locks.hold_destinations(name, [inside_or_around], wait=False):
                    pytest.fail(f"{name} must not deploy while Site holds {srv / 'www'}")
        # Disjoint folders only share ancestors (shared locks): they deploy at once.
        async with locks.hold_destinations("Apart", [srv / "api"], wait=False):
            pass
        async with locks.hold_destinations("Sibling", [srv / "www-old"], wait=False):
            pass
    async with asyncio.timeout(5), locks.hold_destinations("Static", [srv / "www" / "static"], wait=False):
        # Released on exit, pid and all: Static holds srv/www shared now, and Site's pid is not named.
        with pytest.raises(LockBusy, match=r"\(held by deployments into folders inside it;"):
            async with locks.hold_destinations("Site", [srv / "www"], wait=False):
                pytest.fail("Static deploys inside srv/www")


async def test_a_symlinked_destination_overlaps_the_folder_it_points_into(tmp_path: Path) -> None:
    locks = SectionLocks(tmp_path / "state")
    (tmp_path / "data" / "www").mkdir(parents=True)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "www").symlink_to(tmp_path / "data" / "www")
    async with asyncio.timeout(5), locks.hold_destinations("Site", [tmp_path / "srv" / "www"], wait=False):
        with pytest.raises(LockBusy):
            async with locks.hold_destinations("Data", [tmp_path / "data"], wait=False):
                pytest.fail("/data holds what srv/www points to")


async def test_overlapping_destination_sets_never_deadlock_and_never_run_at_once(tmp_path: Path) -> None:
    """Destination sets are only known after download, so sections meet them in any order: each set is
    taken in one global (sorted) order, and every pair here overlaps in two places, in opposite nesting."""
    locks = SectionLocks(tmp_path / "state")
    a, b = tmp_path / "a", tmp_path / "b"
    sets = {"one": [b / "x", a], "two": [a / "y", b], "three": [b / "x", a / "y"]}
    inside: list[str] = []
    rounds: dict[str, int] = dict.fromkeys(sets, 0)

    async def deploy(name: str) -> None:
        for _ in range(8):
            async with locks.hold_destinations(name, sets[name], wait=True):
                assert not inside, f"{name} entered while {inside} deployed"
                inside.append(name)
                await asyncio.sleep(0.005)
                inside.pop()
            rounds[name] += 1
            await asyncio.sleep(0)

    async with asyncio.timeout(20):
        await asyncio.gather(*(deploy(name) for name in sets))
    assert rounds == dict.fromkeys(sets, 8)


# ---- waits: bounded and reported -------------------------------------------------------------------------


async def test_a_destination_wait_gives_up_after_its_timeout_naming_the_holder(
    tmp_path: Path, holder: Holder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    www = tmp_path / "www"
    other = holder("destination", str(www))
    locks = SectionLocks(tmp_path)
    monkeypatch.setattr("s3deploy.state.locks.REPORT_EVERY_S", 0.2)
    with caplog.at_level(logging.INFO, logger="s3deploy.state.locks"):
        with pytest.raises(
            LockBusy, match=rf"\[Web\] destination {www}: gave up after waiting .*pid {other.pid};"
        ):
            async with asyncio.timeout(10), locks.hold_destinations("Web", [www], wait=True, timeout_s=1.0):
                pytest.fail("the body must not run while another process holds the destination")
    said = [r.getMessage() for r in caplog.records]
    assert any(f"waiting for another deployment (pid {other.pid}; lock file" in m for m in said), said
    assert any("still waiting after" in m for m in said), said
    release(other)
    async with asyncio.timeout(5), locks.hold_destinations("Web", [www], wait=True, timeout_s=1.0):
        pass


def test_a_deployment_fails_naming_the_holder_of_its_destination_within_deployment_timeout(
    tmp_path: Path, holder: Holder, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """Before, a deployment waited for its destination locks outside deployment_timeout: as long as the
    holder liked, its row `running` and its section lock held."""
    bucket, www = make_bucket(), tmp_path / "www"
    body = zip_bytes({"appspec.yml": appspec(www, {}), "app/x": "x"})
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=body)
    config = write_config(tmp_path / "config.ini", {"Web": {
        "s3_bucket": bucket, "target_file_key": "app.zip", "endpoint_url": seaweed.endpoint_url,
        "deployment_timeout": 2,
    }})  # fmt: skip
    other = holder("destination", str(www))
    proc = cli("deploy", "Web", "-c", str(config), "--state-dir", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    [dep] = history(config, tmp_path, "Web")
    assert (dep["status"], dep["failed_event"]) == ("failed", "BeforeInstall")
    assert f"destination {www}: gave up after waiting" in dep["error"] and f"pid {other.pid}" in dep["error"]
    assert not www.exists()
    release(other)
    assert cli("deploy", "Web", "--force", "-c", str(config), "--state-dir", str(tmp_path)).returncode == 0
    assert (www / "x").read_text() == "x"
