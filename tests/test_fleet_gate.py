"""The fleet wiring in one process (SPEC §10): config keys, --host-id, what hooks see, and the watcher's
gate against a real SeaweedFS, with agents opened in-process (each its own state directory and host id)
where a test needs to hold a slot or shorten the product's timings."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.config import Section
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.fleet.coordinator import Coordinator
from s3deploy.fleet.policy import MaxConcurrent, Timing
from s3deploy.fleet_gate import _this_process, fleet_settings
from s3deploy.runtime.agent import Agent
from s3deploy.source.revision import Endpoint, Revision
from s3deploy.state.fleet import FleetRecords
from tests.agent import appspec, cli, eventually, hook_script, open_agent, write_config, zip_bytes
from tests.fleetagents import KEY, SECTION, bundle, reports, stamps, states
from tests.s3server import FaultProxy
from tests.test_fleet_agents import stripping_proxy as stripping_proxy  # noqa: F401 - the fixture


def _section(bucket: str, endpoint_url: str, www: Path, **fields: Any) -> Section:
    values: dict[str, Any] = dict(
        name=SECTION, s3_bucket=bucket, target_file_key=KEY, endpoint_url=endpoint_url,
        poll_interval_s=0.2, deployment_timeout_s=60.0, destination=www,
        max_concurrent=MaxConcurrent.parse("1"),
    )  # fmt: skip
    values.update(fields)
    return Section(**values)


@pytest.fixture
def agent_of(tmp_path: Path) -> Callable[..., Any]:
    """``agent_of(name, section, **options)``: an in-process Agent with host id ``name``."""

    def make(name: str, section: Section, **options: Any) -> Any:
        return open_agent(tmp_path / name / "state", section, host_id=name, **options)

    return make


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_concurrent", "0", "a number of hosts from 1 to 10000 or a share of the fleet"),
        ("max_concurrent", "101%", "a number of hosts from 1 to 10000 or a share of the fleet"),
        ("max_concurrent", "two", "a number of hosts from 1 to 10000 or a share of the fleet"),
        ("max_failures", "-1", "a whole number from 0 to"),
        ("max_failures", "some", "a whole number from 0 to"),
        ("fleet_prefix", "/fleet/", "a key prefix ending in '/'"),
        ("fleet_prefix", "fleet", "a key prefix ending in '/'"),
        ("fleet_prefix", "a//b/", "a key prefix ending in '/'"),
    ],
)
def test_a_bad_fleet_key_exits_2_naming_file_section_and_key(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    config = write_config(
        tmp_path / "config.ini", {SECTION: {"s3_bucket": "b-1", "target_file_key": KEY, key: value}}
    )
    proc = cli("validate", "-c", str(config))
    assert proc.returncode == 2
    assert f"{config} [{SECTION}] {key}: expected {expected}" in proc.stderr
    assert f'got "{value}"' in proc.stderr


def test_fleet_keys_parse_and_default(tmp_path: Path) -> None:
    from s3deploy.config import load_config

    config = write_config(
        tmp_path / "config.ini",
        {
            "A": {"s3_bucket": "b-1", "target_file_key": KEY, "max_concurrent": "12.5%", "max_failures": 0},
            "B": {"s3_bucket": "b-1", "target_file_key": KEY, "max_concurrent": 3, "max_failures": "2",
                  "fleet_prefix": "ops/fleet/"},
            "C": {"s3_bucket": "b-1", "target_file_key": KEY},
        },
    )  # fmt: skip
    a, b, c = load_config(config).sections.values()
    assert (a.max_concurrent, a.max_failures, a.fleet_prefix) == (
        MaxConcurrent(share_bp=1250),
        0,
        ".s3deploy/",
    )
    assert (b.max_concurrent, b.max_failures, b.fleet_prefix) == (MaxConcurrent(count=3), 2, "ops/fleet/")
    assert c.max_concurrent is None
    assert a.with_overrides(max_concurrent="2").max_concurrent == MaxConcurrent(count=2)


def test_an_invalid_host_id_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.ini", {SECTION: {"s3_bucket": "b-1", "target_file_key": KEY}})
    for args, env in (
        (["deploy", SECTION, "--host-id", "web/1"], None),
        (["run", "--once", "--all", "--host-id", "_web"], None),
        (["fleet", "status", SECTION, "--host-id", "x" * 200], None),
        (["deploy", SECTION], {"S3DEPLOY_HOST_ID": "web 1"}),
    ):
        proc = cli(*args, "-c", str(config), "--state-dir", str(tmp_path / "state"),
                   env=None if env is None else {**os.environ, **env})  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert "--host-id / S3DEPLOY_HOST_ID: expected a host id of 1 to 128 letters" in proc.stderr


def test_fleet_commands_refuse_a_section_that_is_not_coordinated(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.ini", {SECTION: {"s3_bucket": "b-1", "target_file_key": KEY}})
    for command in ("status", "stop", "resume"):
        proc = cli("fleet", command, SECTION, "-c", str(config))
        assert proc.returncode == 2, proc.stderr
        assert f"[{SECTION}] is not a coordinated section: set max_concurrent" in proc.stderr


# ---------------------------------------------------------------------------------------------- hooks
def test_hooks_of_every_section_see_the_host_id(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], seaweed: SeaweedServer
) -> None:
    bucket, seen = make_bucket(), tmp_path / "seen"
    hook = hook_script(f'echo "$S3DEPLOY_HOST_ID" >> {seen}')
    config = write_config(
        tmp_path / "config.ini",
        {
            "Plain": {
                "s3_bucket": bucket,
                "target_file_key": "plain.zip",
                "endpoint_url": seaweed.endpoint_url,
            }
        },
    )
    state = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    for i, (flag, env) in enumerate(
        ((["--host-id", "web-7"], None), ([], {"S3DEPLOY_HOST_ID": "web-env"}), ([], {}))
    ):
        files = {"appspec.yml": appspec(None, {"AfterInstall": "hook.sh"}), "hook.sh": hook, "n": str(i)}
        s3_client.put_object(Bucket=bucket, Key="plain.zip", Body=zip_bytes(files))
        environ = {k: v for k, v in os.environ.items() if k != "S3DEPLOY_HOST_ID"}
        proc = cli("deploy", "Plain", *flag, *state, env={**environ, **(env or {})})
        assert proc.returncode == 0, proc.stderr
    assert seen.read_text().split() == ["web-7", "web-env", socket.gethostname()]


# ---------------------------------------------------------------------------------------------- the gate
async def _current(agent: Agent, section: Section) -> tuple[Revision, Coordinator]:
    """The section's object as ``agent`` sees it now, and ``agent``'s host coordinator of its fleet."""
    ctx = await agent.context()
    endpoint = Endpoint(endpoint_url=section.endpoint_url)
    rev = await ctx.pool.head(endpoint, section.s3_bucket, section.target_file_key)
    return rev, ctx.host_fleet().coordinator(fleet_settings(section, endpoint))


async def _hold_slot(agent: Agent, section: Section, rev: Revision) -> AsyncIterator[None]:
    """Hold slot-0 of ``rev``'s rollout as ``agent``'s host (the library's API, as a deploying host)."""
    _, coordinator = await _current(agent, section)
    async with coordinator.rollout(rev).slot(asyncio.Event(), deployment_id="d-HOLDER001") as slot:
        yield
        await slot.finish("succeeded")


async def test_deploy_force_ignores_a_stop_but_still_waits_for_a_slot(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], seaweed: SeaweedServer,
    agent_of: Callable[..., Any],
) -> None:  # fmt: skip
    bucket, trace = make_bucket(), tmp_path / "trace"
    section = _section(bucket, seaweed.endpoint_url, tmp_path / "www")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(trace, "v1"))
    async with agent_of("web-1", section) as holder, agent_of("web-2", section) as forced:
        rev, coordinator = await _current(holder, section)
        held = _hold_slot(holder, section, rev)
        await held.__anext__()
        assert await coordinator.stop(rev)
        watcher = await forced.watcher(section)
        deploying = asyncio.create_task(watcher.poll_once(force=True))
        await eventually(lambda: states(s3_client, bucket).get("web-2") == "waiting")
        await asyncio.sleep(1.0)  # several looks at the slots: none may start a deployment
        assert not deploying.done() and not trace.exists()
        with pytest.raises(StopAsyncIteration):
            await held.__anext__()  # web-1 reports succeeded and frees the slot
        done = await asyncio.wait_for(deploying, 60)
    assert done is not None and done.status == "succeeded" and done.forced
    assert states(s3_client, bucket) == {"web-1": "succeeded", "web-2": "succeeded"}
    assert [s.host for s in stamps(trace)] == ["web-2", "web-2"]


