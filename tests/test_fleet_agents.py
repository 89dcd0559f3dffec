"""Fleet rollouts with several real agent processes (SPEC §10) on one SeaweedFS bucket: each agent has
its own --host-id, config, state directory and destination, as separate machines would.

Concurrency is measured from the timestamps the hooks write, never from the agents' own counters, and
no test asserts a duration: waits are bounded only so that a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from tests.agent import DaemonProcess, wait_until
from tests.fleetagents import (
    KEY,
    SECTION,
    Host,
    Stamp,
    bundle,
    fleet_status,
    heartbeats,
    hosts,
    intervals,
    kill_session,
    most_at_once,
    section_status,
    stamps,
    states,
)
from tests.s3server import FaultProxy
from tests.test_fleet_stores import StrippingProxy


@pytest.fixture
def stripping_proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    proxy = StrippingProxy(seaweed.endpoint_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _start_fleet(fleet: list[Host], daemons: Callable[..., DaemonProcess], s3: Any, bucket: str) -> None:
    """Start every agent and wait until each is in the fleet (its heartbeat written)."""
    for host in fleet:
        host.start(daemons)
    names = {h.name for h in fleet}
    wait_until(lambda: heartbeats(s3, bucket) >= names, timeout=60)


def _publish(s3: Any, bucket: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=KEY, Body=body)


def _done(fleet: list[Host], count: int = 1) -> bool:
    """Every host has at least ``count`` finished deployments (the newest not running)."""
    return all(len(h.history()) >= count and h.last_status() not in (None, "running") for h in fleet)


def _one_holds_a_slot(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3: Any, bucket: str, endpoint_url: str,
    deployment_timeout: int,
) -> tuple[Path, Path, Stamp, Host, Host]:  # fmt: skip
    """Two agents, max_concurrent 1, and v1 published with a hook that blocks while ``hold`` exists:
    returns (trace, hold, the holder's start stamp, the holder, the other agent)."""
    trace, hold = tmp_path / "trace", tmp_path / "hold"
    fleet = hosts(tmp_path, 2, bucket, endpoint_url, max_concurrent=1, deployment_timeout=deployment_timeout)
    _start_fleet(fleet, daemons, s3, bucket)
    hold.touch()
    _publish(s3, bucket, bundle(trace, "v1", hold=hold))
    first = wait_until(lambda: [s for s in stamps(trace) if s.kind == "start"], timeout=60)[0]
    holder = next(h for h in fleet if h.name == first.host)
    other = next(h for h in fleet if h is not holder)
    return trace, hold, first, holder, other


# ---------------------------------------------------------------------------------------------- the cap
def test_at_most_k_agents_deploy_at_once_and_fleet_status_shows_the_rollout(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    bucket, trace = make_bucket(), tmp_path / "trace"
    fleet = hosts(tmp_path, 4, bucket, seaweed.endpoint_url, max_concurrent="50%")
    _start_fleet(fleet, daemons, s3_client, bucket)

    _publish(s3_client, bucket, bundle(trace, "v1", sleep_s=1.0, together=tmp_path / "inside"))
    wait_until(lambda: _done(fleet), timeout=90)

    spans = intervals(trace, "v1")
    assert sorted(spans) == [h.name for h in fleet]
    assert 1 < most_at_once(list(spans.values())) <= 2  # 50% of 4 hosts: 2 at once, never 3
    for host in fleet:
        assert host.last_status() == "succeeded"
        assert (host.www / "index.html").read_text() == "v1\n"

    view = fleet_status(fleet[0])
    assert list(view) == ["section", "revision", "stopped", "max_concurrent", "hosts", "slots"]
    assert view["section"] == SECTION and view["stopped"] is False and view["max_concurrent"] == 2
    assert view["revision"]["key"] == KEY and set(view["revision"]) == {"key", "etag", "version_id"}
    assert view["slots"] == []
    by_host = {row["host"]: row for row in view["hosts"]}
    assert sorted(by_host) == [h.name for h in fleet]
    for host in fleet:
        row = by_host[host.name]
        assert list(row) == ["host", "state", "deployment_id", "started_at", "finished_at", "error"]
        assert row["state"] == "succeeded" and row["error"] is None
        assert row["deployment_id"] == host.history()[0]["id"]
    human = fleet[0].cli("fleet", "status", SECTION)
    assert human.returncode == 0, human.stderr
    assert "at most 2 at once (a fleet of 4); 4 succeeded" in human.stdout
    assert section_status(fleet[0])["fleet"] == {
        "max_concurrent": "50%", "max_failures": 0, "stopped": None, "refused": None,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- failures
def test_a_rollback_stops_the_rollout_and_the_others_skip_the_revision(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    bucket, trace = make_bucket(), tmp_path / "trace"
    fleet = hosts(tmp_path, 3, bucket, seaweed.endpoint_url, max_concurrent=1)
    _start_fleet(fleet, daemons, s3_client, bucket)
    _publish(s3_client, bucket, bundle(trace, "v1"))
    wait_until(lambda: _done(fleet), timeout=90)

    # v2 fails its ValidateService: the first host rolls back to v1; nobody else deploys v2.
    _publish(s3_client, bucket, bundle(trace, "v2", fail_in="ValidateService"))
    wait_until(
        lambda: sorted(states(s3_client, bucket).values()) == ["rolled_back", "skipped", "skipped"], 90
    )

    view = fleet_status(fleet[0])
    assert view["stopped"] is True and view["slots"] == []
    failed = [row for row in view["hosts"] if row["state"] == "rolled_back"]
    assert len(failed) == 1 and "ValidateService" in failed[0]["error"]
    assert "\x1b" not in failed[0]["error"]  # the hook's escape sequence arrives escaped
    assert len({s.host for s in stamps(trace) if s.version == "v2"}) == 1
    skipped = [h for h in fleet if h.name != failed[0]["host"]]
    for host in skipped:
        status = section_status(host)
        assert status["state"] == "stopped"
        assert "more than max_failures = 0" in status["fleet"]["stopped"]
        assert (host.www / "index.html").read_text() == "v1\n"
        assert [d["status"] for d in host.history()] == ["succeeded"]  # v2 never started here
    table = skipped[0].cli("status")
    assert "stopped" in table.stdout and "rollout stopped" in table.stdout

    # deploy --force ignores the stop (still through a slot): it deploys v2, which fails again.
    forced = skipped[0].cli("deploy", SECTION, "--force")
    assert forced.returncode == 1, forced.stderr
    assert states(s3_client, bucket)[skipped[0].name] == "rolled_back"
    assert section_status(skipped[0])["state"] == "failed"
    assert section_status(skipped[1])["state"] == "stopped"


def test_fleet_stop_and_resume_by_hand(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    bucket, trace, hold = make_bucket(), tmp_path / "trace", tmp_path / "hold"
    fleet = hosts(tmp_path, 3, bucket, seaweed.endpoint_url, max_concurrent=1)
    _start_fleet(fleet, daemons, s3_client, bucket)
    hold.touch()
    _publish(s3_client, bucket, bundle(trace, "v1", hold=hold))
    wait_until(lambda: "deploying" in states(s3_client, bucket).values(), timeout=60)

    stopped = fleet[0].cli("fleet", "stop", SECTION)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    hold.unlink()  # the host already deploying finishes; the others skip v1
    wait_until(lambda: sorted(states(s3_client, bucket).values()) == ["skipped", "skipped", "succeeded"], 60)
    assert fleet_status(fleet[0])["stopped"] is True
    first = next(h for h in fleet if h.last_status() == "succeeded")
    waiting = [h for h in fleet if h is not first]
    assert all(section_status(h)["state"] == "stopped" for h in waiting)
    assert first.cli("fleet", "stop", SECTION).stdout.count("stopped already") == 1
    refused = waiting[0].cli("deploy", SECTION)  # a one-shot deploy respects the stop, and says so
    assert refused.returncode == 0, refused.stderr
    assert "the fleet rollout of this revision is stopped" in refused.stdout
    assert f"s3deploy fleet resume {SECTION}" in refused.stdout

    resumed = fleet[0].cli("fleet", "resume", SECTION)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
    assert fleet_status(fleet[0])["stopped"] is False
    # A new process looks at the stop object at once: a one-shot deploy on one host, a restarted agent
    # on the other (a running agent looks again within 5 minutes).
    oneshot = waiting[0].cli("deploy", SECTION)
    assert oneshot.returncode == 0, oneshot.stderr
    assert waiting[1].daemon is not None
    waiting[1].daemon.stop()
    waiting[1].start(daemons)
    wait_until(lambda: sorted(states(s3_client, bucket).values()) == ["succeeded"] * 3, timeout=60)
    assert all(section_status(h)["state"] == "idle" for h in fleet)
    assert most_at_once(list(intervals(trace, "v1").values())) == 1


# ---------------------------------------------------------------------------------------------- crashes
def test_a_slot_holder_killed_with_sigkill_frees_its_slot_when_it_restarts(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    bucket = make_bucket()
    # A lease of 5 minutes: everything below happens long before it could run out.
    trace, hold, first, holder, other = _one_holds_a_slot(
        tmp_path, daemons, s3_client, bucket, seaweed.endpoint_url, deployment_timeout=180
    )
    fleet = [holder, other]
    wait_until(lambda: states(s3_client, bucket).get(other.name) == "waiting", timeout=30)

    holder.kill9()
    hold.unlink()  # the orphaned hook ends on its own; the agent is gone
    wait_until(lambda: len(stamps(trace)) == 2, timeout=30)
    assert states(s3_client, bucket) == {holder.name: "deploying", other.name: "waiting"}
    holder.start(daemons)  # frees its slot, then redeploys the interrupted v1 through a slot
    wait_until(lambda: _done(fleet), timeout=60)

    assert holder.daemon is not None
    assert "held 1 slot(s) of the rollout" in holder.daemon.output()
    assert [d["status"] for d in holder.history()] == ["succeeded", "interrupted"]
    assert other.last_status() == "succeeded"
    assert states(s3_client, bucket) == {holder.name: "succeeded", other.name: "succeeded"}
    finished = intervals(trace, "v1")
    assert finished[other.name][0] > first.at and most_at_once(list(finished.values())) == 1


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_slot_holder_that_never_comes_back_loses_its_slot_after_the_lease(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    """The lease is deployment_timeout + 2 minutes by S3's clock: with a short deployment_timeout the
    rollout goes on about two minutes after the holder died."""
    bucket = make_bucket()
    trace, hold, first, holder, other = _one_holds_a_slot(
        tmp_path, daemons, s3_client, bucket, seaweed.endpoint_url, deployment_timeout=20
    )
    try:
        holder.kill9()
    finally:
        kill_session(first.pid)  # its hook too: the host is gone for good
    hold.unlink()

    wait_until(lambda: other.last_status() == "succeeded", timeout=330)
    assert other.daemon is not None
    assert f"took over slot-0 of s3://{bucket}/" in other.daemon.output()
    assert f"from {holder.name}: not renewed for" in other.daemon.output()
    assert states(s3_client, bucket) == {holder.name: "deploying", other.name: "succeeded"}
    assert holder.history()[0]["status"] == "running"  # it never came back to record anything
    assert [s.host for s in stamps(trace) if s.kind == "start"] == [holder.name, other.name]


# ---------------------------------------------------------------------------------------------- waiting
def test_a_waiting_section_lets_others_deploy_stops_on_sigterm_and_follows_a_new_revision(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], seaweed: SeaweedServer,
) -> None:  # fmt: skip
    bucket, trace, hold = make_bucket(), tmp_path / "trace", tmp_path / "hold"
    holder, waiter = hosts(tmp_path, 2, bucket, seaweed.endpoint_url, max_concurrent=1)
    holder.start(daemons)
    wait_until(lambda: holder.name in heartbeats(s3_client, bucket), timeout=60)
    hold.touch()
    _publish(s3_client, bucket, bundle(trace, "v1", hold=hold))
    wait_until(lambda: states(s3_client, bucket).get(holder.name) == "deploying", timeout=60)

    # The waiter has a second, uncoordinated section in the same daemon.
    text = waiter.config.read_text() + (
        f"\n[Other]\ns3_bucket = {bucket}\ntarget_file_key = other/app.zip\n"
        f"endpoint_url = {seaweed.endpoint_url}\npoll_interval = 0.5\ndestination = {waiter.root / 'other'}\n"
    )
    waiter.config.write_text(text)
    waiter.start(daemons)
    wait_until(lambda: states(s3_client, bucket).get(waiter.name) == "waiting", timeout=60)
    s3_client.put_object(Bucket=bucket, Key="other/app.zip", Body=bundle(trace, "other"))
    wait_until(lambda: "other" in {s.version for s in stamps(trace) if s.kind == "end"}, timeout=60)
    assert states(s3_client, bucket).get(waiter.name) == "waiting"  # still waiting for its slot

    assert waiter.daemon is not None
    waiter.daemon.signal(signal.SIGTERM)
    assert waiter.daemon.wait(timeout=25) == 0  # the holder holds on: only the wait can have ended
    assert "stopped waiting for a slot" in waiter.daemon.output()
    assert waiter.history() == []

    again = waiter.start(daemons)
    wait_until(lambda: "waiting for a slot" in again.output(), timeout=60)
    _publish(s3_client, bucket, bundle(trace, "v2"))  # replaces v1 while the waiter waits for it
    wait_until(lambda: waiter.last_status() == "succeeded", timeout=60)
    assert {s.version for s in stamps(trace) if s.host == waiter.name} == {"other", "v2"}  # never v1
    hold.unlink()
    wait_until(lambda: holder.last_status() == "succeeded" and len(holder.history()) == 2, timeout=60)


# ---------------------------------------------------------------------------------------------- the store
def test_a_store_that_ignores_conditional_writes_is_refused_and_status_says_why(
    tmp_path: Path, daemons: Callable[..., DaemonProcess], s3_client: Any,
    make_bucket: Callable[..., str], stripping_proxy: FaultProxy,
) -> None:  # fmt: skip
    bucket, trace = make_bucket(), tmp_path / "trace"
    (host,) = hosts(tmp_path, 1, bucket, stripping_proxy.endpoint_url, max_concurrent=1)
    host.start(daemons)
    _publish(s3_client, bucket, bundle(trace, "v1"))
    wait_until(lambda: (section_status(host)["fleet"] or {}).get("refused"), timeout=60)

    status = section_status(host)
    assert "does not honour conditional writes" in status["fleet"]["refused"]
    assert status["state"] == "never" and host.history() == [] and not trace.exists()
    daemon = host.daemon
    assert daemon is not None
    wait_until(lambda: "not deploying" in daemon.output(), timeout=30)
    assert "does not honour conditional writes" in daemon.output()
    table = host.cli("status")
    assert "fleet: s3://" in table.stdout and "does not honour conditional writes" in table.stdout
