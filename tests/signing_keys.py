"""Real OpenSSH keys and the ssh-keygen commands the signing tests compare s3deploy against.

Fixtures (a test module imports ``ssh_keys_fixture``/``rsa4096_fixture`` to use them): ``ssh_keys``
(session): one key of every supported type, made by ``ssh-keygen``;
``rsa4096`` (session): an rsa-4096 key for the metadata size limit.
Helpers: ``keygen_sign`` / ``keygen_verify`` run ``ssh-keygen -Y sign`` / ``-Y verify`` themselves,
``signers_file`` writes an allowed_signers file, ``sshsig`` builds SSHSIG blobs for crafted cases.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

#: name → ssh-keygen arguments
KEY_TYPES = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
}


@dataclass(frozen=True)
class SshKey:
    name: str
    private: Path
    public: Path

    @property
    def line(self) -> str:
        """``TYPE BASE64`` of the public key (comment dropped)."""
        return " ".join(self.public.read_text().split()[:2])

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.public.read_text().split()[1])

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.public)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()[1]


def needs_ssh_keygen() -> None:
    """Skip the test on a machine without OpenSSH's ssh-keygen: the signing tests make their keys and
    compare their verdicts with it (s3deploy verifies in-process; only `publish --sign-key` runs it)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH's ssh-keygen (apt-get install openssh-client)")


def make_key(directory: Path, name: str, args: list[str]) -> SshKey:
    needs_ssh_keygen()
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
    return SshKey(name, path, path.with_name(f"{name}.pub"))


@pytest.fixture(scope="session", name="ssh_keys")
def ssh_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SshKey]:
    directory = tmp_path_factory.mktemp("sshkeys")
    return {name: make_key(directory, name, args) for name, args in KEY_TYPES.items()}


@pytest.fixture(scope="session", name="rsa4096")
def rsa4096_fixture(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    return make_key(tmp_path_factory.mktemp("rsa4096"), "rsa4096", ["-t", "rsa", "-b", "4096"])


def keygen_sign(
    key: SshKey, message: bytes, tmp: Path, *, namespace: str = "s3deploy", hashalg: str | None = None
) -> str:
    """``ssh-keygen -Y sign`` of ``message``; the armoured signature."""
    needs_ssh_keygen()
    path = tmp / "message"
    path.write_bytes(message)
    Path(f"{path}.sig").unlink(missing_ok=True)
    extra = ["-O", f"hashalg={hashalg}"] if hashalg else []
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key.private), *extra, str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.sig").read_text()


def keygen_verify(
    signers: Path, principal: str, signature: str, message: bytes, tmp: Path, *, namespace: str = "s3deploy"
) -> bool:
    """``ssh-keygen -Y verify``'s verdict."""
    needs_ssh_keygen()
    sig = tmp / "verify.sig"
    sig.write_text(signature)
    done = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", principal, "-n", namespace, "-s", str(sig)],
        input=message,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def signers_file(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def sshsig(
    public_blob: bytes,
    namespace: str,
    hashalg: str,
    sig_type: str,
    sig_blob: bytes,
    *,
    version: int = 1,
    reserved: bytes = b"",
) -> bytes:
    """An SSHSIG blob from its parts (PROTOCOL.sshsig)."""
    inner = string(sig_type) + string(sig_blob)
    return (
        b"SSHSIG"
        + struct.pack(">I", version)
        + string(public_blob)
        + string(namespace)
        + string(reserved)
        + string(hashalg)
        + string(inner)
    )


def armour(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----", ""])
