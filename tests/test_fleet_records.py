"""The values of fleet coordination without S3: max_concurrent, host ids and keys, and the strict reading
of coordination objects (their content is hostile input)."""

from __future__ import annotations

import json

import pytest

from s3deploy.fleet.errors import MalformedObject
from s3deploy.fleet.keys import SectionKeys, check_host_id, check_prefix, key_component, revision_id
from s3deploy.fleet.policy import MaxConcurrent, Timing
from s3deploy.fleet.records import (
    FleetSize,
    Report,
    SlotClaim,
    StopOrder,
    encode,
    error_text,
    load,
    read_report,
    read_size,
    read_slot,
    read_stop,
)


# ---------------------------------------------------------------------------------------- max_concurrent
@pytest.mark.parametrize(
    ("text", "hosts", "k"),
    [
        ("1", None, 1),
        ("3", 100, 3),
        ("25%", 12, 3),
        ("25%", 10, 2),  # rounded down: never more than a quarter
        ("25%", 3, 1),  # at least 1
        ("10%", 1, 1),
        ("12.5%", 80, 10),
        ("100%", 7, 7),
        ("50 %", 4, 2),
        ("25%", None, 1),  # no known fleet size: one at a time
    ],
)
def test_max_concurrent_is_a_number_or_a_share_of_the_fleet(text: str, hosts: int | None, k: int) -> None:
    assert MaxConcurrent.parse(text).slots(hosts) == k


@pytest.mark.parametrize(
    "text", ["0", "-1", "0%", "101%", "1.5", "abc", "", "25%%", "10001", "0.001%", "1e3"]
)
def test_max_concurrent_refuses_what_is_not_a_count_or_share(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number of hosts from 1 to 10000 or a share"):
        MaxConcurrent.parse(text)


def test_max_concurrent_reads_back_as_written() -> None:
    assert [str(MaxConcurrent.parse(t)) for t in ("3", "25%", "12.5%")] == ["3", "25%", "12.5%"]


# ---------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize("host", ["web-01", "ip-10-0-0-1.ec2.internal", "A", "x" * 128, "h_1"])
def test_host_ids_that_are_accepted(host: str) -> None:
    assert check_host_id(host) == host


@pytest.mark.parametrize(
    "host", ["", "-web", ".", "..", "web/1", "web 1", "x" * 129, "wéb", "a\nb", "web\x1b"]
)
def test_host_ids_that_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="expected a host id"):
        check_host_id(host)


@pytest.mark.parametrize("prefix", ["", "/abs/", "no-slash", "a//b/", "x\x1b/", "p" * 300 + "/"])
def test_prefixes_that_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="expected a key prefix ending in '/'"):
        check_prefix(prefix)


def test_the_keys_of_a_section_and_a_rollout() -> None:
    keys = SectionKeys(".s3deploy/", "apps/web app.zip")
    rollout = keys.rollout("abc@2026-01-01T00:00:00+00:00")
    root = f".s3deploy/apps%2Fweb%20app.zip/rollouts/{revision_id('abc@2026-01-01T00:00:00+00:00')}/"
    assert keys.heartbeat("web-1") == ".s3deploy/apps%2Fweb%20app.zip/hosts/web-1"
    assert (rollout.slot(2), rollout.stop, rollout.size) == (
        root + "control/slot-2",
        root + "control/stop",
        root + "control/size",
    )
    assert (rollout.report("web-1"), rollout.failure("web-1")) == (
        root + "reports/web-1",
        root + "failed/web-1",
    )
    assert [
        rollout.slot_index(root + f"control/{n}") for n in ("slot-0", "slot-12", "slot-01", "slot-x", "stop")
    ] == [
        0,
        12,
        None,
        None,
        None,
    ]
    assert keys.probe("web-1").startswith(".s3deploy/.probe/web-1-") and keys.probe("web-1") != keys.probe(
        "web-1"
    )
    with pytest.raises(ValueError):
        rollout.report("../other")


def test_a_long_bundle_key_becomes_one_short_component() -> None:
    name = key_component("k" * 1000)
    assert len(name) < 200 and "/" not in name and name != key_component("k" * 999)


