"""Safe unpacking of deployment bundles (zip, tar, tar.gz/bz2/xz). Zipping a folder: see pack.py.

A bundle comes from the network and is unpacked by an agent that usually runs as root, so every entry is
checked before anything is written: no absolute paths, no ``..`` leaving the folder, no links pointing out,
no devices or fifos, no writing through a symlink, bounded entry count and size. The standard zipfile module
drops Unix modes and writes symlinks as regular files; both are handled here so exec bits and links survive.

Synchronous on purpose: async callers wrap ``unpack`` in ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import stat
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from s3deploy.errors import BundleError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
APPSPEC_NAMES = ("appspec.yml", "appspec.yaml")
# Longest symlink target read from a zip entry (PATH_MAX); a longer "link" is refused, not buffered.
_MAX_LINK_BYTES = 4096
# Like the kernel's ELOOP limit: a chain of more links than this is refused as a loop.
_MAX_LINK_HOPS = 40
# Fixed timestamp in zips we make, so the same tree always gives byte-identical archives.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, NotImplementedError, OSError)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name and extra lengths
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Zips with at least this many entries are written by EXTRACT_THREADS threads: creating files is bound
# by the filesystem's per-file latency (inode, journal), which threads overlap; unzip creates one by one.
PARALLEL_MIN_ENTRIES = 256
EXTRACT_THREADS = 4


@dataclass(slots=True)
class _Entry:
    """One archive member, checked and normalised: ``path`` is relative, "/"-separated, never empty."""

    name: str  # as written in the archive, for messages
    path: str
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int = 0
    size: int = 0
    target: str = ""  # symlink target (as stored) or hardlink target (normalised path)
    member: zipfile.ZipInfo | tarfile.TarInfo | None = None


def detect_format(path: Path) -> str:
    """Return "zip" or "tar" (plain or gzip/bzip2/xz-compressed) from the file's content, not its name."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
        if zipfile.is_zipfile(path):  # a zip with data in front of it (self-extracting archives)
            return "zip"
    except OSError as e:
        raise BundleError(f"{path.name}: cannot read the archive ({e})") from e
    raise BundleError(f"{path.name}: not a zip or tar archive (first bytes {head[:16].hex(' ')!s})")


def _normalise(label: str, name: str) -> str:
    """Map an archive name to a safe relative path, or raise naming the entry.

    Backslashes count as separators: Windows tools write them, and ``..\\x`` must not slip through.
    A ``..`` that stays inside (``a/../b``) is resolved; one that leaves the folder is refused.
    """
    if "\x00" in name:
        raise BundleError(f"{label}: entry {name!r} has a NUL byte in its name")
    unified = name.replace("\\", "/")
    parts = unified.split("/")
    if unified.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":" and parts[0][0].isalpha()):
        raise BundleError(f'{label}: entry "{name}" is an absolute path; entries must be relative')
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise BundleError(f'{label}: entry "{name}" escapes the bundle folder')
            out.pop()
        else:
            out.append(part)
    return "/".join(out)


def link_problem(link_path: str, target: str, links: dict[str, str]) -> str | None:
    """Why ``target`` (of the symlink at ``link_path``) leaves the root, or None if it stays inside.

    Resolves component by component through the other links of the same tree, so a chain like
    ``a -> b/..`` with ``b -> ..`` is caught, which a purely textual check would miss.
    """
    if not target or "\x00" in target:
        return "has an empty or invalid target"
    if target.startswith("/"):
        return f'points to the absolute path "{target}"'
    stack = link_path.split("/")[:-1]
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return f'points outside the bundle folder ("{target}")'
            stack.pop()
            continue
        stack.append(part)
        hop = links.get("/".join(stack))
        if hop is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or hop.startswith("/"):
            return f'points outside the bundle folder or loops ("{target}")'
        stack.pop()
        pending.extend(reversed(hop.split("/")))
    return None


