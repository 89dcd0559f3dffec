"""A hook's output: one pipe for stdout and stderr, read in chunks, handed on as printable lines.

The pipe is created here rather than with ``stdout=PIPE`` so that we own its read end: when the main
process has exited but a background child still holds the pipe, the runner stops reading after a
linger period and closes our end instead of waiting for an EOF that may never come (CodeDeploy waits
until the hook's deadline and fails; we return promptly).

Lines are made printable a whole chunk at a time (common/text.py ``printable``: terminal escape
sequences, other control characters and invalid UTF-8 shown escaped), so what a hook prints never
reaches a terminal, a log or the state raw, and the per-line cost stays small. The pipe is always
drained: a consumer (``on_line``) that fails is reported once and no longer called, and the hook goes
on to end on its own instead of blocking on a full pipe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable
from typing import IO

from s3deploy.common.text import printable

logger = logging.getLogger(__name__)

#: Longer output lines are handed on in pieces of at most this many characters, so memory stays bounded.
MAX_LINE_CHARS = 65536
#: Bytes of a line without a newline kept before it is handed on as a piece.
MAX_LINE_BYTES = 65536
READ_CHUNK = 65536
#: Lines handed on between two yields to the event loop (other sections keep running meanwhile).
_BATCH_LINES = 2000


class OutputTail:
    """The newest lines of output that fit in ``max_chars`` (for the message of a failed hook)."""

    def __init__(self, max_chars: int) -> None:
        self._max = max(max_chars, 0)
        self._lines: collections.deque[str] = collections.deque()
        self._chars = 0

    def extend(self, lines: list[str]) -> None:
        """Add a batch: only its newest lines can matter, so at most a few are looked at."""
        newest: list[str] = []
        used = 0
        for line in reversed(lines):
            if used >= self._max:
                break
            newest.append(line)
            used += len(line) + 1
        if used >= self._max:
            self._lines.clear()
            self._chars = 0
        for line in reversed(newest):
            self._lines.append(line)
            self._chars += len(line) + 1
        while self._lines and self._chars - len(self._lines[0]) - 1 >= self._max:
            self._chars -= len(self._lines.popleft()) + 1

    def excerpt(self) -> str:
        """Whole newest lines within ``max_chars``; the end of the last line alone if it is longer."""
        text = "\n".join(self._lines)
        if len(text) <= self._max:
            return text
        cut = text[-self._max :] if self._max else ""
        newline = cut.find("\n")
        return cut[newline + 1 :] if newline != -1 else cut


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """An index <= limit that does not split a UTF-8 sequence (falls back to ``limit``)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


def _split_long(lines: list[str]) -> list[str]:
    """Lines longer than MAX_LINE_CHARS cut into pieces (rare: checked once per batch)."""
    if not lines or max(map(len, lines)) <= MAX_LINE_CHARS:
        return lines
    out: list[str] = []
    for line in lines:
        out += [line[i : i + MAX_LINE_CHARS] for i in range(0, len(line), MAX_LINE_CHARS)] or [""]
    return out


def take_lines(pending: bytearray, *, final: bool = False) -> list[str]:
    """Remove the complete lines (and over-long pieces) from ``pending`` and return them printable.

    With ``final`` (EOF) what is left is a last line too. A trailing CR (CRLF line ends) is dropped;
    any other control character is escaped.
    """
    lines: list[str] = []
    if final:
        block = bytes(pending).rstrip(b"\r") if pending else None
        pending.clear()
    else:
        end = pending.rfind(b"\n") + 1  # through the newline, so that a CRLF at the end is seen whole
        block = bytes(pending[:end]).replace(b"\r\n", b"\n")[:-1] if end else None
        del pending[:end]
    if block is not None:
        lines = printable(block, keep_newlines=True).split("\n")
    while len(pending) > MAX_LINE_BYTES:
        cut = _utf8_cut(pending, MAX_LINE_BYTES)
        lines.append(printable(bytes(pending[:cut])))
        del pending[:cut]
    return _split_long(lines)


def open_pipe() -> tuple[int, int]:
    """A pipe (read end, write end), both close-on-exec; the write end is handed to the child only."""
    return os.pipe()


async def attach(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A stream over our read end of the pipe (closed here if attaching fails)."""
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    pipe: IO[bytes] = open(read_fd, "rb", buffering=0)  # noqa: ASYNC230, SIM115 - wraps an fd we own
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream, loop=loop), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return stream, transport


async def pump(
    reader: asyncio.StreamReader, tail: OutputTail, on_line: Callable[[str], None] | None, label: str
) -> None:
    """Read until EOF, handing every line to ``tail`` and ``on_line``; never stops draining the pipe."""
    pending = bytearray()
    final = False
    while not final:
        chunk = await reader.read(READ_CHUNK)
        final = not chunk
        pending += chunk
        lines = take_lines(pending, final=final)
        tail.extend(lines)
        if on_line is None:
            continue
        for start in range(0, len(lines), _BATCH_LINES):
            if start:
                await asyncio.sleep(0)
            try:
                for line in lines[start : start + _BATCH_LINES]:
                    on_line(line)
            except Exception as e:  # a broken consumer must not leave the hook blocked on a full pipe
                logger.error(
                    "%s: handing on the hook's output failed (%s: %s); its output is still read but no "
                    "longer logged or written",
                    label,
                    type(e).__name__,
                    e,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                on_line = None
                break


async def drain(reader_task: asyncio.Task[None], linger_s: float, label: str) -> None:
    """Let the reader finish for ``linger_s``; a background child may hold the pipe forever."""
    done, _ = await asyncio.wait({reader_task}, timeout=linger_s)
    if done:
        reader_task.result()
        return
    logger.warning(
        "%s: a background process still holds the hook's output after %g s; no longer reading it",
        label,
        linger_s,
    )
