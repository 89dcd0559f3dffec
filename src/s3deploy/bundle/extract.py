"""Safe unpacking of deployment bundles (zip, tar, tar.gz/bz2/xz). Zipping a folder: see pack.py.

A bundle comes from the network and is unpacked by an agent that usually runs as root. ``unpack`` reads
the archive twice: the first pass checks every member and nothing is written (checks.py: paths, links,
kinds, limits; hoist.py: the bundle root), the second writes (writer.py), zip members over a few
threads. The readers (zipfmt.py, tarfmt.py, chosen by content in formats.py) hold one member at a time,
so memory does not grow with the number of entries beyond what the checks keep.

Synchronous on purpose: async callers wrap ``unpack`` in ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Generator
from pathlib import Path

from s3deploy.bundle.checks import FILE, HARDLINK, SYMLINK, Index
from s3deploy.bundle.formats import detect_format, open_archive
from s3deploy.bundle.hoist import APPSPEC_NAMES, bundle_top
from s3deploy.bundle.member import Member, Reader, entry
from s3deploy.bundle.writer import Writer
from s3deploy.common.lanes import run_lanes
from s3deploy.common.text import printable
from s3deploy.errors import BundleError

__all__ = ["APPSPEC_NAMES", "EXTRACT_THREADS", "PARALLEL_MIN_ENTRIES", "detect_format", "unpack"]

logger = logging.getLogger(__name__)

# Zips with at least this many entries are written by EXTRACT_THREADS threads: creating files is bound
# by the filesystem's per-file latency (inode, journal), which threads overlap; unzip creates one by one.
PARALLEL_MIN_ENTRIES = 256
EXTRACT_THREADS = 4
_PATH_MAX = 4095  # bytes of a path passed to the kernel, its NUL aside
_KINDS = {"file": FILE, "hardlink": HARDLINK, "symlink": SYMLINK}


def unpack(archive: Path, dest: Path, *, max_files: int, max_unpacked_bytes: int) -> Path:
    """Unpack ``archive`` into the empty folder ``dest`` and return the bundle root.

    The root is ``dest``, or ``dest/<folder>`` when the archive's only top-level entry is a folder holding
    appspec.yml/appspec.yaml (as CodeDeploy does). Raises BundleError naming the entry for anything unsafe,
    corrupt or over the limits, before anything is written when the headers show it; on a later error
    ``dest`` may hold a partial tree (the caller deletes it), but nothing is ever written outside it.
    """
    label = printable(archive.name)
    started = time.monotonic()
    with open_archive(archive, label) as reader:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise BundleError(f"{label}: cannot unpack into {printable(dest)}: the folder is not empty")
        root = str(dest)
        room = max(_PATH_MAX - len(os.fsencode(root)) - 1, 0)  # for paths below dest
        index = Index(label, max_files, max_unpacked_bytes, room, reader.count)
        with contextlib.closing(reader.members()) as members:
            for ordinal, member in enumerate(members):
                index.add(member, ordinal)
        top = bundle_top(index)
        index.check_links(top)
        writer = Writer(root, label, max_unpacked_bytes)
        writer.folders(index.folders())
        _write(reader, index, writer)
        writer.finish(index.dir_modes)
    bundle_root = dest / top if top else dest
    logger.info(
        "unpacked %s: %d entries, %d bytes in %.2fs (root %s)",
        label,
        index.count,
        writer.written,
        time.monotonic() - started,
        printable(bundle_root),
    )
    return bundle_root


def _write(reader: Reader, index: Index, writer: Writer) -> None:
    """The second pass: every file and link the checks accepted (its final occurrence), then hardlinks."""

    def todo() -> Generator[tuple[str, Member], None, None]:
        with contextlib.closing(reader.members()) as members:
            for ordinal, member in enumerate(members):
                if member.kind == "dir":
                    continue
                path = index.path(member)
                if not index.final(path, ordinal):
                    continue
                if index.kind(path) != _KINDS[member.kind]:
                    raise BundleError(f"{reader.label}: {entry(member.name)} changed while being unpacked")
                if member.kind != "hardlink":
                    yield path, member

    def write(item: tuple[str, Member]) -> None:
        path, member = item
        if member.kind == "symlink":
            writer.symlink(path, index.links[path], member.name)
        else:
            writer.file(path, member.name, member.mode, reader.chunks(member))

    parallel = reader.parallel and index.count >= PARALLEL_MIN_ENTRIES
    items = todo()
    try:
        run_lanes(write, items, lanes=EXTRACT_THREADS if parallel else 1, name="unpack")
    finally:
        items.close()
    for path, target in index.hardlinks.items():  # after every file: lanes write in no set order
        if index.kind(path) == HARDLINK:  # not replaced by a later file or link
            writer.hardlink(path, target, path)
