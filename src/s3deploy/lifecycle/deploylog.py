"""A deployment's hook output: one log line each, the deployment's own log file, a tail for the state."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from s3deploy.common.text import bounded

#: The last bytes of hook output kept with the deployment (status, history).
OUTPUT_TAIL_BYTES = 4096


@dataclass
class OutputSink:
    """Hook output: one log line each, the deployment's own log file, and a tail kept for the state.

    A log file that cannot be opened or written (disk full) is given up with one warning: the hooks go
    on, their lines still reach the agent's log and the tail.
    """

    log: logging.Logger
    path: Path
    tail: deque[str] = field(default_factory=deque)
    _tail_bytes: int = 0
    _file: IO[str] | None = None

    def open(self) -> None:
        """Open the log file (blocking: call it through ``asyncio.to_thread``)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as e:
            self.log.warning("cannot write the deployment log %s: %s", self.path, bounded(e))

    def line(self, event: str, text: str) -> None:
        self.log.info("%s: %s", event, text, extra={"event": event})
        entry = f"{event}: {text}"
        if self._file is not None:
            try:
                self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {entry}\n")
            except (OSError, ValueError) as e:
                self.log.warning("cannot write the deployment log %s any more: %s", self.path, bounded(e))
                self.close()
        self.tail.append(entry)
        self._tail_bytes += len(entry) + 1
        while self._tail_bytes > OUTPUT_TAIL_BYTES and len(self.tail) > 1:
            self._tail_bytes -= len(self.tail.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self.tail)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as e:  # the last buffered line could not be written (disk full)
                self.log.warning("cannot write the deployment log %s: %s", self.path, bounded(e))