async def test_a_stopped_rollout_is_looked_at_again_only_after_stop_recheck_s_and_then_deploys(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], fault_proxy: FaultProxy,
    agent_of: Callable[..., Any],
) -> None:  # fmt: skip
    bucket, trace = make_bucket(), tmp_path / "trace"
    section = _section(bucket, fault_proxy.endpoint_url, tmp_path / "www")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(trace, "v1"))
    slow = Timing(stop_recheck_s=3600.0)
    async with agent_of("web-1", section, fleet_timing=slow) as agent:
        rev, coordinator = await _current(agent, section)
        await coordinator.stop(rev, "stopped by the test")
        watcher = await agent.watcher(section)
        assert await watcher.poll_once() is None
        assert states(s3_client, bucket) == {"web-1": "skipped"}
        record = await asyncio.to_thread(FleetRecords(agent.state).get, SECTION)
        assert record.skipped_identity == rev.identity and "stopped by the test" in (
            record.skipped_reason or ""
        )
        assert (await agent.status())[0]["state"] == "stopped"

        await coordinator.resume(rev)
        stop_gets = fault_proxy.count("GET")
        for _ in range(3):
            (await agent.context()).forget_state_token()
            watcher._quiet = None  # every poll decides again (as after another process wrote the state)
            assert await watcher.poll_once() is None
        assert fault_proxy.count("GET") == stop_gets  # no GET (nor LIST) of the stop object meanwhile
        assert not trace.exists()

    # A shorter recheck (a new process here) reads the stop object again: it is gone, so it deploys.
    async with agent_of("web-1", section, fleet_timing=Timing(stop_recheck_s=0.1)) as agent:
        done = await (await agent.watcher(section)).poll_once()
        assert done is not None and done.status == "succeeded"
        assert (await agent.status())[0]["state"] == "idle"
    assert states(s3_client, bucket) == {"web-1": "succeeded"}


