"""`s3deploy fleet status|stop|resume NAME`: a coordinated section's rollout across hosts (SPEC §10).

They read and write objects in the section's bucket only (no state directory), so they work from any
machine with the config. The S3 stack is imported when a command runs, never at start-up.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from s3deploy.cli.options import (
    ConfigOpt,
    HostIdOpt,
    JsonOpt,
    SectionArg,
    StateDirOpt,
    arun,
    host_id_of,
    load,
    setup,
)
from s3deploy.cli.output import iso_ts, print_table, say

if TYPE_CHECKING:
    from s3deploy.fleet.view import FleetView

app = typer.Typer(
    name="fleet",
    help="A coordinated section's rollout across hosts: status, stop, resume (sections with max_concurrent).",
    no_args_is_help=True,
)

#: The commands print what they did; log lines only when asked for.
QuietLogOpt = Annotated[
    str, typer.Option("--log-level", envvar="S3DEPLOY_LOG_LEVEL", help="DEBUG, INFO, ... (default: none)")
]
HOST_COLUMNS = ("host", "state", "deployment", "started", "finished", "heartbeat", "error")
SLOT_COLUMNS = ("slot", "host", "since", "lease")


def render(view: FleetView) -> None:
    """The human form of ``fleet status``: a summary, the hosts, the slots (everything escaped)."""
    rev = view.revision
    uploaded = f"{rev.last_modified:%Y-%m-%dT%H:%M:%SZ}"
    say(f"[{view.section}] {rev.url} revision {rev.version_id or rev.etag} (uploaded {uploaded})")
    size = f"a fleet of {view.fleet_size}" if view.fleet_size is not None else "fleet size unknown"
    counts: dict[str, int] = {}
    for host in view.hosts:
        counts[host.state] = counts.get(host.state, 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no hosts"
    if view.stopped:
        why = f": {view.stop.reason} (by {view.stop.by})" if view.stop is not None else ""
        say(f"rollout STOPPED{why}")
    else:
        say("rollout going on")
    say(f"at most {view.max_concurrent} at once ({size}); {tally}")
    rows = [
        [h.host, h.state, h.deployment_id, iso_ts(h.started_at), iso_ts(h.finished_at),
         "fresh" if h.alive else "stale", h.error]
        for h in view.hosts
    ]  # fmt: skip
    print_table(f"hosts of [{view.section}]", HOST_COLUMNS, rows)
    if view.slots:
        slots = [
            [f"slot-{s.slot}", s.host or "(unreadable)", iso_ts(s.since), "expired" if s.stale else "held"]
            for s in view.slots
        ]
        print_table(f"slots of [{view.section}]", SLOT_COLUMNS, slots)
    else:
        say("no slot held")


@app.command("status")
def status(
    name: SectionArg,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: QuietLogOpt = "CRITICAL",
) -> None:
    """Every host of the section's current revision with its state, the slots held, whether it is stopped."""
    from s3deploy.runtime.fleet_control import fleet_view

    setup(log_level, "text", None)
    cfg = load(config, name)
    view = arun(fleet_view(cfg.section(name), host_id_of(host_id, cfg)))
    if json_:
        print(json.dumps(view.to_json(), indent=2))
        return
    render(view)


@app.command("stop")
def stop(
    name: SectionArg,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: QuietLogOpt = "CRITICAL",
) -> None:
    """Stop the rollout of the current revision: hosts that have not started it skip it."""
    from s3deploy.runtime.fleet_control import fleet_stop

    setup(log_level, "text", None)
    cfg = load(config, name)
    rev, created = arun(fleet_stop(cfg.section(name), host_id_of(host_id, cfg)))
    what = "stopped" if created else "was stopped already"
    say(f"{name}: the rollout of {rev.url} ({rev.version_id or rev.etag}) {what}")
    if created:
        say(f"{name}: `s3deploy fleet resume {name}` lets it go on")


@app.command("resume")
def resume(
    name: SectionArg,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: QuietLogOpt = "CRITICAL",
) -> None:
    """Let the stopped rollout of the current revision go on (hosts look again within 5 minutes)."""
    from s3deploy.runtime.fleet_control import fleet_resume

    setup(log_level, "text", None)
    cfg = load(config, name)
    rev, deleted = arun(fleet_resume(cfg.section(name), host_id_of(host_id, cfg)))
    what = "resumed: hosts that skipped it deploy it within 5 minutes" if deleted else "was not stopped"
    say(f"{name}: the rollout of {rev.url} ({rev.version_id or rev.etag}) {what}")
