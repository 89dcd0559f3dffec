"""Fleet coordination (SPEC §10) against a real SeaweedFS: several coordinators in one process stand for
hosts (each its own HostFleet and host id, as separate agents would be), racing for the same slots.

Concurrency is measured from times each "host" records inside its slot, never from the library's own
counters; no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from s3deploy.fleet.coordinator import Coordinator, HostFleet
from s3deploy.fleet.errors import RolloutStopped, SlotLost, WaitAborted
from s3deploy.fleet.ledger import Outcome
from s3deploy.fleet.policy import FleetSettings, MaxConcurrent, Timing
from s3deploy.source.revision import Endpoint, Revision
from s3deploy.source.s3 import S3Pool

#: Production numbers except the waits, so the races happen within a test's time.
FAST = Timing(wait_min_s=0.05, wait_max_s=0.25)
BUNDLE_KEY = "apps/web app.zip"


@dataclass
class FleetHarness:
    """One bucket with a published bundle, and a factory of hosts coordinating its rollout."""

    pool: S3Pool
    endpoint: Endpoint
    bucket: str
    revision: Revision
    s3: Any
    hosts: list[Coordinator] = field(default_factory=list)

    def host(
        self,
        name: str,
        *,
        max_concurrent: str = "1",
        max_failures: int = 0,
        timing: Timing = FAST,
        deployment_timeout_s: float = 600.0,
    ) -> Coordinator:
        settings = FleetSettings(
            section="Production",
            bucket=self.bucket,
            key=BUNDLE_KEY,
            endpoint=self.endpoint,
            max_concurrent=MaxConcurrent.parse(max_concurrent),
            max_failures=max_failures,
            deployment_timeout_s=deployment_timeout_s,
        )
        coordinator = HostFleet(self.pool, name, timing=timing).coordinator(settings)
        self.hosts.append(coordinator)
        return coordinator

    def keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=".s3deploy/")
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


async def publish(pool: S3Pool, endpoint: Endpoint, s3: Any, bucket: str, body: bytes = b"v1") -> Revision:
    s3.put_object(Bucket=bucket, Key=BUNDLE_KEY, Body=body)
    return await pool.head(endpoint, bucket, BUNDLE_KEY)


@pytest.fixture
async def fleet(pool: S3Pool, ep: Endpoint, make_bucket: Callable[..., str], s3_client: Any) -> FleetHarness:
    bucket = make_bucket()
    return FleetHarness(pool, ep, bucket, await publish(pool, ep, s3_client, bucket), s3_client)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one moment (an end before a start at the same time)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


class Deployments:
    """What the hosts did inside their slots: (start, end) times, slot indices, who entered."""

    def __init__(self, *, overlap_wait_s: float = 0.0) -> None:
        self.overlap_wait_s = overlap_wait_s
        self.intervals: list[tuple[float, float]] = []
        self.entered: list[str] = []
        self.taken_over: list[str] = []
        self.inside = 0
        self.overlapped = asyncio.Event()

    async def run(
        self,
        host: Coordinator,
        revision: Revision,
        *,
        outcome: Outcome = "succeeded",
        hold_s: float = 0.2,
        stop: asyncio.Event | None = None,
    ) -> str:
        """One host's deployment of ``revision`` through a slot; returns how it ended."""
        try:
            async with host.rollout(revision).slot(
                stop or asyncio.Event(), deployment_id=f"d-{host.host_id}"
            ) as slot:
                slot.ensure_held()
                start = time.monotonic()
                self.entered.append(host.host_id)
                if slot.taken_over:
                    self.taken_over.append(host.host_id)
                self.inside += 1
                if self.inside > 1:
                    self.overlapped.set()
                # Hold the slot until another host is inside too (or a while): k > 1 must show overlap.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.overlapped.wait(), self.overlap_wait_s)
                await asyncio.sleep(hold_s)
                self.inside -= 1
                self.intervals.append((start, time.monotonic()))
                await slot.finish(outcome, error=None if outcome == "succeeded" else "ValidateService failed")
        except RolloutStopped:
            return "skipped"
        return outcome


