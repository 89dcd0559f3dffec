"""The outside attacker's kit for tests/test_attacks_*.py (issue 9, replayed against the real agent).

Every attack runs against ``s3deploy`` processes (a daemon, or one-shot commands), never the library:
- ``victim``: a daemon of two sections, ``Target`` (attacked) and ``Bystander`` (must keep deploying
  while Target is attacked: ``bystander_deploys()``), in a folder every local user can reach;
- ``app_user``: a fresh unprivileged local user (useradd), deleted afterwards; ``as_user`` runs a shell
  command as it, as an attacker holding that account would;
- ``small_disk``: a real tmpfs of a few MiB (a full disk), unmounted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from tests.agent import DaemonProcess, appspec, db_history, status, wait_until, write_config, zip_bytes
from tests.users import User, reachable_folder, temporary_user

KEY = "app/bundle.zip"
POLL = 0.3


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the attacks need root: the agent runs as root, the attacker as another user")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder every local user can traverse (pytest's tmp_path sits in a root-only folder)."""
    with reachable_folder("s3deploy-attack-") as path:
        yield path


@pytest.fixture
def app_user() -> Iterator[User]:
    """A fresh unprivileged local user, deleted afterwards."""
    needs_root()
    with temporary_user("s3da") as user:
        yield user


@pytest.fixture
def small_disk(reachable: Path) -> Iterator[Callable[[str, Path], Path]]:
    """Factory: ``small_disk("2m", where)`` mounts a tmpfs of that size (a real full disk) on the new
    folder ``where``; unmounted after."""
    needs_root()
    mounted: list[Path] = []

    def mount(size: str, where: Path) -> Path:
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def marker_bundle(dest: Path, tag: str) -> bytes:
    """A plain release: ``dest/marker`` holds ``tag``."""
    return zip_bytes({"appspec.yml": appspec(dest, {}), "app/marker": tag})


@dataclass
class Victim:
    """A daemon of two sections of one config: ``Target`` is attacked, ``Bystander`` keeps deploying."""

    base: Path
    seaweed: SeaweedServer
    s3: Any
    buckets: dict[str, str]
    start_daemon: Callable[..., DaemonProcess]
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    daemon: DaemonProcess | None = None
    #: Where the daemon keeps its state (default: base/state); set before ``start``.
    state: Path | None = None
    _rounds: int = 0

    @property
    def state_dir(self) -> Path:
        return self.state or self.base / "state"

    @property
    def config(self) -> Path:
        return self.base / "config.ini"

    def dest(self, section: str) -> Path:
        return self.base / f"www-{section}"

    def write_config(self, **target_keys: Any) -> Path:
        sections = {}
        for name, bucket in self.buckets.items():
            keys: dict[str, Any] = {
                "s3_bucket": bucket,
                "target_file_key": KEY,
                "endpoint_url": self.seaweed.endpoint_url,
                "poll_interval": POLL,
            }
            keys.update(self.extra.get(name, {}))
            if name == "Target":
                keys.update(target_keys)
            sections[name] = keys
        return write_config(self.config, sections)

    def upload(self, section: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.buckets[section], Key=KEY, Body=body)

    def start(self, *args: str) -> DaemonProcess:
        """Write the config (if not yet written), deploy a first Bystander release, start the daemon."""
        if not self.config.exists():
            self.write_config()
        self.upload("Bystander", marker_bundle(self.dest("Bystander"), "b0"))
        self.daemon = self.start_daemon(self.config, self.state_dir, "--all", *args)
        wait_until(lambda: self._marker("Bystander") == "b0", timeout=60)
        return self.daemon

    def _marker(self, section: str) -> str | None:
        try:
            return (self.dest(section) / "marker").read_text()
        except OSError:
            return None

    def rows(self, section: str = "Target") -> list[dict[str, Any]]:
        """The section's deployments, newest first, from state.db."""
        return db_history(self.state_dir, section)

    def wait_finished(self, count: int = 1, section: str = "Target", timeout: float = 60) -> dict[str, Any]:
        """The newest row once ``count`` deployments of ``section`` ended (none still running)."""

        def done() -> dict[str, Any] | None:
            rows = self.rows(section)
            if len(rows) >= count and all(r["status"] != "running" for r in rows):
                return rows[0]
            return None

        row: dict[str, Any] = wait_until(done, timeout=timeout)
        return row

    def wait_revisions(self, count: int, section: str = "Target") -> None:
        """Until ``count`` revisions of ``section`` were deployed (rollbacks aside) and none runs."""

        def done() -> bool:
            rows = self.rows(section)
            revisions = [r for r in rows if r["rollback_of"] is None]
            return len(revisions) >= count and all(r["status"] != "running" for r in rows)

        wait_until(done, timeout=90)
        time.sleep(0.5)  # a rollback starts right after the failed deployment is recorded
        wait_until(lambda: all(r["status"] != "running" for r in self.rows(section)), timeout=90)

    def last_revision(self, section: str = "Target") -> dict[str, Any]:
        """The newest deployment of a revision from S3 (not a rollback) of ``section``."""
        return next(r for r in self.rows(section) if r["rollback_of"] is None)

    def bystander_deploys(self) -> None:
        """A new Bystander revision still deploys, and the daemon still runs: the attack on Target
        stopped neither."""
        self._rounds += 1
        tag = f"b{self._rounds}"
        self.upload("Bystander", marker_bundle(self.dest("Bystander"), tag))
        wait_until(lambda: self._marker("Bystander") == tag, timeout=60)
        assert self.daemon is not None and self.daemon.proc.poll() is None, "the daemon died"

    def assert_clean_output(self) -> None:
        """No traceback and no crashed watcher in what the daemon printed."""
        assert self.daemon is not None
        out = self.daemon.output()
        assert "Traceback" not in out, out[-3000:]
        assert "crashed" not in out.lower(), out[-3000:]

    def status(self) -> dict[str, dict[str, Any]]:
        return status(self.config, self.state_dir)


@pytest.fixture
def victim(
    reachable: Path,
    seaweed: SeaweedServer,
    s3_client: Any,
    make_bucket: Callable[..., str],
    daemons: Callable[..., DaemonProcess],
) -> Victim:
    """The two-section victim (not started: set ``extra`` or call ``write_config`` first if needed)."""
    needs_root()
    buckets = {"Target": make_bucket(), "Bystander": make_bucket()}
    return Victim(reachable, seaweed, s3_client, buckets, daemons)
