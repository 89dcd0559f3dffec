"""The command line: flags → one library call → exit code. The only module that prints or exits.

Exit codes: 0 ok; 1 a deployment failed (one-shot commands); 2 usage or configuration error;
3 another s3deploy process holds the lock it needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from s3deploy import __version__
from s3deploy.cli.output import ProgressFactory, print_error, print_table, progress_bars
from s3deploy.cli.report import HISTORY_COLUMNS, STATUS_COLUMNS, history_row, section_status, status_row
from s3deploy.config import DEFAULT_SECTION, Config, Section, find_config_path, load_config
from s3deploy.deployer import Agent
from s3deploy.errors import AppSpecError, ConfigError, LockBusy, S3DeployError
from s3deploy.log import setup_logging
from s3deploy.publish import check_path, publish_bundle
from s3deploy.runtime.daemon import Daemon, Selection, check, overlapping_groups, run_once
from s3deploy.source.s3 import Endpoint, S3Pool
from s3deploy.state.locks import SectionLocks
from s3deploy.state.store import Deployment, StateStore
from s3deploy.watcher import Watcher

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3

app = typer.Typer(
    name="s3deploy",
    help="Pull-based deployment agent: watches S3 objects and runs the CodeDeploy lifecycle on this host.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="config.ini (default $S3DEPLOY_CONFIG, ./config.ini, then /etc/s3deploy/config.ini)",
        show_default=False,
    ),
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="S3DEPLOY_STATE_DIR",
        show_default=False,
        help="State directory (default /var/lib/s3deploy as root, else $XDG_STATE_HOME/s3deploy)",
    ),
]
LogLevelOpt = Annotated[
    str, typer.Option("--log-level", envvar="S3DEPLOY_LOG_LEVEL", help="DEBUG, INFO, ...")
]
LogFormatOpt = Annotated[str, typer.Option("--log-format", envvar="S3DEPLOY_LOG_FORMAT", help="text or json")]
LogFileOpt = Annotated[
    Path | None, typer.Option("--log-file", envvar="S3DEPLOY_LOG_FILE", help="Also log to this file")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _complete_section(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of section names, from --config (or the default config.ini) when it loads."""
    try:
        cfg = load_config(find_config_path(ctx.params.get("config")))
    except Exception:
        return []
    return [name for name in cfg.sections if name.startswith(incomplete)]


SectionArg = Annotated[str, typer.Argument(help="Section", autocompletion=_complete_section)]


def default_state_dir() -> Path:
    """/var/lib/s3deploy as root, else $XDG_STATE_HOME/s3deploy (~/.local/state/s3deploy)."""
    if os.geteuid() == 0:
        return Path("/var/lib/s3deploy")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "s3deploy"


def _fail(message: str, code: int) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn`` mapping our errors to exit codes; tracebacks only at debug level."""
    try:
        return fn()
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    except LockBusy as e:
        raise _fail(str(e), EXIT_LOCKED) from None
    except S3DeployError as e:
        logging.getLogger(__name__).debug("failure", exc_info=True)
        raise _fail(str(e), EXIT_FAILED) from None


def _setup(log_level: str, log_format: str, log_file: Path | None) -> None:
    try:
        setup_logging(log_level, log_format, log_file)
    except ValueError as e:
        raise _fail(str(e), EXIT_USAGE) from None


def _load(config: Path | None) -> Config:
    return _guard(lambda: load_config(find_config_path(config)))


def _section(cfg: Config, name: str) -> Section:
    return _guard(lambda: cfg.section(name))


def _state_dir(state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else default_state_dir()


def _arun(coro: Coroutine[Any, Any, T]) -> T:
    return _guard(lambda: asyncio.run(coro))


def _open_state(state_dir: Path) -> StateStore:
    return _guard(lambda: StateStore.open(state_dir))


# ------------------------------------------------------------------------------ run
@app.command()
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
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Run the agent: watch the sections' S3 objects and deploy them when they change."""
    _setup(log_level, log_format, log_file)
    cfg = _load(config)
    if list_configs:
        _print_sections(cfg, as_json=False)
        return
    if all_sections and section:
        raise _fail("--all and --section/-s exclude each other", EXIT_USAGE)
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
    _guard(lambda: selection.pick(cfg))  # unknown sections or bad overrides: exit 2 before anything runs
    sdir = _state_dir(state_dir)
    if once and (metrics_port is not None or metrics_textfile is not None):
        raise _fail("--metrics-port and --metrics-textfile are for the daemon, not --once", EXIT_USAGE)
    if once:
        results = _arun(run_once(cfg, selection, sdir))
        for result in results:
            if result.deployment is not None:
                d = result.deployment
                print(
                    f"{result.section}: {d.id} {d.status}"
                    + (f" ({d.failed_event}: {d.error})" if d.status != "succeeded" else "")
                )
            elif result.error:
                print(f"{result.section}: error: {result.error}")
            else:
                print(f"{result.section}: nothing to deploy")
        raise typer.Exit(EXIT_FAILED if any(r.failed for r in results) else EXIT_OK)
    daemon = Daemon(
        find_config_path(config),
        selection,
        sdir,
        shutdown_grace_s=shutdown_grace,
        metrics_port=metrics_port,
        metrics_textfile=metrics_textfile,
    )
    raise typer.Exit(_arun(daemon.serve(cfg)))


