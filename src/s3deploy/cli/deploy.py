"""One-shot deployments while the daemon runs (or not): `deploy NAME`, `rollback NAME`.

SIGTERM/SIGINT stop the running hooks; the deployment is recorded ``interrupted`` and the command exits 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s3deploy.cli.options import (
    EXIT_FAILED,
    ConfigOpt,
    HostIdOpt,
    JsonOpt,
    LogFileOpt,
    LogFormatOpt,
    LogLevelOpt,
    SectionArg,
    StateDirOpt,
    fail,
    host_id_of,
    load,
    setup,
    state_dir_of,
    with_agent,
)
from s3deploy.cli.output import progress_bars, say

if TYPE_CHECKING:
    from s3deploy.runtime.agent import Agent, CheckResult
    from s3deploy.state.store import Deployment


def _report(dep: Deployment, *, as_json: bool, message: str | None = None) -> None:
    """Print how a deployment ended; exit 1 when it did not succeed."""
    if as_json:
        print(json.dumps(dep.to_json(), indent=2))
    elif dep.status == "succeeded":
        say(message or f"{dep.section}: {dep.id} succeeded")
    else:
        say(f"{dep.section}: {dep.id} {dep.status} in {dep.failed_event}: {dep.error}")
        if dep.log_path:
            say(f"{dep.section}: hook output in {dep.log_path}; see `s3deploy history {dep.section}`")
    if dep.status != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _nothing(name: str, message: str, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"section": name, "deployment": None, "message": message}))
    else:
        say(message)


def why_nothing(name: str, status: dict[str, Any]) -> str:
    """Why ``deploy NAME`` deployed nothing, from the section's status (the SPEC's S object)."""
    last = status.get("last") or {}
    fleet = status.get("fleet") or {}
    if status.get("state") == "stopped":
        return (
            f"{name}: not deploying: the fleet rollout of this revision is stopped ({fleet.get('stopped')}); "
            f"`s3deploy fleet resume {name}` lets it go on, deploy --force deploys it on this host anyway"
        )
    if status.get("state") == "failed":
        return (
            f"{name}: not deploying: this revision failed in deployment {last.get('id')} "
            f"({last.get('failed_event')}: {last.get('error')}); it is not retried until the object "
            "changes: deploy --force retries it"
        )
    return f"{name}: nothing new to deploy: the object is unchanged (deploy --force redeploys it)"


def deploy(
    name: SectionArg,
    force: Annotated[
        bool, typer.Option("--force", help="Redeploy even an unchanged or failed revision")
    ] = False,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Check a section now and deploy if its object changed (safe while the daemon runs).

    Exit 0 when it deployed or there was nothing new, 1 when the deployment failed, 3 when another
    s3deploy process (the daemon) is deploying this section right now.
    """
    setup(log_level, log_format, log_file)
    cfg = load(config, name)
    host = host_id_of(host_id, cfg)
    with progress_bars(not json_) as progress:

        async def deploy_and_explain(agent: Agent) -> tuple[CheckResult, list[dict[str, Any]]]:
            result = await agent.deploy_now(name, force=force)
            nothing = result.deployment is None and not (result.suspended or result.error)
            return result, (await agent.status([name]) if nothing else [])

        result, status = with_agent(
            cfg, state_dir_of(state_dir), deploy_and_explain, progress=progress, host_id=host
        )
    if result.suspended:
        message = f"{name}: suspended, not deploying (`s3deploy resume {name}`, or deploy --force)"
        _nothing(name, message, as_json=json_)
    elif result.error:
        raise fail(result.error, EXIT_FAILED)
    elif result.deployment is None:
        _nothing(name, why_nothing(name, status[0]), as_json=json_)
    else:
        _report(result.deployment, as_json=json_)


def rollback(
    name: SectionArg,
    to: Annotated[str | None, typer.Option("--to", help="Deployment id whose release to reinstall")] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Redeploy the previous successful release (or --to ID) from disk.

    The daemon does not redeploy the revision this replaces: only a new upload deploys again.
    """
    setup(log_level, log_format, log_file)
    cfg = load(config, name)
    host = host_id_of(host_id, cfg)
    dep = with_agent(cfg, state_dir_of(state_dir), lambda agent: agent.rollback(name, to), host_id=host)
    _report(
        dep,
        as_json=json_,
        message=f"{name}: {dep.id} succeeded: release of {dep.restores} reinstalled"
        + (f" (replacing {dep.rollback_of})" if dep.rollback_of else ""),
    )
