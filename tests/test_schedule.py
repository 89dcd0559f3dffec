"""Watchers on their bucket's poll schedule (source/poller.py, watcher.py), in-process against SeaweedFS:
one LIST per interval whatever the watchers' phase, failures backed off without a LIST per section, and
wake-ups that poll at once, at most once a second, and are never lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3deploy.config import Section
from s3deploy.runtime.agent import Agent
from s3deploy.source.poller import BucketPoller
from s3deploy.watcher import WAKE_MIN_GAP_S, Watcher
from tests.agent import appspec, db_history, eventually, hook_script, open_agent, zip_bytes
from tests.s3server import Fault, FaultProxy


@dataclass
class Bucket:
    """Sections on one bucket, each with its own object and destination under ``root``."""

    root: Path
    name: str
    s3: Any
    endpoint: str
    interval_s: float

    def upload(self, i: int, text: str, hook: str = "") -> None:
        hooks = {"ValidateService": "scripts/validate.sh"} if hook else {}
        files = {"appspec.yml": appspec(self.root / f"www{i}", hooks), "app/x": text}
        if hook:
            files["scripts/validate.sh"] = hook_script(hook)
        self.s3.put_object(Bucket=self.name, Key=f"apps/app{i}.zip", Body=zip_bytes(files))

    def section(self, i: int) -> Section:
        return Section(
            name=f"app{i}",
            s3_bucket=self.name,
            target_file_key=f"apps/app{i}.zip",
            endpoint_url=self.endpoint,
            poll_interval_s=self.interval_s,
        )

    def deployed(self, i: int) -> str | None:
        path = self.root / f"www{i}" / "x"
        return path.read_text() if path.exists() else None

    def succeeded(self, i: int) -> int:
        return sum(d["status"] == "succeeded" for d in db_history(self.root / "state", f"app{i}"))


@dataclass
class Polls:
    """An observer counting each section's polls (the watcher tells it after every check)."""

    done: list[tuple[str, str | None]] = field(default_factory=list)

    def polled(self, section: str, error: str | None) -> None:
        self.done.append((section, error))

    def deployment_started(self, section: str, deployment_id: str) -> None:
        pass

    def deployment_finished(self, deployment: Any) -> None:
        pass

    def errors(self, section: str) -> int:
        return sum(1 for name, error in self.done if name == section and error is not None)


@contextlib.asynccontextmanager
async def watching(agent: Agent, sections: list[Section]) -> AsyncIterator[dict[str, Watcher]]:
    """Run a watcher per section (``Watcher.run``, as the daemon does); stopped and awaited after."""
    watchers = {s.name: await agent.watcher(s) for s in sections}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in watchers.values()]
    try:
        yield watchers
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def poller_of(agent: Agent, section: Section) -> BucketPoller:
    ctx = agent._context
    assert ctx is not None
    found = ctx.pool.lister(Watcher(section, ctx).endpoint, section.s3_bucket)
    assert found is not None
    return found