# ---------------------------------------------------------------------------------------------- the cap
@pytest.mark.parametrize("limit", ["3", "25%"])
async def test_twelve_hosts_never_more_than_k_at_once(fleet: FleetHarness, limit: str) -> None:
    hosts = [fleet.host(f"web-{i:02d}", max_concurrent=limit) for i in range(12)]
    await asyncio.gather(*(h.heartbeat() for h in hosts))  # the daemons started before the upload
    done = Deployments(overlap_wait_s=5.0)

    results = await asyncio.gather(*(done.run(h, fleet.revision) for h in hosts))

    assert results == ["succeeded"] * 12
    assert 1 < most_at_once(done.intervals) <= 3
    view = await hosts[0].view(fleet.revision)
    assert view.max_concurrent == 3 and view.fleet_size == 12 and not view.stopped
    assert [h.state for h in view.hosts] == ["succeeded"] * 12
    assert [h.deployment_id for h in view.hosts] == [f"d-web-{i:02d}" for i in range(12)]
    assert view.slots == ()  # every slot freed


async def test_one_slot_means_one_host_at_a_time(fleet: FleetHarness) -> None:
    hosts = [fleet.host(f"db-{i}", max_concurrent="1") for i in range(5)]
    done = Deployments()

    await asyncio.gather(*(done.run(h, fleet.revision, hold_s=0.05) for h in hosts))

    assert most_at_once(done.intervals) == 1 and len(done.entered) == 5


async def test_a_share_of_a_small_fleet_is_at_least_one_host(fleet: FleetHarness) -> None:
    hosts = [fleet.host(f"web-{i}", max_concurrent="10%") for i in range(3)]
    await asyncio.gather(*(h.heartbeat() for h in hosts))
    done = Deployments()

    await asyncio.gather(*(done.run(h, fleet.revision, hold_s=0.05) for h in hosts))

    assert most_at_once(done.intervals) == 1 and len(done.entered) == 3
    assert (await hosts[0].view(fleet.revision)).max_concurrent == 1


# ---------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize(("outcome", "max_failures", "deployed"), [("failed", 0, 1), ("rolled_back", 1, 2)])
async def test_failures_past_max_failures_stop_the_rollout(
    fleet: FleetHarness, outcome: Outcome, max_failures: int, deployed: int
) -> None:
    hosts = [fleet.host(f"web-{i}", max_concurrent="1", max_failures=max_failures) for i in range(6)]
    done = Deployments()

    results = await asyncio.gather(
        *(done.run(h, fleet.revision, outcome=outcome, hold_s=0.05) for h in hosts)
    )

    assert sorted(results) == sorted([outcome] * deployed + ["skipped"] * (6 - deployed))
    assert len(done.entered) == deployed  # nobody started after the stop
    view = await hosts[0].view(fleet.revision)
    assert view.stopped and view.stop is not None
    assert f"more than max_failures = {max_failures}" in view.stop.reason
    assert sorted(view.stop.failed) == sorted(done.entered)
    states = {h.host: h.state for h in view.hosts}
    assert sorted(states.values()) == sorted([outcome] * deployed + ["skipped"] * (6 - deployed))
    skipped = [h for h in view.hosts if h.state == "skipped"]
    assert all(h.error and h.error.startswith("rollout stopped:") for h in skipped)


async def test_a_host_already_deploying_finishes_after_the_stop(fleet: FleetHarness) -> None:
    first, second = fleet.host("web-1", max_concurrent="2"), fleet.host("web-2", max_concurrent="2")
    inside = asyncio.Event()
    stopped = asyncio.Event()

    async def slow() -> str:
        async with second.rollout(fleet.revision).slot(asyncio.Event()) as slot:
            inside.set()
            await stopped.wait()
            await slot.finish("succeeded")
        return "succeeded"

    task = asyncio.create_task(slow())
    await inside.wait()
    async with first.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        await slot.finish("failed", error="AfterInstall exited 1")
    stopped.set()

    assert await task == "succeeded"
    view = await first.view(fleet.revision)
    assert view.stopped
    assert {h.host: h.state for h in view.hosts} == {"web-1": "failed", "web-2": "succeeded"}
    assert next(h for h in view.hosts if h.host == "web-1").error == "AfterInstall exited 1"


