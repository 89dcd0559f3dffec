"""StateStore: the SQLite state shared by the daemon and one-shot commands."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import s3deploy
from s3deploy.errors import S3DeployError
from s3deploy.lifecycle.deploylog import OutputSink
from s3deploy.state.layout import StateLayout
from s3deploy.state.locks import InstanceLock, SectionLocks
from s3deploy.state.model import INTERRUPTED_ERROR, OUTPUT_TAIL_MAX_BYTES
from s3deploy.state.schema import SCHEMA_VERSION
from s3deploy.state.store import POLL_TOUCH_INTERVAL_S, Deployment, StateStore
from tests.agent import zip_bytes
from tests.users import User, reachable_folder, temporary_user

SRC_DIR = Path(s3deploy.__file__).resolve().parents[1]
SPEC_KEYS = ["id", "etag", "version_id", "status", "started_at", "finished_at", "failed_event", "error",
             "rollback_of", "restores", "signed_by"]  # fmt: skip


class Clock:
    """A settable clock so time-dependent behaviour is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 6, 40, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state" / "state.db", clock=clock) as s:
        yield s


def start(store: StateStore, section: str = "Production", identity: str = "v1", **kw: Any) -> Deployment:
    values: dict[str, Any] = dict(
        section=section, bucket="bucket", key="app.zip", etag=f'"etag-{identity}"', version_id=None,
        identity=identity, release_dir=None, log_path=None,
    )  # fmt: skip
    values.update(kw)
    return store.start(**values)


def deploy(store: StateStore, status: str, section: str = "Production", identity: str = "v1",
           **kw: Any) -> Deployment:  # fmt: skip
    return store.finish(start(store, section, identity, **kw).id, status)


def child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# ---- schema ------------------------------------------------------------------------------------------


