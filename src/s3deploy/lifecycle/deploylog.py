"""A deployment's hook output: one log line each, the deployment's own log file, a tail for the state.

Every line is escaped (common/text.py ``printable``) before it is logged or written: what a hook prints
never reaches an operator's terminal raw. The log file (0600, in a 0700 folder) is written once per
chunk of output rather than once per line, and never grows past ``max_bytes``: it is then cut to its
newest ``keep_bytes``, after a first line saying how many bytes were dropped.

A log file that cannot be written (disk full, I/O error) never stops the hook nor fails the deployment:
the failure is logged once, naming the file, and noted in the tail kept with the deployment; every line
still goes to the agent's log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from pathlib import Path

from s3deploy.common.files import atomic_write
from s3deploy.common.text import printable
from s3deploy.state.layout import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

#: The last bytes of hook output kept with the deployment (status, history).
OUTPUT_TAIL_BYTES = 4096
#: A deployment's log file is cut when it grows past this size ...
LOG_MAX_BYTES = 16 * 1024 * 1024
#: ... to its newest part of about this size (also what the cut holds in memory for a moment).
LOG_KEEP_BYTES = 8 * 1024 * 1024


class OutputSink:
    """Hook output: one log line each, the deployment's own log file, and a tail kept for the state."""

    def __init__(
        self,
        log: logging.Logger,
        path: Path,
        *,
        max_bytes: int = LOG_MAX_BYTES,
        keep_bytes: int = LOG_KEEP_BYTES,
    ) -> None:
        self.log = log
        self.path = path
        self.max_bytes = max_bytes
        self.keep_bytes = min(keep_bytes, max_bytes)
        #: Entries (``event: line``), newest last; enough of them to fill OUTPUT_TAIL_BYTES.
        self._tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_BYTES)
        self._fd: int | None = None
        self._size = 0
        self._dropped = 0
        #: The line an earlier cut put first (not output: it is not counted as dropped).
        self._header_len = 0
        #: Why the log file is not written (said at the end of the tail kept in the state).
        self._problem: str | None = None
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._stamp_second = -1
        self._stamp = ""

    def open(self) -> None:
        """Create (or append to) the log file; a failure is reported, never raised."""
        try:
            self.path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, PRIVATE_FILE_MODE)
            os.fchmod(self._fd, PRIVATE_FILE_MODE)
            self._size = os.fstat(self._fd).st_size
        except OSError as e:
            self._failed(e)

    def line(self, event: str, text: str) -> None:
        """One output line of ``event``'s hook: logged, kept in the tail, queued for the log file."""
        text = printable(text)
        self._log_line(event, text)
        entry = f"{event}: {text}"
        self._tail.append(entry)
        if self._fd is None:
            return
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        self._pending.append(f"{self._stamp} {entry}\n")
        if not self._flush_scheduled:
            self._schedule_flush()

    def _log_line(self, event: str, text: str) -> None:
        """``self.log.info("%s: %s", event, text)`` for two thirds of the cost (a hook may print millions):
        the record is made and handled directly, skipping the caller lookup (a stack walk) that a hook's
        output line has no use for. The handlers' context filter adds the section and deployment."""
        logger = self.log
        if not logger.isEnabledFor(logging.INFO):
            return
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, "%s: %s", (event, text), None, "line", {"event": event}
        )
        logger.handle(record)

    def _schedule_flush(self) -> None:
        """Write once the current chunk of output has been handed over (at once outside an event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued lines; cut the file when it has grown past ``max_bytes``."""
        self._flush_scheduled = False
        data, self._pending = "".join(self._pending).encode(), []
        if self._fd is None or not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
            if self._size > self.max_bytes:
                self._cut()
        except OSError as e:
            self._failed(e)

    def _cut(self) -> None:
        """Keep the newest ``keep_bytes`` (from a line start), after a line saying what was dropped."""
        with open(self.path, "rb") as f:
            f.seek(max(self._size - self.keep_bytes, 0))
            f.readline()  # the rest of a line cut in the middle goes too
            start = f.tell()
            kept = f.read()
        self._dropped += start - self._header_len
        header = self._header()
        self._header_len = len(header)
        atomic_write(self.path, header + kept, mode=PRIVATE_FILE_MODE, durable=False)
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._size = len(header) + len(kept)
        self.log.info(
            "deployment log %s cut to its last %d bytes (%d dropped)", self.path, len(kept), self._dropped
        )

    def _header(self) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        return (
            f"{stamp} s3deploy: {self._dropped} bytes of earlier output dropped here "
            f"(a deployment log keeps its last {self.keep_bytes} bytes)\n"
        ).encode()

    def _failed(self, error: OSError) -> None:
        """Stop writing the file, and say so once (in the agent's log and in the tail)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._pending = []
        reason = error.strerror or str(error)
        self.log.error(
            "cannot write the deployment log %s: %s; hook output from here on is only in the agent's log",
            self.path,
            reason,
        )
        self._problem = f"s3deploy: cannot write {self.path}: {reason}"

    def text(self) -> str:
        """The newest entries within OUTPUT_TAIL_BYTES (whole entries), for the state; a log file that
        could not be written is said last."""
        note = [self._problem] if self._problem else []
        budget = OUTPUT_TAIL_BYTES - sum(len(n.encode()) + 1 for n in note)
        picked: list[str] = []
        used = 0
        for entry in reversed(self._tail):
            used += len(entry.encode()) + 1
            if used > budget and picked:
                break
            picked.append(entry)
        return "\n".join([*reversed(picked), *note])

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
