"""A real, fresh, unprivileged local user for tests that play another user (needs root)."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` as this user, from /, as an attacker holding the account would run it."""
        return subprocess.run(
            ["/bin/sh", "-c", script], user=self.uid, group=self.gid, extra_groups=[], cwd="/",
            capture_output=True, text=True, timeout=60, check=check,
        )  # fmt: skip


@contextmanager
def temporary_user(prefix: str, shell: str = "/bin/sh") -> Iterator[User]:
    """useradd a system user named ``prefix`` + random hex (its own group, no home), userdel afterwards;
    skips the test when not root or when useradd fails."""
    if os.geteuid() != 0:
        pytest.skip("creating a user and switching to it needs root")
    name = f"{prefix}{secrets.token_hex(4)}"
    made = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", shell, name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