# ---------------------------------------------------------------------------------------------- records
def test_every_record_reads_back_as_written() -> None:
    claim = SlotClaim("web-1", "d-ABC", "2026-01-01T00:00:00.000+00:00", "00ff")
    assert read_slot(encode(claim), "slot") == claim
    size = FleetSize(12, "web-1", "abc")
    assert read_size(encode(size), "size") == size
    stop = StopOrder("2 host(s) failed", "web-1", ("web-1", "web-2"))
    assert read_stop(encode(stop), "stop") == stop
    report = Report("web-1", "rolled_back", "d-ABC", "2026-01-01T00:00:00.000+00:00", None, "exit 1")
    assert read_report(encode(report), "report", host="web-1") == report


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xfe", "not the JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"a": 1, "a": 2}', "duplicate field"),
        (b'{"a": NaN}', "NaN is not a number"),
        (b"[" * 3000 + b"]" * 3000, "bytes, more than"),
        (b"[" * 2000 + b"]" * 2000, "not the JSON"),  # too deep for the parser: refused, not a crash
        (b'{"a": "' + b"x" * 5000 + b'"}', "more than the 4096"),
    ],
)
def test_hostile_bodies_are_malformed_objects(body: bytes, problem: str) -> None:
    with pytest.raises(MalformedObject, match=problem):
        load(body, "s3://b/k")


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"host": "web-1", "state": "hacked"}, "field 'state'"),
        ({"host": "web-2", "state": "succeeded"}, "names host 'web-2', but the key is that of 'web-1'"),
        ({"host": "web-1", "state": "failed", "error": "\x1b]0;title\x07"}, "field 'error'"),
        ({"host": "web-1", "state": "failed", "error": "\u202eevil"}, "field 'error'"),
        ({"host": "web-1", "state": "failed", "error": 7}, "field 'error'"),
        ({"host": "web-1", "state": "failed", "started_at": "yesterday"}, "not an ISO 8601"),
        ({"host": "web-1", "state": "failed", "started_at": "2026-01-01T00:00:00"}, "no time zone"),
        ({"host": "web-1", "state": "failed", "deployment_id": "d" * 101}, "field 'deployment_id'"),
        ({"host": "../x", "state": "failed"}, "expected a host id"),
    ],
)
def test_reports_are_read_strictly(doc: dict[str, object], problem: str) -> None:
    with pytest.raises(MalformedObject, match=problem):
        read_report(json.dumps(doc).encode(), "report", host="web-1")


@pytest.mark.parametrize("hosts", [0, -1, True, 1.5, "12", 100_001, None])
def test_a_fleet_size_must_be_a_sane_whole_number(hosts: object) -> None:
    with pytest.raises(MalformedObject, match="field 'hosts'"):
        read_size(json.dumps({"hosts": hosts, "by": "web-1", "revision": "r"}).encode(), "size")


def test_a_stop_names_at_most_a_few_valid_hosts() -> None:
    with pytest.raises(MalformedObject, match="at most 20 hosts"):
        read_stop(encode(StopOrder("x", "web-1", tuple(f"h{i}" for i in range(21)))), "stop")
    with pytest.raises(MalformedObject, match="expected a host id"):
        read_stop(json.dumps({"reason": "x", "by": "web-1", "failed": ["a b"]}).encode(), "stop")


def test_error_text_is_printable_and_bounded() -> None:
    text = error_text("\x1b[31mred\x1b[0m " + "x" * 1000)
    assert "\x1b" not in text and len(text) == 500


# ---------------------------------------------------------------------------------------------- timing
def test_waits_grow_with_the_fleet_within_their_bounds() -> None:
    timing = Timing()
    assert all(0.5 <= timing.wait_s(10) <= 1.0 for _ in range(50))
    assert all(10.0 <= timing.wait_s(1000) <= 20.0 for _ in range(50))
    assert all(15.0 <= timing.wait_s(10_000) <= 30.0 for _ in range(50))
    assert all(5.0 <= timing.wait_s(10, waited_s=200) <= 10.0 for _ in range(50))  # behind long deployments
    assert all(15.0 <= timing.wait_s(10, waited_s=3600) <= 30.0 for _ in range(50))
    assert timing.lease_s(600) == 720 and timing.renew_s(600) == 240 and timing.fresh_s == 1800
