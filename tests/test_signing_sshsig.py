"""SSHSIG verification in-process against real ssh-keygen keys of every supported type: the verdict
equals ``ssh-keygen -Y verify``'s, each refusal names its check, and hostile blobs raise SigningError
and nothing else."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
from pathlib import Path

import pytest

from s3deploy.signing import SigningError, load_signers, verify
from s3deploy.signing.wire import decode_signature_text, parse_signature, signed_data
from tests.signing_keys import (  # noqa: F401 - fixtures
    KEY_TYPES,
    SshKey,
    armour,
    keygen_sign,
    keygen_verify,
    rsa4096_fixture,
    signers_file,
    ssh_keys_fixture,
    sshsig,
    string,
)

MESSAGE = (
    b'{"v": 1, "bucket": "b", "key": "app.zip", "sha256": "' + b"ab" * 32 + b'", "size": 3, "serial": 1}'
)
PRINCIPAL = "ci@example.com"


@pytest.mark.parametrize("name", KEY_TYPES)
@pytest.mark.parametrize("hashalg", ["sha256", "sha512"])
def test_good_signature_verifies(
    ssh_keys: dict[str, SshKey], name: str, hashalg: str, tmp_path: Path
) -> None:
    key = ssh_keys[name]
    signature = keygen_sign(key, MESSAGE, tmp_path, hashalg=hashalg)
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {key.line}"]))
    bare = "".join(signature.splitlines()[1:-1])
    for text in (signature, bare, signature.encode()):
        signer = verify(MESSAGE, text, signers)
        assert signer.principal == PRINCIPAL
        assert signer.fingerprint == key.fingerprint  # as ssh-keygen -l prints it
    assert parse_signature(decode_signature_text(signature)).hash_algorithm == hashalg


def test_rsa4096_verifies(rsa4096: SshKey, tmp_path: Path) -> None:
    signature = keygen_sign(rsa4096, MESSAGE, tmp_path)
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {rsa4096.line}"]))
    assert verify(MESSAGE, signature, signers).fingerprint == rsa4096.fingerprint


# (case, signers line template, principal asked, namespace signed, message verified, expected check or None)
CASES = [
    ("good", "{p} {key}", PRINCIPAL, "s3deploy", MESSAGE, None),
    ("tampered message", "{p} {key}", PRINCIPAL, "s3deploy", MESSAGE.replace(b'"size": 3', b'"size": 4'),
     "bad signature"),
    ("wrong namespace", "{p} {key}", PRINCIPAL, "git", MESSAGE, "namespace"),
    ("unknown key", "{p} {other}", PRINCIPAL, "s3deploy", MESSAGE, "unknown key"),
    ("expired key", '{p} valid-before="20200101Z" {key}', PRINCIPAL, "s3deploy", MESSAGE, "expired"),
    ("not yet valid", '{p} valid-after="29990101" {key}', PRINCIPAL, "s3deploy", MESSAGE, "not yet valid"),
    ("valid window", '{p} valid-after="20200101",valid-before="29991231235959Z" {key}', PRINCIPAL, "s3deploy",
     MESSAGE, None),
    ("principal mismatch", "alice@example.com {key}", PRINCIPAL, "s3deploy", MESSAGE, "principal"),
    ("principal wildcard", "*@example.com {key}", PRINCIPAL, "s3deploy", MESSAGE, None),
    ("principal in a list", "alice@example.com,c?@example.com {key}", PRINCIPAL, "s3deploy", MESSAGE, None),
    ("principal negated", "!ci@*,*@example.com {key}", PRINCIPAL, "s3deploy", MESSAGE, "principal"),
    ("quoted principals", '"{p},bob@example.com" {key}', PRINCIPAL, "s3deploy", MESSAGE, None),
    ("namespaces option refuses", '{p} namespaces="git" {key}', PRINCIPAL, "s3deploy", MESSAGE, "namespace"),
    ("empty options skipped", '{p} ,namespaces="s3*",,valid-after="20200101" {key}', PRINCIPAL, "s3deploy",
     MESSAGE, None),
    ("namespaces option pattern", '{p} NAMESPACES="git,s3*" {key}', PRINCIPAL, "s3deploy", MESSAGE, None),
    ("second line accepts", '{p} valid-before="20200101Z" {key}\n{p} {key}', PRINCIPAL, "s3deploy", MESSAGE,
     None),
]  # fmt: skip


@pytest.mark.parametrize("name", KEY_TYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_verdict_equals_ssh_keygen(
    ssh_keys: dict[str, SshKey], name: str, case: tuple[str, str, str, str, bytes, str | None], tmp_path: Path
) -> None:
    _, template, principal, namespace, message, check = case
    key = ssh_keys[name]
    other = ssh_keys["ed25519" if name != "ed25519" else "rsa"]
    lines = template.format(p=PRINCIPAL, key=key.line, other=other.line).split("\n")
    path = signers_file(tmp_path / "signers", lines)
    signature = keygen_sign(key, MESSAGE, tmp_path, namespace=namespace)

    keygen_ok = keygen_verify(path, principal, signature, message, tmp_path)
    try:
        verify(message, signature, load_signers(path), principal=principal)
        ours: str | None = None
    except SigningError as e:
        ours = e.check
        assert str(e).startswith(f"signature: {e.check}: ")
    assert (ours is None) == keygen_ok
    assert ours == check


def _rsa_sha1_signature(key: SshKey, message: bytes) -> bytes:
    """An SSHSIG with an ``ssh-rsa`` (SHA-1) signature, which ssh-keygen no longer makes."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    private = serialization.load_ssh_private_key(key.private.read_bytes(), None)
    data = signed_data("s3deploy", "sha512", message)
    raw = private.sign(data, padding.PKCS1v15(), hashes.SHA1())  # type: ignore[union-attr, call-arg, arg-type]
    return sshsig(key.blob, "s3deploy", "sha512", "ssh-rsa", raw)


