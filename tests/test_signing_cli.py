"""Signed bundles from the command line (SPEC §11): `validate` of the signers file, `publish --sign-key`
(key files and ssh-agent) round trips into `deploy`, `status`/`history` JSON with signed_by, the 2 KB
metadata cap, and `signing reset-serial` after a leaked key's huge serial was accepted."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.agent import appspec, cli, history, status, trace_hooks, write_config
from tests.signing_keys import SshKey, rsa4096_fixture, ssh_keys_fixture  # noqa: F401 - fixtures
from tests.test_signing_sign import ssh_agent  # noqa: F401 - fixture

KEY = "web/app.zip"


def bundle_dir(root: Path, tag: str, dest: Path, trace: Path) -> Path:
    folder = root / f"bundle-{tag}"
    (folder / "app").mkdir(parents=True)
    (folder / "app" / "index.html").write_text(f"{tag}\n")
    (folder / "appspec.yml").write_text(appspec(dest, {"BeforeInstall": "scripts/BeforeInstall.sh"}))
    for name, text in trace_hooks(trace, ("BeforeInstall",), tag).items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def config_for(tmp_path: Path, bucket: str, endpoint: str, signers: Path) -> Path:
    section = {
        "s3_bucket": bucket,
        "target_file_key": KEY,
        "endpoint_url": endpoint,
        "trusted_signers": signers,
    }
    return write_config(tmp_path / "config.ini", {"Prod": section})


def test_validate_lists_every_problem_of_the_signers_file_by_file_and_line(
    tmp_path: Path, ssh_keys: dict[str, SshKey]
) -> None:
    signers = tmp_path / "allowed_signers"
    signers.write_text(
        f"ci {ssh_keys['ed25519'].line}\n"
        f"ops valid-after=20250101 {ssh_keys['rsa'].line}\n"
        "\n"
        "nobody ssh-ed25519 AAAA-not-base64\n"
    )
    config = config_for(tmp_path, "bucket", "http://127.0.0.1:1", signers)
    done = cli("validate", "-c", str(config))
    assert done.returncode == 2, done
    lines = [line for line in done.stderr.splitlines() if "trusted_signers" in line]
    assert len(lines) == 2, done.stderr
    where = f"{config} [Prod] trusted_signers: expected a readable OpenSSH allowed_signers file; {signers}"
    assert lines[0].startswith(f"error: {where}:2: "), lines
    assert lines[1].startswith(f"{where}:4: "), lines

    signers.unlink()
    done = cli("validate", "-c", str(config))
    assert done.returncode == 2 and f"{signers}: cannot read the signers file" in done.stderr

    signers.write_text(f"ci {ssh_keys['ed25519'].line}\n")
    done = cli("validate", "-c", str(config))
    assert done.returncode == 0, done.stderr
    section = {"s3_bucket": "b", "target_file_key": "k", "trusted_signers": "allowed_signers"}
    relative = write_config(tmp_path / "relative.ini", {"Prod": section})
    done = cli("validate", "-c", str(relative))
    assert done.returncode == 2
    assert (
        "[Prod] trusted_signers: expected an absolute path to an OpenSSH allowed_signers file" in done.stderr
    )


def test_publish_sign_key_round_trip_with_key_files_and_ssh_agent(
    tmp_path: Path,
    seaweed: Any,
    make_bucket: Any,
    s3_client: Any,
    ssh_keys: dict[str, SshKey],
    ssh_agent: str,  # noqa: F811 - fixture
) -> None:
    file_key, agent_key = ssh_keys["ed25519"], ssh_keys["ecdsa256"]
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci@example.com {file_key.line}\nagent@example.com {agent_key.line}\n")
    bucket = make_bucket()
    config = config_for(tmp_path, bucket, seaweed.endpoint_url, signers)
    state, dest, trace = tmp_path / "state", tmp_path / "www", tmp_path / "trace"
    common = ["-c", str(config)]

    published = cli("publish", str(bundle_dir(tmp_path, "v1", dest, trace)), "-s", "Prod",
                    "--sign-key", str(file_key.private), "--serial", "41", "--json", *common)  # fmt: skip
    assert published.returncode == 0, published.stderr
    signed = json.loads(published.stdout)["signed"]
    assert (signed["fingerprint"], signed["serial"], signed["key"]) == (file_key.fingerprint, 41, KEY)
    metadata = s3_client.head_object(Bucket=bucket, Key=KEY)["Metadata"]
    assert set(metadata) == {"s3deploy-manifest", "s3deploy-signature"}
    deployed = cli("deploy", "Prod", *common, "--state-dir", str(state))
    assert deployed.returncode == 0, deployed.stderr
    assert (dest / "index.html").read_text() == "v1\n"

    # ssh-agent holds the private half; the CLI gets only the public key (serial: the time in ms).
    subprocess.run(["ssh-add", "-q", str(agent_key.private)], check=True, capture_output=True)
    public_only = tmp_path / "only" / "deploy.pub"
    public_only.parent.mkdir()
    shutil.copy(agent_key.public, public_only)
    published = cli("publish", str(bundle_dir(tmp_path, "v2", dest, trace)), "-s", "Prod",
                    "--sign-key", str(public_only), *common)  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert f"signed by {agent_key.fingerprint}, serial " in published.stdout
    deployed = cli("deploy", "Prod", *common, "--state-dir", str(state))
    assert deployed.returncode == 0, deployed.stderr
    assert (dest / "index.html").read_text() == "v2\n"

    prod = status(config, state)["Prod"]
    by = prod["current"]["signed_by"]
    assert (by["principal"], by["fingerprint"]) == ("agent@example.com", agent_key.fingerprint)
    assert by["serial"] > 1_600_000_000_000 and prod["signing"]["accepted"]["serial"] == by["serial"]
    assert prod["signing"]["trusted_signers"] == str(signers)
    old = history(config, state, "Prod")[1]["signed_by"]
    assert old == {"principal": "ci@example.com", "fingerprint": file_key.fingerprint, "serial": 41}


def test_publish_refuses_metadata_over_2kb_and_serial_without_a_key(
    tmp_path: Path, seaweed: Any, make_bucket: Any, s3_client: Any, rsa4096: SshKey
) -> None:
    bucket = make_bucket()
    folder = bundle_dir(tmp_path, "v1", tmp_path / "www", tmp_path / "trace")
    long_key = "releases/" + "k" * 300 + ".zip"
    target = ["--bucket", bucket, "--key", long_key, "--endpoint-url", seaweed.endpoint_url]
    done = cli("publish", str(folder), *target, "--sign-key", str(rsa4096.private))
    assert done.returncode == 1
    assert "signature: metadata size: " in done.stderr and "AWS allows 2048" in done.stderr
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    done = cli("publish", str(folder), *target, "--serial", "5")
    assert done.returncode == 2 and "--serial" in done.stderr


@pytest.mark.parametrize("reset", [["--to", "2000"], []])
def test_reset_serial_after_a_leaked_key_signed_a_huge_serial(
    tmp_path: Path,
    seaweed: Any,
    make_bucket: Any,
    ssh_keys: dict[str, SshKey],
    reset: list[str],
) -> None:
    honest, thief = ssh_keys["ed25519"], ssh_keys["rsa"]
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci {honest.line}\nleaked {thief.line}\n")
    bucket = make_bucket(versioned=True)
    config = config_for(tmp_path, bucket, seaweed.endpoint_url, signers)
    state, dest, trace = tmp_path / "state", tmp_path / "www", tmp_path / "trace"
    common = ["-c", str(config), "--state-dir", str(state)]

    def publish(tag: str, key: SshKey, serial: int) -> None:
        folder = bundle_dir(tmp_path, tag, dest, trace)
        done = cli("publish", str(folder), "-s", "Prod", "-c", str(config), "--sign-key", str(key.private),
                   "--serial", str(serial))  # fmt: skip
        assert done.returncode == 0, done.stderr

    publish("evil", thief, 2**63 - 1)
    assert cli("deploy", "Prod", *common).returncode == 0
    signers.write_text(f"ci {honest.line}\n")  # step 1 of "when a key leaks"
    publish("honest", honest, 3000)
    refused = cli("deploy", "Prod", *common)
    assert refused.returncode == 1 and "signature: serial: serial 3000 is lower than" in refused.stdout
    assert cli("deploy", "Prod", "--force", *common).returncode == 1  # --force does not bypass it

    done = cli("signing", "reset-serial", "Prod", *reset, "--json", *common)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["before"]["serial"] == 2**63 - 1
    assert cli("deploy", "Prod", *common).returncode == 0  # nothing new: the refusal stands
    assert (dest / "index.html").read_text() == "evil\n"
    deployed = cli("deploy", "Prod", "--force", *common)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert (dest / "index.html").read_text() == "honest\n"
    assert status(config, state)["Prod"]["signing"]["accepted"]["serial"] == 3000
    if reset:  # --to 2000: serials up to 2000 stay refused
        cli("signing", "reset-serial", "Prod", "--to", "3000", *common)
        publish("replayed", honest, 3000)
        assert cli("deploy", "Prod", *common).returncode == 1
