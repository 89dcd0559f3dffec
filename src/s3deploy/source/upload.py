"""Uploading a file as one object, with its user metadata: one PutObject, or a multipart upload.

Up to ``SINGLE_PUT_MAX_BYTES`` the file goes in one PutObject, streamed from disk, so its ETag is the MD5
a download can verify. Bigger files go in ``PART_BYTES`` parts, ``PARALLEL_PARTS`` at a time (each read
from disk when its turn comes: memory stays at a few parts whatever the size); a failure aborts the
upload so no orphaned parts are left billed. The metadata is given to PutObject or to
CreateMultipartUpload: S3 attaches it to the object either way.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from s3deploy.common.text import bounded
from s3deploy.errors import SourceError

#: Below this size one PutObject (a verifiable MD5 ETag); from it up, a multipart upload.
SINGLE_PUT_MAX_BYTES = 64 * 2**20
#: Size of each part of a multipart upload, and how many are sent at a time.
PART_BYTES = 16 * 2**20
PARALLEL_PARTS = 4
#: AWS's limit on user metadata: the UTF-8 bytes of every key and value, summed.
METADATA_MAX_BYTES = 2048
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


async def put_file(
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Upload ``path`` to s3://bucket/key. Raises botocore's errors (the caller translates them)."""
    extra: dict[str, Any] = {"Metadata": dict(metadata)} if metadata else {}
    size = (await asyncio.to_thread(os.stat, path)).st_size
    if size < SINGLE_PUT_MAX_BYTES:
        body = await asyncio.to_thread(open, path, "rb")
        with body:
            await client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        if progress is not None:
            progress(size)
        return
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
    upload_id = upload["UploadId"]
    try:
        etags = await _put_parts(client, path, size, bucket, key, upload_id, progress)
        await client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in sorted(etags.items())]},
        )
    except BaseException:
        # Shielded: a cancelled publish still frees the parts S3 would otherwise keep (and bill).
        await asyncio.shield(_abort(client, bucket, key, upload_id))
        raise


async def _put_parts(
    client: Any,
    path: Path,
    size: int,
    bucket: str,
    key: str,
    upload_id: str,
    progress: Callable[[int], None] | None,
) -> dict[int, str]:
    offsets = list(enumerate(range(0, size, PART_BYTES), start=1))
    etags: dict[int, str] = {}

    async def worker() -> None:
        while offsets:
            number, offset = offsets.pop(0)
            data = await asyncio.to_thread(_read, path, offset, min(PART_BYTES, size - offset))
            resp = await client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=io.BytesIO(data)
            )
            etags[number] = resp["ETag"]
            if progress is not None:
                progress(len(data))

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(PARALLEL_PARTS, len(offsets))):
                group.create_task(worker())
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return etags


def _read(path: Path, offset: int, length: int) -> bytes:
    """One part's bytes (its own descriptor: a part still being read after a cancellation is harmless)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed while it was uploaded (shorter than {offset + length} bytes)")
    return data


async def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception:  # the original error is what matters; S3's lifecycle rules clean up the rest
        pass


def check_metadata(metadata: Mapping[str, str], where: str) -> None:
    """Refuse user metadata S3 would refuse or mangle: non-ASCII or control characters, over 2 KB."""
    size = 0
    for name, value in metadata.items():
        if not _TOKEN.fullmatch(name) or not (value.isascii() and value.isprintable()):
            raise SourceError(
                f"{where}: user metadata {bounded(repr(name), 80)}: a name must be an HTTP token and a "
                "value printable ASCII (anything else is not stored as sent)",
                code="InvalidRequest",
                retryable=False,
            )
        size += len(name) + len(value)
    if size > METADATA_MAX_BYTES:
        raise SourceError(
            f"{where}: user metadata takes {size} bytes; S3 allows at most {METADATA_MAX_BYTES}",
            code="InvalidRequest",
            retryable=False,
        )
