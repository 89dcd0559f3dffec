"""The command line: flags → one library call → exit code. The only package that prints or exits.

Exit codes: 0 ok; 1 a deployment failed (one-shot commands); 2 usage or configuration error;
3 another s3deploy process holds the lock it needs.

The commands live by topic (run, deploy, sections, bundle); this module assembles them. Importing it
stays cheap: the S3 stack and the daemon are loaded by the commands that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s3deploy import __version__
from s3deploy.cli import bundle, deploy, fleet, run, sections, signing
from s3deploy.cli.options import guard
from s3deploy.log import setup_logging

app = typer.Typer(
    name="s3deploy",
    help="Pull-based deployment agent: watches S3 objects and runs the CodeDeploy lifecycle on this host.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo keeps its files")] = Path(
        ".demo"
    ),
    fleet: Annotated[
        int,
        typer.Option(
            "--fleet", min=0, max=20, help="N agents rolling revisions out one at a time (make demo-fleet)"
        ),
    ] = 0,
) -> None:
    """What `make demo` runs: a local SeaweedFS, publish examples/bundle, deploy it, report."""
    if fleet:
        from s3deploy.devtools.fleet_demo import run_fleet_demo

        setup_logging("WARNING", "text", None)
        raise typer.Exit(guard(lambda: run_fleet_demo(workdir, fleet)))
    from s3deploy.devtools.demo import run_demo

    setup_logging("INFO", "text", None)
    raise typer.Exit(guard(lambda: run_demo(workdir)))


def version() -> None:
    """Print the version."""
    print(__version__)


app.command()(run.run)
app.command("list")(sections.list_)
app.command()(sections.status)
app.command()(sections.history)
app.command()(deploy.deploy)
app.command()(deploy.rollback)
app.command()(sections.suspend)
app.command()(sections.resume)
app.command()(bundle.validate)
app.command()(bundle.publish)
app.add_typer(fleet.app)
app.command()(demo)
app.command()(version)
app.add_typer(signing.app, name="signing")


def main() -> None:
    """Console-script entry point."""
    app()
