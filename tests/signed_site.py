"""A section with ``trusted_signers`` on SeaweedFS, for the signed-deployment tests: bundles whose hooks
leave a trace, objects signed with real ``ssh-keygen -Y sign``, deployments through the real runtime, and
what a refusal must leave behind (nothing unpacked, no hook run)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import s3deploy.fetch
from s3deploy.config import Section
from s3deploy.runtime.agent import CheckResult
from s3deploy.signing import Manifest, signed_metadata
from s3deploy.state.layout import StateLayout
from s3deploy.state.store import Deployment
from tests.agent import appspec, open_agent, trace_hooks, zip_bytes
from tests.signing_keys import SshKey, keygen_sign

KEY = "web/app.zip"
NAME = "Prod"
EVENTS = ("BeforeInstall", "AfterInstall", "ApplicationStart")


@dataclass
class SignedSite:
    """Section ``Prod`` of a fresh bucket, trusting the keys written to ``signers``."""

    section: Section
    s3: Any
    tmp: Path
    unpacked: list[Path] = field(default_factory=list)  # every archive s3deploy unpacked

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def dest(self) -> Path:
        return self.tmp / "www"

    @property
    def trace(self) -> Path:
        return self.tmp / "hooks.trace"

    @property
    def signers(self) -> Path:
        assert self.section.trusted_signers is not None
        return self.section.trusted_signers

    def trust(self, *lines: str) -> None:
        """Write the allowed_signers file: ``principal [options] TYPE BASE64`` lines."""
        self.signers.write_text("".join(f"{line}\n" for line in lines))

    def bundle(self, tag: str, *, fail_in: str | None = None) -> bytes:
        """A zip installing index.html = tag, with a hook per EVENTS appending to ``trace`` (``fail_in``:
        that hook exits 1)."""
        hooks = trace_hooks(self.trace, EVENTS, tag)
        if fail_in is not None:
            hooks[f"scripts/{fail_in}.sh"] = "#!/bin/sh\necho failing >&2\nexit 1\n"
        return zip_bytes(
            {
                "appspec.yml": appspec(self.dest, {e: f"scripts/{e}.sh" for e in EVENTS}),
                "app/index.html": f"{tag}\n",
                **hooks,
            }
        )

    def sign(
        self,
        body: bytes,
        key: SshKey,
        *,
        serial: int,
        namespace: str = "s3deploy",
        bucket: str | None = None,
        object_key: str = KEY,
    ) -> dict[str, str]:
        """The metadata ssh-keygen's signature of ``body``'s manifest makes (for s3://bucket/object_key)."""
        manifest = Manifest(
            bucket or self.section.s3_bucket,
            object_key,
            hashlib.sha256(body).hexdigest(),
            len(body),
            serial,
        ).to_bytes()
        sig_dir = self.tmp / "sig"
        sig_dir.mkdir(exist_ok=True)
        return signed_metadata(manifest, keygen_sign(key, manifest, sig_dir, namespace=namespace))

    def put(self, body: bytes, metadata: dict[str, str] | None = None, *, object_key: str = KEY) -> None:
        self.s3.put_object(Bucket=self.section.s3_bucket, Key=object_key, Body=body, Metadata=metadata or {})

    def publish(self, body: bytes, key: SshKey, *, serial: int, **options: Any) -> None:
        self.put(body, self.sign(body, key, serial=serial, **options))

    async def deploy(self, *, force: bool = False, **changes: Any) -> CheckResult:
        """``s3deploy deploy Prod`` in-process (a fresh runtime, as the command opens one)."""
        async with open_agent(self.state_dir, replace(self.section, **changes)) as agent:
            return await agent.deploy_now(NAME, force=force)

    async def deployed(self, **changes: Any) -> Deployment:
        result = await self.deploy(**changes)
        assert result.deployment is not None, result
        assert result.deployment.status == "succeeded", result.deployment.error
        return result.deployment

    def hook_lines(self) -> list[str]:
        return self.trace.read_text().splitlines() if self.trace.exists() else []

    def installed(self) -> str | None:
        index = self.dest / "index.html"
        return index.read_text().strip() if index.exists() else None

    async def refused(self, check: str, *, force: bool = False) -> Deployment:
        """Deploy, expecting the refusal ``signature: CHECK:`` with nothing of the revision unpacked or
        run, and no retry of it until the object changes."""
        hooks, installed, unpacked = self.hook_lines(), self.installed(), len(self.unpacked)
        result = await self.deploy(force=force)
        dep = result.deployment
        assert dep is not None, result
        assert (dep.status, dep.failed_event) == ("failed", "DownloadBundle"), dep
        assert dep.error is not None and dep.error.startswith(f"signature: {check}: "), dep.error
        assert not dep.transient
        assert dep.signed_by is None
        assert len(self.unpacked) == unpacked, "a refused bundle was unpacked"
        assert self.hook_lines() == hooks, "a hook ran for a refused bundle"
        assert self.installed() == installed
        assert not StateLayout(self.state_dir).release_dir(NAME, dep.id).exists()
        again = await self.deploy()
        assert again.deployment is None and again.error is None, "a refused revision was tried again"
        return dep


@pytest.fixture(name="signed_site")
def signed_site_fixture(
    tmp_path: Path, seaweed: Any, make_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> SignedSite:
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    section = Section(
        name=NAME,
        s3_bucket=make_bucket(versioned=True),  # every put is a new revision, even within a second
        target_file_key=KEY,
        endpoint_url=seaweed.endpoint_url,
        poll_interval_s=0.2,
        trusted_signers=signers,
    )
    site = SignedSite(section, s3_client, tmp_path)
    real_unpack = s3deploy.fetch.unpack

    def unpack(archive: Path, *args: Any, **kwargs: Any) -> Path:  # records, then unpacks for real
        site.unpacked.append(archive)
        return real_unpack(archive, *args, **kwargs)

    monkeypatch.setattr(s3deploy.fetch, "unpack", unpack)
    return site
