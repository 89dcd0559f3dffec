"""The manifest and its user metadata exactly as SPEC §11 says, parsed back strictly, within AWS's 2 KB;
the checks a deployment runs on a signed revision (binding, serial ratchet, size and sha256)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from s3deploy.signing import (
    Accepted,
    Manifest,
    SigningError,
    check_content,
    load_signers,
    read_metadata,
    signed_metadata,
    verify_revision,
)
from s3deploy.signing.manifest import METADATA_LIMIT_BYTES, metadata_size, parse_manifest
from tests.signing_keys import SshKey, keygen_sign, rsa4096_fixture, signers_file, ssh_keys_fixture  # noqa: F401 - fixtures

SHA = hashlib.sha256(b"bundle").hexdigest()


def test_manifest_bytes_as_spec() -> None:
    manifest = Manifest("releases", "web/app.zip", SHA, 6, 1700000000123)
    expected = ('{"v": 1, "bucket": "releases", "key": "web/app.zip", "sha256": "' + SHA
                + '", "size": 6, "serial": 1700000000123}')  # fmt: skip
    assert manifest.to_bytes() == expected.encode()
    assert parse_manifest(manifest.to_bytes()) == manifest
    unicode = Manifest("b", "déploiement/app.zip", SHA, 6, 1)
    assert "déploiement".encode() in unicode.to_bytes()  # as printf in the shell recipe writes it
    assert parse_manifest(unicode.to_bytes()) == unicode
    # another spelling of the same JSON parses the same: the signature covers the bytes, not the spelling
    compact = json.dumps({"serial": 1, "size": 6, "sha256": SHA.upper(), "key": "k", "bucket": "b", "v": 1})
    assert parse_manifest(compact.encode()) == Manifest("b", "k", SHA, 6, 1)


def test_for_file_hashes_and_defaults_serial_to_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    path.write_bytes(b"bundle")
    import time

    before = time.time_ns() // 1_000_000
    manifest = Manifest.for_file(path, "b", "k")
    after = time.time_ns() // 1_000_000
    assert (manifest.sha256, manifest.size) == (SHA, 6)
    assert before <= manifest.serial <= after
    assert Manifest.for_file(path, "b", "k", serial=7).serial == 7


HOSTILE = [
    (b"", "not UTF-8 JSON"),
    (b"\xff", "not UTF-8 JSON"),
    (b"[1]", "JSON list, expected an object"),
    (b"[" * 3000, "not UTF-8 JSON"),
    (b'{"v": 2}', 'version "v" is 2'),
    (b'{"v": true}', 'version "v" is True'),
    (b'{"v": 1.0}', 'version "v" is 1.0'),
    (b'{"v": 1, "v": 1}', 'the member "v" twice'),
    (b'{"v": 1, "bucket": "b"}', "missing ['key', 'sha256', 'size', 'serial']"),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "%s", "size": 1, "serial": 1, "x": 1}', "unknown ['x']"),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "abc", "size": 1, "serial": 1}', "64 hex digits"),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "%s", "size": -1, "serial": 1}', '"size" must be'),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "%s", "size": 1.5, "serial": 1}', '"size" must be'),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "%s", "size": 1, "serial": 9223372036854775808}',
     '"serial" must be'),
    (b'{"v": 1, "bucket": "b", "key": "k", "sha256": "%s", "size": 1, "serial": NaN}', "not JSON"),
    (b'{"v": 1, "bucket": "", "key": "k", "sha256": "%s", "size": 1, "serial": 1}', '"bucket" must be'),
    (b'{"v": 1, "bucket": "b", "key": 5, "sha256": "%s", "size": 1, "serial": 1}', '"key" must be'),
    (b'{"v": 1, "bucket": "b", "key": "%s", "sha256": "%s", "size": 1, "serial": 1}' % (b"k" * 1025, b"%s"),
     '"key" must be'),
    (b" " * 5000, "more than 4096"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "problem"), HOSTILE, ids=[p for _, p in HOSTILE])
def test_hostile_manifest(data: bytes, problem: str) -> None:
    data = data.replace(b"%s", SHA.encode())
    with pytest.raises(SigningError, match=r"^signature: manifest: ") as info:
        parse_manifest(data)
    assert problem in str(info.value)
    metadata = {"s3deploy-manifest": base64.b64encode(data).decode(), "s3deploy-signature": "AAAA"}
    with pytest.raises(SigningError):
        read_metadata(metadata)


def test_hostile_metadata() -> None:
    good = base64.b64encode(Manifest("b", "k", SHA, 1, 1).to_bytes()).decode()
    cases = [
        ({}, "unsigned", "no s3deploy-manifest and no s3deploy-signature"),
        ({"s3deploy-manifest": good}, "unsigned", "no s3deploy-signature"),
        ({"s3deploy-manifest": good + "!", "s3deploy-signature": "x"}, "manifest", "not standard base64"),
        (
            {"s3deploy-manifest": "ab-_", "s3deploy-signature": "x"},
            "manifest",
            "not standard base64",
        ),  # urlsafe
        ({"s3deploy-manifest": "A" * 9000, "s3deploy-signature": "x"}, "format", "too long"),
        (
            {"s3deploy-manifest": good, "S3Deploy-Manifest": good, "s3deploy-signature": "x"},
            "format",
            "twice",
        ),
    ]
    for metadata, check, text in cases:
        with pytest.raises(SigningError) as info:
            read_metadata(metadata)
        assert info.value.check == check, metadata
        assert text in str(info.value)
    upper = read_metadata({"S3Deploy-Manifest": good, "S3DEPLOY-SIGNATURE": " sig "})  # headers ignore case
    assert upper.signature == "sig"


def test_metadata_values_and_aws_size_limit(
    rsa4096: SshKey, ssh_keys: dict[str, SshKey], tmp_path: Path
) -> None:
    manifest = Manifest("releases", "web/app.zip", SHA, 6, 1700000000123)
    armoured = keygen_sign(rsa4096, manifest.to_bytes(), tmp_path)
    metadata = signed_metadata(manifest.to_bytes(), armoured)
    assert set(metadata) == {"s3deploy-manifest", "s3deploy-signature"}
    assert base64.b64decode(metadata["s3deploy-manifest"], validate=True) == manifest.to_bytes()
    assert metadata["s3deploy-signature"] == "".join(armoured.strip().splitlines()[1:-1])
    assert "\n" not in metadata["s3deploy-signature"] + metadata["s3deploy-manifest"]
    size = metadata_size(metadata)
    assert size == sum(len(k) + len(v) for k, v in metadata.items())
    assert 1700 < size <= METADATA_LIMIT_BYTES  # rsa-4096 fits with a short key ...
    assert signed_metadata(manifest.to_bytes(), metadata["s3deploy-signature"]) == metadata  # bare works too

    room = METADATA_LIMIT_BYTES - size  # ... and not with other metadata or a long key
    with pytest.raises(SigningError, match=r"^signature: metadata size: .* AWS allows 2048"):
        signed_metadata(manifest.to_bytes(), armoured, {"x": "y" * room})
    assert signed_metadata(manifest.to_bytes(), armoured, {"x": "y" * (room - 1)})["x"]
    long_key = Manifest("releases", "k" * 400, SHA, 6, 1700000000123)
    with pytest.raises(SigningError, match="metadata size"):
        signed_metadata(long_key.to_bytes(), keygen_sign(rsa4096, long_key.to_bytes(), tmp_path))
    small = signed_metadata(
        long_key.to_bytes(), keygen_sign(ssh_keys["ed25519"], long_key.to_bytes(), tmp_path)
    )
    assert metadata_size(small) < 1200  # ed25519 leaves room for long keys


def test_checks_of_a_revision(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["ecdsa256"]
    signers = load_signers(signers_file(tmp_path / "signers", [f"ci@example.com {key.line}"]))

    def metadata_for(manifest: Manifest) -> dict[str, str]:
        return signed_metadata(manifest.to_bytes(), keygen_sign(key, manifest.to_bytes(), tmp_path))

    manifest = Manifest("b", "app.zip", SHA, 6, 100)
    metadata = metadata_for(manifest)
    verified = verify_revision(metadata, signers, bucket="b", key="app.zip")
    assert verified.manifest == manifest
    assert verified.to_json() == {
        "principal": "ci@example.com",
        "fingerprint": key.fingerprint,
        "serial": 100,
    }

    refusals = {
        "binding": dict(bucket="b", key="other.zip"),  # a signed bundle copied to another key
        "serial": dict(bucket="b", key="app.zip", accepted=Accepted(101, SHA)),  # an older one uploaded again
    }
    for check, kwargs in refusals.items():
        with pytest.raises(SigningError, match=f"^signature: {check}: "):
            verify_revision(metadata, signers, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SigningError, match="already accepted for other content"):
        verify_revision(metadata, signers, bucket="b", key="app.zip", accepted=Accepted(100, "0" * 64))
    verify_revision(metadata, signers, bucket="b", key="app.zip", accepted=Accepted(100, SHA))  # same again
    verify_revision(metadata, signers, bucket="b", key="app.zip", accepted=Accepted(99, "0" * 64))

    other = ssh_keys["ed25519"]  # another key's manifest copied onto this object
    foreign = signed_metadata(manifest.to_bytes(), keygen_sign(other, manifest.to_bytes(), tmp_path))
    with pytest.raises(SigningError, match="^signature: unknown key: "):
        verify_revision(foreign, signers, bucket="b", key="app.zip")
    swapped = {**metadata, "s3deploy-manifest": metadata_for(Manifest("b", "app.zip", SHA, 6, 999))[
        "s3deploy-manifest"]}  # fmt: skip
    with pytest.raises(SigningError, match="^signature: bad signature: "):
        verify_revision(swapped, signers, bucket="b", key="app.zip")

    check_content(manifest, size=6, sha256=SHA.upper())
    check_content(manifest, size=6)
    with pytest.raises(SigningError, match="^signature: size: the object is 7 bytes, the manifest says 6"):
        check_content(manifest, size=7)
    with pytest.raises(SigningError, match="^signature: sha256: "):
        check_content(manifest, size=6, sha256="0" * 64)
