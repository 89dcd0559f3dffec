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
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from s3deploy import __version__
from s3deploy.appspec import check_bundle
from s3deploy.bundle import make_zip, unpack
from s3deploy.config import DEFAULT_SECTION, Config, Section, find_config_path, load_config
from s3deploy.daemon import Daemon, Selection, check, overlapping_groups, run_once
from s3deploy.errors import BundleError, ConfigError, LockBusy, S3DeployError
from s3deploy.locks import SectionLocks
from s3deploy.log import setup_logging
from s3deploy.s3 import Endpoint, S3Pool
from s3deploy.state import Deployment, StateStore
from s3deploy.watcher import Agent, Watcher

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3

app = typer.Typer(
    name="s3deploy",
    help="Pull-based deployment agent: watches S3 objects and runs the CodeDeploy lifecycle on this host.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
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


def default_state_dir() -> Path:
    """/var/lib/s3deploy as root, else $XDG_STATE_HOME/s3deploy (~/.local/state/s3deploy)."""
    if os.geteuid() == 0:
        return Path("/var/lib/s3deploy")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "s3deploy"


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True) if err.is_terminal else print(
        f"error: {message}", file=sys.stderr
    )
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
    return _guard(lambda: StateStore(state_dir / "state.db"))


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
    daemon = Daemon(find_config_path(config), selection, sdir, shutdown_grace_s=shutdown_grace)
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
    table = Table(title=f"sections in {cfg.path}")
    for col in ("name", "bucket", "key", "profile", "endpoint"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c] or "-") for c in ("name", "bucket", "key", "profile", "endpoint")))
    out.print(table)