async def test_watchers_deployed_at_different_moments_share_one_list_per_interval(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """Each section's deployment ends at its own moment (hooks longer than the interval, by a quarter of
    a second more each): a per-watcher schedule would then poll at six moments per interval. The bucket
    is still listed once per interval, and nothing changing costs no HEAD."""
    bucket = Bucket(tmp_path, make_bucket(), s3_client, seaweed.endpoint_url, interval_s=1.5)
    n = 6
    for i in range(n):
        bucket.upload(i, "v1", hook=f"sleep {bucket.interval_s + 0.25 * i}")
    sections = [bucket.section(i) for i in range(n)]
    async with open_agent(tmp_path / "state", *sections, exclusive=True) as agent:
        async with watching(agent, sections):
            await eventually(lambda: all(bucket.succeeded(i) == 1 for i in range(n)))
            await asyncio.sleep(bucket.interval_s)  # every watcher back to polling
            poller = poller_of(agent, sections[0])
            lists, heads, started = poller.lists, poller.heads, time.monotonic()
            await asyncio.sleep(4 * bucket.interval_s)
            rounds = poller.lists - lists
            elapsed = time.monotonic() - started
            assert heads == poller.heads  # nothing changed: the listing stood in for every HEAD
    assert 1 <= rounds <= elapsed / bucket.interval_s + 1


async def test_a_key_failing_on_its_own_is_retried_with_its_own_heads_not_lists(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = Bucket(tmp_path, make_bucket(), s3_client, seaweed.endpoint_url, interval_s=0.5)
    bucket.upload(0, "v1")
    bucket.upload(1, "v1")  # app2's object is not uploaded yet: NoSuchKey
    sections = [bucket.section(i) for i in range(3)]
    polls = Polls()
    async with open_agent(tmp_path / "state", *sections, exclusive=True) as agent:
        (await agent.context()).observer = polls
        async with watching(agent, sections):
            await eventually(lambda: bucket.deployed(0) == bucket.deployed(1) == "v1")
            await eventually(lambda: polls.errors("app2") >= 2)
            poller = poller_of(agent, sections[0])
            lists, heads, errors, started = poller.lists, poller.heads, polls.errors("app2"), time.monotonic()
            await eventually(lambda: polls.errors("app2") >= errors + 3)
            elapsed = time.monotonic() - started
            assert poller.lists - lists <= elapsed / bucket.interval_s + 1  # no LIST per retry
            assert poller.heads - heads >= 3  # the retries are HEADs of app2's key
            bucket.upload(2, "v1")
            await eventually(lambda: bucket.deployed(2) == "v1")
            assert poller.due("apps/app2.zip") == poller.due("apps/app0.zip")  # back on the schedule


async def test_a_failing_list_is_retried_once_for_the_whole_bucket(
    tmp_path: Path, fault_proxy: FaultProxy, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """S3 failing every LIST: all watchers of the bucket are due at the one backed-off retry (one LIST
    for all), and all recover together once S3 answers again."""
    bucket = Bucket(tmp_path, make_bucket(), s3_client, fault_proxy.endpoint_url, interval_s=0.5)
    n = 4
    for i in range(n):
        bucket.upload(i, "v1")
    sections = [bucket.section(i) for i in range(n)]
    polls = Polls()
    async with open_agent(tmp_path / "state", *sections, exclusive=True) as agent:
        (await agent.context()).observer = polls
        async with watching(agent, sections):
            await eventually(lambda: all(bucket.succeeded(i) == 1 for i in range(n)))
            fault_proxy.add(Fault("GET", 10_000, status=503, code="SlowDown"))  # HEADs still work
            await eventually(lambda: all(polls.errors(s.name) >= 2 for s in sections))
            poller = poller_of(agent, sections[0])
            assert len({poller.due(s.target_file_key) for s in sections}) == 1
            fault_proxy.faults.clear()
            for i in range(n):
                bucket.upload(i, "v2")
            await eventually(lambda: all(bucket.deployed(i) == "v2" for i in range(n)))


async def test_a_wake_polls_at_once_later_wakes_wait_a_second_and_none_is_lost(
    tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    bucket = Bucket(tmp_path, make_bucket(), s3_client, seaweed.endpoint_url, interval_s=300)
    bucket.upload(0, "v1")
    section = bucket.section(0)
    polls = Polls()
    async with open_agent(tmp_path / "state", section, exclusive=True) as agent:
        (await agent.context()).observer = polls
        async with watching(agent, [section]) as watchers:
            await eventually(lambda: bucket.deployed(0) == "v1")
            bucket.upload(0, "v2")
            watchers["app0"].wake()  # 300 s before the next scheduled poll
            await eventually(lambda: bucket.deployed(0) == "v2")

            before, started = len(polls.done), time.monotonic()
            for _ in range(10):  # a burst of wakes polls at most once a second
                watchers["app0"].wake()
                await asyncio.sleep(0.05)
            bucket.upload(0, "v3")
            watchers["app0"].wake()  # within a second of the last poll: delayed, never lost
            await eventually(lambda: bucket.deployed(0) == "v3")
            elapsed = time.monotonic() - started
            assert len(polls.done) - before <= elapsed / WAKE_MIN_GAP_S + 2
