"""Signed bundles (SPEC §11): OpenSSH signatures (SSHSIG) over a manifest carried in user metadata.

- :mod:`.wire`: the SSH wire format and SSHSIG blobs, parsed strictly (no cryptography).
- :mod:`.allowed_signers`: the OpenSSH allowed_signers file (``trusted_signers``).
- :mod:`.sshsig`: verification with ``cryptography``, imported only while verifying.
- :mod:`.manifest`: the manifest bytes and the ``s3deploy-manifest``/``s3deploy-signature`` metadata.
- :mod:`.revision`: the checks a deployment runs before and after the download.
- :mod:`.sign`: signing with ``ssh-keygen -Y sign`` (ssh-agent and hardware keys work).

Format, threat model and operations: docs/signing.md.
"""

from s3deploy.signing.allowed_signers import AllowedSigners, check_signers_file, load_signers
from s3deploy.signing.errors import SignersFileError, SigningError
from s3deploy.signing.manifest import Manifest, new_serial, read_metadata, signed_metadata
from s3deploy.signing.revision import Accepted, VerifiedRevision, check_content, verify_revision
from s3deploy.signing.sign import sign_manifest, sign_message
from s3deploy.signing.sshsig import NAMESPACE, Signer, verify

__all__ = [
    "NAMESPACE",
    "Accepted",
    "AllowedSigners",
    "Manifest",
    "Signer",
    "SignersFileError",
    "SigningError",
    "VerifiedRevision",
    "check_content",
    "check_signers_file",
    "load_signers",
    "new_serial",
    "read_metadata",
    "sign_manifest",
    "sign_message",
    "signed_metadata",
    "verify",
    "verify_revision",
]
