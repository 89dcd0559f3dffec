"""The signed manifest and the two user-metadata values that carry it with the object (SPEC §11).

``s3deploy-manifest`` is the standard base64 (no line breaks) of the manifest bytes, a JSON object
``{"v": 1, "bucket": B, "key": K, "sha256": HEX, "size": N, "serial": N}``; ``s3deploy-signature`` is
``ssh-keygen -Y sign -n s3deploy``'s signature of exactly those bytes without its two armour lines and
line breaks. The signature covers the bytes, so a verifier parses whatever JSON spelling a signer used
(s3deploy writes ``json.dumps`` with its default separators, as the shell recipe's printf does), but
strictly: exactly those six members, each once, of the right type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from s3deploy.common.text import bounded
from s3deploy.signing.errors import SigningError
from s3deploy.signing.wire import ARMOUR_BEGIN, ARMOUR_END, MAX_SIGNATURE_CHARS

MANIFEST_METADATA = "s3deploy-manifest"
SIGNATURE_METADATA = "s3deploy-signature"
#: AWS caps user metadata at 2 KB, counted as the UTF-8 bytes of every key (without ``x-amz-meta-``)
#: and value. SeaweedFS and moto do not enforce it; s3deploy refuses to produce more.
METADATA_LIMIT_BYTES = 2048
MAX_MANIFEST_BYTES = 4096  # decoded; a real one is well under the metadata cap
MAX_KEY_BYTES = 1024  # S3's longest object key
MAX_INT = 2**63 - 1  # size and serial fit a signed 64-bit integer (SQLite, JSON readers)
_FIELDS = ("v", "bucket", "key", "sha256", "size", "serial")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def new_serial() -> int:
    """The default serial: the current time in milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Manifest:
    """What a signature commits to: which object (bucket, key), which bytes (sha256, size), and a
    serial that only goes up."""

    bucket: str
    key: str
    sha256: str  # lowercase hex
    size: int
    serial: int

    def to_bytes(self) -> bytes:
        """The manifest bytes s3deploy signs: ``{"v": 1, "bucket": ..., "serial": N}``, UTF-8."""
        fields = {"v": 1, **asdict(self)}  # v, bucket, key, sha256, size, serial: the SPEC's order
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")

    @classmethod
    def for_file(cls, path: Path, bucket: str, key: str, serial: int | None = None) -> Manifest:
        """The manifest of the bundle file at ``path`` for s3://BUCKET/KEY; ``serial`` defaults to
        :func:`new_serial`. Reads the file once (blocking)."""
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        return cls(bucket, key, digest.hexdigest(), size, new_serial() if serial is None else serial)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _format_error(detail: str) -> SigningError:
    return SigningError("manifest", detail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise _format_error(f'manifest has the member "{bounded(name, 40)}" twice')
    return dict(pairs)


def _refuse_constant(name: str) -> None:
    raise _format_error(f"manifest holds {name}, which is not JSON")


def _integer(obj: dict[str, Any], name: str) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise _format_error(
            f'manifest "{name}" must be a whole number 0..{MAX_INT}, got {bounded(value, 40)}'
        )
    return value


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _format_error(f'manifest "{name}" must be a non-empty string of at most {MAX_KEY_BYTES} bytes')
    return value


def parse_manifest(data: bytes) -> Manifest:
    """The manifest bytes → Manifest; raises SigningError (check ``manifest``) naming what is wrong."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise _format_error(f"manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        obj = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _format_error(f"manifest is not UTF-8 JSON ({bounded(e, 80)})") from e
    if not isinstance(obj, dict):
        raise _format_error(f"manifest is a JSON {type(obj).__name__}, expected an object")
    if obj.get("v") != 1 or type(obj.get("v")) is not int:
        raise _format_error(f'manifest version "v" is {bounded(obj.get("v"), 40)}, only 1 is known')
    missing = [name for name in _FIELDS if name not in obj]
    unknown = sorted(set(obj) - set(_FIELDS))
    if missing or unknown:
        raise _format_error(
            f"manifest members: missing {missing or 'none'}, unknown "
            f"{[bounded(u, 40) for u in unknown] or 'none'} (expected {', '.join(_FIELDS)})"
        )
    sha256 = obj["sha256"]
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise _format_error(f'manifest "sha256" must be 64 hex digits, got {bounded(sha256, 80)}')
    return Manifest(
        _text(obj, "bucket"),
        _text(obj, "key"),
        sha256.lower(),
        _integer(obj, "size"),
        _integer(obj, "serial"),
    )


def bare_signature(armoured: str) -> str:
    """``ssh-keygen -Y sign`` output without its two armour lines and line breaks."""
    lines = [line.strip() for line in armoured.strip().splitlines()]
    if len(lines) < 3 or lines[0] != ARMOUR_BEGIN or lines[-1] != ARMOUR_END:
        raise SigningError("format", "not an armoured SSH signature (ssh-keygen -Y sign output)")
    return "".join(lines[1:-1])


def metadata_size(metadata: Mapping[str, str]) -> int:
    """User-metadata size as AWS counts it: UTF-8 bytes of every key and value."""
    return sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in metadata.items())


def signed_metadata(
    manifest: bytes, signature: str, other: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The user metadata that carries ``manifest`` and its ``signature`` (armoured or bare).

    Raises SigningError (check ``metadata size``) when they, with the ``other`` metadata the object
    gets, exceed AWS's 2 KB: AWS would refuse the upload, other stores would keep what AWS cannot.
    """
    bare = bare_signature(signature) if signature.lstrip().startswith("-----") else "".join(signature.split())
    metadata = {
        **(other or {}),
        MANIFEST_METADATA: base64.b64encode(manifest).decode("ascii"),
        SIGNATURE_METADATA: bare,
    }
    size = metadata_size(metadata)
    if size > METADATA_LIMIT_BYTES:
        raise SigningError(
            "metadata size",
            f"manifest and signature take {size} bytes of user metadata, "
            f"AWS allows {METADATA_LIMIT_BYTES}; use a shorter object key, or an ed25519 or "
            "ecdsa key (an rsa-4096 signature alone takes about 1.5 KB)",
        )
    return metadata


@dataclass(frozen=True)
class SignedMetadata:
    """The manifest and signature read back from an object's user metadata (not verified yet)."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: str  # bare base64


def read_metadata(metadata: Mapping[str, str]) -> SignedMetadata:
    """Read ``s3deploy-manifest`` and ``s3deploy-signature`` (names compared case-insensitively, as
    HTTP headers are) from an object's user metadata. Raises SigningError: ``unsigned`` when either
    is missing, ``manifest``/``format`` when a value is malformed."""
    found: dict[str, str] = {}
    for name, value in metadata.items():
        lower = name.lower()
        if lower in (MANIFEST_METADATA, SIGNATURE_METADATA):
            if lower in found:
                raise SigningError("format", f"user metadata has {lower} twice")
            found[lower] = value
    missing = [name for name in (MANIFEST_METADATA, SIGNATURE_METADATA) if name not in found]
    if missing:
        raise SigningError(
            "unsigned",
            f"the object has no {' and no '.join(missing)} user metadata; sign it "
            "with s3deploy publish --sign-key or ssh-keygen (docs/signing.md)",
        )
    encoded, signature = found[MANIFEST_METADATA].strip(), found[SIGNATURE_METADATA].strip()
    if len(encoded) > MAX_MANIFEST_BYTES * 2 or len(signature) > MAX_SIGNATURE_CHARS:
        raise SigningError("format", f"{MANIFEST_METADATA} or {SIGNATURE_METADATA} is too long")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _format_error(f"{MANIFEST_METADATA} is not standard base64 ({e})") from e
    return SignedMetadata(parse_manifest(data), data, signature)
