"""The signature checks of one section's downloads (SPEC §11), between S3, the signing library and the
state: what fetch.py runs around a download when the section has ``trusted_signers``.

Before the download (:meth:`SignatureGate.before_download`): the object's metadata (from the HEAD that
found the revision; a revision seen only through a LIST is HEADed), the signature against the section's
allowed_signers file for namespace ``s3deploy`` (the file is read at every deployment, so an edited
file applies at once), the manifest's bucket and key against the section's, the serial against the
section's ratchet, and the object's size against the manifest. The download then verifies the bytes
against the manifest's sha256 as they are written; :meth:`SignatureGate.after_download` checks the
result, records who signed the deployment and moves the ratchet, before anything is unpacked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from s3deploy.common.text import printable
from s3deploy.config import Section
from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.signing import (
    Accepted,
    SigningError,
    VerifiedRevision,
    check_content,
    load_signers,
    verify_revision,
)
from s3deploy.source.s3 import Endpoint, Revision, S3Pool
from s3deploy.state import signatures
from s3deploy.state.model import SignedBy
from s3deploy.state.store import StateStore

logger = logging.getLogger(__name__)


class SignatureGate:
    """Verifies a section's revisions before and after their download; raises SigningError."""

    def __init__(self, section: Section, state: StateStore, pool: S3Pool, endpoint: Endpoint) -> None:
        if section.trusted_signers is None:
            raise ValueError(f"[{section.name}] has no trusted_signers")
        self.section = section
        self.signers_path = section.trusted_signers
        self.state = state
        self.pool = pool
        self.endpoint = endpoint

    async def before_download(self, rev: Revision) -> VerifiedRevision:
        """Everything checked without the bytes: signature, binding, serial, announced size."""
        metadata = rev.metadata or await self._metadata(rev)
        accepted = await asyncio.to_thread(signatures.accepted_serial, self.state, self.section.name)
        ratchet = Accepted(accepted.serial, accepted.sha256) if accepted is not None else None
        # Off the event loop: the file is read, and cryptography is imported on first use.
        verified = await asyncio.to_thread(self._verify, metadata, ratchet)
        check_content(verified.manifest, size=rev.size)
        logger.info(
            "signature: signed by %s (%s), serial %d; the download is checked against sha256 %s",
            printable(verified.signer.principal),
            verified.signer.fingerprint,
            verified.manifest.serial,
            verified.manifest.sha256,
        )
        return verified

    def _verify(self, metadata: Mapping[str, str], accepted: Accepted | None) -> VerifiedRevision:
        return verify_revision(
            metadata,
            load_signers(self.signers_path),
            bucket=self.section.s3_bucket,
            key=self.section.target_file_key,
            accepted=accepted,
        )

    async def _metadata(self, rev: Revision) -> Mapping[str, str]:
        """A LIST carries no user metadata: HEAD the object, which must still have the content listed
        (the download is pinned to that ETag, and its bytes are checked against the sha256 the metadata
        signs, so a metadata-only change in between cannot smuggle anything in)."""
        head = await self.pool.head(self.endpoint, rev.bucket, rev.key)
        if head.etag != rev.etag or rev.version_id not in (None, head.version_id):
            raise RevisionChanged(
                f"HEAD {rev.url}: the object changed ({rev.identity} is now {head.identity}) before its "
                "signature was read; the new revision is checked at the next poll"
            )
        return head.metadata

    def content_mismatch(self, error: SourceError, verified: VerifiedRevision, attempts: int) -> SigningError:
        """Every download of the object failed the manifest's sha256: not corruption in transit but
        bytes other than the signed ones (a tampered body, or another bundle's metadata)."""
        return SigningError(
            "sha256",
            f"{attempts} download(s) of s3://{printable(verified.manifest.bucket)}/"
            f"{printable(verified.manifest.key)} did not match the manifest's sha256 "
            f"{verified.manifest.sha256} ({error})",
        )

    async def after_download(
        self, deployment_id: str, verified: VerifiedRevision, *, size: int, sha256: str | None
    ) -> SignedBy:
        """The bytes on disk match the manifest: record who signed the deployment and move the section's
        serial ratchet up to it (shielded: a shutdown cannot leave one without the other)."""
        if sha256 is None:
            raise SigningError("sha256", "the download computed no sha256 to check")
        check_content(verified.manifest, size=size, sha256=sha256)
        signer = verified.signer
        signed_by = SignedBy(signer.principal, signer.fingerprint, verified.manifest.serial)
        await asyncio.shield(
            asyncio.to_thread(
                signatures.accept,
                self.state,
                self.section.name,
                deployment_id,
                signed_by,
                verified.manifest.sha256,
            )
        )
        return signed_by
