"""The CI recipe without s3deploy (examples/sign-and-upload.sh: sha256sum, printf, ssh-keygen -Y sign,
aws s3 cp --metadata), run as written with the aws CLI of the test extras against SeaweedFS; what it
uploads verifies with s3deploy's verifier. docs/signing.md shows the same commands."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.signing import Accepted, SigningError, check_content, load_signers, verify_revision
from tests.signing_keys import SshKey, rsa4096_fixture, signers_file, ssh_keys_fixture  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "sign-and-upload.sh"
DOC = ROOT / "docs" / "signing.md"


def run_recipe(seaweed: SeaweedServer, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # this venv's aws CLI
        "AWS_ENDPOINT_URL": seaweed.endpoint_url,
    }
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(["sh", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("key_name", "object_key", "size"),
    [
        ("ed25519", "releases/web app/déploiement.zip", 100_000),
        ("rsa4096", "app.zip", 9 * 2**20),  # the largest signature, and a multipart upload
    ],
)
def test_recipe_uploads_what_s3deploy_verifies(
    seaweed: SeaweedServer,
    make_bucket: Any,
    s3_client: Any,
    ssh_keys: dict[str, SshKey],
    rsa4096: SshKey,
    tmp_path: Path,
    key_name: str,
    object_key: str,
    size: int,
) -> None:
    key = rsa4096 if key_name == "rsa4096" else ssh_keys[key_name]
    bucket = make_bucket()
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(os.urandom(size))
    done = run_recipe(seaweed, bundle, bucket, object_key, key.private)
    assert done.returncode == 0, done.stderr

    head = s3_client.head_object(Bucket=bucket, Key=object_key)
    signers = load_signers(signers_file(tmp_path / "signers", [f"ci@example.com {key.line}"]))
    verified = verify_revision(head["Metadata"], signers, bucket=bucket, key=object_key)
    assert verified.signer.fingerprint == key.fingerprint
    body = s3_client.get_object(Bucket=bucket, Key=object_key)["Body"].read()
    check_content(verified.manifest, size=len(body), sha256=hashlib.sha256(body).hexdigest())
    assert verified.manifest.size == size
    with pytest.raises(SigningError, match="^signature: binding: "):
        verify_revision(head["Metadata"], signers, bucket=bucket, key="other.zip")


def test_recipe_serial_argument_and_refusals(
    seaweed: SeaweedServer, make_bucket: Any, s3_client: Any, ssh_keys: dict[str, SshKey], tmp_path: Path
) -> None:
    key = ssh_keys["ecdsa256"]
    bucket = make_bucket()
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"first")
    assert run_recipe(seaweed, bundle, bucket, "app.zip", key.private, "41").returncode == 0
    signers = load_signers(signers_file(tmp_path / "signers", [f"ci {key.line}"]))
    head = s3_client.head_object(Bucket=bucket, Key="app.zip")
    first = verify_revision(head["Metadata"], signers, bucket=bucket, key="app.zip")
    assert first.manifest.serial == 41
    accepted = Accepted(first.manifest.serial, first.manifest.sha256)

    bundle.write_bytes(b"second")
    assert run_recipe(seaweed, bundle, bucket, "app.zip", key.private).returncode == 0  # serial: now in ms
    head = s3_client.head_object(Bucket=bucket, Key="app.zip")
    second = verify_revision(head["Metadata"], signers, bucket=bucket, key="app.zip", accepted=accepted)
    assert second.manifest.serial > 1_600_000_000_000

    for args, message in [
        ((bundle, bucket, 'a"b.zip', key.private), "must not hold"),
        ((bundle, bucket, "a\\b.zip", key.private), "must not hold"),
        ((bundle, bucket, "a\tb.zip", key.private), "must not hold"),
        ((bundle, bucket, "app.zip", key.private, "12x"), "SERIAL must be a whole number"),
        ((bundle, bucket), "usage:"),
    ]:
        done = run_recipe(seaweed, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert s3_client.head_object(Bucket=bucket, Key="app.zip")["Metadata"] == head["Metadata"]  # untouched


def test_doc_shows_the_script_commands() -> None:
    """docs/signing.md's recipe block is the script's commands, so the tested text is the documented one."""
    block = re.search(r"## CI without s3deploy\n.*?```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block is not None
    script = SCRIPT.read_text()
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) >= 8
    for line in commands:
        assert line in script, line