async def test_a_forced_success_no_longer_counts_as_a_failure(fleet: FleetHarness) -> None:
    host = fleet.host("web-1", max_failures=1)
    async with host.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        await slot.finish("failed", error="boom")
    assert any(k.endswith("/failed/web-1") for k in fleet.keys())

    async with host.rollout(fleet.revision).slot(asyncio.Event(), force=True) as slot:
        await slot.finish("succeeded")

    assert not any("/failed/" in k for k in fleet.keys())


# ---------------------------------------------------------------------------------------------- stop, resume
async def test_fleet_stop_and_resume_by_hand(fleet: FleetHarness) -> None:
    operator, host = fleet.host("laptop"), fleet.host("web-1")

    assert await operator.stop(fleet.revision) is True
    assert await operator.stop(fleet.revision) is False  # already stopped
    with pytest.raises(RolloutStopped, match="stopped by hand") as stopped:
        async with host.rollout(fleet.revision).slot(asyncio.Event()):
            pytest.fail("deployed a stopped revision")
    assert stopped.value.by == "laptop"
    view = await operator.view(fleet.revision)
    assert view.stopped and {h.host: h.state for h in view.hosts}["web-1"] == "skipped"
    assert await host.rollout(fleet.revision).stop_order() is not None

    assert await operator.resume(fleet.revision) is True
    assert await operator.resume(fleet.revision) is False
    assert await host.rollout(fleet.revision).stop_order() is None
    async with host.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        await slot.finish("succeeded")
    assert not (await operator.view(fleet.revision)).stopped


async def test_force_ignores_the_stop_but_still_takes_a_slot(fleet: FleetHarness) -> None:
    holder, forced = fleet.host("web-1"), fleet.host("web-2")
    await holder.stop(fleet.revision)
    stop = asyncio.Event()
    async with holder.rollout(fleet.revision).slot(stop, force=True) as held:
        waiting = asyncio.create_task(_enter(forced, fleet.revision, stop=asyncio.Event(), force=True))
        await _until(lambda: _state_of(fleet, forced, "waiting"))
        assert not waiting.done()  # the one slot is taken: force does not skip the queue
        await held.finish("succeeded")
    assert await asyncio.wait_for(waiting, 30) == "entered"


async def test_a_stop_is_rechecked_at_most_every_max_age(fleet: FleetHarness) -> None:
    operator, host = fleet.host("laptop"), fleet.host("web-1")
    rollout = host.rollout(fleet.revision)
    assert await rollout.stop_order(max_age_s=300) is None
    await operator.stop(fleet.revision)

    assert await rollout.stop_order(max_age_s=300) is None  # the answer of a moment ago
    assert await rollout.stop_order() is not None


# ---------------------------------------------------------------------------------------------- leases
async def test_a_stale_slot_is_taken_over_by_exactly_one_waiter(fleet: FleetHarness) -> None:
    # A 4 s lease (deployment_timeout 2 s + 2 s): renewed every 1.3 s while held.
    short = Timing(lease_margin_s=2.0, wait_min_s=0.05, wait_max_s=0.25)
    dead = fleet.host("web-dead", timing=short, deployment_timeout_s=2.0)
    rollout = dead.rollout(fleet.revision)
    crashed = await rollout.table.try_take(await rollout.table.look(), 1, "d-crashed")
    assert crashed is not None  # and never renewed nor freed: its host is gone
    waiters = [fleet.host(f"web-{i}", timing=short, deployment_timeout_s=2.0) for i in range(3)]
    done = Deployments()

    results = await asyncio.gather(*(done.run(w, fleet.revision, hold_s=0.3) for w in waiters))

    assert results == ["succeeded"] * 3
    assert len(done.taken_over) == 1  # one winner of the If-Match race; the others waited their turn
    assert most_at_once(done.intervals) == 1


