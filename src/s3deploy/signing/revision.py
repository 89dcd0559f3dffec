"""The checks SPEC §11 puts on a signed revision, in the order the deployer runs them.

Before the download, :func:`verify_revision`: the signature verifies against a trusted key for
namespace ``s3deploy``, the manifest names this section's bucket and key, and its serial does not go
below the highest one the section accepted (an equal serial only with the same sha256). After the
download, before unpacking, :func:`check_content`: size and sha256 match the manifest.
Each failure is a SigningError whose message starts with ``signature: CHECK:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s3deploy.common.text import printable
from s3deploy.signing.allowed_signers import AllowedSigners
from s3deploy.signing.errors import SigningError
from s3deploy.signing.manifest import Manifest, read_metadata
from s3deploy.signing.sshsig import NAMESPACE, Signer, verify


@dataclass(frozen=True)
class Accepted:
    """The highest serial a section accepted, and the sha256 it was accepted for."""

    serial: int
    sha256: str


@dataclass(frozen=True)
class VerifiedRevision:
    """A revision whose signature, binding and serial passed; content is checked after the download."""

    manifest: Manifest
    signer: Signer

    def to_json(self) -> dict[str, Any]:
        """``signed_by`` for status/history JSON, with the serial it was signed at."""
        return {**self.signer.to_json(), "serial": self.manifest.serial}


def check_binding(manifest: Manifest, bucket: str, key: str) -> None:
    """The manifest must name this object: a signed bundle copied to another bucket or key fails."""
    if (manifest.bucket, manifest.key) != (bucket, key):
        raise SigningError(
            "binding",
            f"the manifest was signed for s3://{printable(manifest.bucket)}/"
            f"{printable(manifest.key)}, not s3://{printable(bucket)}/{printable(key)}",
        )


def check_serial(manifest: Manifest, accepted: Accepted | None) -> None:
    """The serial ratchet: never below the highest accepted serial; equal only for the same content."""
    if accepted is None:
        return
    if manifest.serial < accepted.serial:
        raise SigningError(
            "serial",
            f"serial {manifest.serial} is lower than {accepted.serial}, the highest "
            "this section accepted: an older signed bundle was uploaded again",
        )
    if manifest.serial == accepted.serial and manifest.sha256 != accepted.sha256:
        raise SigningError(
            "serial",
            f"serial {manifest.serial} was already accepted for other content "
            f"(sha256 {accepted.sha256}); sign the new bundle with a higher serial",
        )


def check_content(manifest: Manifest, *, size: int, sha256: str | None = None) -> None:
    """The downloaded bytes (or, with ``sha256=None``, the object's announced size) match the manifest."""
    if size != manifest.size:
        raise SigningError("size", f"the object is {size} bytes, the manifest says {manifest.size}")
    if sha256 is not None and sha256.lower() != manifest.sha256:
        raise SigningError(
            "sha256", f"the object's sha256 is {sha256.lower()}, the manifest says {manifest.sha256}"
        )


def verify_revision(
    metadata: Mapping[str, str],
    signers: AllowedSigners,
    *,
    bucket: str,
    key: str,
    accepted: Accepted | None = None,
    now: float | None = None,
) -> VerifiedRevision:
    """Everything checked before the download: metadata present and well formed, the signature by a
    trusted key for namespace ``s3deploy``, bucket/key binding, serial ratchet. Raises SigningError."""
    signed = read_metadata(metadata)
    signer = verify(signed.manifest_bytes, signed.signature, signers, namespace=NAMESPACE, now=now)
    check_binding(signed.manifest, bucket, key)
    check_serial(signed.manifest, accepted)
    return VerifiedRevision(signed.manifest, signer)
