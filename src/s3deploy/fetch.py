"""DownloadBundle: a revision into its release folder (pinned, verified download; safe unpack; appspec).

A failure is classified for the watcher: S3 trouble, a full disk or a download that ran out of
``deployment_timeout`` is *transient* (the revision is tried again later, with backoff); a bad bundle is
not (it is not retried until the object changes).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from s3deploy.appspec import load_appspec
from s3deploy.bundle.extract import unpack
from s3deploy.common.backoff import backoff_delay
from s3deploy.config import Section
from s3deploy.errors import RevisionChanged, S3DeployError, SourceError, describe
from s3deploy.install.release_modes import restrict_release
from s3deploy.lifecycle.pipeline import Release
from s3deploy.source.s3 import Endpoint, ProgressCallback, Revision, S3Pool
from s3deploy.state.layout import StateLayout

if TYPE_CHECKING:
    from s3deploy.signature_gate import SignatureGate
    from s3deploy.signing import VerifiedRevision

logger = logging.getLogger(__name__)

#: GETs of one bundle within one deployment before it fails (each after botocore's own retries).
DOWNLOAD_ATTEMPTS = 3
#: OSError numbers that mean the disk is full: a download or unpack failing so is retried later.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is ENOSPC/EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def fetch_failure(error: Exception, timeout_s: float) -> tuple[str, bool]:
    """The error recorded for a failed DownloadBundle, and whether it is transient (tried again)."""
    if isinstance(error, TimeoutError) and not isinstance(error, S3DeployError):
        return f"deployment_timeout of {timeout_s:g}s reached during DownloadBundle", True
    if disk_full(error):
        return f"disk full: {describe(error)}; the revision is tried again later", True
    if isinstance(error, S3DeployError) and str(error).startswith("signature: trusted_signers: "):
        from s3deploy.signing.errors import SignersFileError  # signed sections only load signing

        if isinstance(error, SignersFileError):  # this host's file, not the revision: fixed, it deploys
            return f"{describe(error)}; the revision is tried again later", True
    return describe(error), isinstance(error, SourceError)


class Fetcher:
    """Brings one section's revisions onto disk."""

    def __init__(
        self,
        section: Section,
        pool: S3Pool,
        endpoint: Endpoint,
        layout: StateLayout,
        progress: Callable[[str, int], ProgressCallback | None] | None = None,
        *,
        gate: SignatureGate | None = None,
    ) -> None:
        self.section = section
        self.layout = layout
        self.pool = pool
        self.endpoint = endpoint
        self.progress = progress
        #: The section's signature checks (trusted_signers): before the download, and after it before
        #: anything is unpacked.
        self.gate = gate

    async def fetch(self, rev: Revision, deployment_id: str, release_dir: Path, deadline: float) -> Release:
        """Download and unpack ``rev`` into ``release_dir``/bundle and load its appspec; the archive is
        removed after. Raises TimeoutError past ``deadline`` (the event loop's clock)."""
        async with asyncio.timeout_at(deadline):
            verified = await self.gate.before_download(rev) if self.gate is not None else None
            await asyncio.to_thread(self.layout.create_release_dir, self.section.name, deployment_id)
            archive = release_dir / "bundle.download"
            started = time.monotonic()
            sha256 = await self._download(rev, archive, verified)
            logger.info("DownloadBundle: %d bytes in %.2fs", rev.size, time.monotonic() - started)
            if self.gate is not None and verified is not None:
                size = (await asyncio.to_thread(archive.stat)).st_size
                await self.gate.after_download(deployment_id, verified, size=size, sha256=sha256)
            started = time.monotonic()
            root = await asyncio.to_thread(
                unpack,
                archive,
                release_dir / "unpacked",
                max_files=self.section.max_files,
                max_unpacked_bytes=self.section.max_unpacked_bytes,
            )
            await asyncio.to_thread(archive.unlink)
            # The bundle root is always release_dir/bundle, hoisted or not.
            await asyncio.to_thread(os.rename, root, release_dir / "bundle")
            await asyncio.to_thread(shutil.rmtree, release_dir / "unpacked", True)
            await asyncio.to_thread(restrict_release, release_dir / "bundle")  # no group/other write
            logger.info("DownloadBundle: unpacked in %.2fs", time.monotonic() - started)
            spec = await asyncio.to_thread(load_appspec, release_dir / "bundle")
        return Release(deployment_id, release_dir / "bundle", spec)

    async def _download(self, rev: Revision, archive: Path, verified: VerifiedRevision | None) -> str | None:
        """The pinned download (a signed one checked against its manifest's sha256 as it is written);
        returns that sha256 for a signed one."""
        progress = self.progress(rev.url, rev.size) if self.progress else None
        expect = verified.manifest.sha256 if verified is not None else None
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return await self.pool.download(rev, self.endpoint, archive, progress, expect_sha256=expect)
            except SourceError as e:
                # botocore retries failed requests, not a body cut or corrupted mid-way: a fresh GET does.
                if not e.retryable or isinstance(e, RevisionChanged) or attempt == DOWNLOAD_ATTEMPTS:
                    if self.gate is not None and verified is not None and e.code == "ChecksumMismatch":
                        raise self.gate.content_mismatch(e, verified, attempt) from e
                    raise
                delay = backoff_delay(attempt, cap_s=self.section.poll_interval_s)
                logger.warning(
                    "DownloadBundle: attempt %d of %d failed, retrying in %.1fs: %s",
                    attempt,
                    DOWNLOAD_ATTEMPTS,
                    delay,
                    e,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")
