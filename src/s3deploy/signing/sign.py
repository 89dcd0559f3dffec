"""Signing with ``ssh-keygen -Y sign``, so ssh-agent, passphrases and hardware keys work as they do
for git: KEY is a private key file, or a public key whose private half ssh-agent holds.

Blocking (a subprocess that may wait for a passphrase or a touch): call it through
``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from s3deploy.common.text import bounded
from s3deploy.signing.errors import SigningError
from s3deploy.signing.manifest import Manifest, signed_metadata
from s3deploy.signing.sshsig import NAMESPACE, check_signature
from s3deploy.signing.wire import decode_signature_text, parse_signature

logger = logging.getLogger(__name__)

#: Long enough to type a passphrase or touch a hardware key, short enough not to hang a CI job.
SIGN_TIMEOUT_S = 300.0


def sign_message(
    message: bytes, key: Path, *, namespace: str = NAMESPACE, ssh_keygen: str = "ssh-keygen"
) -> str:
    """Sign ``message`` with ``ssh-keygen -Y sign -n NAMESPACE -f KEY`` on a temporary file; returns the
    armoured signature, checked to verify and to be for ``namespace``. Raises SigningError (check
    ``sign``) with ssh-keygen's own message when it fails."""
    if not key.exists():
        raise SigningError("sign", f"{key}: no such key file")
    # ssh-keygen asks for a passphrase on the terminal and says "touch your key" on stderr: let an
    # operator at a terminal see both, and keep the message for the error otherwise (CI).
    interactive = sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix="s3deploy-sign-") as tmp:
        path = Path(tmp) / "manifest"
        path.write_bytes(message)
        command = [ssh_keygen, "-Y", "sign", "-n", namespace, "-f", str(key), str(path)]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None if interactive else subprocess.PIPE,
                timeout=SIGN_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError as e:
            raise SigningError(
                "sign", f"{ssh_keygen} not found: install OpenSSH's client (ssh-keygen)"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise SigningError(
                "sign", f"ssh-keygen -Y sign -f {key} did not finish in {SIGN_TIMEOUT_S:.0f} s"
            ) from e
        if done.returncode != 0:
            said = bounded((done.stderr or b"").decode("utf-8", "replace").strip(), 400)
            raise SigningError(
                "sign",
                f"ssh-keygen -Y sign -f {key} failed (exit {done.returncode})"
                + (f": {said}" if said else ": its message is above"),
            )
        try:
            armoured = Path(f"{path}.sig").read_text("ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise SigningError("sign", f"ssh-keygen -Y sign -f {key} wrote no readable signature: {e}") from e
    sig = parse_signature(decode_signature_text(armoured))
    if sig.namespace != namespace:
        raise SigningError("sign", f"ssh-keygen signed for namespace {sig.namespace!r}, not {namespace!r}")
    check_signature(sig, message)
    logger.debug(
        "signed %d bytes with %s key %s", len(message), sig.public_key.key_type, sig.public_key.fingerprint
    )
    return armoured


def sign_manifest(
    manifest: Manifest, key: Path, *, other_metadata: dict[str, str] | None = None
) -> dict[str, str]:
    """Sign ``manifest`` with KEY and return the user metadata to upload the bundle with
    (``s3deploy-manifest``, ``s3deploy-signature`` and ``other_metadata``); refuses metadata over
    AWS's 2 KB (SigningError ``metadata size``)."""
    data = manifest.to_bytes()
    return signed_metadata(data, sign_message(data, key), other_metadata)
