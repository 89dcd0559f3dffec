"""Reading zip archives member by member, in constant memory, from several threads at once.

The standard zipfile module builds a ``ZipInfo`` object for every member before the first one can be
read (about 600 bytes each: 130 MiB for a 200,000-entry bundle). This reader walks the central directory
in 1 MiB reads, yields one ``Member`` at a time, and reads member data with ``pread`` (no shared file
position, so lanes can read in parallel). It checks what zipfile checks (the local header's name, sizes,
CRC-32) and refuses what unpack does not support (encryption, several disks, unknown compression).
"""

from __future__ import annotations

import bz2
import lzma
import os
import stat
import struct
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

from s3deploy.bundle.member import CHUNK_BYTES, MAX_LINK_BYTES, Member, entry, shown
from s3deploy.errors import BundleError

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header
_LOCAL = struct.Struct("<4s22xHH")  # local file header: signature ... name and extra lengths
_ZIP64_EXTRA = 0x0001
_FULL = 0xFFFFFFFF
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
_METHODS = {STORED: "stored", DEFLATED: "deflate", BZIP2: "bzip2", LZMA: "lzma"}
#: Largest LZMA dictionary accepted (7-Zip's default and zipfile's are 16 MiB or less).
LZMA_DICT_BYTES = 16 << 20
_DATA_ERRORS = (zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, struct.error)


@dataclass(slots=True)
class ZipRecord:
    """Where a member's data is and what it must decompress to (from the central directory)."""

    raw_name: bytes
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of the local header, data in front of the archive included


class Directory(NamedTuple):
    """Where the central directory is, and how many bytes precede the archive (``shift``)."""

    start: int
    size: int
    shift: int
    entries: int  # as the end record declares


def find_directory(fd: int, file_size: int, label: str) -> Directory | None:
    """Where the central directory is, or None when the file has no zip end record.

    Data in front of the archive (a self-extracting stub) shifts every offset; the shift is found as
    zipfile finds it: where the directory ends minus where the end record says it is.
    """
    tail_len = min(file_size, _END.size + 0xFFFF)
    tail = os.pread(fd, tail_len, file_size - tail_len)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _END.size > len(tail):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        return None
    end_pos = file_size - tail_len + at
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    directory_end = end_pos
    locator = os.pread(fd, _END64_LOCATOR.size, end_pos - _END64_LOCATOR.size) if end_pos >= 20 else b""
    if locator[:4] == b"PK\x06\x07":
        disks = _END64_LOCATOR.unpack(locator)[3]
        directory_end = end_pos - _END64_LOCATOR.size - _END64.size
        record = os.pread(fd, _END64.size, directory_end) if directory_end >= 0 else b""
        if record[:4] != b"PK\x06\x06" or disks > 1:
            raise BundleError(f"{label}: corrupt zip64 end record, or an archive split over several disks")
        disk, cd_disk, _, count, cd_size, cd_offset = _END64.unpack(record)[4:]
    if disk or cd_disk:
        raise BundleError(f"{label}: zip archive split over several disks; not supported")
    shift = directory_end - cd_size - cd_offset
    if shift < 0:
        raise BundleError(f"{label}: corrupt zip archive (its central directory lies outside the file)")
    return Directory(cd_offset + shift, cd_size, shift, count)


class _Cursor:
    """Sequential reads of one byte range of the file, buffered 1 MiB at a time."""

    def __init__(self, fd: int, directory: Directory, label: str) -> None:
        self.fd, self.pos, self.end = fd, directory.start, directory.start + directory.size
        self.label = label
        self.buf = b""
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.buf):
            more = os.pread(self.fd, min(max(n, CHUNK_BYTES), self.end - self.pos), self.pos)
            self.pos += len(more)
            self.buf, self.at = self.buf[self.at :] + more, 0
            if n > len(self.buf):
                raise BundleError(f"{self.label}: corrupt zip archive (its central directory is cut short)")
        self.at += n
        return self.buf[self.at - n : self.at]

    @property
    def done(self) -> bool:
        return self.pos >= self.end and self.at >= len(self.buf)