def test_schema_created_on_empty_file_and_reopened(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch()  # an empty file is an empty SQLite database
    with StateStore(db) as s:
        dep = deploy(s, "succeeded")
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    with StateStore(db) as again:
        assert again.get(dep.id) == dep
        assert again.section_state("Production") == "idle"


def test_parent_directory_is_created(tmp_path: Path) -> None:
    with StateStore(tmp_path / "a" / "b" / "state.db") as s:
        assert s.history("x") == []
    assert (tmp_path / "a" / "b" / "state.db").is_file()


def test_not_a_database_names_the_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not sqlite at all, definitely not" * 100)
    with pytest.raises(S3DeployError, match=re.escape(str(db))):
        StateStore(db)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(S3DeployError, match="newer than this s3deploy"):
        StateStore(db)


# ---- deployments ----------------------------------------------------------------------------------------


def test_start_and_finish_round_trip(store: StateStore, clock: Clock, tmp_path: Path) -> None:
    dep = start(store, identity="v7", version_id="ver-7", release_dir=tmp_path / "rel", log_path="x.log",
                forced=True)  # fmt: skip
    assert re.fullmatch(r"d-[A-Z0-9]{9}", dep.id)
    assert dep.status == "running" and dep.finished_at is None and dep.forced
    assert dep.started_at == clock.now and dep.started_at.tzinfo is not None
    assert dep.release_dir == str(tmp_path / "rel")
    clock.now += timedelta(seconds=12.5)
    done = store.finish(dep.id, "failed", failed_event="AfterInstall", error="exit 1", output_tail="boom\n")
    assert (done.status, done.failed_event, done.error, done.output_tail) == (
        "failed",
        "AfterInstall",
        "exit 1",
        "boom\n",
    )
    assert done.finished_at == clock.now
    assert store.get(dep.id) == done
    assert store.get("d-NOPE00000") is None


def test_to_json_has_exactly_the_spec_keys_first(store: StateStore) -> None:
    good = deploy(store, "succeeded", identity="v1")
    rb = store.finish(start(store, identity="v1", rollback_of=good.id, restores=good.id).id, "succeeded")
    data = rb.to_json()
    assert list(data)[: len(SPEC_KEYS)] == SPEC_KEYS
    assert set(data) - set(SPEC_KEYS) <= {"section", "identity", "release_dir", "log_path"}
    assert data["started_at"] == "2026-11-27T06:40:00.000+00:00"
    assert datetime.fromisoformat(data["finished_at"]).utcoffset() == timedelta(0)
    assert (data["rollback_of"], data["restores"], data["status"]) == (good.id, good.id, "succeeded")
    assert start(store).to_json()["finished_at"] is None


def test_deployment_ids_are_unique_and_given_ids_are_used(store: StateStore) -> None:
    ids = {store.new_deployment_id() for _ in range(200)}
    assert len(ids) == 200 and all(re.fullmatch(r"d-[A-Z0-9]{9}", i) for i in ids)
    dep = start(store, deployment_id="d-ABCDEFGH1")
    assert dep.id == "d-ABCDEFGH1"
    with pytest.raises(S3DeployError, match="d-ABCDEFGH1 is already used"):
        start(store, deployment_id="d-ABCDEFGH1")


def test_finish_rejects_bad_status_unknown_and_finished(store: StateStore) -> None:
    dep = start(store)
    with pytest.raises(ValueError, match="running"):
        store.finish(dep.id, "running")
    with pytest.raises(S3DeployError, match="d-UNKNOWN00 is not in the state database"):
        store.finish("d-UNKNOWN00", "failed")
    store.finish(dep.id, "succeeded")
    with pytest.raises(S3DeployError, match="already finished as succeeded"):
        store.finish(dep.id, "failed")
    assert store.get(dep.id) is not None and store.get(dep.id).status == "succeeded"  # type: ignore[union-attr]


def test_rollback_must_reference_a_known_deployment(store: StateStore) -> None:
    with pytest.raises(S3DeployError, match="rollback_of d-GHOST0000 is not a deployment"):
        start(store, rollback_of="d-GHOST0000")
    assert store.history("Production") == []


def test_output_tail_keeps_only_the_last_bytes(store: StateStore) -> None:
    text = "".join(f"line {i} é\n" for i in range(5000))
    tail = store.finish(start(store).id, "failed", output_tail=text).output_tail
    assert len(tail.encode()) <= OUTPUT_TAIL_MAX_BYTES
    assert len(tail.encode()) > OUTPUT_TAIL_MAX_BYTES - 4
    assert text.endswith(tail) and tail.endswith("line 4999 é\n")


def test_history_newest_first_with_limit_and_per_section(store: StateStore) -> None:
    made = [deploy(store, "succeeded", identity=f"v{i}") for i in range(5)]
    deploy(store, "failed", section="Staging")
    history = store.history("Production")
    assert [d.id for d in history] == [d.id for d in reversed(made)]
    assert [d.id for d in store.history("Production", limit=2)] == [made[4].id, made[3].id]
    assert store.history("Production", limit=0) == []
    assert [d.section for d in store.history("Staging")] == ["Staging"]
    assert store.history("Nope") == []


def test_current_last_attempt_and_last_revision_attempt(store: StateStore) -> None:
    assert store.current("Production") is None and store.last_attempt("Production") is None
    good = deploy(store, "succeeded", identity="v1")
    bad = deploy(store, "failed", identity="v2")
    rb = store.finish(start(store, identity="v1", rollback_of=bad.id, restores=good.id).id, "succeeded")
    assert store.current("Production") == rb  # the rollback's files are installed
    assert store.last_attempt("Production") == rb
    assert store.last_revision_attempt("Production") == bad  # the daemon compares S3 with v2, not v1


# ---- section state ----------------------------------------------------------------------------------


def test_section_state_for_every_case(store: StateStore) -> None:
    assert store.section_state("P") == "never"
    running = start(store, "P", "v1")
    assert store.section_state("P") == "deploying"
    store.finish(running.id, "succeeded")
    assert store.section_state("P") == "idle"
    bad = deploy(store, "failed", "P", "v2")
    assert store.section_state("P") == "failed"
    # A rollback restores the old release, but the newest revision seen in S3 still failed.
    rb = start(store, "P", "v1", rollback_of=bad.id, restores=running.id)
    assert store.section_state("P") == "deploying"
    store.finish(rb.id, "succeeded")
    assert store.section_state("P") == "failed"
    deploy(store, "succeeded", "P", "v3")
    assert store.section_state("P") == "idle"
    # A manual rollback that fails leaves the host broken: failed too.
    deploy(store, "failed", "P", "v3", rollback_of=running.id, restores=running.id)
    assert store.section_state("P") == "failed"
    # Interrupted: it will be deployed again, nothing is wrong with the revision.
    interrupted = start(store, "Q", "v1")
    store.recover_interrupted(["Q"])
    assert store.get(interrupted.id).status == "interrupted"  # type: ignore[union-attr]
    assert store.section_state("Q") == "idle"


def test_recover_interrupted_only_touches_running_of_given_sections(store: StateStore, clock: Clock) -> None:
    done = deploy(store, "succeeded", "A")
    a_running = start(store, "A", "v2")
    b_running = start(store, "B")
    c_running = start(store, "C")
    clock.now += timedelta(minutes=3)
    assert store.recover_interrupted([]) == []
    recovered = store.recover_interrupted(["A", "B", "Z"])
    assert sorted(d.id for d in recovered) == sorted([a_running.id, b_running.id])
    for d in recovered:
        assert (d.status, d.error, d.finished_at) == ("interrupted", INTERRUPTED_ERROR, clock.now)
    assert store.get(done.id) == done
    assert store.get(c_running.id).status == "running"  # type: ignore[union-attr]
    assert [d.id for d in store.recover_interrupted()] == [c_running.id]
    assert store.recover_interrupted() == []


# ---- sections ------------------------------------------------------------------------------------------


def test_baseline_and_suspend(store: StateStore, clock: Clock) -> None:
    fresh = store.get_section("Settings")
    assert (fresh.name, fresh.suspended, fresh.baseline_identity, fresh.last_poll_at) == (
        "Settings",
        False,
        None,
        None,
    )
    store.set_baseline("Settings", "etag-1@2023")
    store.set_suspended("Settings", True)
    record = store.get_section("Settings")
    assert (record.baseline_identity, record.baseline_at, record.suspended) == (
        "etag-1@2023",
        clock.now,
        True,
    )
    store.set_suspended("Settings", False)
    assert store.get_section("Settings").suspended is False
    assert store.get_section("Settings").baseline_identity == "etag-1@2023"  # upsert kept the other column
    assert store.get_section("Other").suspended is False


def test_record_poll_writes_only_when_something_changed(store: StateStore, clock: Clock) -> None:
    assert store.record_poll("S", identity="v1", error=None) is True
    assert store.record_poll("S", identity="v1", error=None) is False
    clock.now += timedelta(seconds=10)
    assert store.record_poll("S", identity="v1", error=None) is False
    assert store.get_section("S").last_poll_at == clock.now - timedelta(seconds=10)
    assert store.record_poll("S", identity=None, error="AccessDenied") is True
    record = store.get_section("S")
    assert (record.last_seen_identity, record.last_error, record.last_poll_at) == (
        "v1",
        "AccessDenied",
        clock.now,
    )
    assert store.record_poll("S", identity=None, error="AccessDenied") is False
    assert store.record_poll("S", identity="v2", error=None) is True
    assert store.get_section("S").last_seen_identity == "v2" and store.get_section("S").last_error is None
    clock.now += timedelta(seconds=POLL_TOUCH_INTERVAL_S + 1)
    assert store.record_poll("S", identity="v2", error=None) is True  # refreshes a stale last_poll_at
    assert store.get_section("S").last_poll_at == clock.now


# ---- releases ------------------------------------------------------------------------------------------


def _release(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "releases" / name
    path.mkdir(parents=True)
    return path


def test_prune_keeps_newest_and_always_current(store: StateStore, tmp_path: Path) -> None:
    old = deploy(store, "succeeded", identity="v0", release_dir=_release(tmp_path, "0"))
    good = deploy(store, "succeeded", identity="v1", release_dir=_release(tmp_path, "1"))
    failed = [deploy(store, "failed", identity=f"v{i}", release_dir=_release(tmp_path, str(i)))
              for i in range(2, 5)]  # fmt: skip
    doomed = store.releases_to_prune("Production", keep=2)
    # current (v1) is kept although three newer failures exist; then the newest failure fills keep=2.
    assert [d.id for d in doomed] == [failed[1].id, failed[0].id, old.id]
    assert good.id not in {d.id for d in doomed} and failed[2].id not in {d.id for d in doomed}
    assert [d.id for d in store.releases_to_prune("Production", keep=1)][-1] == old.id
    assert good.id not in {d.id for d in store.releases_to_prune("Production", keep=1)}
    assert store.releases_to_prune("Production", keep=10) == []


def test_prune_keeps_running_and_restored_and_skips_missing(store: StateStore, tmp_path: Path) -> None:
    base = deploy(store, "succeeded", identity="v1", release_dir=_release(tmp_path, "1"))
    gone = deploy(store, "failed", identity="v2", release_dir=tmp_path / "releases" / "never-made")
    bad = deploy(store, "failed", identity="v3", release_dir=_release(tmp_path, "3"))
    # A running rollback reinstalls base's folder: both must stay, and so must the running deployment's.
    rb = start(
        store, identity="v1", rollback_of=bad.id, restores=base.id, release_dir=_release(tmp_path, "rb")
    )
    newer = deploy(
        store, "succeeded", section="Production", identity="v4", release_dir=_release(tmp_path, "4")
    )
    doomed = {d.id for d in store.releases_to_prune("Production", keep=1)}
    assert doomed == {gone.id, bad.id}
    assert {newer.id, rb.id, base.id}.isdisjoint(doomed)
    store.clear_release_dir(gone.id)
    assert store.get(gone.id).release_dir is None  # type: ignore[union-attr]
    assert gone.id not in {d.id for d in store.releases_to_prune("Production", keep=1)}
    with pytest.raises(S3DeployError, match="d-NOPE00000"):
        store.clear_release_dir("d-NOPE00000")


def test_prune_treats_a_shared_folder_as_one_release(store: StateStore, tmp_path: Path) -> None:
    shared = _release(tmp_path, "shared")
    first = deploy(store, "succeeded", identity="v1", release_dir=shared)
    deploy(store, "failed", identity="v2", release_dir=_release(tmp_path, "2"))
    again = deploy(store, "succeeded", identity="v1", restores=first.id, release_dir=shared)
    doomed = store.releases_to_prune("Production", keep=1)
    assert [d.release_dir for d in doomed] == [str(tmp_path / "releases" / "2")]
    assert again.release_dir == first.release_dir


def test_trim_history_keeps_the_newest_and_everything_detection_and_references_need(
    store: StateStore, tmp_path: Path
) -> None:
    other = deploy(store, "succeeded", section="Staging", identity="s1")
    good = deploy(store, "succeeded", identity="v1", log_path="v1.log")  # current: nothing newer succeeds
    olds = [deploy(store, "failed", identity=f"old{i}", log_path=f"old{i}.log") for i in range(3)]
    failed = deploy(store, "failed", identity="v2", release_dir=_release(tmp_path, "2"))
    # The newest attempt of a revision from S3 is failed v3; a rollback (of v3, restoring v1) and a manual
    # rollback come after it. Detection compares S3 with v3: it must survive keep=1.
    attempt = deploy(store, "failed", identity="v3")
    rb = deploy(store, "succeeded", identity="v1", rollback_of=attempt.id, restores=good.id)
    manual = deploy(store, "failed", identity="v1", restores=rb.id)
    running = start(store, identity="v1", restores=good.id)
    # keep=2 (the running one and the manual rollback), plus current (rb), the newest attempt (v3), the
    # release on disk (v2), and what kept ones reference (good via restores).
    trimmed = store.trim_history("Production", keep=2)
    assert trimmed == [(d.id, d.log_path) for d in reversed(olds)]
    left = [d.id for d in store.history("Production")]
    assert left == [running.id, manual.id, rb.id, attempt.id, failed.id, good.id]
    assert store.last_revision_attempt("Production").id == attempt.id  # type: ignore[union-attr]
    assert store.current("Production").id == rb.id  # type: ignore[union-attr]
    assert [d.id for d in store.history("Staging")] == [other.id]  # other sections untouched
    assert store.trim_history("Production", keep=2) == []  # nothing more to trim
    assert store.trim_history("Production", keep=10) == []
    # Once its release folder is gone, v2 is just an old record.
    store.clear_release_dir(failed.id)
    assert [d for d, _ in store.trim_history("Production", keep=2)] == [failed.id]


# ---- concurrency ---------------------------------------------------------------------------------------


def test_another_process_writes_while_this_one_reads_and_writes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = StateStore(db)
    stop = tmp_path / "stop"
    code = """
        import sys, time
        from pathlib import Path
        from s3deploy.state.store import StateStore
        s = StateStore(Path(sys.argv[1]))
        d = s.start(section="Other", bucket="b", key="k", etag=None, version_id=None,
                    identity="v0", release_dir=None, log_path=None)
        s.finish(d.id, "succeeded")
        print("ready", flush=True)
        i = 1
        while not Path(sys.argv[2]).exists() and i < 3000:  # until the reader has done its part
            d = s.start(section="Other", bucket="b", key="k", etag=None, version_id=None,
                        identity=f"v{i}", release_dir=None, log_path=None)
            s.finish(d.id, "succeeded", output_tail="x" * 1000)
            i += 1
            time.sleep(0.001)  # a real writer pauses between deployments; a hot loop starves the reader
        print(i, flush=True)
        s.close()
    """
    with store, child(code, str(db), str(stop)) as writer:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        seen = mine = 0
        while seen < 50 or mine < 50:  # both sides really interleave
            history = store.history("Other")  # one snapshot: only the newest may still be running
            assert all(d.status == "succeeded" for d in history[1:])
            assert [d.identity for d in history] == [f"v{i}" for i in reversed(range(len(history)))]
            assert len(history) >= seen
            seen = len(history)
            deploy(store, "succeeded", section="Mine", identity=f"m{mine}")
            mine += 1
            assert writer.poll() is None, writer.communicate()
        stop.touch()
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
        written = int(out)
        assert written > 1
        assert len(store.history("Other")) == written
        assert len(store.history("Mine")) == mine
        assert store.last_attempt("Other").identity == f"v{written - 1}"  # type: ignore[union-attr]


def test_threads_share_one_store(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                deploy(store, "succeeded", section=f"T{n}", identity=f"v{i}")
                store.section_state(f"T{n}")
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [len(store.history(f"T{n}")) for n in range(4)] == [25] * 4


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path: Path) -> None:
    """The daemon starting while `status` polls: both create the schema and switch to WAL at the same
    moment. SQLite answers the loser of the WAL switch "database is locked" at once, busy_timeout or not."""
    for attempt in range(3):  # three fresh databases, eight processes each, released together
        db, go = tmp_path / f"fresh{attempt}" / "state.db", tmp_path / f"go{attempt}"
        code = """
            import os, sys, time
            from pathlib import Path
            from s3deploy.state.store import StateStore
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.001)
            with StateStore(Path(sys.argv[1])) as s:
                s.history("Web")
            print("ok")
        """
        procs = [child(code, str(db), str(go)) for _ in range(8)]
        time.sleep(0.5)  # every child is importing or waiting by now
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
        assert [out for out, _ in results] == ["ok\n"] * 8, [err for _, err in results if err]


# ---- the state directory model (layout.py) -------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_a_new_state_directory_gets_the_model_modes_whatever_the_umask(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "state"
    old_umask = os.umask(0o077)  # a strict umask must not make the state directory unreachable for runas
    try:
        with StateStore.open(state_dir) as s:
            deploy(s, "succeeded")
        with InstanceLock(state_dir):
            pass
        release = StateLayout(state_dir).create_release_dir("Web site", "d-ABCDEFGH1")
    finally:
        os.umask(old_umask)
    expected = {
        "": 0o711, "releases": 0o711, "locks": 0o700, "locks/paths": 0o700, "logs": 0o700,
        "installed": 0o700, "state.db": 0o600, "daemon.lock": 0o600,
        "releases/Web%20site": 0o711, "releases/Web%20site/d-ABCDEFGH1": 0o711,
    }  # fmt: skip
    assert {name: _mode(state_dir / name) for name in expected} == expected
    assert release == state_dir / "releases" / "Web%20site" / "d-ABCDEFGH1"
    for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode
        if (state_dir / f"state.db{suffix}").exists():
            assert _mode(state_dir / f"state.db{suffix}") == 0o600


async def test_lock_files_are_0600_in_0700_folders(tmp_path: Path) -> None:
    locks, lock_dir = SectionLocks(tmp_path / "state"), tmp_path / "state" / "locks"
    async with locks.hold(["Web"], wait=False):
        async with locks.hold_destinations("Web", [tmp_path / "www"], wait=False):
            files = list(lock_dir.rglob("*.lock"))
    assert len(files) > 2 and {_mode(f) for f in files} == {0o600}
    assert {_mode(lock_dir), _mode(lock_dir / "paths")} == {0o700}


def _older_state_dir(state_dir: Path, outside: Path) -> dict[str, int]:
    """A state directory as s3deploy before the model made it (0755 folders, 0644 files), plus a
    world-writable release tree and links that must not be followed. Returns path -> expected mode."""
    with StateStore(state_dir / "state.db") as s:
        deploy(s, "succeeded")
    bundle = state_dir / "releases" / "Web" / "d-OLD000001" / "bundle"
    (bundle / "scripts").mkdir(parents=True)
    (bundle / "scripts" / "stop.sh").write_text("#!/bin/sh\n")
    for folder in ["locks/paths", "logs/Web", "installed"]:
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    for name in ["daemon.lock", "locks/Web.lock", "locks/paths/0123.lock", "logs/Web/d-OLD000001.log",
                 "installed/Web.list"]:  # fmt: skip
        (state_dir / name).write_text("x")
    outside.write_text("not the agent's")
    (bundle / "link-out").symlink_to(outside)
    (state_dir / "logs" / "Web" / "link-out.log").symlink_to(outside)
    modes = {"": 0o755, "state.db": 0o644, "releases/Web/d-OLD000001/bundle/scripts": 0o777,
             "releases/Web/d-OLD000001/bundle/scripts/stop.sh": 0o777}  # fmt: skip
    for path in [state_dir, *state_dir.rglob("*")]:
        if not path.is_symlink():
            rel = str(path.relative_to(state_dir)) if path != state_dir else ""
            os.chmod(path, modes.get(rel, 0o755 if path.is_dir() else 0o644))
    os.chmod(outside, 0o666)
    return {
        "": 0o711, "state.db": 0o600, "daemon.lock": 0o600, "locks": 0o700, "locks/Web.lock": 0o600,
        "locks/paths": 0o700, "locks/paths/0123.lock": 0o600, "logs": 0o700, "logs/Web": 0o700,
        "logs/Web/d-OLD000001.log": 0o600, "installed": 0o700, "installed/Web.list": 0o600,
        "releases": 0o711, "releases/Web": 0o711, "releases/Web/d-OLD000001": 0o711,
        "releases/Web/d-OLD000001/bundle": 0o755, "releases/Web/d-OLD000001/bundle/scripts": 0o755,
        "releases/Web/d-OLD000001/bundle/scripts/stop.sh": 0o755,
    }  # fmt: skip


def test_an_older_state_directory_is_tightened_and_the_changes_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir, outside = tmp_path / "state", tmp_path / "outside.txt"
    expected = _older_state_dir(state_dir, outside)
    with caplog.at_level(logging.INFO, logger="s3deploy.state"), StateStore.open(state_dir) as s:
        assert len(s.history("Production")) == 1  # the data is kept
    assert {name: _mode(state_dir / name) for name in expected} == expected
    assert _mode(outside) == 0o666  # links inside the state directory are not followed
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"tightened 3 entries under {state_dir}/logs (made by an older" in logged
    assert "stop.sh 0777 -> 0755" in logged
    assert f"{state_dir.resolve()} was mode 0755, now 0711" in logged
    # Done once: the next open finds nothing to change and says nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="s3deploy.state"):
        StateStore.open(state_dir).close()
    assert [r.getMessage() for r in caplog.records if "mode" in r.getMessage()] == []


@pytest.mark.parametrize("opener", ["store", "instance lock", "section lock", "cli"])
def test_a_state_directory_that_is_a_file_is_reported_as_such(tmp_path: Path, opener: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("oops")
    expected = rf"{re.escape(str(state_dir))} exists and is not a folder"
    if opener == "cli":
        config = tmp_path / "config.ini"
        config.write_text("[Web]\ns3_bucket = b\ntarget_file_key = k\n")
        proc = subprocess.run(
            [sys.executable, "-m", "s3deploy", "status", "-c", str(config), "--state-dir", str(state_dir)],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(SRC_DIR)),
        )  # fmt: skip
        assert proc.returncode == 1 and re.search(expected, proc.stderr), proc.stderr
        assert "File exists" not in proc.stderr and "Traceback" not in proc.stderr
        return
    with pytest.raises(S3DeployError, match=expected):
        if opener == "store":
            StateStore.open(state_dir)
        elif opener == "instance lock":
            InstanceLock(state_dir).acquire()
        else:

            async def hold() -> None:
                async with SectionLocks(state_dir).hold(["Web"], wait=False):
                    pass

            asyncio.run(hold())


# ---- the state directory model, tried by another local user ---------------------------------------------


@pytest.fixture
def other_user() -> Iterator[tuple[str, int, int]]:
    """A fresh unprivileged local user (name, uid, gid), deleted afterwards. Needs root."""
    with temporary_user("s3dt", shell="/usr/sbin/nologin") as user:
        yield user.name, user.uid, user.gid


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A folder every local user can traverse (pytest's tmp_path is under a root-only 0700 folder)."""
    with reachable_folder("s3deploy-test-") as path:
        yield path


def probe_as(user: tuple[str, int, int], state_dir: Path, release_file: Path, *locks: Path) -> dict[str, str]:
    """What the other user can do to ``state_dir``, a file of a release and the ``locks``."""
    name, uid, gid = user
    attempts = {
        "list state dir": ("list", str(state_dir)),
        "list releases": ("list", str(state_dir / "releases")),
        "read state.db": ("read", str(state_dir / "state.db")),
        "read logs": ("list", str(state_dir / "logs")),
        "read release file": ("read", str(release_file)),
        "write release file": ("write", str(release_file)),
        "plant in release": ("write", str(release_file.parent / "planted")),
    }
    for path in [state_dir / "daemon.lock", *locks]:
        attempts[f"flock {path.relative_to(state_dir)}"] = ("flock", str(path))
    return User(name, uid, gid).probe(attempts)


DENIED = "EACCES"


async def test_another_local_user_reaches_a_release_by_path_and_nothing_else(
    other_user: tuple[str, int, int], reachable_dir: Path
) -> None:
    state_dir = reachable_dir / "state"
    layout = StateLayout(state_dir)
    with StateStore.open(state_dir) as s:
        dep = deploy(s, "succeeded", section="Web")
    release = layout.create_release_dir("Web", dep.id) / "bundle" / "scripts"
    release.mkdir(parents=True)
    (release / "stop.sh").write_text("#!/bin/sh\n")
    sink = OutputSink(logging.getLogger("test"), layout.log_file("Web", dep.id))
    sink.open()  # as a deployment writes its hook output
    sink.line("AfterInstall", "secret=hunter2")
    sink.close()
    log_file = layout.log_file("Web", dep.id)
    assert (_mode(log_file.parent), _mode(log_file)) == (0o700, 0o600)  # private even inside logs/
    locks = SectionLocks(state_dir)
    with InstanceLock(state_dir):
        async with locks.hold(["Web"], wait=False), locks.hold_destinations("Web", ["/srv/x"], wait=False):
            lock_files = sorted(layout.lock_dir.rglob("*.lock"))
            seen = await asyncio.to_thread(probe_as, other_user, state_dir, release / "stop.sh", *lock_files)
    assert len(lock_files) == 4  # Web, /srv/x, /srv and /
    assert seen.pop("read release file") == "ok"  # what a runas hook needs
    assert seen == dict.fromkeys(seen, DENIED)
    assert "flock daemon.lock" in seen and "flock locks/Web.lock" in seen


def test_an_older_state_directory_is_closed_to_other_users_once_opened(
    other_user: tuple[str, int, int], reachable_dir: Path
) -> None:
    state_dir = reachable_dir / "state"
    _older_state_dir(state_dir, reachable_dir / "outside.txt")
    release_file = state_dir / "releases/Web/d-OLD000001/bundle/scripts/stop.sh"
    lock = state_dir / "locks" / "Web.lock"
    before = probe_as(other_user, state_dir, release_file, lock)
    # What an older s3deploy left open: a local user could stall it (flock), read the state, and plant
    # a script that the next deployment runs as root (ApplicationStop of the previous release).
    assert [before[k] for k in ("flock daemon.lock", "flock locks/Web.lock", "read state.db")] == ["ok"] * 3
    assert before["write release file"] == "ok"
    StateStore.open(state_dir).close()
    after = probe_as(other_user, state_dir, release_file, lock)
    assert after.pop("read release file") == "ok"
    assert after == dict.fromkeys(after, DENIED)


def test_a_state_directory_of_another_user_is_refused(
    other_user: tuple[str, int, int], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chown(state_dir, other_user[1], other_user[2])
    with pytest.raises(S3DeployError, match=rf"{re.escape(str(state_dir))} belongs to uid {other_user[1]}"):
        StateStore.open(state_dir)
    assert list(state_dir.iterdir()) == []


def test_a_runas_hook_runs_from_its_release_and_cannot_see_the_rest(
    other_user: tuple[str, int, int], reachable_dir: Path, seaweed: Any, make_bucket: Any, s3_client: Any
) -> None:
    """The shipped unit's StateDirectoryMode=0750 once locked every runas hook out of its release."""
    name, uid, _ = other_user
    state_dir, out = reachable_dir / "state", reachable_dir / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    hook = f"""#!/bin/sh
id -u > {out}/uid
cat app/x > {out}/read
ls {state_dir} > /dev/null 2>&1 && echo "listed the state directory" >> {out}/leaks
cat {state_dir}/state.db > /dev/null 2>&1 && echo "read state.db" >> {out}/leaks
ls {state_dir}/logs > /dev/null 2>&1 && echo "listed the logs" >> {out}/leaks
touch "$S3DEPLOY_BUNDLE_DIR/planted" 2> /dev/null && echo "wrote into the release" >> {out}/leaks
exit 0
"""
    spec = f"version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: hook.sh\n      runas: {name}\n"
    bucket = make_bucket()
    body = zip_bytes({"appspec.yml": spec, "hook.sh": hook, "app/x": "bundle content"})
    s3_client.put_object(Bucket=bucket, Key="app.zip", Body=body)
    config = reachable_dir / "config.ini"
    config.write_text(
        f"[Web]\ns3_bucket = {bucket}\ntarget_file_key = app.zip\nendpoint_url = {seaweed.endpoint_url}\n"
        f"destination = {reachable_dir / 'www'}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "s3deploy", "deploy", "Web", "-c", str(config), "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(SRC_DIR)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "uid").read_text().strip() == str(uid)
    assert (out / "read").read_text() == "bundle content"
    assert not (out / "leaks").exists(), (out / "leaks").read_text()
