"""The watcher in-process: download retries that back off, idle polls that skip the database, and a
poll loop that no error leaves (no sleeps needed: ``poll_once`` is one check)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.config import Section
from s3deploy.source.s3 import Endpoint, Revision, S3Pool
from tests.agent import appspec, open_agent, zip_bytes
from tests.s3server import Fault, FaultProxy


async def test_download_failing_on_s3_errors_is_retried_with_backoff(
    tmp_path: Path, fault_proxy: FaultProxy, make_bucket: Callable[..., str], s3_client: Any
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
    async with open_agent(tmp_path / "state", section) as agent:
        watcher = await agent.watcher(section)
        fault_proxy.add(Fault("GET", 1000, status=503, code="ServiceUnavailable"))
        first = await watcher.poll_once()
        assert first is not None and first.status == "failed" and first.failed_event == "DownloadBundle"
        assert first.transient
        # Polls inside the backoff window do not try again (no new failed row each poll).
        for _ in range(5):
            assert await watcher.poll_once() is None
        assert len(agent.state.history("Web")) == 1
        # Once the window has passed (and S3 has healed) the same revision deploys.
        fault_proxy.faults.clear()
        watcher._download_retry_at = 0.0
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded"
        assert (tmp_path / "www" / "x").read_text() == "x"


async def test_idle_polls_skip_the_database_but_see_other_processes_changes(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any
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
    async with (
        open_agent(tmp_path / "state", section, exclusive=True) as agent,
        open_agent(tmp_path / "state", section) as other,  # another process (a CLI command)
    ):
        watcher = await agent.watcher(section)
        ctx = await agent.context()
        reads = 0
        get_section = agent.state.get_section

        def counting_get_section(name: str) -> Any:
            nonlocal reads
            reads += 1
            return get_section(name)

        agent.state.get_section = counting_get_section  # type: ignore[method-assign]
        assert (await watcher.poll_once()) is not None
        assert await watcher.poll_once() is None  # unchanged: reads the state once more, then stays quiet
        reads = 0
        for _ in range(5):
            assert await watcher.poll_once() is None
        assert reads == 0

        await other.set_suspended("Web", True)  # `s3deploy suspend Web` while the daemon runs
        ctx.forget_state_token()  # as if DATA_VERSION_TTL_S had passed
        upload("2")
        assert await watcher.poll_once() is None
        assert reads > 0 and (tmp_path / "www" / "x").read_text() == "1"

        await other.set_suspended("Web", False)
        ctx.forget_state_token()
        done = await watcher.poll_once()
        assert done is not None and done.status == "succeeded"
        assert (tmp_path / "www" / "x").read_text() == "2"


async def test_an_unexpected_error_in_a_poll_is_logged_and_the_loop_goes_on(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A bug (here an unexpected exception type from the S3 layer) never ends the watcher's loop; the
    next polls go on with backoff and deploy once it is gone."""
    bucket = make_bucket()
    s3_client.put_object(
        Bucket=bucket,
        Key="k.zip",
        Body=zip_bytes({"appspec.yml": appspec(tmp_path / "www", {}), "app/x": "1"}),
    )
    section = Section(
        name="Web", s3_bucket=bucket, target_file_key="k.zip", endpoint_url=seaweed.endpoint_url,
        poll_interval_s=0.05,
    )  # fmt: skip
    calls = 0
    real_poll = S3Pool.poll

    async def flaky_poll(self: S3Pool, ep: Endpoint, bucket: str, key: str, **kwargs: Any) -> Revision:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise KeyError("Last-Modified")
        return await real_poll(self, ep, bucket, key, **kwargs)

    monkeypatch.setattr(S3Pool, "poll", flaky_poll)
    async with open_agent(tmp_path / "state", section, exclusive=True) as agent:
        watcher = await agent.watcher(section)
        stop = asyncio.Event()
        with caplog.at_level(logging.ERROR, logger="s3deploy.watcher"):
            task = asyncio.create_task(watcher.run(stop))
            try:
                while not (tmp_path / "www" / "x").exists():
                    assert not task.done(), task
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task
    assert calls > 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("KeyError: 'Last-Modified'" in r.getMessage() for r in errors)
    assert not any(r.exc_info for r in errors)  # no traceback below DEBUG
