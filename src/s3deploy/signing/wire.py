"""OpenSSH's wire format, read strictly: public key blobs and SSHSIG signatures (PROTOCOL.sshsig).

Pure parsing, no cryptography: every length is checked against what is left before anything is read,
so a truncated or hostile blob raises :class:`SigningError` (check ``format``) and nothing else.
Supported keys are what s3deploy verifies: ``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521`` and
``ssh-rsa`` (with ``rsa-sha2-256``/``rsa-sha2-512`` signatures; SHA-1 ``ssh-rsa`` signatures are
refused, as ``ssh-keygen -Y verify`` does). Certificates and security-key (``sk-``) keys are refused
by name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from s3deploy.signing.errors import SigningError

MAGIC = b"SSHSIG"
VERSION = 1
HASH_ALGORITHMS = ("sha256", "sha512")
ARMOUR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOUR_END = "-----END SSH SIGNATURE-----"
#: Longest signature text accepted (armoured or bare): an rsa-16384 signature is about 5.5 KB.
MAX_SIGNATURE_CHARS = 16 * 1024

ED25519 = "ssh-ed25519"
RSA = "ssh-rsa"
ECDSA_CURVES = {
    "ecdsa-sha2-nistp256": "nistp256",
    "ecdsa-sha2-nistp384": "nistp384",
    "ecdsa-sha2-nistp521": "nistp521",
}
_ECDSA_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}  # 0x04 || X || Y
RSA_SIGNATURE_TYPES = ("rsa-sha2-256", "rsa-sha2-512")
KEY_TYPES = (ED25519, *ECDSA_CURVES, RSA)
RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
RSA_MAX_BITS = 16384  # OpenSSH's SSHBUF_MAX_BIGNUM * 8


def _format_error(detail: str) -> SigningError:
    return SigningError("format", detail)


class Reader:
    """Reads SSH wire types (uint32, string, mpint) from bytes; a short read raises SigningError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise _format_error(f"{self._what} is truncated (wants {n} bytes, {self.left} left)")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    @property
    def left(self) -> int:
        return len(self._data) - self._pos

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self, name: str) -> str:
        raw = self.string()
        if b"\x00" in raw:
            raise _format_error(f"{self._what}: {name} holds a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _format_error(f"{self._what}: {name} is not UTF-8") from e

    def mpint(self, name: str) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise _format_error(f"{self._what}: {name} is negative")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self.left:
            raise _format_error(f"{self._what} has {self.left} byte(s) of trailing data")


def put_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def put_mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""  # sign bit stays clear
    return put_string(raw)


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key: its type and numbers, compared by value (``material``), not by encoding."""

    key_type: str
    material: tuple[bytes | int | str, ...]  # ed25519: (pk,); ecdsa: (curve, point); rsa: (e, n)

    @property
    def blob(self) -> bytes:
        """The canonical wire encoding (what OpenSSH hashes for a fingerprint)."""
        out = put_string(self.key_type.encode())
        for part in self.material:
            if isinstance(part, int):
                out += put_mpint(part)
            else:
                out += put_string(part.encode() if isinstance(part, str) else part)
        return out

    @property
    def fingerprint(self) -> str:
        """``SHA256:`` and unpadded base64, as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def openssh(self) -> str:
        """``TYPE BASE64``, one line of an authorized_keys or allowed_signers file."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


def _refuse_unsupported(key_type: str, what: str) -> None:
    if key_type.endswith("-cert-v01@openssh.com"):
        raise SigningError("key type", f"{what}: certificates ({key_type}) are not supported; list the key")
    if key_type.startswith("sk-"):
        raise SigningError("key type", f"{what}: security-key (FIDO) keys ({key_type}) are not supported")
    if key_type not in KEY_TYPES:
        raise SigningError(
            "key type", f"{what}: key type {key_type!r} is not supported ({', '.join(KEY_TYPES)})"
        )


def parse_public_key(blob: bytes, what: str = "public key") -> PublicKey:
    """Parse a public key blob (the base64 field of an OpenSSH key line, decoded)."""
    reader = Reader(blob, what)
    key_type = reader.text("key type")
    _refuse_unsupported(key_type, what)
    material: tuple[bytes | int | str, ...]
    if key_type == ED25519:
        pk = reader.string()
        if len(pk) != 32:
            raise _format_error(f"{what}: ed25519 key is {len(pk)} bytes, expected 32")
        material = (pk,)
    elif key_type in ECDSA_CURVES:
        curve = reader.text("curve")
        if curve != ECDSA_CURVES[key_type]:
            raise _format_error(f"{what}: curve {curve!r} does not match key type {key_type}")
        point = reader.string()
        if len(point) != _ECDSA_POINT_BYTES[curve] or point[0] != 4:
            raise _format_error(f"{what}: {curve} point is not an uncompressed point")
        material = (curve, point)
    else:
        e, n = reader.mpint("e"), reader.mpint("n")
        if not RSA_MIN_BITS <= n.bit_length() <= RSA_MAX_BITS or e < 3 or e % 2 == 0:
            raise _format_error(
                f"{what}: rsa key of {n.bit_length()} bits or exponent {e} is not usable "
                f"({RSA_MIN_BITS}..{RSA_MAX_BITS} bits, odd exponent)"
            )
        material = (e, n)
    reader.end()
    return PublicKey(key_type, material)


@dataclass(frozen=True)
class SshSignature:
    """A parsed SSHSIG blob. ``raw_signature`` is the key-type specific part: ed25519's 64 bytes,
    ecdsa's (r, s) re-encoded as two big-endian integers, rsa's signature bytes."""

    public_key: PublicKey
    namespace: str
    hash_algorithm: str
    signature_type: str
    raw_signature: bytes | tuple[int, int]


def decode_signature_text(text: str | bytes) -> bytes:
    """The SSHSIG bytes of an armoured signature (``ssh-keygen -Y sign`` output) or of its bare base64
    (the ``s3deploy-signature`` metadata value); line breaks and surrounding blanks are ignored."""
    if isinstance(text, bytes):
        if len(text) > MAX_SIGNATURE_CHARS:
            raise _format_error(f"signature is {len(text)} bytes, more than {MAX_SIGNATURE_CHARS}")
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as e:
            raise _format_error("signature text is not ASCII base64") from e
    if len(text) > MAX_SIGNATURE_CHARS:
        raise _format_error(f"signature is {len(text)} characters, more than {MAX_SIGNATURE_CHARS}")
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines and lines[0] == ARMOUR_BEGIN:
        if len(lines) < 2 or lines[-1] != ARMOUR_END:
            raise _format_error(f"armoured signature does not end with {ARMOUR_END}")
        lines = lines[1:-1]
    body = "".join(lines)
    if not body:
        raise _format_error("signature is empty")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _format_error(f"signature is not valid base64 ({e})") from e


def _raw_signature(key: PublicKey, signature_type: str, blob: bytes) -> bytes | tuple[int, int]:
    if key.key_type == RSA:
        if signature_type == "ssh-rsa":
            raise SigningError(
                "algorithm", "ssh-rsa (SHA-1) signatures are refused; ssh-keygen signs with rsa-sha2-512"
            )
        if signature_type not in RSA_SIGNATURE_TYPES:
            raise SigningError("algorithm", f"signature type {signature_type!r} does not fit an rsa key")
        n = key.material[1]
        assert isinstance(n, int)
        if len(blob) > (n.bit_length() + 7) // 8:
            raise _format_error("rsa signature is longer than the key's modulus")
        return blob
    if signature_type != key.key_type:
        raise SigningError(
            "algorithm", f"signature type {signature_type!r} does not fit a {key.key_type} key"
        )
    if key.key_type == ED25519:
        if len(blob) != 64:
            raise _format_error(f"ed25519 signature is {len(blob)} bytes, expected 64")
        return blob
    reader = Reader(blob, "ecdsa signature")
    r, s = reader.mpint("r"), reader.mpint("s")
    reader.end()
    return (r, s)


def parse_signature(data: bytes) -> SshSignature:
    """Parse SSHSIG bytes: magic, version 1, public key, namespace, reserved, hash algorithm, signature."""
    reader = Reader(data, "signature")
    if reader.take(len(MAGIC)) != MAGIC:
        raise _format_error("not an SSH signature (no SSHSIG magic)")
    version = reader.uint32()
    if version != VERSION:
        raise _format_error(f"SSHSIG version {version}, only version {VERSION} is known")
    key = parse_public_key(reader.string(), "signature's public key")
    namespace = reader.text("namespace")
    reader.string()  # reserved: ignored, as OpenSSH does
    hash_algorithm = reader.text("hash algorithm")
    inner = Reader(reader.string(), "signature")
    reader.end()
    if hash_algorithm not in HASH_ALGORITHMS:
        raise SigningError("algorithm", f"hash algorithm {hash_algorithm!r} is not sha256 or sha512")
    signature_type = inner.text("signature type")
    raw = _raw_signature(key, signature_type, inner.string())
    inner.end()
    return SshSignature(key, namespace, hash_algorithm, signature_type, raw)


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """The bytes the key signs (PROTOCOL.sshsig): magic, namespace, reserved, hash algorithm, H(message)."""
    digest = hashlib.new(hash_algorithm, message).digest()
    return (
        MAGIC
        + put_string(namespace.encode())
        + put_string(b"")
        + put_string(hash_algorithm.encode())
        + put_string(digest)
    )