# ------------------------------------------------------------------------------ list
def _print_sections(cfg: Config, *, as_json: bool) -> None:
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


@app.command("list")
def list_(json_: JsonOpt = False, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """List the configured sections with bucket, key, profile and endpoint."""
    _print_sections(_load(config), as_json=json_)


# ------------------------------------------------------------------------------ status
@app.command()
def status(
    names: Annotated[
        list[str] | None, typer.Argument(help="Sections (default: all)", autocompletion=_complete_section)
    ] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Per section: state, installed release, last attempt."""
    cfg = _load(config)
    sections = [_section(cfg, n) for n in names] if names else list(cfg.sections.values())
    sdir = _state_dir(state_dir)
    store = _open_state(sdir)
    try:
        rows = [section_status(store, s, sdir) for s in sections]
    finally:
        store.close()
    if json_:
        print(json.dumps({"sections": rows}, indent=2))
        return
    print_table("s3deploy status", STATUS_COLUMNS, [status_row(r) for r in rows])


# ------------------------------------------------------------------------------ history
@app.command()
def history(
    name: SectionArg,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="At most N deployments")] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Past deployments of a section, newest first."""
    cfg = _load(config)
    _section(cfg, name)
    store = _open_state(_state_dir(state_dir))
    try:
        deps = store.history(name, limit)
    finally:
        store.close()
    if json_:
        print(json.dumps([d.to_json() for d in deps], indent=2))
        return
    print_table(f"history of [{name}]", HISTORY_COLUMNS, [history_row(d) for d in deps])


# ------------------------------------------------------------------------------ deploy, rollback
async def _one_shot(
    section: Section,
    state_dir: Path,
    action: Callable[[Watcher], Coroutine[Any, Any, T]],
    progress: ProgressFactory | None = None,
) -> T:
    store = StateStore.open(state_dir)
    try:
        async with S3Pool() as pool:
            agent = Agent(state_dir, store, pool, SectionLocks(state_dir), lock_wait=False, progress=progress)
            return await action(Watcher(section, agent))
    finally:
        store.close()


def _report(dep: Deployment, *, as_json: bool, message: str | None = None) -> None:
    """Print how a deployment ended; exit 1 when it did not succeed."""
    if as_json:
        print(json.dumps(dep.to_json(), indent=2))
    elif dep.status == "succeeded":
        print(message or f"{dep.section}: {dep.id} succeeded")
    else:
        print(f"{dep.section}: {dep.id} {dep.status} in {dep.failed_event}: {dep.error}")
        if dep.log_path:
            print(f"{dep.section}: hook output in {dep.log_path}; see `s3deploy history {dep.section}`")
    if dep.status != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _is_suspended(name: str, state_dir: Path) -> bool:
    store = _open_state(state_dir)
    try:
        return _guard(lambda: store.get_section(name).suspended)
    finally:
        store.close()


@app.command()
def deploy(
    name: SectionArg,
    force: Annotated[
        bool, typer.Option("--force", help="Redeploy even an unchanged or failed revision")
    ] = False,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Check a section now and deploy if its object changed (safe while the daemon runs).

    Exit 0 when it deployed or there was nothing new, 1 when the deployment failed, 3 when another
    s3deploy process (the daemon) is deploying this section right now.
    """
    _setup(log_level, log_format, log_file)
    cfg = _load(config)
    section = _section(cfg, name)
    sdir = _state_dir(state_dir)
    groups = overlapping_groups(list(cfg.sections.values()))
    if not force and _is_suspended(name, sdir):
        message = f"{name}: suspended, not deploying (`s3deploy resume {name}`, or deploy --force)"
        print(json.dumps({"section": name, "deployment": None, "message": message}) if json_ else message)
        return

    async def action(w: Watcher) -> Any:
        w.lock_names = groups[name]
        return await check(w, force=force)

    with progress_bars(not json_) as progress:
        result = _arun(_one_shot(section, sdir, action, progress))
    if result.error:
        raise _fail(result.error, EXIT_FAILED)
    if result.deployment is None:
        message = f"{name}: nothing new to deploy (unchanged, or a failed revision: --force redeploys it)"
        print(json.dumps({"section": name, "deployment": None, "message": message}) if json_ else message)
        return
    _report(result.deployment, as_json=json_)


@app.command()
def rollback(
    name: SectionArg,
    to: Annotated[str | None, typer.Option("--to", help="Deployment id whose release to reinstall")] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Redeploy the previous successful release (or --to ID) from disk.

    The daemon does not redeploy the revision this replaces: only a new upload deploys again.
    """
    _setup(log_level, log_format, log_file)
    cfg = _load(config)
    section = _section(cfg, name)
    dep = _arun(_one_shot(section, _state_dir(state_dir), lambda w: w.manual_rollback(to)))
    _report(
        dep,
        as_json=json_,
        message=f"{name}: {dep.id} succeeded: release of {dep.restores} reinstalled"
        + (f" (replacing {dep.rollback_of})" if dep.rollback_of else ""),
    )


# ------------------------------------------------------------------------------ suspend, resume
def _set_suspended(name: str, suspended: bool, config: Path | None, state_dir: Path | None) -> None:
    cfg = _load(config)
    _section(cfg, name)
    store = _open_state(_state_dir(state_dir))
    try:
        store.set_suspended(name, suspended)
    finally:
        store.close()
    print(f"{name}: {'suspended (the daemon keeps watching, does not deploy)' if suspended else 'resumed'}")


@app.command()
def suspend(name: SectionArg, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """The daemon keeps watching the section but does not deploy it."""
    _set_suspended(name, True, config, state_dir)


@app.command()
def resume(name: SectionArg, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """Deploy the section again when its object changes."""
    _set_suspended(name, False, config, state_dir)


# ------------------------------------------------------------------------------ validate
@app.command()
def validate(
    path: Annotated[Path | None, typer.Argument(help="A bundle folder or archive; none: the config")] = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Check the config, or a bundle and its appspec, without deploying; lists every problem."""
    if path is None:
        cfg = _load(config)
        print(f"{cfg.path}: OK, {len(cfg.sections)} section(s): {', '.join(cfg.sections)}")
        return
    check = _guard(lambda: check_path(path))
    for problem in check.problems:
        print(problem)
    for line in check.warnings:
        print(f"warning: {line}")
    for line in check.notes:
        print(f"note: {line}")
    if check.problems:
        raise typer.Exit(EXIT_FAILED)
    print(f"{path}: OK" + (f", {len(check.warnings)} warning(s)" if check.warnings else ""))


# ------------------------------------------------------------------------------ publish
@app.command()
def publish(
    directory: Annotated[Path, typer.Argument(help="Bundle folder (with appspec.yml)", file_okay=False)],
    section: Annotated[
        str | None,
        typer.Option(
            "--section", "-s", help="Use this section's bucket/key/...", autocompletion=_complete_section
        ),
    ] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket (without -s)")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Object key (without -s)")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3)"),
    ] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    profile_name: Annotated[str | None, typer.Option("--profile-name", "--profile_name")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and zip, do not upload")] = False,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "WARNING",
) -> None:
    """Validate DIR's appspec, zip DIR (exec bits and symlinks kept), upload it; print the new revision.

    Bundles up to 64 MiB go up in one PUT (their ETag is the MD5 the agent verifies), bigger ones in parts.
    """
    _setup(log_level, "text", None)
    if section is not None:
        sec = _guard(lambda: _load(config).section(section))
        bucket, key = bucket or sec.s3_bucket, key or sec.target_file_key
        endpoint = Endpoint(
            profile_name or sec.profile_name, region or sec.region, endpoint_url or sec.endpoint_url
        )
    elif bucket and key:
        endpoint = Endpoint(profile_name, region, endpoint_url)
    else:
        raise _fail("publish needs -s SECTION, or --bucket and --key", EXIT_USAGE)
    try:
        with progress_bars(not json_ and not dry_run) as progress:
            job = publish_bundle(directory, endpoint, bucket, key, dry_run=dry_run, progress=progress)
            done = asyncio.run(job)
    except AppSpecError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        raise _fail(str(e), EXIT_FAILED) from None
    except S3DeployError as e:
        raise _fail(str(e), EXIT_FAILED) from None
    if json_:
        print(json.dumps(done.to_json(), indent=2))
    elif dry_run:
        print(f"{directory}: OK, {done.entries} entries, {done.size} bytes zipped "
              f"(dry run: not uploaded to s3://{bucket}/{key})")  # fmt: skip
    else:
        print(f"published s3://{bucket}/{key}: {done.entries} entries, {done.size} bytes, etag {done.etag}"
              + (f", version {done.version_id}" if done.version_id else ""))  # fmt: skip


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo keeps its files")] = Path(
        ".demo"
    ),
) -> None:
    """What `make demo` runs: a local SeaweedFS, publish examples/bundle, deploy it, report."""
    from s3deploy.devtools.demo import run_demo

    setup_logging("INFO", "text", None)
    raise typer.Exit(_guard(lambda: run_demo(workdir)))


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