class ZipReader:
    """Members of the zip open as ``fd``; ``label`` names the archive in messages."""

    parallel = True  # chunks() may run in several threads, in any order

    def __init__(self, fd: int, label: str, directory: Directory) -> None:
        self.fd = fd
        self.label = label
        self.size = os.fstat(fd).st_size
        self.directory = directory
        self.count: int | None = directory.entries

    def _fail(self, name: str, why: str) -> BundleError:
        return BundleError(f"{self.label}: {entry(name)} {why}")

    def members(self) -> Generator[Member, None, None]:
        """Every member in central-directory order; a fresh pass each call."""
        cursor = _Cursor(self.fd, self.directory, self.label)
        while not cursor.done:
            yield self._member(cursor)

    def _member(self, cursor: _Cursor) -> Member:
        head = cursor.take(_CENTRAL.size)
        if head[:4] != b"PK\x01\x02":
            raise BundleError(f"{self.label}: corrupt zip archive (bad central directory entry)")
        fields = _CENTRAL.unpack(head)
        flags, method, crc, compressed, size = fields[5], fields[6], fields[9], fields[10], fields[11]
        raw = cursor.take(fields[12])
        extra = cursor.take(fields[13])
        cursor.take(fields[14])  # comment
        unix, offset = fields[17] >> 16, fields[18]
        name = raw.decode("utf-8", "surrogateescape") if flags & 0x800 else raw.decode("cp437")
        if _FULL in (size, compressed, offset):
            try:
                size, compressed, offset = _zip64_sizes(extra, size, compressed, offset)
            except (struct.error, StopIteration, ValueError) as e:
                raise self._fail(name, "is corrupt (its zip64 extra field is missing or short)") from e
        rec = ZipRecord(raw, method, crc, compressed, size, offset + self.directory.shift)
        fmt = stat.S_IFMT(unix)
        if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise self._fail(name, "is a device, fifo or socket; only files allowed")
        if stat.S_ISDIR(unix) or name.endswith("/") or (not fmt and fields[17] & 0x10):
            return Member(name, "dir", stat.S_IMODE(unix) if fmt else 0o755)
        if flags & 0x41:
            raise self._fail(name, "is encrypted; encrypted bundles are not supported")
        if method not in _METHODS:
            raise self._fail(name, f"uses compression method {method}, which is not supported")
        if rec.offset + _LOCAL.size + len(raw) + compressed > self.size:
            raise self._fail(name, "is corrupt or truncated (its data lies past the end of the archive)")
        if stat.S_ISLNK(unix):
            if size > MAX_LINK_BYTES:
                raise self._fail(name, f"is a symlink with a target over {MAX_LINK_BYTES} bytes")
            link = Member(name, "symlink", 0o777, ref=rec)
            link.target = os.fsdecode(b"".join(self.chunks(link)))
            return link
        return Member(name, "file", stat.S_IMODE(unix) if fmt else 0o644, size, ref=rec)

    def chunks(self, member: Member) -> Generator[bytes, None, None]:
        """The member's data, decompressed, at most 1 MiB at a time; its size and CRC-32 checked."""
        rec = member.ref
        assert isinstance(rec, ZipRecord)
        try:
            start = self._data_start(rec, member.name)
            if rec.method in (STORED, DEFLATED) and max(rec.size, rec.compressed) <= CHUNK_BYTES:
                yield self._small(rec, start, member.name)
                return
            crc = total = 0
            for out in _decompressed(rec.method, self._raw(rec, start, member.name)):
                total += len(out)
                if total > rec.size:
                    raise self._fail(member.name, "is corrupt or forged (more data than its header declares)")
                crc = zlib.crc32(out, crc)
                yield out
        except _DATA_ERRORS as e:
            raise self._fail(member.name, f"is corrupt or unreadable ({shown(e)})") from e
        if total != rec.size:
            raise self._fail(member.name, "is corrupt or truncated (less data than its header declares)")
        if crc != rec.crc:
            raise self._fail(member.name, "is corrupt (Bad CRC-32)")

    def _data_start(self, rec: ZipRecord, name: str) -> int:
        header = os.pread(self.fd, _LOCAL.size + len(rec.raw_name), rec.offset)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise self._fail(name, "is corrupt or truncated (bad local header)")
        name_len, extra_len = cast(tuple[int, int], _LOCAL.unpack_from(header)[1:])
        if header[_LOCAL.size :] != rec.raw_name or name_len != len(rec.raw_name):
            raise self._fail(name, "is corrupt: its local header names another file")
        return rec.offset + _LOCAL.size + name_len + extra_len

    def _raw(self, rec: ZipRecord, start: int, name: str) -> Iterator[bytes]:
        left = rec.compressed
        while left:
            piece = os.pread(self.fd, min(left, CHUNK_BYTES), start)
            if not piece:
                raise self._fail(name, "is corrupt or truncated (data cut short)")
            start += len(piece)
            left -= len(piece)
            yield piece

    def _small(self, rec: ZipRecord, start: int, name: str) -> bytes:
        """A small stored/deflated member in one pread: bundles hold thousands of them."""
        raw = os.pread(self.fd, rec.compressed, start)
        if len(raw) != rec.compressed:
            raise self._fail(name, "is corrupt or truncated (data cut short)")
        if rec.method == DEFLATED:
            inflater = zlib.decompressobj(-15)
            data, complete = inflater.decompress(raw, rec.size + 1), inflater.eof
        else:
            data, complete = raw, True
        if len(data) != rec.size or not complete:
            raise self._fail(name, "is corrupt or forged (its data does not match its declared size)")
        if zlib.crc32(data) != rec.crc:
            raise self._fail(name, "is corrupt (Bad CRC-32)")
        return data


