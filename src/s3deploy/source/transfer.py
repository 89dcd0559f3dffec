"""The body of a pinned download: one GET for small objects, parallel ranged GETs for big ones.

Big objects are split into ``PART_BYTES`` (64 MiB) ranges fetched by ``PARALLEL_PARTS`` (4) GETs, each
pinned like the whole download (VersionId, else If-Match on the ETag), so a range of another revision
can never be mixed in. Each range is written at its offset with ``os.pwritev`` into a file preallocated
to the object's size, from a worker thread, while the next blocks of the range are received. Content
checks overlap the transfer (see :mod:`s3deploy.source.checksums`).

A server that stops sending fails the read after botocore's ``read_timeout``; one that trickles (a few
bytes now and then, never silent long enough for that timeout) is caught by the pace guard: every
``STALL_WINDOW_S`` seconds a range must bring at least ``STALL_MIN_BYTES``, else it fails as
``Stalled``.

Memory: at most two ~1 MiB blocks per range in flight, whatever the object's size.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3deploy.errors import SourceError
from s3deploy.source import session
from s3deploy.source.checksums import Checksum, Follower, Hasher, Span, crc32_combine
from s3deploy.source.diskfile import SharedFd, preallocate

#: Objects at least this big are fetched in parallel ranges; smaller ones in one GET.
RANGED_MIN_BYTES = 48 * 2**20
#: Size of each range.
PART_BYTES = 64 * 2**20
#: Ranges fetched at the same time.
PARALLEL_PARTS = 4
#: Bytes gathered from the socket before one write (and one checksum update) in a worker thread.
WRITE_BYTES = 1 << 20
#: A range that receives fewer than STALL_MIN_BYTES in STALL_WINDOW_S seconds has stalled.
STALL_WINDOW_S = 30.0
STALL_MIN_BYTES = 64 * 1024

ProgressCallback = Callable[[int], None]


@dataclass
class _Part(Span):
    ranged: bool = False
    received: int = 0
    crc: int = 0

    @property
    def range_header(self) -> str:
        return f"bytes={self.offset}-{self.offset + self.length - 1}"


def split(size: int) -> list[_Part]:
    """One part (a plain GET) below RANGED_MIN_BYTES, else PART_BYTES ranges."""
    if size < RANGED_MIN_BYTES:
        return [_Part(0, size, ranged=False)]
    return [_Part(off, min(PART_BYTES, size - off), ranged=True) for off in range(0, size, PART_BYTES)]


def _write_blocks(
    fd: int, blocks: list[bytes], offset: int, crc: int | None, hashers: Sequence[Hasher]
) -> int | None:
    """Write ``blocks`` at ``offset`` (one pwritev) and update the inline checksums. Runs in a thread."""
    total = sum(len(b) for b in blocks)
    done = os.pwritev(fd, blocks, offset)
    if done < total:  # short write (rare on regular files): finish it plainly
        rest = memoryview(b"".join(blocks))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            rest, done = rest[n:], done + n
    for hasher in hashers:
        for b in blocks:
            hasher.update(b)
    if crc is not None:
        for b in blocks:
            crc = zlib.crc32(b, crc)
    return crc


@dataclass
class Download:
    """One pinned download of ``size`` bytes into ``path``. ``run`` raises SourceError (or botocore's).

    With ``sha256`` set, the SHA-256 of the bytes written is computed on the way (in order, ranges
    included) and left in :attr:`sha256_hex`.
    """

    client: Any
    bucket: str
    key: str
    pin: dict[str, str]
    size: int
    path: str
    checksum: Checksum
    where: str
    progress: ProgressCallback | None = None
    sha256: bool = False
    #: Filled from the first response: server-side encryption (KMS, SSE-C) makes the ETag no MD5.
    encrypted: bool = False
    parts: list[_Part] = field(default_factory=list)
    sha256_hex: str | None = None
    _follower: Follower | None = None

    async def run(self) -> None:
        self.parts = split(self.size)
        verify = self.checksum.new_hash() if self.checksum.sequential else None
        extra: Hasher | None = None
        if self.sha256:  # one hasher serves both when S3's own checksum is a SHA-256
            extra = verify if self.checksum.name == "SHA256" else hashlib.sha256()
        hashers: list[Hasher] = [verify] if verify is not None else []
        if extra is not None and extra is not verify:
            hashers.append(extra)
        file = SharedFd(self.path)
        follow_task: asyncio.Future[Any] | None = None
        try:
            if len(self.parts) > 1:
                await asyncio.to_thread(file.run, preallocate, self.size)
                if hashers:
                    self._follower = Follower(self.parts, hashers)
                    follow_task = asyncio.ensure_future(asyncio.to_thread(file.run, self._follower.run))
                    hashers = []  # the follower feeds them, in order
            await self._fetch_all(file, hashers)
            if follow_task is not None:
                await follow_task
        finally:
            if self._follower is not None:
                self._follower.stop()
            if follow_task is not None:  # after an error its own outcome no longer matters
                follow_task.add_done_callback(lambda f: f.cancelled() or f.exception())
            file.close()
        self._verify(verify)
        if extra is not None:
            self.sha256_hex = extra.digest().hex()

    async def _fetch_all(self, file: SharedFd, hashers: Sequence[Hasher]) -> None:
        queue = deque(self.parts)
        workers = [
            asyncio.ensure_future(self._worker(queue, file, hashers))
            for _ in range(min(PARALLEL_PARTS, len(self.parts)))
        ]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: deque[_Part], file: SharedFd, hashers: Sequence[Hasher]) -> None:
        while queue:
            await self._fetch(queue.popleft(), file, hashers)

    async def _fetch(self, part: _Part, file: SharedFd, hashers: Sequence[Hasher]) -> None:
        extra = {"Range": part.range_header} if part.ranged else {}
        async with asyncio.timeout(session.REQUEST_TIMEOUT_S):
            resp = await self.client.get_object(Bucket=self.bucket, Key=self.key, **self.pin, **extra)
        if resp.get("ServerSideEncryption", "").startswith("aws:kms") or resp.get("SSECustomerAlgorithm"):
            self.encrypted = True
        length = int(resp.get("ContentLength", -1))
        if part.ranged and length != part.length:
            raise SourceError(
                f"{self.where}: asked for {part.range_header}, got {length} bytes "
                f"(Content-Range {resp.get('ContentRange')!r}); the server must support Range requests",
                code="RangeNotSatisfied",
            )
        writer = _PartWriter(self, part, file, hashers)
        pace: asyncio.Timeout | None = None
        try:
            async with resp["Body"] as body, asyncio.timeout(STALL_WINDOW_S) as pace:
                await _receive(body.content, writer, pace)
        except TimeoutError as e:
            if pace is None or not pace.expired():
                raise  # botocore's own read timeout: translated by the caller
            raise SourceError(
                f"{self.where}: stalled: less than {STALL_MIN_BYTES // 1024} KiB received in "
                f"{STALL_WINDOW_S:g} s (got {writer.got} of {part.length} bytes{_for(part)}); "
                "the server sends too slowly or stopped; retrying",
                code="Stalled",
            ) from e
        finally:
            writer.abandon()
        if writer.got != part.length:
            what = "truncated" if writer.got < part.length else "too long"
            raise SourceError(
                f"{self.where}: {what}: got {writer.got} of {part.length} bytes{_for(part)}", code="Truncated"
            )

    def written(self, part: _Part, n_bytes: int) -> None:
        """A block of ``part`` is on disk: the follower may read it; report progress."""
        if self._follower is not None:
            self._follower.advance(part, n_bytes)
        if self.progress is not None:
            self.progress(n_bytes)

    def _verify(self, hasher: Hasher | None) -> None:
        cs = self.checksum
        if cs.name is None or (cs.name == "MD5" and self.encrypted):
            return
        if cs.name == "CRC32":
            crc = 0
            for part in self.parts:
                crc = crc32_combine(crc, part.crc, part.length)
            raw = crc.to_bytes(4, "big")
        else:
            assert hasher is not None
            raw = hasher.digest()
        got = cs.render(raw)
        if got != cs.expected:
            raise SourceError(
                f"{self.where}: checksum mismatch: content {cs.name} {got} != {cs.origin} {cs.expected}; "
                "the download is corrupt",
                code="ChecksumMismatch",
            )


def _for(part: _Part) -> str:
    return f" for {part.range_header}" if part.ranged else ""


async def _receive(content: Any, writer: _PartWriter, pace: asyncio.Timeout) -> None:
    """Read the body's chunks as they arrived from the socket (no joining copy) into ``writer``; every
    STALL_MIN_BYTES received push the pace deadline STALL_WINDOW_S further."""
    if hasattr(content, "set_read_chunk_size"):  # recent aiohttp: let up to a block buffer
        content.set_read_chunk_size(WRITE_BYTES)
    loop = asyncio.get_running_loop()
    paced = 0
    while True:
        chunk, _ = await content.readchunk()
        if not chunk:
            if content.at_eof():
                break
            continue  # the end of an HTTP chunk (chunked encoding): no data, not the end
        paced += len(chunk)
        if paced >= STALL_MIN_BYTES:
            paced = 0
            pace.reschedule(loop.time() + STALL_WINDOW_S)
        if not await writer.add(chunk):
            return  # more than asked for: the caller reports it
    await writer.flush()


class _PartWriter:
    """Writes one part's blocks in order: one write in flight while the next block is received; the
    part's CRC chains block to block."""

    def __init__(self, job: Download, part: _Part, file: SharedFd, hashers: Sequence[Hasher]) -> None:
        self.job = job
        self.part = part
        self.file = file
        self.hashers = hashers
        self.crc = job.checksum.name == "CRC32"
        self.blocks: list[bytes] = []
        self.gathered = 0
        self.pending: asyncio.Future[int | None] | None = None
        self.pending_bytes = 0

    @property
    def got(self) -> int:  # bytes received for the part so far
        return self.part.received + self.gathered

    async def add(self, chunk: bytes) -> bool:
        """Take a chunk; False when the part is now longer than asked for."""
        self.blocks.append(chunk)
        self.gathered += len(chunk)
        if self.got > self.part.length:
            return False
        if self.gathered >= WRITE_BYTES:
            await self._write()
        return True

    async def flush(self) -> None:
        if self.blocks:
            await self._write()
        await self._settle()

    async def _write(self) -> None:
        await self._settle()
        part = self.part
        self.pending = asyncio.ensure_future(
            asyncio.to_thread(
                self.file.run,
                _write_blocks,
                self.blocks,
                part.offset + part.received,
                part.crc if self.crc else None,
                self.hashers,
            )
        )
        self.pending_bytes = self.gathered
        part.received += self.gathered
        self.blocks, self.gathered = [], 0

    async def _settle(self) -> None:
        if self.pending is None:
            return
        result = await self.pending
        self.pending = None
        if result is not None:
            self.part.crc = result
        self.job.written(self.part, self.pending_bytes)

    def abandon(self) -> None:
        """After an error or a cancellation: let a write still in flight finish on its own."""
        if self.pending is not None:
            self.pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.pending.cancel()
            self.pending = None