@app.command("list")
def list_(json_: JsonOpt = False, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """List the configured sections with bucket, key, profile and endpoint."""
    _print_sections(_load(config), as_json=json_)


# ------------------------------------------------------------------------------ status
def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def section_status(store: StateStore, section: Section, state_dir: Path) -> dict[str, Any]:
    """The SPEC's S object for one section (plus a few extra keys after the required ones)."""
    current = store.current(section.name)
    last = store.last_attempt(section.name)
    record = store.get_section(section.name)
    from urllib.parse import quote

    releases = state_dir / "releases" / quote(section.name, safe="")
    return {
        "name": section.name,
        "bucket": section.s3_bucket,
        "key": section.target_file_key,
        "state": store.section_state(section.name),
        "current": current.to_json() if current else None,
        "last": last.to_json() if last else None,
        "suspended": record.suspended,
        "last_poll_at": record.last_poll_at.isoformat() if record.last_poll_at else None,
        "last_poll_error": record.last_error,
        "releases_bytes": _dir_bytes(releases) if releases.is_dir() else 0,
    }


@app.command()
def status(
    names: Annotated[list[str] | None, typer.Argument(help="Sections (default: all)")] = None,
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
    table = Table(title="s3deploy status")
    for col in ("section", "state", "current", "last attempt", "error"):
        table.add_column(col)
    for r in rows:
        cur, last = r["current"], r["last"]
        table.add_row(
            r["name"] + (" (suspended)" if r["suspended"] else ""),
            r["state"],
            f"{cur['id']} {cur['finished_at'] or ''}" if cur else "-",
            f"{last['id']} {last['status']}" if last else "-",
            (last or {}).get("error") or r["last_poll_error"] or "",
        )
    out.print(table)


# ------------------------------------------------------------------------------ history
@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Section")],
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
    table = Table(title=f"history of [{name}]")
    for col in ("id", "status", "started", "finished", "revision", "event", "note"):
        table.add_column(col)
    for d in deps:
        note = d.error or ""
        if d.rollback_of:
            note = f"rollback of {d.rollback_of} (restores {d.restores}) " + note
        table.add_row(
            d.id,
            d.status,
            _ts(d.started_at),
            _ts(d.finished_at),
            (d.version_id or d.etag or "")[:16],
            d.failed_event or "",
            note,
        )
    out.print(table)


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# ------------------------------------------------------------------------------ deploy, rollback
async def _one_shot(
    section: Section, state_dir: Path, action: Callable[[Watcher], Coroutine[Any, Any, T]]
) -> T:
    store = StateStore(state_dir / "state.db")
    try:
        async with S3Pool() as pool:
            agent = Agent(state_dir, store, pool, SectionLocks(state_dir), lock_wait=False)
            return await action(Watcher(section, agent))
    finally:
        store.close()


def _report(dep: Deployment) -> None:
    if dep.status == "succeeded":
        print(f"{dep.section}: {dep.id} succeeded")
        return
    print(f"{dep.section}: {dep.id} {dep.status} in {dep.failed_event}: {dep.error}")
    raise typer.Exit(EXIT_FAILED)


@app.command()
def deploy(
    name: Annotated[str, typer.Argument(help="Section")],
    force: Annotated[
        bool, typer.Option("--force", help="Redeploy even an unchanged or failed revision")
    ] = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Check a section now and deploy if its object changed (safe while the daemon runs)."""
    _setup(log_level, log_format, log_file)
    cfg = _load(config)
    section = _section(cfg, name)
    groups = overlapping_groups(list(cfg.sections.values()))

    async def action(w: Watcher) -> Any:
        w.lock_names = sorted({name, *groups[name]})
        return await check(w, force=force)

    result = _arun(_one_shot(section, _state_dir(state_dir), action))
    if result.error:
        raise _fail(result.error, EXIT_FAILED)
    if result.deployment is None:
        print(f"{name}: nothing new to deploy (unchanged, or a failed revision: use --force to redeploy it)")
        return
    _report(result.deployment)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Section")],
    to: Annotated[str | None, typer.Option("--to", help="Deployment id whose release to reinstall")] = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "INFO",
    log_format: LogFormatOpt = "text",
    log_file: LogFileOpt = None,
) -> None:
    """Redeploy the previous successful release (or --to ID) from disk."""
    _setup(log_level, log_format, log_file)
    cfg = _load(config)
    section = _section(cfg, name)
    _report(_arun(_one_shot(section, _state_dir(state_dir), lambda w: w.manual_rollback(to))))


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
def suspend(
    name: Annotated[str, typer.Argument()], config: ConfigOpt = None, state_dir: StateDirOpt = None
) -> None:
    """The daemon keeps watching the section but does not deploy it."""
    _set_suspended(name, True, config, state_dir)


@app.command()
def resume(
    name: Annotated[str, typer.Argument()], config: ConfigOpt = None, state_dir: StateDirOpt = None
) -> None:
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
    problems = _guard(lambda: check_path(path))
    if problems:
        for problem in problems:
            print(problem)
        raise typer.Exit(EXIT_FAILED)
    print(f"{path}: OK")


def check_path(path: Path) -> list[str]:
    """Every problem of a bundle folder or archive (unpacked into a temporary folder first)."""
    if not path.exists():
        return [f"{path}: no such file or folder"]
    if path.is_dir():
        return check_bundle(path)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = unpack(path, Path(tmp) / "bundle", max_files=200_000, max_unpacked_bytes=10 * 2**30)
        except BundleError as e:
            return [str(e)]
        return [p.replace(str(root), path.name) for p in check_bundle(root)]


# ------------------------------------------------------------------------------ publish
@app.command()
def publish(
    directory: Annotated[Path, typer.Argument(help="Bundle folder (with appspec.yml)", file_okay=False)],
    section: Annotated[
        str | None, typer.Option("--section", "-s", help="Use this section's bucket/key/...")
    ] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket (without -s)")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Object key (without -s)")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    profile_name: Annotated[str | None, typer.Option("--profile-name", "--profile_name")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and zip, do not upload")] = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "WARNING",
) -> None:
    """Zip DIR (exec bits and symlinks kept), validate its appspec, upload it."""
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
    problems = check_bundle(directory) if directory.is_dir() else [f"{directory}: not a folder"]
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise _fail(f"{directory}: not published, {len(problems)} problem(s)", EXIT_FAILED)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "bundle.zip"
        entries = _guard(lambda: make_zip(directory, archive))
        size = archive.stat().st_size
        if dry_run:
            print(f"{directory}: OK, {entries} entries, {size} bytes zipped (dry run: not uploaded)")
            return
        rev = _arun(_upload(endpoint, bucket, key, archive))
    print(
        f"published s3://{bucket}/{key}: {entries} entries, {size} bytes, etag {rev.etag}"
        + (f", version {rev.version_id}" if rev.version_id else "")
    )


async def _upload(endpoint: Endpoint, bucket: str, key: str, archive: Path) -> Any:
    async with S3Pool() as pool:
        return await pool.upload(endpoint, bucket, key, archive)


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo keeps its files")] = Path(
        ".demo"
    ),
) -> None:
    """What `make demo` runs: a local SeaweedFS, publish examples/bundle, deploy it, report."""
    from s3deploy.demo import run_demo

    setup_logging("INFO", "text", None)
    raise typer.Exit(_guard(lambda: run_demo(workdir)))


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