class _Plan:
    """Collects entries in archive order and refuses unsafe ones before anything is written."""

    def __init__(self, label: str, max_files: int, max_unpacked_bytes: int) -> None:
        self.label = label
        self.max_files = max_files
        self.max_bytes = max_unpacked_bytes
        self.entries: list[_Entry] = []
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.declared = 0

    def add(self, entry: _Entry) -> None:
        label, path = self.label, entry.path
        if len(self.entries) >= self.max_files:
            raise BundleError(
                f"{label}: more than max_files={self.max_files} entries "
                f'(entry "{entry.name}" is one too many)'
            )
        if self.links:  # only a path below a symlink of this archive can be written through it
            parent = path
            while (cut := parent.rfind("/")) > 0:
                parent = parent[:cut]
                if parent in self.links:
                    raise BundleError(
                        f'{label}: entry "{entry.name}" would be written through symlink "{parent}"'
                    )
        if self.kinds.get(path) == "symlink":
            raise BundleError(f'{label}: entry "{entry.name}" would overwrite the symlink "{path}"')
        if entry.kind == "hardlink" and self.kinds.get(entry.target) not in ("file", "hardlink"):
            raise BundleError(
                f'{label}: entry "{entry.name}" is a hardlink to "{entry.target}", '
                "which is not an earlier file of the archive"
            )
        if entry.kind == "symlink":
            self.links[path] = entry.target
            self._check_link(entry)  # now, for a clear message; check_links() redoes it with every link
        self.kinds[path] = entry.kind
        self.declared += entry.size
        if self.declared > self.max_bytes:
            raise BundleError(
                f"{label}: declared unpacked size exceeds max_unpacked_bytes={self.max_bytes} "
                f'at entry "{entry.name}" ({entry.size} bytes)'
            )
        self.entries.append(entry)

    def check_links(self) -> None:
        """Check every symlink against the final set of links (a later link can redirect an earlier one)."""
        for entry in self.entries:
            if entry.kind == "symlink":
                self._check_link(entry)

    def _check_link(self, entry: _Entry) -> None:
        problem = link_problem(entry.path, entry.target, self.links)
        if problem:
            raise BundleError(f'{self.label}: entry "{entry.name}" is a symlink that {problem}')


def _zip_entries(zf: zipfile.ZipFile, plan: _Plan) -> None:
    """Turn the zip's central directory into checked entries (modes from ``external_attr``)."""
    infos = zf.infolist()
    if len(infos) > plan.max_files:
        raise BundleError(
            f"{plan.label}: {len(infos)} entries exceed max_files={plan.max_files} "
            f'(entry "{infos[plan.max_files].filename}" is one too many)'
        )
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise BundleError(
                f'{plan.label}: entry "{name}" is encrypted; encrypted bundles are not supported'
            )
        path = _normalise(plan.label, name)
        unix = info.external_attr >> 16
        fmt = stat.S_IFMT(unix)
        if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise BundleError(f'{plan.label}: entry "{name}" is a device, fifo or socket; only files allowed')
        if not path:
            if stat.S_ISDIR(unix) or name.endswith("/"):
                continue  # "./": the root folder itself
            raise BundleError(f'{plan.label}: entry "{name}" has an empty name')
        if stat.S_ISLNK(unix):
            plan.add(_Entry(name, path, "symlink", target=_read_zip_link(zf, info, plan.label)))
        elif stat.S_ISDIR(unix) or name.endswith("/") or (not fmt and info.external_attr & 0x10):
            plan.add(_Entry(name, path, "dir", mode=stat.S_IMODE(unix) if fmt else 0o755))
        else:
            plan.add(
                _Entry(name, path, "file", stat.S_IMODE(unix) if fmt else 0o644, info.file_size, member=info)
            )


def _read_zip_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    if info.file_size > _MAX_LINK_BYTES:
        raise BundleError(
            f'{label}: entry "{info.filename}" is a symlink with a target over {_MAX_LINK_BYTES} bytes'
        )
    try:
        with zf.open(info) as f:
            raw = f.read(_MAX_LINK_BYTES + 1)
    except _READ_ERRORS as e:
        raise BundleError(f'{label}: entry "{info.filename}" is corrupt or truncated ({e})') from e
    return os.fsdecode(raw)