async def test_a_restart_frees_a_slot_held_by_a_dead_process_and_reports_its_recorded_outcome(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], seaweed: SeaweedServer,
    agent_of: Callable[..., Any],
) -> None:  # fmt: skip
    """The process died after its deployment was recorded succeeded but before it told the fleet."""
    bucket, trace = make_bucket(), tmp_path / "trace"
    section = _section(bucket, seaweed.endpoint_url, tmp_path / "www")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(trace, "v1"))
    async with agent_of("web-1", section) as agent:
        rev, coordinator = await _current(agent, section)
        rollout = coordinator.rollout(rev)
        lease = await rollout.table.try_take(await rollout.table.look(), 1, "d-DEAD00001")
        assert lease is not None
        await rollout.ledger.report("deploying", "d-DEAD00001")
        dep = await asyncio.to_thread(
            agent.state.start, section=SECTION, bucket=bucket, key=KEY, etag=rev.etag, version_id=None,
            identity=rev.identity, release_dir=None, log_path=None, deployment_id="d-DEAD00001",
        )  # fmt: skip
        await asyncio.to_thread(agent.state.finish, dep.id, "succeeded")
        # pid 1 with another start time: a holder that is surely gone (a reused pid is not taken for it)
        await asyncio.to_thread(FleetRecords(agent.state).hold_slot, SECTION, rev.identity, dep.id, "1:0")

        assert await (await agent.watcher(section)).poll_once() is None  # unchanged: nothing to deploy
        assert (await rollout.table.look()).slots == {}
        assert reports(s3_client, bucket)["web-1"]["state"] == "succeeded"
        assert (await asyncio.to_thread(FleetRecords(agent.state).get, SECTION)).slot_identity is None
    assert not trace.exists()


