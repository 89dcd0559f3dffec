"""Which archive a file is, from its content (never its name), and the reader for it.

Only a regular file is opened as an archive: a fifo or a device (``/dev/zero``) would block or never end.
Detection reads a bounded prefix: the first block, at most 2 MiB of compressed input to see whether a
gzip/bzip2/xz stream starts with a tar header, and the last 64 KiB for a zip end record.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from s3deploy.bundle.member import Reader, shown
from s3deploy.bundle.tarfmt import TarReader
from s3deploy.bundle.zipfmt import ZipReader, find_directory
from s3deploy.common.text import printable
from s3deploy.errors import BundleError

_BLOCK = 512
_SNIFF_INPUT_BYTES = 2 << 20
_COMPRESSED = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, label: str) -> int:
    """A read-only descriptor of ``path``, refused (without blocking) unless it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BundleError(f"{label}: cannot read the archive ({shown(e.strerror or e)})") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BundleError(f"{label}: is {_kind_of(mode)}, not a zip or tar archive file")
    return fd


def _is_tar_header(block: bytes) -> bool:
    """The test tarfile applies to a header block: its checksum field matches its bytes."""
    if len(block) < _BLOCK or block.count(0) == _BLOCK:
        return False
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        checksum = int(field or b"0", 8)
    except ValueError:
        return False
    unsigned = 256 + sum(struct.unpack_from("148B8x356B", block))
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    return checksum in (unsigned, signed)


def _first_block(fd: int, compression: str) -> bytes:
    """The first 512 bytes a compressed stream decompresses to (or fewer if it is not one)."""
    decoder: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor
    if compression == "gz":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif compression == "bz2":
        decoder = bz2.BZ2Decompressor()
    else:
        decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    out = b""
    pos = 0
    with contextlib.suppress(zlib.error, OSError, lzma.LZMAError, EOFError):
        while len(out) < _BLOCK and pos < _SNIFF_INPUT_BYTES:
            piece = os.pread(fd, 1 << 16, pos)
            if not piece:
                break
            pos += len(piece)
            out += decoder.decompress(piece, _BLOCK - len(out))
            if decoder.eof:
                break
    return out


def sniff(fd: int, label: str) -> tuple[str, str]:
    """``("zip", "")`` or ``("tar", compression)`` with compression "", "gz", "bz2" or "xz"."""
    head = os.pread(fd, _BLOCK, 0)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip", ""
    for magic, compression in _COMPRESSED.items():
        if head.startswith(magic) and _is_tar_header(_first_block(fd, compression)):
            return "tar", compression
    if _is_tar_header(head):
        return "tar", ""
    if find_directory(fd, os.fstat(fd).st_size, label) is not None:
        return "zip", ""  # a zip with data in front of it (self-extracting archives)
    raise BundleError(f"{label}: not a zip or tar archive (first bytes {head[:16].hex(' ')})")


def detect_format(path: Path) -> str:
    """Return "zip" or "tar" (plain or gzip/bzip2/xz-compressed) from the file's content, not its name."""
    label = printable(path.name)
    fd = open_regular(path, label)
    try:
        return sniff(fd, label)[0]
    except OSError as e:
        raise BundleError(f"{label}: cannot read the archive ({shown(e)})") from e
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_archive(path: Path, label: str) -> Iterator[Reader]:
    """The reader for the archive at ``path`` (a regular file), open for the ``with`` block."""
    fd = open_regular(path, label)
    try:
        try:
            fmt, compression = sniff(fd, label)
            directory = find_directory(fd, os.fstat(fd).st_size, label) if fmt == "zip" else None
        except OSError as e:
            raise BundleError(f"{label}: cannot read the archive ({shown(e)})") from e
        if fmt == "tar":
            yield TarReader(fd, label, compression)
        elif directory is None:
            raise BundleError(f"{label}: corrupt or truncated zip archive (no end of central directory)")
        else:
            yield ZipReader(fd, label, directory)
    finally:
        os.close(fd)