def _tar_entries(tf: tarfile.TarFile, plan: _Plan) -> None:
    """Read the tar's headers one by one (stopping at max_files) into checked entries."""
    last = "the first entry"
    try:
        for m in tf:
            path = _normalise(plan.label, m.name)
            if not path and m.isdir():
                continue
            if not path:
                raise BundleError(f'{plan.label}: entry "{m.name}" has an empty name')
            if m.isreg():
                plan.add(_Entry(m.name, path, "file", m.mode & 0o7777, m.size, member=m))
            elif m.isdir():
                plan.add(_Entry(m.name, path, "dir", mode=m.mode & 0o7777))
            elif m.issym():
                plan.add(_Entry(m.name, path, "symlink", target=m.linkname))
            elif m.islnk():
                target = _hardlink_target(plan.label, m)
                plan.add(_Entry(m.name, path, "hardlink", target=target))
            else:
                what = (
                    "a device file"
                    if m.ischr() or m.isblk()
                    else "a fifo"
                    if m.isfifo()
                    else "an unsupported type"
                )
                raise BundleError(
                    f'{plan.label}: entry "{m.name}" is {what}; only files, folders and links allowed'
                )
            last = f'entry "{m.name}"'
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BundleError(f"{plan.label}: corrupt or truncated tar archive after {last} ({e})") from e


def _hardlink_target(label: str, m: tarfile.TarInfo) -> str:
    try:
        return _normalise(label, m.linkname)
    except BundleError as e:
        raise BundleError(
            f'{label}: entry "{m.name}" is a hardlink to "{m.linkname}", outside the bundle folder'
        ) from e


class _Extractor:
    """Writes checked entries under ``dest``. Tracks what it created so no per-entry realpath is needed.

    Everything under ``dest`` was made here, the plan refused paths below symlinks, and files are opened
    with O_EXCL|O_NOFOLLOW, so a write can never be redirected outside ``dest``.
    """

    def __init__(self, dest: Path, label: str, max_bytes: int) -> None:
        self.root = str(dest)
        self.label = label
        self.max_bytes = max_bytes
        self.written = 0
        self._count_lock = threading.Lock()
        self.dirs: set[str] = {""}
        self.dir_modes: dict[str, int] = {}
        self.files: set[str] = set()

    def _mkdirs(self, path: str) -> None:
        if path in self.dirs:
            return
        parent = path.rpartition("/")[0]
        self._mkdirs(parent)
        os.mkdir(f"{self.root}/{path}", 0o755)
        self.dirs.add(path)

    def _clear(self, entry: _Entry) -> str:
        """Make room for a file or link at ``entry.path`` (a later duplicate wins); return the full path."""
        self._mkdirs(entry.path.rpartition("/")[0])
        full = f"{self.root}/{entry.path}"
        if entry.path in self.dirs:
            raise BundleError(f'{self.label}: entry "{entry.name}" conflicts with a folder of the same name')
        if entry.path in self.files:
            os.unlink(full)
            self.files.discard(entry.path)
        return full

    def extract(self, entry: _Entry, src: IO[bytes] | bytes | None) -> None:
        if entry.kind == "dir":
            self._mkdirs(entry.path)
            # setuid/setgid dropped (files are owned by the agent, often root); owner keeps rwx so the
            # agent can always fill, read and delete its own release folder.
            self.dir_modes[entry.path] = (entry.mode & 0o1777) | 0o700
            return
        full = self._clear(entry)
        if entry.kind == "symlink":
            os.symlink(entry.target, full)
            return
        if entry.kind == "hardlink":
            os.link(f"{self.root}/{entry.target}", full, follow_symlinks=False)
        else:
            assert src is not None
            fd = os.open(full, _WRITE_FLAGS, 0o600)
            try:
                self._copy(entry, src, fd)
                os.fchmod(fd, entry.mode & 0o777)  # no setuid/setgid/sticky from a downloaded bundle
            finally:
                os.close(fd)
        self.files.add(entry.path)

    def _copy(self, entry: _Entry, src: IO[bytes] | bytes, fd: int) -> None:
        while True:
            try:
                chunk = src if isinstance(src, bytes) else src.read(CHUNK_BYTES)
            except _READ_ERRORS as e:
                raise BundleError(f'{self.label}: entry "{entry.name}" is corrupt or truncated ({e})') from e
            if not chunk:
                return
            with self._count_lock:  # extraction threads share the total
                self.written += len(chunk)
                over = self.written > self.max_bytes
            if over:  # the headers lied about the sizes
                raise BundleError(
                    f'{self.label}: entry "{entry.name}" unpacks past max_unpacked_bytes={self.max_bytes} '
                    "(more data than the archive's headers declare)"
                )
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if isinstance(src, bytes):
                return

    def finish(self) -> None:
        """Apply folder modes last, deepest first, so a read-only folder does not block its own children."""
        for path in sorted(self.dir_modes, key=lambda p: p.count("/"), reverse=True):
            os.chmod(f"{self.root}/{path}", self.dir_modes[path])


