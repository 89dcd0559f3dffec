"""Signed bundles through the real runtime (SPEC §11) against SeaweedFS, with real ssh-keygen keys of the
three types: a good signature deploys and records signed_by; every refusal fails in DownloadBundle with
``signature: CHECK:``, unpacks nothing, runs no hook, and is not retried until the object changes."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from s3deploy.signature_gate import SignatureGate
from s3deploy.source.s3 import Endpoint, S3Pool
from s3deploy.state import signatures
from s3deploy.state.store import StateStore
from tests.agent import open_agent
from tests.signed_site import KEY, NAME, SignedSite, signed_site_fixture  # noqa: F401 - fixture
from tests.signing_keys import SshKey, ssh_keys_fixture  # noqa: F401 - fixture

THREE = ["ed25519", "ecdsa256", "rsa"]


def ratchet(site: SignedSite) -> tuple[int, str] | None:
    with StateStore(site.state_dir / "state.db") as store:
        found = signatures.accepted_serial(store, NAME)
    return (found.serial, found.sha256) if found else None


@pytest.mark.parametrize("key_type", THREE)
async def test_a_good_signature_deploys_and_records_who_signed(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey], key_type: str
) -> None:
    key = ssh_keys[key_type]
    signed_site.trust(f"ci@example.com {key.line}")
    body = signed_site.bundle("v1")
    signed_site.publish(body, key, serial=1000)
    dep = await signed_site.deployed()
    assert signed_site.installed() == "v1"
    assert [line.split()[1] for line in signed_site.hook_lines()] == list(
        ("BeforeInstall", "AfterInstall", "ApplicationStart")
    )
    assert dep.signed_by is not None
    assert dep.to_json()["signed_by"] == {
        "principal": "ci@example.com",
        "fingerprint": key.fingerprint,
        "serial": 1000,
    }
    assert key.fingerprint.startswith("SHA256:")
    assert ratchet(signed_site) == (1000, hashlib.sha256(body).hexdigest())


@pytest.mark.parametrize("key_type", THREE)
async def test_an_unsigned_object_is_refused(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey], key_type: str
) -> None:
    signed_site.trust(f"ci {ssh_keys[key_type].line}")
    signed_site.put(signed_site.bundle("v1"))
    dep = await signed_site.refused("unsigned")
    assert "s3deploy-manifest" in (dep.error or "")
    # --force redeploys a failed revision, but checks it like any other: it does not bypass signatures.
    await signed_site.refused("unsigned", force=True)
    assert ratchet(signed_site) is None


@pytest.mark.parametrize("key_type", THREE)
async def test_a_tampered_body_is_refused(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey], key_type: str
) -> None:
    """The metadata of one bundle on another content: a different size is refused before downloading,
    the same size with other bytes by the sha256 computed while downloading (on every attempt, so not
    a transient corruption: a ``signature:`` failure)."""
    key = ssh_keys[key_type]
    signed_site.trust(f"ci {key.line}")
    good = signed_site.bundle("v1")
    metadata = signed_site.sign(good, key, serial=5)

    signed_site.put(signed_site.bundle("evil-and-longer"), metadata)
    await signed_site.refused("size")

    same_size = bytearray(good)
    same_size[len(good) // 2] ^= 0xFF
    signed_site.put(bytes(same_size), metadata)
    dep = await signed_site.refused("sha256")
    assert hashlib.sha256(good).hexdigest() in (dep.error or "")
    assert ratchet(signed_site) is None  # verified downloads only move it


async def test_unknown_key_wrong_namespace_and_expired_key_are_refused(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    trusted, other = ssh_keys["ed25519"], ssh_keys["ecdsa384"]
    signed_site.trust(f"ci {trusted.line}", f'old valid-before="20200101Z" {ssh_keys["rsa"].line}')

    signed_site.publish(signed_site.bundle("a"), other, serial=1)
    dep = await signed_site.refused("unknown key")
    assert other.fingerprint in (dep.error or "")

    signed_site.publish(signed_site.bundle("b"), trusted, serial=2, namespace="git")
    await signed_site.refused("namespace")

    signed_site.publish(signed_site.bundle("c"), ssh_keys["rsa"], serial=3)
    dep = await signed_site.refused("expired")
    assert "2020-01-01" in (dep.error or "")
    assert signed_site.installed() is None and ratchet(signed_site) is None


@pytest.mark.parametrize("key_type", ["ecdsa256", "rsa"])
async def test_a_bundle_signed_for_another_key_is_refused(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey], key_type: str
) -> None:
    """staging.zip, validly signed for staging.zip, copied with its metadata onto this section's key."""
    key = ssh_keys[key_type]
    signed_site.trust(f"ci {key.line}")
    body = signed_site.bundle("staging")
    signed_site.put(body, signed_site.sign(body, key, serial=7, object_key="web/staging.zip"))
    dep = await signed_site.refused("binding")
    assert "web/staging.zip" in (dep.error or "")

    other_bucket = signed_site.sign(body, key, serial=8, bucket="another-bucket")
    signed_site.put(body, other_bucket)
    await signed_site.refused("binding")


