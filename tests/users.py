"""A real, fresh, unprivileged local user for tests that play another user (needs root)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Run as the other user by :meth:`User.probe`: each attempt, and what came of it ("ok" or the errno's name).
PROBE = """
import errno, fcntl, json, os, sys
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def flock(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
def read(path):
    with open(path, "rb") as f:
        f.read(1)
def write(path):
    with open(path, "ab") as f:
        f.write(b"#")
how = {"flock": flock, "read": read, "write": write, "list": os.listdir}
attempts = json.loads(sys.argv[1])
print(json.dumps({what: attempt(lambda: how[verb](path)) for what, (verb, path) in attempts.items()}))
"""


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

    def probe(self, attempts: dict[str, tuple[str, str]]) -> dict[str, str]:
        """Try each ``{what: (verb, path)}`` as this user (verbs: flock, read, write, list); returns
        ``{what: "ok" | errno name}``. Skips the test without a system python3 the user can run."""
        # This venv's interpreter may sit in root's home, out of the user's reach.
        python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
        if python is None:
            pytest.skip("no system python3 that another user can run")
        done = subprocess.run(
            [python, "-c", PROBE, json.dumps(attempts)], user=self.uid, group=self.gid, extra_groups=[],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        result: dict[str, str] = json.loads(done.stdout)
        return result


@contextmanager
def reachable_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder every local user can traverse (pytest's tmp_path sits in a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
