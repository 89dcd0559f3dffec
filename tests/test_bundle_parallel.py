"""Every bundle test again with multi-threaded zip extraction forced on, plus a big-tree round trip."""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from pathlib import Path

import pytest

from s3deploy.bundle import extract
from s3deploy.bundle.checks import Index
from s3deploy.bundle.extract import unpack
from s3deploy.bundle.member import Member
from s3deploy.bundle.pack import make_zip
from s3deploy.bundle.writer import Writer
from tests.test_bundle import *  # noqa: F403 - the same tests (and their fixtures), run below in parallel mode


@pytest.fixture(autouse=True)
def parallel_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "PARALLEL_MIN_ENTRIES", 1)


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("link", 0, os.readlink(full).encode())
            elif full.is_dir():
                out[rel] = ("dir", full.stat().st_mode & 0o777, b"")
            else:
                out[rel] = ("file", full.stat().st_mode & 0o777, full.read_bytes())
    return out


def test_big_tree_is_exact_and_written_by_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for d in range(20):
        folder = src / f"d{d:02d}" / "sub"
        folder.mkdir(parents=True)
        for f in range(50):
            path = folder / f"f{f:02d}.sh"
            path.write_bytes(os.urandom(f * 40) if f % 3 else b"#!/bin/sh\necho hi\n" * f)
            path.chmod(0o755 if f % 4 == 0 else 0o640)
        (folder / "link").symlink_to("f01.sh")
        (src / f"d{d:02d}" / "up").symlink_to("sub/f02.sh")
    archive = tmp_path / "b.zip"
    make_zip(src, archive)
    writers: set[str] = set()
    real_file = Writer.file

    def spy(self: Writer, path: str, name: str, mode: int, chunks: Generator[bytes, None, None]) -> None:
        writers.add(threading.current_thread().name)
        real_file(self, path, name, mode, chunks)

    monkeypatch.setattr(Writer, "file", spy)
    out = unpack(archive, tmp_path / "out", max_files=10_000, max_unpacked_bytes=10**9)

    assert _tree(out) == _tree(src)
    assert len({w for w in writers if w.startswith("unpack")}) > 1


def test_bytes_counted_while_streaming_when_headers_understate(  # noqa: F811 - threads: either entry
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_zip(  # noqa: F405
        tmp_path / "b.zip", [("a.bin", "file", "x" * 3000, 0o644), ("b.bin", "file", "y" * 3000, 0o644)]
    )
    real_add = Index.add

    def understating_add(self: Index, member: Member, ordinal: int) -> None:
        member.size = 1
        real_add(self, member, ordinal)

    monkeypatch.setattr(Index, "add", understating_add)
    # Written by two threads: whichever entry crosses the limit second is the one named.
    error = assert_refused(  # noqa: F405
        archive, dest, tmp_path, "more data than the archive's headers declare", max_bytes=5000
    )
    assert '"a.bin"' in str(error) or '"b.bin"' in str(error)