def _zip64_sizes(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset over 4 GiB live in the zip64 extra field, in this order, only where full.

    Raises ValueError (or struct.error, StopIteration) when the field is missing or short."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        at += 4
        if tag == _ZIP64_EXTRA:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, at))
            size = next(values) if size == _FULL else size
            compressed = next(values) if compressed == _FULL else compressed
            offset = next(values) if offset == _FULL else offset
            return size, compressed, offset
        at += length
    raise ValueError("no zip64 extra field")


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _Inflater:
    """zlib's raw inflate with the ``needs_input`` protocol of bz2's and lzma's decompressors."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-15)
        self.needs_input = True
        self.eof = False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._z.decompress(data or self._z.unconsumed_tail, max_length)
        self.eof = self._z.eof
        self.needs_input = not self._z.unconsumed_tail and len(out) < max_length
        return out


def _lzma(header: bytes) -> tuple[_Decompressor, int]:
    """The LZMA decoder for a zip member (a 4-byte header and the LZMA1 properties come first)."""
    props_len = struct.unpack_from("<H", header, 2)[0]
    props = header[4 : 4 + props_len]
    if len(props) < 5:
        raise lzma.LZMAError("short LZMA properties")
    lc, lp, pb = props[0] % 9, props[0] // 9 % 5, props[0] // 45
    dict_size = int.from_bytes(props[1:5], "little")
    if dict_size > LZMA_DICT_BYTES:  # the decoder holds that much: a hostile header asks for 4 GiB
        raise lzma.LZMAError(f"an LZMA dictionary of {dict_size} bytes; at most {LZMA_DICT_BYTES} accepted")
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}]
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), 4 + int(props_len)


def _decompressed(method: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Decompress ``pieces``, never more than 1 MiB of output at once (a bomb stays a stream)."""
    if method == STORED:
        yield from pieces
        return
    decoder: _Decompressor | None = None
    if method == DEFLATED:
        decoder = _Inflater()
    elif method == BZIP2:
        decoder = bz2.BZ2Decompressor()
    for piece in pieces:
        if decoder is None:  # LZMA: its properties open the first piece
            decoder, used = _lzma(piece)
            piece = piece[used:]
        out = decoder.decompress(piece, CHUNK_BYTES)
        while True:
            if out:
                yield out
            if decoder.eof or decoder.needs_input:
                break
            out = decoder.decompress(b"", CHUNK_BYTES)
        if decoder.eof:
            return
