"""Commands about the sections and their state: list, status, history, suspend, resume.

None of them talks to S3: they answer from config.ini and the state database alone.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3deploy.cli.options import (
    ConfigOpt,
    JsonOpt,
    SectionArg,
    StateDirOpt,
    complete_section,
    load,
    state_dir_of,
    with_agent,
)
from s3deploy.cli.output import print_table, say
from s3deploy.cli.report import HISTORY_COLUMNS, STATUS_COLUMNS, history_row, status_row
from s3deploy.config import Config

#: Most deployments `history --limit` asks for (SQLite's integers are 64-bit; no section has more).
MAX_HISTORY_LIMIT = 1_000_000_000


def print_sections(cfg: Config, *, as_json: bool) -> None:
    rows = [
        {
            "name": s.name,
            "bucket": s.s3_bucket,
            "key": s.target_file_key,
            "profile": s.profile_name,
            "endpoint": s.endpoint_url,
            "region": s.region,
            "destination": str(s.destination or "") or None,
            "poll_interval": s.poll_interval_s,
        }
        for s in cfg.sections.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    columns = ("name", "bucket", "key", "profile", "endpoint")
    print_table(f"sections in {cfg.path}", columns, [[r[c] for c in columns] for r in rows])


def list_(json_: JsonOpt = False, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """List the configured sections with bucket, key, profile and endpoint."""
    print_sections(load(config), as_json=json_)


def status(
    names: Annotated[
        list[str] | None, typer.Argument(help="Sections (default: all)", autocompletion=complete_section)
    ] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Per section: state, installed release, last attempt."""
    cfg = load(config, *(names or ()))
    rows = with_agent(cfg, state_dir_of(state_dir), lambda agent: agent.status(names or ()))
    if json_:
        print(json.dumps({"sections": rows}, indent=2))
        return
    print_table("s3deploy status", STATUS_COLUMNS, [status_row(r) for r in rows])


def history(
    name: SectionArg,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, max=MAX_HISTORY_LIMIT, help="At most N deployments"),
    ] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Past deployments of a section, newest first."""
    cfg = load(config, name)
    deps = with_agent(cfg, state_dir_of(state_dir), lambda agent: agent.history(name, limit))
    if json_:
        print(json.dumps([d.to_json() for d in deps], indent=2))
        return
    print_table(f"history of [{name}]", HISTORY_COLUMNS, [history_row(d) for d in deps])


def _set_suspended(name: str, suspended: bool, config: ConfigOpt, state_dir: StateDirOpt) -> None:
    cfg = load(config, name)
    with_agent(cfg, state_dir_of(state_dir), lambda agent: agent.set_suspended(name, suspended))
    say(f"{name}: {'suspended (the daemon keeps watching, does not deploy)' if suspended else 'resumed'}")


def suspend(name: SectionArg, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """The daemon keeps watching the section but does not deploy it."""
    _set_suspended(name, True, config, state_dir)


def resume(name: SectionArg, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """Deploy the section again when its object changes."""
    _set_suspended(name, False, config, state_dir)
