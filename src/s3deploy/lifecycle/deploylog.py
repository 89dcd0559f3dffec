"""A deployment's hook output: one log line each, the deployment's own log file, a tail for the state."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from s3deploy.log import SectionAdapter

#: The last bytes of hook output kept with the deployment (status, history).
OUTPUT_TAIL_BYTES = 4096


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


@dataclass
class OutputSink:
    """Hook output: one log line each, the deployment's own log file, and a tail kept for the state."""

    log: SectionAdapter
    path: Path
    tail: deque[str] = field(default_factory=deque)
    _tail_bytes: int = 0
    _file: IO[str] | None = None

    def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600: hook output may hold secrets (state/layout.py); the file is closed in close().
        self._file = open(self.path, "a", encoding="utf-8", buffering=1, opener=_private)  # noqa: SIM115

    def line(self, event: str, text: str) -> None:
        self.log.info("%s: %s", event, text)
        entry = f"{event}: {text}"
        if self._file is not None:
            self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {entry}\n")
        self.tail.append(entry)
        self._tail_bytes += len(entry) + 1
        while self._tail_bytes > OUTPUT_TAIL_BYTES and len(self.tail) > 1:
            self._tail_bytes -= len(self.tail.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self.tail)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