async def test_an_older_serial_is_refused_and_an_equal_one_only_for_the_same_content(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    key = ssh_keys["ed25519"]
    signed_site.trust(f"ci {key.line}")
    v1, v2 = signed_site.bundle("v1"), signed_site.bundle("v2")
    v1_metadata = signed_site.sign(v1, key, serial=100)
    signed_site.put(v1, v1_metadata)
    await signed_site.deployed()
    signed_site.publish(v2, key, serial=200)
    await signed_site.deployed()
    assert signed_site.installed() == "v2"

    signed_site.put(v1, v1_metadata)  # last month's release, validly signed, uploaded again
    dep = await signed_site.refused("serial")
    assert "lower than 200" in (dep.error or "")

    signed_site.publish(signed_site.bundle("v3"), key, serial=200)  # a reused serial, other content
    dep = await signed_site.refused("serial")
    assert "already accepted for other content" in (dep.error or "")

    signed_site.publish(v2, key, serial=200)  # the current release uploaded again: harmless
    assert (await signed_site.deployed()).to_json()["signed_by"]["serial"] == 200
    assert ratchet(signed_site) == (200, hashlib.sha256(v2).hexdigest())


async def test_the_serial_moves_only_when_the_download_verified(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    """A refusal after the signature checked (the bytes do not match) leaves the ratchet where it was;
    a verified download moves it even when the deployment then fails in a hook."""
    key = ssh_keys["ecdsa256"]
    signed_site.trust(f"ci {key.line}")
    signed_site.publish(signed_site.bundle("v1"), key, serial=10)
    await signed_site.deployed()
    good = signed_site.bundle("v2")
    tampered = bytearray(good)
    tampered[-30] ^= 1
    signed_site.put(bytes(tampered), signed_site.sign(good, key, serial=50))
    await signed_site.refused("sha256")
    assert ratchet(signed_site) is not None and ratchet(signed_site)[0] == 10  # type: ignore[index]

    signed_site.publish(signed_site.bundle("v3", fail_in="AfterInstall"), key, serial=30)
    result = await signed_site.deploy()
    assert result.deployment is not None and result.deployment.failed_event == "AfterInstall"
    assert result.deployment.to_json()["signed_by"]["serial"] == 30
    assert ratchet(signed_site) is not None and ratchet(signed_site)[0] == 30  # type: ignore[index]


async def test_rollback_from_disk_reinstalls_a_verified_release_without_checking_again(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    key, other = ssh_keys["rsa"], ssh_keys["ed25519"]
    signed_site.trust(f"ci {key.line}")
    signed_site.publish(signed_site.bundle("v1"), key, serial=1)
    v1 = await signed_site.deployed()
    signed_site.publish(signed_site.bundle("v2", fail_in="ApplicationStart"), key, serial=2)
    failed = (await signed_site.deploy()).deployment
    assert failed is not None and failed.status == "failed"
    async with open_agent(signed_site.state_dir, signed_site.section) as agent:
        auto = (await agent.history(NAME))[0]
    assert (auto.rollback_of, auto.restores, auto.status) == (failed.id, v1.id, "succeeded")
    assert auto.signed_by == v1.signed_by and signed_site.installed() == "v1"

    signed_site.publish(signed_site.bundle("v3"), key, serial=3)
    await signed_site.deployed()
    # The key is no longer trusted and S3 is unreachable: a release on disk is reinstalled all the same.
    signed_site.trust(f"ci {other.line}")
    offline = replace(signed_site.section, endpoint_url="http://127.0.0.1:9")
    async with open_agent(signed_site.state_dir, offline) as agent:
        manual = await agent.rollback(NAME)
    assert manual.status == "succeeded" and manual.restores == v1.id
    assert manual.to_json()["signed_by"] == v1.to_json()["signed_by"]
    assert signed_site.installed() == "v1"


async def test_a_section_without_trusted_signers_is_unchanged(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    """No signing code runs: unsigned and wrongly signed objects deploy as before, nothing is recorded."""
    plain = replace(signed_site.section, trusted_signers=None)
    signed_site.section = plain
    async with open_agent(signed_site.state_dir, plain) as agent:
        assert (await agent.watcher(plain)).deployer.fetcher.gate is None
    signed_site.put(signed_site.bundle("v1"))
    dep = await signed_site.deployed()
    assert dep.signed_by is None and dep.to_json()["signed_by"] is None
    signed_site.publish(signed_site.bundle("v2"), ssh_keys["ed25519"], serial=1, namespace="other")
    await signed_site.deployed()
    assert signed_site.installed() == "v2" and len(signed_site.unpacked) == 2
    async with open_agent(signed_site.state_dir, plain) as agent:
        (status,) = await agent.status()
    assert status["signing"] is None and status["current"]["signed_by"] is None
    assert ratchet(signed_site) is None


async def test_a_revision_seen_through_a_list_is_headed_for_its_signature(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    """Sections sharing a bucket poll with one LIST, which carries no metadata: the poller HEADs what
    changed, and the gate HEADs a listed revision itself."""
    key = ssh_keys["ed25519"]
    signed_site.trust(f"ci {key.line}")
    staging = replace(signed_site.section, name="Staging", target_file_key="web/staging.zip")
    body = signed_site.bundle("v1")
    signed_site.publish(body, key, serial=1)
    signed_site.put(signed_site.bundle("s1"), object_key="web/staging.zip")
    async with open_agent(signed_site.state_dir, signed_site.section, staging) as agent:
        ctx = await agent.context()
        prod, stage = await agent.watcher(signed_site.section), await agent.watcher(staging)
        refused = await stage.poll_once()  # the bucket's first watched key: a HEAD
        deployed = await prod.poll_once()  # two keys: a LIST, then a HEAD of the key that changed
        lister = ctx.pool.lister(prod.endpoint, signed_site.section.s3_bucket)
        assert lister is not None and lister.lists == 1
    assert refused is not None and (refused.error or "").startswith("signature: unsigned: ")
    assert deployed is not None and deployed.status == "succeeded" and deployed.signed_by is not None

    endpoint = Endpoint(endpoint_url=signed_site.section.endpoint_url)
    async with S3Pool() as pool:
        listed = (await pool.list_objects(endpoint, signed_site.section.s3_bucket, "web/"))[KEY]
        assert not listed.metadata
        with StateStore(signed_site.tmp / "gate.db") as store:
            gate = SignatureGate(signed_site.section, store, pool, endpoint)
            verified = await gate.before_download(listed)
    assert verified.manifest.sha256 == hashlib.sha256(body).hexdigest()


async def test_a_broken_signers_file_fails_the_deployment_until_it_is_fixed(
    signed_site: SignedSite, ssh_keys: dict[str, SshKey]
) -> None:
    """The file is read at each deployment (an edit applies at once); broken after the config was
    loaded, it fails the deployment as a local fault that is tried again, never deploys unverified."""
    key = ssh_keys["ecdsa256"]
    signed_site.trust("ci ssh-ed25519 not-base64!")
    signed_site.publish(signed_site.bundle("v1"), key, serial=1)
    result = await signed_site.deploy()
    dep = result.deployment
    assert dep is not None and (dep.error or "").startswith("signature: trusted_signers: ")
    assert dep.transient and signed_site.unpacked == [] and signed_site.hook_lines() == []
    signed_site.trust(f"ci {key.line}")
    await signed_site.deployed()
    assert signed_site.installed() == "v1"


def test_the_migration_keeps_older_databases(tmp_path: Path) -> None:
    """A state.db of the schema before signing opens with signed_by empty and no ratchet."""
    from s3deploy.state.schema import MIGRATIONS

    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    for statements in MIGRATIONS[:-1]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    conn.execute(
        "INSERT INTO deployments (id, section, bucket, key, status, started_at)"
        " VALUES ('d-OLD000001', 'Prod', 'b', 'k', 'succeeded', '2025-01-01T00:00:00.000+00:00')"
    )
    conn.commit()
    conn.close()
    with StateStore(db) as store:
        old: Any = store.get("d-OLD000001")
        assert old.signed_by is None and old.to_json()["signed_by"] is None
        assert signatures.accepted_serial(store, "Prod") is None
