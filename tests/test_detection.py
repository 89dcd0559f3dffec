"""Detecting a new revision (SPEC §5): ``decide`` is pure, so every rule is one line of a table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from s3deploy.config import Section
from s3deploy.detection import Decision, decide
from s3deploy.source.s3 import Revision
from s3deploy.state.store import Deployment
from tests.agent import deployment

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REV = Revision(bucket="b-1", key="k", etag="e1", last_modified=NOW, size=1)
SECTION = Section(name="S", s3_bucket="b-1", target_file_key="k")


def attempt(status: str, identity: str = REV.identity, **fields: object) -> Deployment:
    return deployment(status=status, identity=identity, **fields)


@pytest.mark.parametrize(
    ("last", "baseline", "section", "deploy"),
    [
        (None, None, SECTION, True),  # a new host catches up
        (None, None, replace(SECTION, last_fetch_time=NOW), False),  # legacy: already deployed
        (None, None, replace(SECTION, last_fetch_time=NOW - timedelta(seconds=1)), True),  # newer upload
        (None, REV.identity, SECTION, False),  # the recorded baseline
        (None, "another", SECTION, True),  # the object changed since the baseline
        (attempt("succeeded"), None, SECTION, False),  # unchanged
        (attempt("succeeded", identity="other"), None, SECTION, True),  # the object changed
        (attempt("failed", failed_event="ValidateService"), None, SECTION, False),  # not retried
        (attempt("failed", failed_event="DownloadBundle", transient=True), None, SECTION, True),
        (attempt("failed", failed_event="DownloadBundle"), None, SECTION, False),  # a bad bundle
        (attempt("failed", identity="other"), None, SECTION, True),  # failed, then a new upload
        (attempt("interrupted"), None, SECTION, True),  # redeployed after a crash
        (attempt("running"), None, SECTION, True),  # decided again under the lock
    ],
)
def test_decide(last: Deployment | None, baseline: str | None, section: Section, deploy: bool) -> None:
    assert decide(REV, last, baseline, section).deploy is deploy


def test_a_revision_older_than_last_fetch_time_becomes_the_baseline() -> None:
    decision = decide(REV, None, None, replace(SECTION, last_fetch_time=NOW))
    assert decision == Decision(
        False, "not newer than last_fetch_time: recorded as already deployed", baseline=True
    )


def test_only_a_transient_download_failure_is_a_retry_and_says_which_deployment_failed() -> None:
    retry = decide(REV, attempt("failed", failed_event="DownloadBundle", transient=True), None, SECTION)
    assert retry.deploy and retry.retry and "d-TEST00001" in retry.reason
    failed = decide(REV, attempt("failed", failed_event="Install"), None, SECTION)
    assert not failed.deploy and not failed.retry and "--force" in failed.reason
