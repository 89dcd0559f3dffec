"""Issue 9, replayed against the real daemon: a hostile S3 server (tests/faults.py's HostileS3, a raw
socket) serves the section ``Target`` while ``Bystander`` deploys from SeaweedFS (items 10, 16, 17).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.agent import wait_until
from tests.attacks import KEY, Victim, marker_bundle
from tests.faults import Answer, HostileS3, object_headers

Answerer = Callable[[str, str], Answer]


@pytest.fixture
def hostile() -> Iterator[Callable[[Answerer], HostileS3]]:
    """Factory: ``hostile(answer)`` starts a HostileS3 answering with ``answer``; stopped after."""
    servers: list[HostileS3] = []

    def start(answer: Answerer) -> HostileS3:
        servers.append(HostileS3(answer).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def honest(body: bytes) -> Answer:
    """What a sound S3 answers for ``body``: its single-part ETag is its MD5."""
    return Answer(headers=object_headers(len(body), ETag=f'"{hashlib.md5(body).hexdigest()}"'), body=body)


def test_item10_a_trickling_body_is_bounded_by_deployment_timeout(
    victim: Victim, hostile: Callable[[Answerer], HostileS3]
) -> None:
    """Issue 9 item 10: "The download is not bounded by deployment_timeout: a body trickling at 100 B/s
    kept a deployment deploying (and its lock held) for as long as the server liked. The whole
    deployment, download included, is bounded; a stalled read times out"."""
    body = marker_bundle(victim.dest("Target"), "t") * 20  # a few KB: 100 B/s takes a minute
    trickle = Answer(headers=object_headers(len(body)), body=body, mode="trickle")
    server = hostile(lambda method, path: trickle)
    victim.write_config(endpoint_url=server.endpoint_url, deployment_timeout=3)
    victim.start()
    row = victim.wait_finished(1, timeout=45)
    assert row["failed_event"] == "DownloadBundle", row
    assert "deployment_timeout of 3s reached during DownloadBundle" in row["error"], row["error"]
    victim.bystander_deploys()
    victim.assert_clean_output()


def test_item16_item17_a_thousand_malformed_answers_neither_crash_nor_overflow_the_watcher(
    victim: Victim, hostile: Callable[[Answerer], HostileS3]
) -> None:
    """Issue 9 item 16: "Backoff counters overflow (2.0 ** (failures - 1) raises after 1,025 failures ...):
    cap the exponent." Item 17: "an invalid Last-Modified from S3 (traceback, "watcher crashed")". 1,100
    refusals in a row (a poll every millisecond), then malformed answers, then S3 answers soundly: Target
    deploys."""
    body = marker_bundle(victim.dest("Target"), "t")
    sound = threading.Event()

    def answer(method: str, path: str) -> Answer:
        if sound.is_set():
            return honest(body)
        if len(server.requests) > 1100:
            return Answer(headers=object_headers(len(body), **{"Last-Modified": "garbage"}))
        return Answer(status=403, headers={"Content-Type": "application/xml"})

    server = hostile(answer)
    victim.write_config(endpoint_url=server.endpoint_url, poll_interval="1ms")
    victim.start()
    wait_until(lambda: len(server.requests) > 1200, timeout=120, interval=0.5)
    sound.set()
    wait_until(lambda: (victim.dest("Target") / "marker").exists(), timeout=60)
    out = victim.daemon.output() if victim.daemon else ""
    assert out.count("failed: AccessDenied (403)") == 1, "each failed check logged again"
    assert f"HEAD s3://{victim.buckets['Target']}/{KEY}" in out and "malformed" in out
    victim.bystander_deploys()
    victim.assert_clean_output()


def test_item17_a_connection_reset_mid_get_is_named_a_reset(
    victim: Victim, hostile: Callable[[Answerer], HostileS3]
) -> None:
    """Issue 9 item 17: "a connection reset mid-GET reported as "cannot connect, check endpoint_url"."""
    body = marker_bundle(victim.dest("Target"), "t") * 10

    def answer(method: str, path: str) -> Answer:
        if method == "HEAD":
            return honest(body)
        return Answer(mode="reset_before_headers")  # as a crashed server or a middlebox does

    server = hostile(answer)
    victim.write_config(endpoint_url=server.endpoint_url)
    victim.start()
    row = victim.wait_finished(1)
    assert row["failed_event"] == "DownloadBundle", row
    assert "connection was reset by" in row["error"], row["error"]
    assert "cannot connect" not in row["error"]
    victim.bystander_deploys()
    victim.assert_clean_output()
