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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: Below this size one PutObject (a verifiable MD5 ETag); from it up, a multipart upload.
SINGLE_PUT_MAX_BYTES = 64 * 2**20
#: Size of each part of a multipart upload, and how many are sent at a time.
PART_BYTES = 16 * 2**20
PARALLEL_PARTS = 4


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
