"""Signing through ``ssh-keygen -Y sign``: with a key file, with a public key whose private half
ssh-agent holds, and the failures an operator meets (named, with ssh-keygen's own message)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3deploy.signing import (
    Manifest,
    SigningError,
    load_signers,
    sign_manifest,
    sign_message,
    verify,
    verify_revision,
)
from tests.signing_keys import (  # noqa: F401 - fixtures
    KEY_TYPES,
    SshKey,
    keygen_verify,
    rsa4096_fixture,
    signers_file,
    ssh_keys_fixture,
)

MESSAGE = b"manifest bytes"


@pytest.mark.parametrize("name", KEY_TYPES)
def test_sign_with_a_key_file(ssh_keys: dict[str, SshKey], name: str, tmp_path: Path) -> None:
    key = ssh_keys[name]
    armoured = sign_message(MESSAGE, key.private)
    assert armoured.startswith("-----BEGIN SSH SIGNATURE-----\n")
    path = signers_file(tmp_path / "signers", [f"ci {key.line}"])
    assert keygen_verify(path, "ci", armoured, MESSAGE, tmp_path)
    assert verify(MESSAGE, armoured, load_signers(path)).fingerprint == key.fingerprint


def test_sign_manifest_gives_metadata_that_verifies(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    key = ssh_keys["ed25519"]
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    manifest = Manifest.for_file(bundle, "releases", "web/app.zip")
    metadata = sign_manifest(manifest, key.private, other_metadata={"built-by": "ci"})
    assert metadata["built-by"] == "ci"
    signers = load_signers(signers_file(tmp_path / "signers", [f"ci {key.line}"]))
    assert verify_revision(metadata, signers, bucket="releases", key="web/app.zip").manifest == manifest


def test_sign_manifest_refuses_metadata_over_2kb(rsa4096: SshKey) -> None:
    manifest = Manifest("releases", "k" * 400, "0" * 64, 1, 1)
    with pytest.raises(SigningError, match=r"^signature: metadata size: .* AWS allows 2048"):
        sign_manifest(manifest, rsa4096.private)


@pytest.fixture
def ssh_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ssh-agent of this test only (its socket in SSH_AUTH_SOCK), killed afterwards."""
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            assert agent.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        yield str(socket)
    finally:
        agent.terminate()
        agent.wait(10)


def test_sign_with_ssh_agent_and_a_public_key(
    ssh_keys: dict[str, SshKey], ssh_agent: str, tmp_path: Path
) -> None:
    key = ssh_keys["ecdsa384"]
    subprocess.run(["ssh-add", "-q", str(key.private)], check=True, capture_output=True)
    public_only = tmp_path / "only" / "deploy.pub"  # no private key beside it: only the agent can sign
    public_only.parent.mkdir()
    shutil.copy(key.public, public_only)
    armoured = sign_message(MESSAGE, public_only)
    signers = load_signers(signers_file(tmp_path / "signers", [f"ci {key.line}"]))
    assert verify(MESSAGE, armoured, signers).fingerprint == key.fingerprint

    subprocess.run(["ssh-add", "-D"], check=True, capture_output=True)  # the agent forgets the key
    with pytest.raises(
        SigningError, match=r"^signature: sign: ssh-keygen -Y sign .* failed \(exit 255\): .*"
    ):
        sign_message(MESSAGE, public_only)


def test_signing_failures_are_named(
    ssh_keys: dict[str, SshKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(SigningError, match=r"^signature: sign: .*missing: no such key file"):
        sign_message(MESSAGE, tmp_path / "missing")
    public_only = tmp_path / "deploy.pub"
    shutil.copy(ssh_keys["ed25519"].public, public_only)
    with pytest.raises(SigningError, match=r"failed \(exit 255\): .*private key") as info:
        sign_message(MESSAGE, public_only)
    assert "\n" not in str(info.value)
    with pytest.raises(SigningError, match=r"^signature: sign: no-such-ssh-keygen not found"):
        sign_message(MESSAGE, ssh_keys["ed25519"].private, ssh_keygen="no-such-ssh-keygen")
    fake = tmp_path / "fake-ssh-keygen"  # a tool that exits 0 but writes a signature for another namespace
    other = sign_message(MESSAGE, ssh_keys["ed25519"].private, namespace="git")
    fake.write_text(f"#!/bin/sh\nfor last; do :; done\ncat > \"$last.sig\" <<'EOF'\n{other}EOF\n")
    fake.chmod(0o755)
    with pytest.raises(SigningError, match="signed for namespace 'git', not 's3deploy'"):
        sign_message(MESSAGE, ssh_keys["ed25519"].private, ssh_keygen=str(fake))
    assert os.environ.get("SSH_AUTH_SOCK") is None
