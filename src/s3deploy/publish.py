"""The publisher's side of a bundle: check a folder or archive, zip a folder and upload it."""

from __future__ import annotations

import asyncio
import logging
import stat
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3deploy.appspec import BundleCheck, inspect_bundle
from s3deploy.bundle.extract import unpack
from s3deploy.bundle.pack import make_zip
from s3deploy.common.text import printable
from s3deploy.errors import AppSpecError, BundleError

if TYPE_CHECKING:
    from s3deploy.source.s3 import Endpoint, ProgressCallback

logger = logging.getLogger(__name__)

#: Limits for `validate ARCHIVE`: the config defaults (no section applies).
CHECK_MAX_FILES = 200_000
CHECK_MAX_BYTES = 10 * 2**30


def check_path(path: Path) -> BundleCheck:
    """Every problem, warning and note of a bundle folder or archive (an archive is unpacked into a
    temporary folder).

    Only a folder or a regular file is read: a fifo or a device (``/dev/zero``) would block or never
    end. An archive is unpacked within the config's default limits (max_files, max_unpacked_bytes).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return BundleCheck([f"{printable(path)}: no such file or folder"])
    except OSError as e:
        return BundleCheck([f"{printable(path)}: cannot read it ({printable(e.strerror or e)})"])
    if stat.S_ISDIR(mode):
        return inspect_bundle(path)
    if not stat.S_ISREG(mode):
        return BundleCheck(
            [
                f"{printable(path)}: not a regular file or a folder; "
                "validate takes a bundle folder or a zip or tar archive"
            ]
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = unpack(
                path, Path(tmp) / "bundle", max_files=CHECK_MAX_FILES, max_unpacked_bytes=CHECK_MAX_BYTES
            )
        except BundleError as e:
            return BundleCheck([str(e)])
        check = inspect_bundle(root)
        problems, warnings, notes = (
            [line.replace(str(root), path.name) for line in lines]
            for lines in (check.problems, check.warnings, check.notes)
        )
        return replace(check, problems=problems, warnings=warnings, notes=notes)


def _check_folder(directory: Path) -> list[str]:
    if not directory.is_dir():
        return [f"{directory}: not a folder"]
    check = inspect_bundle(directory)
    for warning in check.warnings:
        logger.warning("%s", warning)
    return check.problems


@dataclass(frozen=True)
class Published:
    """What ``publish`` did (``etag`` and the rest stay empty on a dry run)."""

    bucket: str
    key: str
    entries: int
    size: int
    dry_run: bool
    etag: str | None = None
    version_id: str | None = None
    last_modified: str | None = None
    #: With --sign-key: the manifest signed into the object's metadata, and the signing key.
    signed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def publish_bundle(
    directory: Path,
    endpoint: Endpoint,
    bucket: str,
    key: str,
    *,
    dry_run: bool = False,
    progress: Any = None,
    sign_key: Path | None = None,
    serial: int | None = None,
) -> Published:
    """Validate ``directory``'s appspec, zip it (exec bits and symlinks kept) and upload it.

    ``progress(what, total)`` may return a per-chunk callback for the upload. Raises AppSpecError
    listing every problem when the folder is not a valid bundle. With ``sign_key`` (a private key, or a
    public key whose private half ssh-agent holds) the zip's manifest for s3://BUCKET/KEY is signed
    with ``ssh-keygen -Y sign`` (``serial`` defaults to the time in milliseconds) and uploaded in the
    object's metadata (SPEC §11); SigningError when it fails or would not fit AWS's 2 KB (also on a dry
    run, which checks the key but uploads nothing).
    """
    problems = await asyncio.to_thread(_check_folder, directory)
    if problems:
        raise AppSpecError(f"{directory}: not published, {len(problems)} problem(s)", problems)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "bundle.zip"
        entries = await asyncio.to_thread(make_zip, directory, archive)
        size = (await asyncio.to_thread(archive.stat)).st_size
        metadata, signed = None, None
        if sign_key is not None:
            metadata, signed = await asyncio.to_thread(_sign, archive, bucket, key, sign_key, serial)
        if dry_run:
            return Published(bucket, key, entries, size, dry_run=True, signed=signed)
        callback: ProgressCallback | None = progress(f"s3://{bucket}/{key}", size) if progress else None
        from s3deploy.source.s3 import S3Pool  # `validate` (check_path) never loads the S3 stack

        async with S3Pool() as pool:
            rev = await pool.upload(endpoint, bucket, key, archive, callback, metadata=metadata)
    return Published(
        bucket, key, entries, size, dry_run=False, etag=rev.etag, version_id=rev.version_id,
        last_modified=rev.last_modified.isoformat(), signed=signed,
    )  # fmt: skip


def _sign(
    archive: Path, bucket: str, key: str, sign_key: Path, serial: int | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """The signed metadata of ``archive`` for s3://BUCKET/KEY, and what ``publish`` reports of it."""
    from s3deploy.signing import Manifest, sign_manifest
    from s3deploy.signing.manifest import SIGNATURE_METADATA
    from s3deploy.signing.wire import decode_signature_text, parse_signature

    manifest = Manifest.for_file(archive, bucket, key, serial)
    metadata = sign_manifest(manifest, sign_key)
    signature = parse_signature(decode_signature_text(metadata[SIGNATURE_METADATA]))
    logger.info("signed the manifest of s3://%s/%s (serial %d) with %s", bucket, key, manifest.serial,
                signature.public_key.fingerprint)  # fmt: skip
    return metadata, {**manifest.to_json(), "fingerprint": signature.public_key.fingerprint}
