"""Readers of a live folder D while it is switched: each file holds one tag repeated, so a torn file, a
missing one, or a mix of two releases is seen."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def read_tags(d: Path, files: Sequence[str], copies: int) -> set[str]:
    """The tag of every file of ``files``, read through one descriptor of D (resolved once)."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tags = set()
        for rel in files:
            with open(os.open(rel, os.O_RDONLY, dir_fd=fd)) as f:
                data = f.read()
            tag = data.partition("\n")[0]
            tags.add(tag if data == f"{tag}\n" * copies else f"a torn {rel}")
        return tags
    finally:
        os.close(fd)


@contextmanager
def readers(
    d: Path, files: Sequence[str], copies: int, count: int = 3
) -> Iterator[tuple[list[str], set[str]]]:
    """Threads reading D while the body runs: every problem they meet, and every tag they saw."""
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def run() -> None:
        while not stop.is_set():
            try:
                tags = read_tags(d, files, copies)
                if len(tags) != 1:
                    problems.append(f"a mix of releases: {sorted(tags)}")
                seen.update(tags)
                (d / files[-1]).read_text()  # by its path too: never missing
            except OSError as e:
                problems.append(repr(e))

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield problems, seen
    finally:
        stop.set()
        for thread in threads:
            thread.join()
