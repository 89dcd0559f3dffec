"""Reading tar archives (plain, gzip, bzip2, xz) member by member, in constant memory.

tarfile keeps every header it has read (``TarFile.members``) and believes the sizes of extended headers:
a pax header or GNU long name declaring 2 GB is read into memory whole, and a chain of long-name headers
recurses until ``RecursionError``. Here the list is emptied after each header, what one member's headers
may read is capped (``HEADER_BYTES``), and every tarfile failure becomes a BundleError.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import struct
import tarfile
import zlib
from collections.abc import Generator
from typing import IO, Any, Protocol, cast

from s3deploy.bundle.member import CHUNK_BYTES, MAX_LINK_BYTES, Member, entry, shown
from s3deploy.errors import BundleError

#: Most bytes the headers of one member may take (pax records, GNU long names, sparse maps).
HEADER_BYTES = 1 << 20
#: Most memory an xz decoder may use: its dictionary fills up to that size (xz -7 and below: 16 MiB;
#: a hostile header may ask for 1.5 GiB).
XZ_MEMORY = 20 << 20
_TAR_ERRORS = (
    tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, RecursionError, ValueError, struct.error,
)  # fmt: skip


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


class _Guard:
    """The decompressed stream as tarfile sees it, refusing oversized header reads."""

    def __init__(self, stream: _Stream, label: str) -> None:
        self.stream = stream
        self.label = label
        self.header_left: int | None = None  # bytes the current header may still read; None: data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise BundleError(f"{self.label}: corrupt tar archive (unbounded read)")
        if self.header_left is not None:
            if size > self.header_left:
                raise BundleError(
                    f"{self.label}: tar headers of one entry take more than {HEADER_BYTES} bytes "
                    "(pax records, GNU long names or sparse maps); refused"
                )
            self.header_left -= size
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def seekable(self) -> bool:
        return True

    def open(self) -> tarfile.TarFile:
        """Open the archive (tarfile reads the first header) with the header budget on."""
        self.header_left = HEADER_BYTES
        try:
            return tarfile.TarFile(fileobj=cast(IO[bytes], self), mode="r")
        finally:
            self.header_left = None

    def next_header(self, tf: tarfile.TarFile) -> tarfile.TarInfo | None:
        """``tf.next()`` with the header budget on."""
        self.header_left = HEADER_BYTES
        try:
            return tf.next()
        finally:
            self.header_left = None


class _XzReader(io.RawIOBase):
    """xz streams (concatenated, as lzma.LZMAFile reads them) decoded within XZ_MEMORY; seekable as
    tarfile needs (forward by decoding, backward by starting over)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._rewind()

    def _rewind(self) -> None:
        self._raw.seek(0)
        self._decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMORY)
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self._decode(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _decode(self, size: int) -> bytes:
        while not self._done:
            if self._decoder.eof:  # another stream may follow; anything else (padding) ends the file
                rest = self._decoder.unused_data or self._raw.read(1 << 16)
                if not rest:
                    break
                self._decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMORY)
                try:
                    data = self._decoder.decompress(rest, size)
                except lzma.LZMAError:
                    break
            else:
                piece = self._raw.read(1 << 16) if self._decoder.needs_input else b""
                if not piece and self._decoder.needs_input:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                data = self._decoder.decompress(piece, size)
            if data:
                self._pos += len(data)
                return data
        self._done = True
        return b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise io.UnsupportedOperation("seek from the end of an xz stream")
        if target < self._pos:
            self._rewind()
        while self._pos < target and self._decode(min(target - self._pos, 1 << 20)):
            pass
        return self._pos


def _decompressing(raw: IO[bytes], compression: str) -> contextlib.AbstractContextManager[_Stream]:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw)
    if compression == "xz":
        return io.BufferedReader(_XzReader(raw))
    return contextlib.nullcontext(raw)


class TarReader:
    """Members of the tar archive open as ``fd`` (``compression`` "", "gz", "bz2" or "xz")."""

    parallel = False  # a member's data is read right after its header, in order
    count: int | None = None  # unknown before the whole archive is read

    def __init__(self, fd: int, label: str, compression: str) -> None:
        self.fd = fd
        self.label = label
        self.compression = compression
        self._tf: tarfile.TarFile | None = None

    def members(self) -> Generator[Member, None, None]:
        """Every member in archive order; a fresh pass (and decompression) each call."""
        raw = os.fdopen(os.dup(self.fd), "rb")
        last: str | None = None
        with raw, contextlib.ExitStack() as stack:
            try:
                raw.seek(0)
                guard = _Guard(stack.enter_context(_decompressing(raw, self.compression)), self.label)
                tf = self._tf = guard.open()
                while (info := guard.next_header(tf)) is not None:
                    tf.members.clear()  # type: ignore[attr-defined]  # one header at a time, always
                    yield self._member(info)
                    last = info.name
            except lzma.LZMAError as e:
                if "Memory usage limit" not in str(e):
                    raise BundleError(f"{self.label}: corrupt xz-compressed tar archive ({shown(e)})") from e
                raise BundleError(
                    f"{self.label}: xz-compressed with a dictionary needing over {XZ_MEMORY >> 20} MiB "
                    "(xz -8 or -9); compress it with xz -7 or less, or gzip"
                ) from e
            except _TAR_ERRORS as e:
                raise BundleError(
                    f"{self.label}: corrupt or truncated tar archive after "
                    f"{'its first entry' if last is None else entry(last)} ({shown(e)})"
                ) from e
            finally:
                self._tf = None

    def _member(self, m: tarfile.TarInfo) -> Member:
        if m.size < 0:  # base-256 sizes can be negative; the declared total must only grow
            raise BundleError(f"{self.label}: {entry(m.name)} is corrupt (a negative size)")
        if m.isreg():
            return Member(m.name, "file", m.mode & 0o7777, m.size, ref=m)
        if m.isdir():
            return Member(m.name, "dir", m.mode & 0o7777)
        if m.issym() or m.islnk():
            if len(os.fsencode(m.linkname)) > MAX_LINK_BYTES:
                raise BundleError(
                    f"{self.label}: {entry(m.name)} is a link with a target over {MAX_LINK_BYTES} bytes"
                )
            return Member(m.name, "symlink" if m.issym() else "hardlink", 0o777, target=m.linkname)
        what = "a device file" if m.ischr() or m.isblk() else "a fifo" if m.isfifo() else "an unknown type"
        raise BundleError(f"{self.label}: {entry(m.name)} is {what}; only files, folders and links allowed")

    def chunks(self, member: Member) -> Generator[bytes, None, None]:
        """The data of the member ``members()`` yielded last; short data is refused."""
        info = member.ref
        assert isinstance(info, tarfile.TarInfo) and self._tf is not None
        try:
            src = self._tf.extractfile(info)
            if src is None:
                raise BundleError(f"{self.label}: {entry(member.name)} has no data")
            with src:
                while chunk := src.read(CHUNK_BYTES):
                    yield chunk
        except _TAR_ERRORS as e:
            raise BundleError(
                f"{self.label}: {entry(member.name)} is corrupt or truncated ({shown(e)})"
            ) from e