def _open_member(archive: zipfile.ZipFile | tarfile.TarFile, entry: _Entry, label: str) -> IO[bytes]:
    """Open a file entry's data as a stream (never read whole into memory)."""
    try:
        if isinstance(archive, zipfile.ZipFile):
            assert isinstance(entry.member, zipfile.ZipInfo)
            return archive.open(entry.member)
        assert isinstance(entry.member, tarfile.TarInfo)
        src = archive.extractfile(entry.member)
    except _READ_ERRORS as e:
        raise BundleError(f'{label}: entry "{entry.name}" is corrupt or unreadable ({e})') from e
    if src is None:
        raise BundleError(f'{label}: entry "{entry.name}" has no data')
    return src


def _is_small_zip_member(entry: _Entry) -> bool:
    info = entry.member
    return (
        isinstance(info, zipfile.ZipInfo)
        and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        and max(info.file_size, info.compress_size) <= CHUNK_BYTES
    )


def _read_small_zip_member(fd: int, info: zipfile.ZipInfo, label: str) -> bytes:
    """Read a small stored/deflated member with two preads and check its size and CRC.

    Bundles hold thousands of small files, and zipfile's per-member stream set-up costs more than their
    data; this keeps unpacking faster than ``unzip``. Larger members are streamed through zipfile.
    """
    where = f'{label}: entry "{info.filename}"'
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise BundleError(f"{where} is corrupt or truncated (bad local header)")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[1:]
    raw = os.pread(fd, info.compress_size, info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    if len(raw) != info.compress_size:
        raise BundleError(f"{where} is corrupt or truncated (data cut short)")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-15)
        data, complete = inflater.decompress(raw, info.file_size + 1), inflater.eof
    else:
        data, complete = raw, True
    if len(data) != info.file_size or not complete:
        raise BundleError(
            f"{where} is corrupt or forged (its data does not match the size its header declares)"
        )
    if zlib.crc32(data) != info.CRC:
        raise BundleError(f"{where} is corrupt (Bad CRC-32)")
    return data


def _extract_one(
    archive: zipfile.ZipFile | tarfile.TarFile,
    entry: _Entry,
    label: str,
    extractor: _Extractor,
    raw_fd: int | None,
) -> None:
    try:
        if entry.kind == "file" and raw_fd is not None and _is_small_zip_member(entry):
            assert isinstance(entry.member, zipfile.ZipInfo)
            extractor.extract(entry, _read_small_zip_member(raw_fd, entry.member, label))
        elif entry.kind == "file":
            with _open_member(archive, entry, label) as src:
                extractor.extract(entry, src)
        else:
            extractor.extract(entry, None)
    except zlib.error as e:
        raise BundleError(f'{label}: entry "{entry.name}" is corrupt ({e})') from e
    except OSError as e:
        raise BundleError(f'{label}: entry "{entry.name}" cannot be written ({e.strerror or e})') from e


def _extract_all(
    archive: zipfile.ZipFile | tarfile.TarFile, plan: _Plan, extractor: _Extractor, raw_fd: int | None
) -> None:
    if raw_fd is None or len(plan.entries) < PARALLEL_MIN_ENTRIES:
        for entry in plan.entries:
            _extract_one(archive, entry, plan.label, extractor, raw_fd)
    else:
        _extract_parallel(archive, plan, extractor, raw_fd)
    extractor.finish()