async def test_a_held_slot_stays_held_past_its_lease_while_renewed(fleet: FleetHarness) -> None:
    short = Timing(lease_margin_s=2.0, wait_min_s=0.05, wait_max_s=0.25)
    holder = fleet.host("web-1", timing=short, deployment_timeout_s=2.0)
    waiter = fleet.host("web-2", timing=short, deployment_timeout_s=2.0)
    async with holder.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        first_etag = slot.lease.etag
        task = asyncio.create_task(_enter(waiter, fleet.revision, stop=asyncio.Event()))
        await asyncio.sleep(2 * slot.table.lease_s)  # two leases: only renewals keep it
        slot.ensure_held()
        # Each renewal is a new ETag (a nonce in the body): a takeover with an ETag read before a
        # renewal must lose, and S3's ETag is the MD5 of the body.
        assert slot.lease.etag != first_etag
        assert not task.done()
        await slot.finish("succeeded")
    assert await asyncio.wait_for(task, 30) == "entered"


async def test_a_slot_taken_over_is_lost_and_not_freed_by_its_old_holder(fleet: FleetHarness) -> None:
    short = Timing(lease_margin_s=1.0, wait_min_s=0.05, wait_max_s=0.25)
    holder = fleet.host("web-1", timing=short, deployment_timeout_s=2.0)
    async with holder.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        other = fleet.host("web-2").rollout(fleet.revision).table
        result = await other.store.replace(slot.lease.key, b"{}", etag=slot.lease.etag)  # a takeover
        assert result.won
        await asyncio.wait_for(slot.lost.wait(), 30)  # the next renewal notices
        with pytest.raises(SlotLost, match="taken over"):
            slot.ensure_held()
    assert fleet.s3.get_object(Bucket=fleet.bucket, Key=slot.lease.key)["Body"].read() == b"{}"


async def test_a_restarted_host_frees_its_own_slots(fleet: FleetHarness) -> None:
    before = fleet.host("web-1")
    rollout = before.rollout(fleet.revision)
    assert await rollout.table.try_take(await rollout.table.look(), 1, "d-1") is not None  # then SIGKILL
    after, other = fleet.host("web-1"), fleet.host("web-2")  # a new process, same --host-id

    assert await other.free_own_slots(fleet.revision) == 0  # not its slot
    assert await after.free_own_slots(fleet.revision) == 1

    # The lease is 12 minutes: only the freeing lets web-2 in now.
    assert await asyncio.wait_for(_enter(other, fleet.revision, stop=asyncio.Event()), 30) == "entered"


# ---------------------------------------------------------------------------------------------- waiting
async def test_a_waiting_host_stops_waiting_when_its_stop_event_is_set(fleet: FleetHarness) -> None:
    slow_to_retry = Timing(wait_min_s=300.0, wait_max_s=300.0)
    holder, waiter = fleet.host("web-1"), fleet.host("web-2", timing=slow_to_retry)
    async with holder.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        stop = asyncio.Event()
        task = asyncio.create_task(_enter(waiter, fleet.revision, stop=stop))
        await _until(lambda: _state_of(fleet, waiter, "waiting"))
        stop.set()
        with pytest.raises(WaitAborted, match="stopped waiting"):
            await asyncio.wait_for(task, 30)  # a wait that ignored the event would last 300 s
        await slot.finish("succeeded")
    states = {h.host: h.state for h in (await holder.view(fleet.revision)).hosts}
    assert states == {"web-1": "succeeded", "web-2": "waiting"}


async def test_a_cancelled_deployment_frees_its_slot_and_reports_waiting(fleet: FleetHarness) -> None:
    host, other = fleet.host("web-1"), fleet.host("web-2")
    inside = asyncio.Event()

    async def deploy_forever() -> None:
        async with host.rollout(fleet.revision).slot(asyncio.Event()):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(deploy_forever())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.wait_for(_enter(other, fleet.revision, stop=asyncio.Event()), 30) == "entered"
    states = {h.host: h.state for h in (await host.view(fleet.revision)).hosts}
    assert states["web-1"] == "waiting"  # it will deploy again


