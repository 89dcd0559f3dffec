"""What every command shares: option types, exit codes, and the one place errors become exit codes.

Kept light on purpose: importing the CLI must not load the S3 stack or the daemon (a command answers in
a fraction of a second); commands that need them import them when they run.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from s3deploy.cli.output import print_error
from s3deploy.common.text import printable
from s3deploy.config import Config, find_config_path, load_config
from s3deploy.errors import AppSpecError, ConfigError, LockBusy, S3DeployError, describe
from s3deploy.fleet.keys import check_host_id
from s3deploy.log import setup_logging

if TYPE_CHECKING:
    from s3deploy.runtime.agent import Agent

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
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
HostIdOpt = Annotated[
    str | None,
    typer.Option(
        "--host-id",
        envvar="S3DEPLOY_HOST_ID",
        show_default=False,
        help="This host's name in a fleet (default: the host name); hooks see it as S3DEPLOY_HOST_ID",
    ),
]


def host_id_of(value: str | None, cfg: Config) -> str:
    """``--host-id`` (or S3DEPLOY_HOST_ID), else the host name. A given id must be valid (exit 2); the host
    name must be only when a section is coordinated (it then names this host's objects in the bucket)."""
    if value is not None:
        try:
            return check_host_id(value)
        except ValueError as e:
            raise fail(f"--host-id / S3DEPLOY_HOST_ID: {e}", EXIT_USAGE) from None
    name = socket.gethostname()
    try:
        return check_host_id(name)
    except ValueError as e:
        if any(s.max_concurrent is not None for s in cfg.sections.values()):
            raise fail(
                f"the host name cannot be this host's id in a fleet ({e}): pass --host-id", EXIT_USAGE
            ) from None
    return name


def complete_section(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of section names, from --config (or the default config.ini) when it loads."""
    try:
        cfg = load_config(find_config_path(ctx.params.get("config")))
    except Exception:
        return []
    return [name for name in cfg.sections if name.startswith(incomplete)]


SectionArg = Annotated[str, typer.Argument(help="Section", autocompletion=complete_section)]


def default_state_dir() -> Path:
    """/var/lib/s3deploy as root, else $XDG_STATE_HOME/s3deploy (~/.local/state/s3deploy)."""
    if os.geteuid() == 0:
        return Path("/var/lib/s3deploy")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "s3deploy"


def state_dir_of(state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else default_state_dir()


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` (escaped, never read as markup) and return the Exit to raise."""
    print_error(message)
    return typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn`` mapping errors to exit codes: ConfigError 2, LockBusy 3, any other error 1, never a
    traceback (it is logged at debug level)."""
    try:
        return fn()
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except LockBusy as e:
        raise fail(str(e), EXIT_LOCKED) from None
    except AppSpecError as e:
        if e.problems != [str(e)]:
            for problem in e.problems:
                print(printable(problem, keep_newlines=True), file=sys.stderr)
        raise fail(str(e), EXIT_FAILED) from None
    except S3DeployError as e:
        logger.debug("failure", exc_info=True)
        raise fail(str(e), EXIT_FAILED) from None
    except Exception as e:
        logger.debug("unexpected failure", exc_info=True)
        raise fail(f"unexpected error: {describe(e)} (--log-level DEBUG shows where)", EXIT_FAILED) from None


def setup(log_level: str, log_format: str, log_file: Path | None) -> None:
    guard(lambda: setup_logging(log_level, log_format, log_file))


def load(config: Path | None, *sections: str) -> Config:
    """config.ini, with the sections named on the command line checked to be there: a usage error
    exits 2 before anything (the state directory) is opened."""

    def checked() -> Config:
        cfg = load_config(find_config_path(config))
        for name in sections:
            cfg.section(name)
        return cfg

    return guard(checked)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion under ``guard``."""
    import asyncio  # only commands that run something pay for it, not --help, list, validate

    return guard(lambda: asyncio.run(coro))


def with_agent(cfg: Config, state_dir: Path, operation: Callable[[Agent], Awaitable[T]], **options: Any) -> T:
    """Open the runtime for one operation, run it, close it (``options`` go to the Agent)."""
    from s3deploy.runtime.agent import Agent  # asyncio and SQLite: not for --help, list, validate

    async def call() -> T:
        async with Agent(cfg, state_dir, **options) as agent:
            return await operation(agent)

    return arun(call())
