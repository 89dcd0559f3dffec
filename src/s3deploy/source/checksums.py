"""Checking a download's content without reading it twice.

Which checksum a download is verified against (:func:`checksum_for`): the S3 full-object checksum (CRC32,
SHA256 or SHA1) when the revision carries one, else the MD5 when the ETag is a single-part MD5 (32 hex
digits, object not SSE-KMS/SSE-C encrypted). One is enough to catch corruption, and CRC32 is several
times cheaper than MD5 on big bundles. Multipart objects without a full-object checksum are verified by
size only: their ETag is an MD5 of part MD5s, not checkable without the part size.

How, for a download fetched in parallel ranges (see :mod:`s3deploy.source.transfer`):

* CRC32 is computed per range, in the thread that writes each block while its bytes are hot in cache,
  and the per-range values are combined with the GF(2) matrix math of zlib's ``crc32_combine`` (zlib
  does not expose it to Python; the operator for a range length is computed once and cached).
* Digests that cannot be combined (MD5, SHA1, SHA256, and the caller's sha256 of a signed bundle) are fed
  by a :class:`Follower`: a thread that reads the file back from the page cache in order, right behind
  the writers (it waits for the bytes before a position to be written, block by block), so hashing
  overlaps the download instead of following it. One read feeds every digest.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from s3deploy.source.revision import Revision

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
#: Bytes the follower reads back per pread.
FOLLOW_BYTES = 4 << 20


class Hasher(Protocol):
    """What hashlib objects offer (``update`` releases the GIL on big buffers)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


# --------------------------------------------------------------------------- CRC32 combination
def _gf2_apply(matrix: tuple[int, ...], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= matrix[i]
        vec >>= 1
        i += 1
    return out


def _gf2_compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The operator ``a ∘ b`` (apply b, then a)."""
    return tuple(_gf2_apply(a, col) for col in b)


@functools.cache
def _zeros_operator(n_bytes: int) -> tuple[int, ...]:
    """The GF(2) operator that advances a CRC32 register over ``n_bytes`` zero bytes."""
    # One zero bit: shift right, xor the reflected polynomial when the low bit falls out.
    one_bit = (0xEDB88320, *(1 << k for k in range(31)))
    step = one_bit
    for _ in range(3):  # 8 bits: one zero byte
        step = _gf2_compose(step, step)
    result: tuple[int, ...] = tuple(1 << k for k in range(32))  # identity
    n = n_bytes
    while n:
        if n & 1:
            result = _gf2_compose(step, result)
        n >>= 1
        if n:
            step = _gf2_compose(step, step)
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's crc32_combine)."""
    if len2 <= 0:
        return crc1
    return _gf2_apply(_zeros_operator(len2), crc1) ^ crc2


# --------------------------------------------------------------------------- what to verify
@dataclass(frozen=True)
class Checksum:
    """The one content checksum a download is verified against, and who vouches for its value."""

    name: str | None  # "CRC32" | "SHA256" | "SHA1" | "MD5" | None (size only)
    expected: str | None  # base64 (S3 checksums) or hex (see ``hex``)
    origin: str = "S3's"  # for messages: "S3's", "ETag", "expected"
    hex: bool = False

    @property
    def sequential(self) -> bool:
        """A digest that needs the bytes in order (not combinable per range)."""
        return self.name in ("SHA256", "SHA1", "MD5")

    def new_hash(self) -> Hasher:
        assert self.name is not None
        return hashlib.new(self.name.lower(), usedforsecurity=False)

    def render(self, raw: bytes) -> str:
        return raw.hex() if self.hex else base64.b64encode(raw).decode()


def checksum_for(rev: Revision, expect_sha256: str | None = None) -> Checksum:
    """What to verify a download of ``rev`` against.

    A SHA-256 the caller expects (a signed manifest's) is the strongest: it alone is checked. Else the
    S3 full-object checksum (CRC32 first: cheapest), else a single-part MD5 ETag. A value ending in "-N"
    is a checksum of part checksums (multipart): not checkable here.
    """
    if expect_sha256 is not None:
        return Checksum("SHA256", expect_sha256.lower(), "expected", hex=True)
    for name, value in (
        ("CRC32", rev.checksum_crc32),
        ("SHA256", rev.checksum_sha256),
        ("SHA1", rev.checksum_sha1),
    ):
        if value and "-" not in value:
            return Checksum(name, value)
    if _MD5_ETAG.match(rev.etag):
        return Checksum("MD5", rev.etag, "ETag", hex=True)
    return Checksum(None, None)


# --------------------------------------------------------------------------- in-order digests
@dataclass
class Span:
    """A range of the file, written front to back; ``written`` bytes from ``offset`` are on disk."""

    offset: int
    length: int
    written: int = 0


class Follower:
    """Feeds ``hashers`` the file's bytes in order, right behind the writers of ``spans``.

    The writers call :meth:`advance` (from any thread) after each block is on disk; :meth:`run` (in a
    worker thread) reads back what is written, span by span, until the last byte or :meth:`stop`.
    """

    def __init__(self, spans: Sequence[Span], hashers: Sequence[Hasher]) -> None:
        self.spans = spans
        self.hashers = hashers
        self._cond = threading.Condition()
        self._stopped = False

    def advance(self, span: Span, n_bytes: int) -> None:
        with self._cond:
            span.written += n_bytes
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self, fd: int) -> None:
        buf = bytearray(FOLLOW_BYTES)  # one buffer, reused: no fresh pages to fault in per read
        view = memoryview(buf)
        for span in self.spans:
            pos = 0
            while pos < span.length:
                with self._cond:
                    while span.written <= pos and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    ready = span.written
                while pos < ready:
                    want = min(FOLLOW_BYTES, ready - pos)
                    got = os.preadv(fd, [view[:want]], span.offset + pos)
                    if got <= 0:
                        raise OSError(f"download file shorter than expected at byte {span.offset + pos}")
                    for hasher in self.hashers:
                        hasher.update(view[:got])
                    pos += got
