"""Commands about bundles and the config, before anything deploys: `validate`, `publish`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from s3deploy.cli.options import (
    EXIT_FAILED,
    EXIT_USAGE,
    ConfigOpt,
    JsonOpt,
    LogLevelOpt,
    StateDirOpt,
    arun,
    complete_section,
    fail,
    guard,
    load,
    setup,
)
from s3deploy.cli.output import progress_bars, say


def validate(
    path: Annotated[Path | None, typer.Argument(help="A bundle folder or archive; none: the config")] = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Check the config, or a bundle and its appspec, without deploying; lists every problem."""
    if path is None:
        cfg = load(config)
        say(f"{cfg.path}: OK, {len(cfg.sections)} section(s): {', '.join(cfg.sections)}")
        return
    from s3deploy.publish import check_path  # the appspec and archive checks: only for this form

    check = guard(lambda: check_path(path))
    for problem in check.problems:
        say(problem)
    for line in check.warnings:
        say(f"warning: {line}")
    for line in check.notes:
        say(f"note: {line}")
    if check.problems:
        raise typer.Exit(EXIT_FAILED)
    say(f"{path}: OK" + (f", {len(check.warnings)} warning(s)" if check.warnings else ""))


def publish(
    directory: Annotated[Path, typer.Argument(help="Bundle folder (with appspec.yml)", file_okay=False)],
    section: Annotated[
        str | None,
        typer.Option(
            "--section", "-s", help="Use this section's bucket/key/...", autocompletion=complete_section
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
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            help="Sign with ssh-keygen -Y sign: a private key, or a public key held by ssh-agent",
            dir_okay=False,
        ),
    ] = None,
    serial: Annotated[
        int | None,
        typer.Option(
            "--serial", min=0, max=2**63 - 1, help="Manifest serial (with --sign-key; default: time in ms)"
        ),
    ] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    log_level: LogLevelOpt = "WARNING",
) -> None:
    """Validate DIR's appspec, zip DIR (exec bits and symlinks kept), upload it; print the new revision.

    Bundles up to 64 MiB go up in one PUT (their ETag is the MD5 the agent verifies), bigger ones in parts.
    With --sign-key the bundle is signed for sections with trusted_signers (docs/signing.md).
    """
    from s3deploy.publish import publish_bundle  # the S3 stack: only for this command
    from s3deploy.source.s3 import Endpoint

    setup(log_level, "text", None)
    if section is not None:
        sec = guard(lambda: load(config).section(section))
        bucket, key = bucket or sec.s3_bucket, key or sec.target_file_key
        endpoint = Endpoint(
            profile_name or sec.profile_name, region or sec.region, endpoint_url or sec.endpoint_url
        )
    elif bucket and key:
        endpoint = Endpoint(profile_name, region, endpoint_url)
    else:
        raise fail("publish needs -s SECTION, or --bucket and --key", EXIT_USAGE)
    if serial is not None and sign_key is None:
        raise fail("--serial is the serial of a signature: it needs --sign-key", EXIT_USAGE)
    with progress_bars(not json_ and not dry_run) as progress:
        done = arun(publish_bundle(directory, endpoint, bucket, key, dry_run=dry_run, progress=progress,
                                   sign_key=sign_key, serial=serial))  # fmt: skip
    if json_:
        print(json.dumps(done.to_json(), indent=2))
    elif dry_run:
        say(f"{directory}: OK, {done.entries} entries, {done.size} bytes zipped "
            f"(dry run: not uploaded to s3://{bucket}/{key})")  # fmt: skip
    else:
        say(f"published s3://{bucket}/{key}: {done.entries} entries, {done.size} bytes, etag {done.etag}"
            + (f", version {done.version_id}" if done.version_id else ""))  # fmt: skip
    if done.signed and not json_:
        say(f"signed by {done.signed['fingerprint']}, serial {done.signed['serial']}, "
            f"sha256 {done.signed['sha256']}")  # fmt: skip
