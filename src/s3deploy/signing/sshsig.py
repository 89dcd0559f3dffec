"""SSHSIG verification in-process: the same verdict as ``ssh-keygen -Y verify``, without a subprocess.

``cryptography`` is imported inside :func:`check_signature` only, so a daemon whose sections do not
use signing never loads it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3deploy.common.text import printable
from s3deploy.signing.errors import SigningError
from s3deploy.signing.wire import (
    ED25519,
    RSA,
    SshSignature,
    decode_signature_text,
    parse_signature,
    signed_data,
)

if TYPE_CHECKING:
    from s3deploy.signing.allowed_signers import AllowedSigners

NAMESPACE = "s3deploy"


@dataclass(frozen=True)
class Signer:
    """Who signed: the principals of the allowed_signers line that accepted the key, and the key's
    fingerprint as ``ssh-keygen -l`` prints it (``SHA256:...``)."""

    principal: str
    fingerprint: str

    def to_json(self) -> dict[str, str]:
        return {"principal": self.principal, "fingerprint": self.fingerprint}


def _crypto_key(sig: SshSignature) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = sig.public_key
    if key.key_type == ED25519:
        (pk,) = key.material
        assert isinstance(pk, bytes)
        return ed25519.Ed25519PublicKey.from_public_bytes(pk)
    if key.key_type == RSA:
        e, n = key.material
        assert isinstance(e, int) and isinstance(n, int)
        return rsa.RSAPublicNumbers(e, n).public_key()
    curve_name, point = key.material
    assert isinstance(point, bytes)
    curve = {"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1(), "nistp521": ec.SECP521R1()}[
        str(curve_name)
    ]
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def check_signature(sig: SshSignature, message: bytes) -> None:
    """Check the cryptographic signature of ``message`` (no namespace or signer policy); raises
    SigningError ``bad signature`` when it does not verify."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    data = signed_data(sig.namespace, sig.hash_algorithm, message)
    try:
        key = _crypto_key(sig)
        if sig.public_key.key_type == ED25519:
            key.verify(sig.raw_signature, data)
        elif sig.public_key.key_type == RSA:
            assert isinstance(sig.raw_signature, bytes)
            length = (key.key_size + 7) // 8
            raw = sig.raw_signature.rjust(length, b"\x00")  # OpenSSH pads a short signature
            digest = hashes.SHA256() if sig.signature_type == "rsa-sha2-256" else hashes.SHA512()
            key.verify(raw, data, padding.PKCS1v15(), digest)
        else:
            assert isinstance(sig.raw_signature, tuple)
            r, s = sig.raw_signature
            curve_hash: hashes.HashAlgorithm = {
                256: hashes.SHA256(),
                384: hashes.SHA384(),
                521: hashes.SHA512(),
            }[key.curve.key_size]
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(curve_hash))
    except InvalidSignature:
        raise SigningError(
            "bad signature",
            f"the {sig.public_key.key_type} signature by "
            f"{sig.public_key.fingerprint} does not match the signed bytes",
        ) from None
    except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm) as e:  # e.g. a point off the curve
        raise SigningError(
            "format", f"{sig.public_key.key_type} key {sig.public_key.fingerprint} is unusable: {e}"
        ) from e


def verify(
    message: bytes,
    signature: str | bytes,
    signers: AllowedSigners,
    *,
    namespace: str = NAMESPACE,
    now: float | None = None,
    principal: str | None = None,
) -> Signer:
    """Verify an SSHSIG ``signature`` (armoured, or the bare base64 of metadata) of ``message`` against
    ``signers`` as ``ssh-keygen -Y verify -n NAMESPACE`` does (with ``principal``, as ``-I PRINCIPAL``;
    without, any principal of a line listing the key). ``now`` (seconds since the epoch, default the
    current time) is checked against ``valid-after``/``valid-before``.

    Returns the :class:`Signer`; raises SigningError naming the failed check.
    """
    sig = parse_signature(decode_signature_text(signature))
    if sig.namespace != namespace:
        raise SigningError(
            "namespace",
            f'signed for namespace "{printable(sig.namespace)}", expected "{printable(namespace)}"',
        )
    entry = signers.find(
        sig.public_key, namespace=namespace, now=time.time() if now is None else now, principal=principal
    )
    check_signature(sig, message)
    return Signer(principal if principal is not None else entry.principals, entry.key.fingerprint)