def _extract_parallel(
    archive: zipfile.ZipFile | tarfile.TarFile, plan: _Plan, extractor: _Extractor, raw_fd: int
) -> None:
    """Folders first (in order), then files and symlinks over threads, then hardlinks (in order).

    Entries are dealt to threads by path, so every entry of one path (a later duplicate wins) is written
    by the same thread in archive order. Every entry was checked by the plan before anything is written;
    zipfile reads members from several threads safely (it locks its shared file), small members are
    read with pread.
    """
    lanes: list[list[_Entry]] = [[] for _ in range(EXTRACT_THREADS)]
    hardlinks: list[_Entry] = []
    for entry in plan.entries:
        if entry.kind == "dir":
            _extract_one(archive, entry, plan.label, extractor, raw_fd)
        elif entry.kind == "hardlink":
            hardlinks.append(entry)
        else:
            try:
                extractor._mkdirs(entry.path.rpartition("/")[0])
            except OSError as e:
                raise BundleError(
                    f'{plan.label}: entry "{entry.name}" cannot be written ({e.strerror or e})'
                ) from e
            lanes[hash(entry.path) % EXTRACT_THREADS].append(entry)
    failed = threading.Event()

    def run(lane: list[_Entry]) -> None:
        for entry in lane:
            if failed.is_set():
                return
            try:
                _extract_one(archive, entry, plan.label, extractor, raw_fd)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(EXTRACT_THREADS, thread_name_prefix="unpack") as pool:
        # Each thread logs with the deployment's section and id (log.py): a copy of the context each.
        futures = [pool.submit(contextvars.copy_context().run, run, lane) for lane in lanes if lane]
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    for entry in hardlinks:
        _extract_one(archive, entry, plan.label, extractor, raw_fd)


def unpack(archive: Path, dest: Path, *, max_files: int, max_unpacked_bytes: int) -> Path:
    """Unpack ``archive`` into the empty folder ``dest`` and return the bundle root.

    The root is ``dest``, or ``dest/<folder>`` when the archive's only top-level entry is a folder holding
    appspec.yml/appspec.yaml (as CodeDeploy does). Raises BundleError naming the entry for anything unsafe,
    corrupt or over the limits; on error ``dest`` may hold a partial tree (the caller deletes it), but
    nothing is ever written outside it.
    """
    label = archive.name
    started = time.monotonic()
    fmt = detect_format(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BundleError(f"{label}: cannot unpack into {dest}: the folder is not empty")
    plan = _Plan(label, max_files, max_unpacked_bytes)
    try:
        opened: zipfile.ZipFile | tarfile.TarFile = (
            zipfile.ZipFile(archive) if fmt == "zip" else tarfile.open(archive, "r:*")
        )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
        raise BundleError(f"{label}: corrupt or truncated {fmt} archive ({e})") from e
    with opened:
        if isinstance(opened, zipfile.ZipFile):
            _zip_entries(opened, plan)
        else:
            _tar_entries(opened, plan)
        plan.check_links()
        extractor = _Extractor(dest, label, max_unpacked_bytes)
        raw_fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC) if fmt == "zip" else None
        try:
            _extract_all(opened, plan, extractor, raw_fd)
        finally:
            if raw_fd is not None:
                os.close(raw_fd)
    root = _bundle_root(dest)
    logger.info(
        "unpacked %s: %d entries, %d bytes in %.2fs (root %s)",
        label,
        len(plan.entries),
        extractor.written,
        time.monotonic() - started,
        root,
    )
    return root


def _bundle_root(dest: Path) -> Path:
    """Hoist into the single top-level folder when it holds the appspec (a zip of the folder itself)."""
    with os.scandir(dest) as it:
        top = list(it)
    if len(top) == 1 and top[0].is_dir(follow_symlinks=False):
        inner = Path(top[0].path)
        if any((inner / name).is_file() for name in APPSPEC_NAMES):
            return inner
    return dest
