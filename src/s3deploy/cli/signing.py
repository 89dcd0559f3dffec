"""`s3deploy signing reset-serial NAME [--to N]`: the way out when a section accepted a serial far above
the honest ones (a leaked key signed a bundle with a huge serial; docs/signing.md, "When a key leaks").

Nothing else lowers the serial ratchet: `deploy --force` redeploys a revision but checks its signature
and serial like any other.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3deploy.cli.options import ConfigOpt, JsonOpt, SectionArg, StateDirOpt, load, state_dir_of, with_agent
from s3deploy.cli.output import say

app = typer.Typer(
    help="Signed bundles (trusted_signers): the serial ratchet of a section.", no_args_is_help=True
)


@app.command("reset-serial")
def reset_serial(
    name: SectionArg,
    to: Annotated[
        int | None,
        typer.Option(
            "--to", min=0, max=2**63 - 1, help="Accept only serials above N (default: forget, accept any)"
        ),
    ] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Forget (or set with --to) the highest serial a section accepted; remove a leaked key first.

    The revision refused for its serial is retried only when the object changes, or with deploy --force.
    """
    import asyncio  # the event loop and SQLite: not for --help, list, validate or completion

    from s3deploy.state.signatures import reset_serial as reset

    cfg = load(config, name)
    section = cfg.section(name)
    before = with_agent(
        cfg, state_dir_of(state_dir), lambda agent: asyncio.to_thread(reset, agent.state, name, to)
    )
    if json_:
        print(json.dumps({"section": name, "before": before.to_json() if before else None, "serial": to}))
        return
    was = f"was {before.serial}" if before is not None else "none was recorded"
    now = (
        f"only serials above {to} are accepted" if to is not None else "the next valid signature is accepted"
    )
    say(f"{name}: accepted serial reset ({was}); {now}")
    if section.trusted_signers is None:
        say(f"{name}: note: the section has no trusted_signers, nothing checks signatures there now")
