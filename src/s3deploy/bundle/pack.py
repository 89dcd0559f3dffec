"""Zipping a bundle folder for ``publish`` and the demo: exec bits and symlinks kept, deterministic bytes.

The counterpart of bundle.unpack: what this writes, unpack restores exactly. Synchronous (callers use
``asyncio.to_thread``).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from s3deploy.bundle.checks import link_problem, normalise
from s3deploy.bundle.member import CHUNK_BYTES, shown
from s3deploy.common.text import printable
from s3deploy.errors import BundleError

logger = logging.getLogger(__name__)

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(slots=True)
class _Source:
    """One thing found in the folder make_zip archives."""

    rel: str
    full: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int
    target: str = ""


def _listing(root: str, rel: str) -> list[tuple[str, os.DirEntry[str]]]:
    with os.scandir(f"{root}/{rel}" if rel else root) as it:
        items = sorted(it, key=lambda d: d.name)
    return [(f"{rel}/{item.name}" if rel else item.name, item) for item in items]


def _scan(root: str, skip: str, label: str) -> list[_Source]:
    """Depth-first, names sorted: the same tree always lists in the same order. Iterative, and every
    path passes the checks unpack applies (depth, name lengths), so what is zipped can be unpacked."""
    out: list[_Source] = []
    stack = [iter(_listing(root, ""))]
    while stack:
        found = next(stack[-1], None)
        if found is None:
            stack.pop()
            continue
        sub, item = found
        if item.path == skip:
            continue  # the zip being written, when it is inside the folder
        normalise(label, sub)
        st = item.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            out.append(_Source(sub, item.path, "symlink", 0o777, os.readlink(item.path)))
        elif stat.S_ISDIR(st.st_mode):
            out.append(_Source(sub, item.path, "dir", stat.S_IMODE(st.st_mode)))
            stack.append(iter(_listing(root, sub)))
        elif stat.S_ISREG(st.st_mode):
            out.append(_Source(sub, item.path, "file", stat.S_IMODE(st.st_mode)))
        else:
            raise BundleError(
                f"{printable(item.path)}: not a file, folder or symlink; a bundle cannot hold it"
            )
    return out


def make_zip(src_dir: Path, out_path: Path) -> int:
    """Zip the contents of ``src_dir`` into ``out_path``; return the number of entries written.

    Paths are relative and sorted, timestamps fixed: the same tree gives the same bytes. Unix modes (exec
    bits) go into ``external_attr``, symlinks are stored as links (their content is the target) and folders
    as entries, so ``unpack`` restores the tree exactly. A symlink pointing outside ``src_dir`` is refused.
    """
    root = os.path.realpath(src_dir)
    if not os.path.isdir(root):
        raise BundleError(f"{printable(src_dir)}: not a folder; cannot make a bundle from it")
    skip = os.path.join(os.path.realpath(out_path.parent), out_path.name)
    label = printable(src_dir)
    try:
        sources = _scan(root, skip, label)
    except OSError as e:
        raise BundleError(
            f"{label}: cannot read {printable(e.filename or '')} ({shown(e.strerror or e)})"
        ) from e
    links = {s.rel: s.target for s in sources if s.kind == "symlink"}
    for rel, target in links.items():
        problem = link_problem(rel, target, links)
        if problem:
            raise BundleError(
                f"{label}: symlink {printable(rel)} {problem}; bundles may only link inside themselves"
            )
    try:
        with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for source in sources:
                _write_source(zf, source)
    except (OSError, UnicodeEncodeError) as e:
        out_path.unlink(missing_ok=True)
        raise BundleError(f"{printable(out_path.name)}: cannot write the zip of {label} ({shown(e)})") from e
    logger.info("zipped %s into %s: %d entries", label, printable(out_path), len(sources))
    return len(sources)


def _write_source(zf: zipfile.ZipFile, source: _Source) -> None:
    info = zipfile.ZipInfo(source.rel + "/" if source.kind == "dir" else source.rel, _ZIP_EPOCH)
    info.create_system = 3  # Unix: readers (ours, unzip) then honour the mode bits
    if source.kind == "dir":
        info.external_attr = ((stat.S_IFDIR | source.mode) << 16) | 0x10  # 0x10: MS-DOS folder flag
        zf.writestr(info, b"")
    elif source.kind == "symlink":
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, os.fsencode(source.target), zipfile.ZIP_STORED)
    else:
        info.external_attr = (stat.S_IFREG | source.mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        size = os.path.getsize(source.full)
        info.file_size = size
        with open(source.full, "rb") as src, zf.open(info, "w", force_zip64=size > 0x7FFF0000) as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