def test_ssh_rsa_sha1_refused_as_ssh_keygen_does(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["rsa"]
    signature = armour(_rsa_sha1_signature(key, MESSAGE))
    path = signers_file(tmp_path / "signers", [f"{PRINCIPAL} {key.line}"])
    assert not keygen_verify(path, PRINCIPAL, signature, MESSAGE, tmp_path)
    with pytest.raises(SigningError, match=r"^signature: algorithm: ssh-rsa \(SHA-1\)"):
        verify(MESSAGE, signature, load_signers(path))


def test_crafted_fields_refused(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["ed25519"]
    good = decode_signature_text(keygen_sign(key, MESSAGE, tmp_path))
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {key.line}"]))
    raw = parse_signature(good).raw_signature
    assert isinstance(raw, bytes)
    crafted = {
        "version": (sshsig(key.blob, "s3deploy", "sha512", "ssh-ed25519", raw, version=2), "format"),
        "hash": (sshsig(key.blob, "s3deploy", "md5", "ssh-ed25519", raw), "algorithm"),
        "sig type": (sshsig(key.blob, "s3deploy", "sha512", "ssh-rsa", raw), "algorithm"),
        "trailing": (good + b"\x00", "format"),
        "magic": (b"SSHSIH" + good[6:], "format"),
        "cert key": (
            sshsig(
                string("ssh-ed25519-cert-v01@openssh.com") + b"\x00" * 8,
                "s3deploy",
                "sha512",
                "ssh-ed25519",
                raw,
            ),
            "key type",
        ),  # fmt: skip
        "sk key": (sshsig(string("sk-ssh-ed25519@openssh.com"), "s3deploy", "sha512", "x", raw), "key type"),
    }
    for label, (blob, check) in crafted.items():
        with pytest.raises(SigningError) as info:
            verify(MESSAGE, base64.b64encode(blob).decode(), signers)
        assert info.value.check == check, label
    # the reserved field's content is ignored, as OpenSSH does
    reserved = sshsig(key.blob, "s3deploy", "sha512", "ssh-ed25519", raw, reserved=b"future")
    assert verify(MESSAGE, base64.b64encode(reserved).decode(), signers).principal == PRINCIPAL


@pytest.mark.parametrize("name", KEY_TYPES)
def test_hostile_blobs_raise_signing_error_only(
    ssh_keys: dict[str, SshKey], name: str, tmp_path: Path
) -> None:
    key = ssh_keys[name]
    good = decode_signature_text(keygen_sign(key, MESSAGE, tmp_path))
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {key.line}"]))
    rng = random.Random(12)
    blobs = [good[:n] for n in range(len(good))]  # every truncation
    blobs += [good[:i] + b"\xff\xff\xff\xff" + good[i + 4 :] for i in range(len(good) - 3)]  # huge lengths
    blobs += [good[:i] + b"\x7f\xff\xff\xf0" + good[i + 4 :] for i in range(0, len(good) - 3, 3)]
    blobs += [good[:i] + bytes([good[i] ^ (1 << rng.randrange(8))]) + good[i + 1 :] for i in range(len(good))]
    blobs += [b"SSHSIG" + bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(200)]
    for blob in blobs:
        with pytest.raises(SigningError):
            verify(MESSAGE, base64.b64encode(blob).decode(), signers)
    texts: list[str | bytes] = ["", "   ", "not base64!", "-----BEGIN SSH SIGNATURE-----\nU1NI", "é" * 10,
                                b"\xff\xfe", "A" * 100_000, "-----BEGIN SSH SIGNATURE-----"]  # fmt: skip
    for text in texts:
        with pytest.raises(SigningError, match=r"^signature: format: "):
            verify(MESSAGE, text, signers)


def test_ecdsa_point_off_the_curve_is_a_signing_error(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["ecdsa256"]
    bogus = string("ecdsa-sha2-nistp256") + string("nistp256") + string(b"\x04" + b"\x01" * 64)
    sig = sshsig(bogus, "s3deploy", "sha512", "ecdsa-sha2-nistp256", string(b"\x01") + string(b"\x01"))
    line = "ecdsa-sha2-nistp256 " + base64.b64encode(bogus).decode()
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {line}", f"x {key.line}"]))
    with pytest.raises(SigningError, match=r"^signature: format: .* unusable"):
        verify(MESSAGE, base64.b64encode(sig).decode(), signers)


def test_rsa_length_field_larger_than_modulus(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["rsa"]
    signers = load_signers(signers_file(tmp_path / "signers", [f"{PRINCIPAL} {key.line}"]))
    sig = sshsig(key.blob, "s3deploy", "sha512", "rsa-sha2-512", b"\x01" * 257)
    with pytest.raises(SigningError, match="longer than the key's modulus"):
        verify(MESSAGE, base64.b64encode(sig).decode(), signers)


def test_importing_signing_does_not_import_cryptography() -> None:
    code = (
        "import sys, s3deploy.signing, s3deploy.signing.sign, s3deploy.signing.revision\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'cryptography']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
