"""Fleet coordination against stores that differ: one that ignores conditional headers (a proxy strips
them in front of SeaweedFS), moto (a missing key under If-Match is 404, not 412), AWS's 409
ConditionalRequestConflict under contention, and objects in the bucket written by someone hostile."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import SourceError
from s3deploy.fleet.errors import ConditionalWritesUnsupported, MalformedObject, RolloutStopped, WaitAborted
from s3deploy.fleet.policy import Timing
from s3deploy.source.revision import Endpoint
from s3deploy.source.s3 import S3Pool
from tests.s3server import Fault, FaultProxy, sync_client
from tests.test_fleet import FleetHarness, publish
from tests.test_fleet import fleet as fleet  # noqa: F401 - the fixture, registered here too


class _KeepPayloadHash(S3SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """S3's SigV4 signer that signs the client's own payload hash (the proxy never holds the body)."""

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        SigV4Auth._modify_request_before_signing(self, request)


def _strip_conditions(headers: Message, method: str, path: str) -> None:
    """Drop If-None-Match/If-Match and sign the request again without them, with the test credentials:
    SeaweedFS checks signatures, and an old store simply never saw the headers."""
    if headers["If-None-Match"] is None and headers["If-Match"] is None:
        return
    del headers["If-None-Match"]
    del headers["If-Match"]
    signed = re.search(r"SignedHeaders=([^,]+)", headers["Authorization"] or "")
    assert signed is not None, "the client did not sign with SigV4"
    names = [n for n in signed.group(1).split(";") if n not in ("if-match", "if-none-match")]
    request = AWSRequest(
        method=method,
        url=f"http://{headers['Host']}{path}",
        headers={n: headers[n] for n in names if headers[n] is not None},
    )
    _KeepPayloadHash(Credentials("test", "test"), "s3", "us-east-1").add_auth(request)
    for name in ("Authorization", "X-Amz-Date"):
        del headers[name]
        headers[name] = request.headers[name]


class StrippingProxy(FaultProxy):
    """A store that ignores conditional writes: If-None-Match and If-Match never reach SeaweedFS."""

    def _handler_class(self) -> Any:
        base = super()._handler_class()

        class Handler(base):  # type: ignore[misc, valid-type]
            def handle_one(self) -> None:
                _strip_conditions(self.headers, self.command, self.path)
                super().handle_one()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

        return Handler


class SlotFaultProxy(FaultProxy):
    """A FaultProxy whose faults apply only to requests on slot objects."""

    def _take(self, method: str, path: str) -> Fault | None:
        if "/control/slot-" not in path:
            with self._lock:
                self.seen.append((method, path))
            return None
        return super()._take(method, path)


def _serve(proxy: FaultProxy) -> Iterator[FaultProxy]:
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def stripping_proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    yield from _serve(StrippingProxy(seaweed.endpoint_url))


@pytest.fixture
def slot_fault_proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    yield from _serve(SlotFaultProxy(seaweed.endpoint_url))


async def _harness(pool: S3Pool, endpoint_url: str, bucket: str) -> FleetHarness:
    s3 = sync_client(endpoint_url)
    endpoint = Endpoint(endpoint_url=endpoint_url)
    return FleetHarness(pool, endpoint, bucket, await publish(pool, endpoint, s3, bucket), s3)


# ---------------------------------------------------------------------------------------------- the check
async def test_a_store_that_ignores_conditional_writes_is_refused(
    pool: S3Pool, stripping_proxy: FaultProxy, make_bucket: Callable[..., str]
) -> None:
    fleet = await _harness(pool, stripping_proxy.endpoint_url, make_bucket())
    host = fleet.host("web-1")

    with pytest.raises(ConditionalWritesUnsupported, match="second PUT with If-None-Match: \\* .* succeeded"):
        await host.check_conditional_writes()
    with pytest.raises(ConditionalWritesUnsupported, match="does not honour conditional writes"):
        async with host.rollout(fleet.revision).slot(asyncio.Event()):
            pytest.fail("deployed through a store without conditional writes")

    assert not any("/control/" in k or "/reports/" in k for k in fleet.keys())  # nothing written
    puts = stripping_proxy.count("PUT")
    with pytest.raises(ConditionalWritesUnsupported):
        await host.check_conditional_writes()
    assert stripping_proxy.count("PUT") == puts  # the refusal is remembered, not probed per poll
    assert [k for k in fleet.keys() if "/.probe/" in k] == []  # the probe cleans up after itself


@pytest.mark.parametrize("server", ["seaweed", "moto"])
async def test_stores_that_honour_conditional_writes_pass_the_check(
    pool: S3Pool, server: str, request: pytest.FixtureRequest, make_bucket: Callable[..., str]
) -> None:
    if server == "moto":
        url: str = request.getfixturevalue("moto_server")
        bucket = "fleet-check"
        sync_client(url).create_bucket(Bucket=bucket)
    else:
        url, bucket = request.getfixturevalue("seaweed").endpoint_url, make_bucket()
    fleet = await _harness(pool, url, bucket)

    await fleet.host("web-1").check_conditional_writes()

    assert fleet.keys() == []  # the probe key is gone


# ---------------------------------------------------------------------------------------------- moto
async def test_a_rollout_on_moto_where_if_match_on_a_missing_key_is_404(
    pool: S3Pool, moto_server: str
) -> None:
    sync_client(moto_server).create_bucket(Bucket="fleet-moto")
    fleet = await _harness(pool, moto_server, "fleet-moto")
    short = Timing(lease_margin_s=1.0, wait_min_s=0.05, wait_max_s=0.25)
    first, second = (fleet.host(f"web-{i}", timing=short, deployment_timeout_s=2.0) for i in (1, 2))

    assert await first.resume(fleet.revision) is False  # no stop object: a GET 404, nothing deleted
    async with first.rollout(fleet.revision).slot(asyncio.Event()) as slot:
        fleet.s3.delete_object(Bucket=fleet.bucket, Key=slot.lease.key)  # someone removed it by hand
        await asyncio.wait_for(slot.lost.wait(), 30)  # the renewal's If-Match: 404 on moto = lost
        await slot.finish("failed", error="boom")
    async with second.rollout(fleet.revision).slot(asyncio.Event(), force=True) as slot:
        await slot.finish("succeeded")
    assert await second.free_own_slots(fleet.revision) == 0

    view = await first.view(fleet.revision)
    assert view.stopped and {h.host: h.state for h in view.hosts} == {"web-1": "failed", "web-2": "succeeded"}


async def test_a_conflict_409_is_a_lost_race_and_the_host_tries_again(
    pool: S3Pool, slot_fault_proxy: FaultProxy, make_bucket: Callable[..., str]
) -> None:
    fleet = await _harness(pool, slot_fault_proxy.endpoint_url, make_bucket())
    slot_fault_proxy.add(Fault("PUT", times=2, status=409, code="ConditionalRequestConflict"))

    async with fleet.host("web-1").rollout(fleet.revision).slot(asyncio.Event()) as slot:
        await slot.finish("succeeded")

    slot_puts = [p for m, p in slot_fault_proxy.seen if m == "PUT" and "/control/slot-" in p]
    assert len(slot_puts) == 3  # two conflicts (no botocore retry: an answer, not an error), then a win


# ------------------------------------------------------------------------------------------ hostile objects
async def test_an_unreadable_slot_is_held_until_stale_then_taken_over(fleet: FleetHarness) -> None:
    short = Timing(lease_margin_s=2.0, wait_min_s=0.05, wait_max_s=0.25)
    host = fleet.host("web-1", timing=short, deployment_timeout_s=1.0)
    rollout = host.rollout(fleet.revision)
    fleet.s3.put_object(Bucket=fleet.bucket, Key=rollout.keys.slot(0), Body=b"\x1b]0;pwned\x07" * 1000)

    view = await host.view(fleet.revision)
    assert [(s.slot, s.host) for s in view.slots] == [(0, None)]
    with pytest.raises(MalformedObject, match="more than 4096 bytes"):
        await rollout.table.claim_of(0)
    async with rollout.slot(asyncio.Event()) as slot:  # after the lease of 3 s, by S3's clock
        assert slot.taken_over and slot.index == 0
        await slot.finish("succeeded")


async def test_an_unreadable_stop_object_still_stops(fleet: FleetHarness) -> None:
    host = fleet.host("web-1")
    fleet.s3.put_object(Bucket=fleet.bucket, Key=host.rollout(fleet.revision).keys.stop, Body=b"[1, 2")

    with pytest.raises(RolloutStopped, match="unreadable stop object"):
        async with host.rollout(fleet.revision).slot(asyncio.Event()):
            pytest.fail("deployed a stopped revision")


async def test_a_malformed_fleet_size_means_one_host_at_a_time(fleet: FleetHarness) -> None:
    hosts = [fleet.host(f"web-{i}", max_concurrent="50%") for i in range(4)]
    await asyncio.gather(*(h.heartbeat() for h in hosts))
    key = hosts[0].rollout(fleet.revision).keys.size
    fleet.s3.put_object(
        Bucket=fleet.bucket, Key=key, Body=json.dumps({"hosts": True, "by": "x", "revision": "r"})
    )

    assert await hosts[0].rollout(fleet.revision).slots_allowed() == 1
    async with hosts[0].rollout(fleet.revision).slot(asyncio.Event()) as slot:
        with pytest.raises(WaitAborted):  # the second host waits: one at a time
            stop = asyncio.Event()
            task = asyncio.create_task(_enter(hosts[1], fleet, stop))
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(task, 30)
        await slot.finish("succeeded")


async def test_forged_reports_show_as_unreadable_never_as_a_state(fleet: FleetHarness) -> None:
    host = fleet.host("web-1")
    keys = host.rollout(fleet.revision).keys
    forged = {
        "web-2": {"host": "web-3", "state": "succeeded"},  # another host's report
        "web-4": {"host": "web-4", "state": "succeeded", "error": "\x1b[2J"},  # an escape sequence
        "web-5": {"host": "web-5", "state": "hacked"},
    }
    for name, doc in forged.items():
        fleet.s3.put_object(Bucket=fleet.bucket, Key=keys.report(name), Body=json.dumps(doc))
    fleet.s3.put_object(Bucket=fleet.bucket, Key=keys.reports + "-x/y", Body=b"{}")  # not a host id

    view = await host.view(fleet.revision)

    assert [(h.host, h.state) for h in view.hosts] == [
        ("web-2", "pending"),
        ("web-4", "pending"),
        ("web-5", "pending"),
    ]
    assert all(h.error and h.error.startswith("unreadable report:") for h in view.hosts)
    assert "\x1b" not in json.dumps(view.to_json(), ensure_ascii=False)


async def _enter(host: Any, fleet: FleetHarness, stop: asyncio.Event) -> None:
    async with host.rollout(fleet.revision).slot(stop) as slot:
        await slot.finish("succeeded")


# ------------------------------------------------------------------------------------------ S3 failing
async def test_an_outcome_that_cannot_be_recorded_leaves_the_slot_to_expire(
    pool: S3Pool, fault_proxy: FaultProxy, make_bucket: Callable[..., str]
) -> None:
    fleet = await _harness(pool, fault_proxy.endpoint_url, make_bucket())
    host = fleet.host("web-1")
    with pytest.raises(SourceError, match="InternalError"):
        async with host.rollout(fleet.revision).slot(asyncio.Event()) as slot:
            fault_proxy.add(Fault("PUT", times=1000, status=500, code="InternalError"))
            await slot.finish("failed", error="boom")  # the failure cannot be counted ...
    fault_proxy.faults.clear()

    assert slot.lease.key in fleet.keys()  # ... so the slot is not freed: the next host waits for its lease


async def test_the_conditional_write_check_runs_once_per_store(
    pool: S3Pool, fault_proxy: FaultProxy, make_bucket: Callable[..., str]
) -> None:
    fleet = await _harness(pool, fault_proxy.endpoint_url, make_bucket())
    host = fleet.host("web-1")
    await host.check_conditional_writes()
    requests = len(fault_proxy.seen)

    await host.check_conditional_writes()
    await fleet.host("web-2").fleet.checks.ensure(host.ctx.store, host.settings.keys, "web-2")

    assert len(fault_proxy.seen) == requests + 4  # the second host's own process probes once: 4 requests
