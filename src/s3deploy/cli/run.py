"""`s3deploy run`: the daemon, or one check per section with --once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from s3deploy.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigOpt,
    HostIdOpt,
    LogFileOpt,
    LogFormatOpt,
    LogLevelOpt,
    StateDirOpt,
    arun,
    fail,
    guard,
    host_id_of,
    load,
    setup,
    state_dir_of,
    with_agent,
)
from s3deploy.cli.output import say
from s3deploy.cli.sections import print_sections
from s3deploy.config import DEFAULT_SECTION, find_config_path

if TYPE_CHECKING:
    from s3deploy.runtime.agent import CheckResult


def run(
    all_sections: Annotated[bool, typer.Option("--all", help="Watch every section")] = False,
    section: Annotated[
        list[str] | None,
        typer.Option("--section", "-s", "--config-section", help="Watch this section (repeatable)"),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One check per section, deploy where needed, exit")
    ] = False,
    s3_bucket: Annotated[str | None, typer.Option("--s3-bucket", help="Override s3_bucket")] = None,
    target_key: Annotated[
        str | None, typer.Option("--target-key-file", "--target-file-key", help="Override target_file_key")
    ] = None,
    profile_name: Annotated[
        str | None, typer.Option("--profile-name", "--profile_name", help="Override profile_name")
    ] = None,
    list_configs: Annotated[bool, typer.Option("--list-configs", help="List the sections and exit")] = False,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            help="Seconds a running deployment gets on SIGTERM before its hooks are killed",
        ),
    ] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            envvar="S3DEPLOY_METRICS_PORT",
            help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics",
        ),
    ] = None,
    metrics_textfile: Annotated[
        Path | None,
        typer.Option(
            "--metrics-textfile",
            envvar="S3DEPLOY_METRICS_TEXTFILE",
            help="Also write the metrics to this file (node_exporter textfile collector, *.prom)",
        ),
    ] = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    host_id: HostIdOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Run the agent: watch the sections' S3 objects and deploy them when they change."""
    from s3deploy.runtime.agent import Selection

    setup(log_level, log_format, log_file)
    cfg = load(config)
    if list_configs:
        print_sections(cfg, as_json=False)
        return
    if all_sections and section:
        raise fail("--all and --section/-s exclude each other", EXIT_USAGE)
    overrides = {
        k: v
        for k, v in (
            ("s3_bucket", s3_bucket),
            ("target_file_key", target_key),
            ("profile_name", profile_name),
        )
        if v is not None
    }
    selection = Selection(all_sections, tuple(section or (DEFAULT_SECTION,)), overrides)
    guard(lambda: selection.pick(cfg))  # unknown sections or bad overrides: exit 2 before anything runs
    sdir = state_dir_of(state_dir)
    host = host_id_of(host_id, cfg)
    if once:
        if metrics_port is not None or metrics_textfile is not None:
            raise fail("--metrics-port and --metrics-textfile are for the daemon, not --once", EXIT_USAGE)
        results = with_agent(cfg, sdir, lambda agent: agent.run_once(selection), exclusive=True, host_id=host)
        for result in results:
            say(_once_line(result))
        raise typer.Exit(EXIT_FAILED if any(r.failed for r in results) else EXIT_OK)
    from s3deploy.runtime.daemon import Daemon  # the daemon and the S3 stack: only for this command

    daemon = Daemon(
        find_config_path(config),
        cfg,
        selection,
        sdir,
        shutdown_grace_s=shutdown_grace,
        metrics_port=metrics_port,
        metrics_textfile=metrics_textfile,
        host_id=host,
    )
    raise typer.Exit(arun(daemon.serve()))


def _once_line(result: CheckResult) -> str:
    d = result.deployment
    if d is not None:
        return f"{result.section}: {d.id} {d.status}" + (
            f" ({d.failed_event}: {d.error})" if d.status != "succeeded" else ""
        )
    if result.error:
        return f"{result.section}: error: {result.error}"
    return f"{result.section}: nothing to deploy"