# ---------------------------------------------------------------------------------------------- membership
async def test_heartbeats_are_written_only_when_due(fleet: FleetHarness) -> None:
    host = fleet.host("web-1")
    assert await host.heartbeat() is True
    assert [await host.heartbeat() for _ in range(100)] == [False] * 100  # every poll: no request
    assert await host.heartbeat(force=True) is True
    restarted = fleet.host("web-1")
    assert await restarted.heartbeat() is True  # its key exists already: rewritten, not refused
    assert fleet.keys() == [f".s3deploy/{'apps%2Fweb%20app.zip'}/hosts/web-1"]


async def test_the_heartbeat_loop_writes_and_ends_on_its_stop_event(fleet: FleetHarness) -> None:
    host = fleet.host("web-1")
    stop = asyncio.Event()
    task = asyncio.create_task(host.keep_heartbeat(stop))
    await _until(lambda: any(k.endswith("/hosts/web-1") for k in fleet.keys()))
    stop.set()
    await asyncio.wait_for(task, 30)  # the next heartbeat is 600 s away: only the event ends the wait


async def test_fleet_status_lists_pending_hosts_and_slots_in_the_spec_shape(fleet: FleetHarness) -> None:
    hosts = [fleet.host(f"web-{i}", max_concurrent="50%") for i in range(4)]
    await asyncio.gather(*(h.heartbeat() for h in hosts))
    async with hosts[0].rollout(fleet.revision).slot(asyncio.Event(), deployment_id="d-ABC") as slot:
        view = await hosts[3].view(fleet.revision)
        doc = view.to_json()
        assert set(doc) == {"section", "revision", "stopped", "max_concurrent", "hosts", "slots"}
        assert doc["section"] == "Production" and doc["stopped"] is False and doc["max_concurrent"] == 2
        assert doc["revision"] == {"key": BUNDLE_KEY, "etag": fleet.revision.etag, "version_id": None}
        assert [(h["host"], h["state"]) for h in doc["hosts"]] == [
            ("web-0", "deploying"),
            ("web-1", "pending"),
            ("web-2", "pending"),
            ("web-3", "pending"),
        ]
        assert set(doc["hosts"][0]) == {
            "host",
            "state",
            "deployment_id",
            "started_at",
            "finished_at",
            "error",
        }
        assert doc["hosts"][0]["deployment_id"] == "d-ABC" and doc["hosts"][0]["started_at"]
        assert doc["slots"] == [{"slot": slot.index, "host": "web-0", "since": slot.since}]
        await slot.finish("succeeded")


async def test_each_revision_has_its_own_rollout(fleet: FleetHarness) -> None:
    host = fleet.host("web-1")
    await host.stop(fleet.revision)
    newer = await publish(fleet.pool, fleet.endpoint, fleet.s3, fleet.bucket, b"v2")

    async with host.rollout(newer).slot(asyncio.Event()) as slot:  # the stop was for the old one
        await slot.finish("succeeded")

    assert (await host.view(fleet.revision)).stopped and not (await host.view(newer)).stopped


# ---------------------------------------------------------------------------------------------- helpers
async def _enter(host: Coordinator, revision: Revision, *, stop: asyncio.Event, force: bool = False) -> str:
    async with host.rollout(revision).slot(stop, force=force) as slot:
        await slot.finish("succeeded")
    return "entered"


def _state_of(fleet: FleetHarness, host: Coordinator, state: str) -> bool:
    key = host.rollout(fleet.revision).keys.report(host.host_id)
    try:
        body = fleet.s3.get_object(Bucket=fleet.bucket, Key=key)["Body"].read()
    except fleet.s3.exceptions.NoSuchKey:
        return False
    return f'"state":"{state}"'.encode() in body


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