async def test_a_slot_held_by_a_live_process_of_this_host_is_left_alone(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], seaweed: SeaweedServer,
    agent_of: Callable[..., Any],
) -> None:  # fmt: skip
    """A one-shot `deploy` (or this daemon before a reload) holds it: a new watcher must not free it."""
    bucket, trace = make_bucket(), tmp_path / "trace"
    section = _section(bucket, seaweed.endpoint_url, tmp_path / "www")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(trace, "v1"))
    async with agent_of("web-1", section) as agent:
        rev, coordinator = await _current(agent, section)
        rollout = coordinator.rollout(rev)
        lease = await rollout.table.try_take(await rollout.table.look(), 1, "d-LIVE00001")
        assert lease is not None
        await asyncio.to_thread(
            FleetRecords(agent.state).hold_slot, SECTION, rev.identity, "d-LIVE00001", _this_process()
        )
        watcher = await agent.watcher(section)
        waiting = asyncio.create_task(watcher.poll_once())
        await eventually(lambda: states(s3_client, bucket).get("web-1") == "waiting")
        assert set((await rollout.table.look()).slots) == {0}  # still held: the watcher waits for it
        await rollout.table.free(lease)
        done = await asyncio.wait_for(waiting, 60)
    assert done is not None and done.status == "succeeded"


def test_status_json_has_a_fleet_object_only_for_coordinated_sections(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.ini",
        {
            "Plain": {"s3_bucket": "b-1", "target_file_key": KEY},
            SECTION: {"s3_bucket": "b-1", "target_file_key": KEY, "max_concurrent": "25%", "max_failures": 1},
        },
    )
    proc = cli("status", "--json", "-c", str(config), "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0, proc.stderr
    plain, coordinated = json.loads(proc.stdout)["sections"]
    assert plain["fleet"] is None and plain["state"] == "never"
    assert coordinated["fleet"] == {
        "max_concurrent": "25%",
        "max_failures": 1,
        "stopped": None,
        "refused": None,
    }


def test_a_one_shot_deploy_through_a_store_without_conditional_writes_fails_saying_why(
    tmp_path: Path, s3_client: Any, make_bucket: Callable[..., str], stripping_proxy: FaultProxy
) -> None:
    bucket, trace = make_bucket(), tmp_path / "trace"
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bundle(trace, "v1"))
    keys = {"s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": stripping_proxy.endpoint_url,
            "destination": tmp_path / "www", "max_concurrent": 1}  # fmt: skip
    config = write_config(tmp_path / "config.ini", {SECTION: keys})
    proc = cli(
        "deploy", SECTION, "-c", str(config), "--state-dir", str(tmp_path / "state"), "--host-id", "web-1"
    )
    assert proc.returncode == 1, proc.stdout
    assert "does not honour conditional writes" in proc.stderr and not trace.exists()
    status = cli("status", "--json", "-c", str(config), "--state-dir", str(tmp_path / "state"))
    assert (
        "does not honour conditional writes" in json.loads(status.stdout)["sections"][0]["fleet"]["refused"]
    )
