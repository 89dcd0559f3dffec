"""The watcher in-process: the detection rules, and download retries that back off (no sleeps needed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from s3deploy.config import Section
from s3deploy.runtime.context import AgentContext
from s3deploy.detection import decide
from s3deploy.source.s3 import Revision, S3Pool
from s3deploy.state.layout import StateLayout
from s3deploy.state.locks import SectionLocks
from s3deploy.state.store import Deployment, StateStore
from s3deploy.watcher import Watcher
from tests.agent import appspec, zip_bytes
from tests.s3server import Fault, FaultProxy

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REV = Revision(bucket="b-1", key="k", etag="e1", last_modified=NOW, size=1)
SECTION = Section(name="S", s3_bucket="b-1", target_file_key="k")


def attempt(status: str, identity: str = REV.identity, **kw: Any) -> Deployment:
    fields: dict[str, Any] = dict(
        id="d-TEST00001",
        section="S",
        bucket="b-1",
        key="k",
        etag="e1",
        version_id=None,
        identity=identity,
        status=status,
        started_at=NOW,
        finished_at=NOW,
        failed_event=None,
        error=None,
        rollback_of=None,
        restores=None,
        release_dir=None,
        log_path=None,
        output_tail="",
        forced=False,
    )
    fields.update(kw)
    return Deployment(**fields)


@pytest.mark.parametrize(
    ("last", "baseline", "section", "deploy"),
    [
        (None, None, SECTION, True),  # a new host catches up
        (None, None, replace(SECTION, last_fetch_time=NOW), False),  # legacy: already deployed
        (None, None, replace(SECTION, last_fetch_time=NOW - timedelta(seconds=1)), True),  # newer upload
        (None, REV.identity, SECTION, False),  # the recorded baseline
        (attempt("succeeded"), None, SECTION, False),  # unchanged
        (attempt("succeeded", identity="other"), None, SECTION, True),  # the object changed
        (attempt("failed", failed_event="ValidateService"), None, SECTION, False),  # not retried
        (attempt("failed", failed_event="DownloadBundle", transient=True), None, SECTION, True),
        (attempt("failed", failed_event="DownloadBundle"), None, SECTION, False),  # a bad bundle
        (attempt("interrupted"), None, SECTION, True),  # redeployed after a crash
    ],
)
def test_decide(last: Deployment | None, baseline: str | None, section: Section, deploy: bool) -> None:
    assert decide(REV, last, baseline, section).deploy is deploy


async def test_download_failing_on_s3_errors_is_retried_with_backoff(
    tmp_path: Path, fault_proxy: FaultProxy, make_bucket: Callable[..., str], s3_client: Any, pool: S3Pool
) -> None:
    bucket = make_bucket()
    s3_client.put_object(
        Bucket=bucket,
        Key="k.zip",
        Body=zip_bytes({"appspec.yml": appspec(tmp_path / "www", {}), "app/x": "x"}),
    )
    section = Section(
        name="Web",
        s3_bucket=bucket,
        target_file_key="k.zip",
        endpoint_url=fault_proxy.endpoint_url,
        poll_interval_s=60,
    )
    state = StateStore(tmp_path / "state" / "state.db")
    watcher = Watcher(section, AgentContext(StateLayout(tmp_path / "state"), state, pool, SectionLocks(tmp_path / "state")))
    fault_proxy.add(Fault("GET", 1000, status=503, code="ServiceUnavailable"))
    try:
        first = await watcher.poll_once()
        assert first is not None and first.status == "failed" and first.failed_event == "DownloadBundle"
        assert first.transient
        # Polls inside the backoff window do not try again (no new failed row each poll).
        for _ in range(5):
            assert await watcher.poll_once() is None
        assert len(state.history("Web")) == 1
        # Once the window has passed (and S3 has healed) the same revision deploys.
        fault_proxy.faults.clear()
        watcher._download_retry_at = 0.0
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded"
        assert (tmp_path / "www" / "x").read_text() == "x"
    finally:
        state.close()


async def test_idle_polls_skip_the_database_but_see_other_processes_changes(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any, pool: S3Pool
) -> None:
    bucket = make_bucket(versioned=True)

    def upload(text: str) -> None:
        s3_client.put_object(
            Bucket=bucket,
            Key="k.zip",
            Body=zip_bytes({"appspec.yml": appspec(tmp_path / "www", {}), "app/x": text}),
        )

    upload("1")
    section = Section(
        name="Web", s3_bucket=bucket, target_file_key="k.zip", endpoint_url=seaweed.endpoint_url
    )
    state = StateStore(tmp_path / "state" / "state.db")
    other = StateStore(tmp_path / "state" / "state.db")  # another process's connection (a CLI command)
    agent = AgentContext(StateLayout(tmp_path / "state"), state, pool, SectionLocks(tmp_path / "state"))
    watcher = Watcher(section, agent)
    reads = 0
    get_section = state.get_section

    def counting_get_section(name: str) -> Any:
        nonlocal reads
        reads += 1
        return get_section(name)

    state.get_section = counting_get_section  # type: ignore[method-assign]
    try:
        assert (await watcher.poll_once()) is not None
        assert await watcher.poll_once() is None  # unchanged: reads the state once more, then stays quiet
        reads = 0
        for _ in range(5):
            assert await watcher.poll_once() is None
        assert reads == 0

        other.set_suspended("Web", True)  # `s3deploy suspend Web` while the daemon runs
        agent.forget_state_token()  # as if DATA_VERSION_TTL_S had passed
        upload("2")
        assert await watcher.poll_once() is None
        assert reads > 0 and (tmp_path / "www" / "x").read_text() == "1"

        other.set_suspended("Web", False)
        agent.forget_state_token()
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded"
        assert (tmp_path / "www" / "x").read_text() == "2"
    finally:
        state.close()
        other.close()
