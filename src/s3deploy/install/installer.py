"""The Install step: copy the bundle's ``files`` onto this host, with CodeDeploy's semantics (SPEC §7).

A directory source copies its contents into the destination, a file source lands inside the destination
folder, missing folders are created. Modes and mtimes are kept, symlinks stay symlinks. Then
``permissions`` apply to what this install put on disk (symlinks are skipped).

The cleanup list (``installed/<section>.list``) records what this section's last Install put on disk, as
JSON: ``{"version": 1, "files": [absolute paths], "dirs": [absolute paths, created by s3deploy]}``.
JSON rather than CodeDeploy's one-path-a-line text, so any path (even one with a newline) round-trips.

The sequence makes a failure leave a known state:
1. read the previous list (missing = empty);
2. plan everything and check every conflict (a file on disk that the list does not hold): under DISALLOW
   all conflicts are reported at once and nothing on disk has changed;
3. write the union of the previous list and the plan (so a crash from here on leaves a list that covers
   both releases), remove the previous release's files that the new one does not replace and its folders
   that are then empty (deepest first), create the folders, copy (each file replaced atomically; plans of
   PARALLEL_MIN_FILES files or more over COPY_THREADS threads), apply permissions;
4. write the final list: exactly what is installed now.

With no ``files`` in the appspec the whole bundle (appspec and scripts included, as CodeDeploy's
``source: /`` does) goes into the section's ``destination``. Files kept under RETAIN are never in the list,
so no later install removes them. Permissions apply in appspec order; a later entry wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import grp
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TypeVar

from s3deploy.appspec import AppSpec, FileMapping, Permission
from s3deploy.common.files import atomic_write
from s3deploy.errors import InstallError
from s3deploy.install import acl

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_LISTED_CONFLICTS = 10
_LIST_VERSION = 1
_TMP_SUFFIX = ".s3deploy-tmp"
# Plans of at least this many files are copied by COPY_THREADS threads, as the unpacker writes big zips
# (bundle.PARALLEL_MIN_ENTRIES): creating a file costs the filesystem's per-file latency (inode, journal,
# directory entry), which threads overlap; the data itself moves in the kernel (sendfile).
PARALLEL_MIN_FILES = 256
COPY_THREADS = 4
# Threads take whole folders, gathered into batches of at least this many files, the next batch going to
# whichever thread is free: threads creating files in the same folder queue on its lock.
COPY_BATCH = 64
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SENDFILE_BYTES = 1 << 30


@dataclass
class InstallReport:
    """What one Install did: ``files``/``dirs`` are exactly what the new cleanup list holds."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    copied: int = 0
    skipped_retained: int = 0
    duration_s: float = 0.0


@dataclass
class _Plan:
    """Everything an install will do, decided before anything on disk changes."""

    dirs: dict[str, int | None] = field(default_factory=dict)  # dest dir -> mode of its source dir
    files: dict[str, Path] = field(default_factory=dict)  # dest file -> source in the bundle
    owned_dirs: list[str] = field(default_factory=list)  # dirs s3deploy creates (or created before)
    retained: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def install(
    bundle_root: Path,
    spec: AppSpec,
    *,
    default_destination: Path | None,
    cleanup_list: Path,
    owner_check: bool = True,
) -> InstallReport:
    """Install ``spec.files`` from ``bundle_root`` and record them in ``cleanup_list``; raises InstallError.

    ``default_destination`` receives the whole bundle when the appspec has no ``files``.
    ``owner_check`` checks before anything changes that every permission's owner and group exist, that
    every acls entry parses and names a user/group of this host, and that chcon and SELinux are there
    when context is used (False: they fail when applied).
    """
    started = time.monotonic()
    mappings = _mappings(spec, default_destination)
    previous_files, previous_dirs = read_cleanup_list(cleanup_list)
    if owner_check:
        _preflight_permissions(spec.permissions)
    plan = _plan(bundle_root, mappings, spec.file_exists_behavior, set(previous_files), set(previous_dirs))
    if plan.conflicts:
        raise InstallError(_conflict_message(plan.conflicts))
    new_files = list(plan.files)
    _write_list(cleanup_list, _union(previous_files, new_files), _union(previous_dirs, plan.owned_dirs))
    _remove_previous(previous_files, previous_dirs, set(new_files), set(plan.owned_dirs))
    _copy(plan)
    _apply_permissions(spec.permissions, plan)
    _write_list(cleanup_list, new_files, plan.owned_dirs)
    report = InstallReport(
        files=new_files,
        dirs=list(plan.owned_dirs),
        copied=len(new_files),
        skipped_retained=len(plan.retained),
        duration_s=time.monotonic() - started,
    )
    logger.info(
        "installed %d files (%d kept under RETAIN, %d folders created) in %.2fs",
        report.copied,
        report.skipped_retained,
        len(report.dirs),
        report.duration_s,
    )
    return report


def read_cleanup_list(path: Path) -> tuple[list[str], list[str]]:
    """The (files, dirs) a cleanup list holds; a missing list is empty."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError) as e:
        raise InstallError(
            f"cleanup list {path} is unreadable ({e}); delete it to start over "
            "(the files it listed will then count as already present)"
        ) from e
    lists: list[list[str]] = []
    for key in ("files", "dirs"):
        value = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(value, list) or not all(isinstance(p, str) and p.startswith("/") for p in value):
            raise InstallError(
                f'cleanup list {path}: expected {{"files": [...], "dirs": [...]}} of absolute paths'
            )
        lists.append(value)
    return lists[0], lists[1]


def _mappings(spec: AppSpec, default_destination: Path | None) -> tuple[FileMapping, ...]:
    if spec.files:
        return spec.files
    if default_destination is None:
        raise InstallError(
            "bundle has no `files` in its appspec and section has no `destination`; set one of them"
        )
    return (FileMapping("/", str(default_destination)),)


def _plan(
    bundle_root: Path,
    mappings: tuple[FileMapping, ...],
    behavior: str,
    prev_files: set[str],
    prev_dirs: set[str],
) -> _Plan:
    plan = _Plan()
    for mapping in mappings:
        source = mapping.source_in(bundle_root)
        destination = Path(os.path.normpath(mapping.destination))
        if not os.path.lexists(source):
            raise InstallError(f"files source {mapping.source!r} is not in the bundle ({bundle_root})")
        _add_ancestors(plan, destination, prev_dirs)
        _add_dir(plan, destination, None)
        if source.is_dir() and not source.is_symlink():
            _walk(plan, source, destination)
        else:
            _add_file(plan, source, destination / source.name)
    clash = next(
        (f for f in plan.files if f.endswith(_TMP_SUFFIX) and f[: -len(_TMP_SUFFIX)] in plan.files), None
    )
    if clash is not None:
        raise InstallError(
            f"files: {clash} would be overwritten by the temporary copy of {clash[: -len(_TMP_SUFFIX)]}; "
            f"rename it (names ending in {_TMP_SUFFIX} are the installer's own)"
        )
    for dest in plan.dirs:
        _classify_dir(plan, dest, prev_files, prev_dirs)
    for dest in list(plan.files):
        _classify_file(plan, dest, behavior, prev_files, prev_dirs)
    return plan


def _add_ancestors(plan: _Plan, destination: Path, prev_dirs: set[str]) -> None:
    """Plan the destination's missing parents, and those a previous install created (which it would
    otherwise remove when they become empty)."""
    for ancestor in reversed(destination.parents):
        if not os.path.isdir(ancestor) or str(ancestor) in prev_dirs:
            _add_dir(plan, ancestor, None)


def _add_dir(plan: _Plan, dest: Path, mode: int | None) -> None:
    key = str(dest)
    if key in plan.files:
        raise InstallError(f"files: {key} is both a folder and a file ({plan.files[key]}) in the appspec")
    if mode is not None or key not in plan.dirs:
        plan.dirs[key] = mode


def _add_file(plan: _Plan, source: Path, dest: Path) -> None:
    key = str(dest)
    if key in plan.files or key in plan.dirs:
        other = plan.files.get(key, "a folder")
        raise InstallError(f"files: two sources ({source} and {other}) go to the same destination {key}")
    plan.files[key] = source


def _walk(plan: _Plan, source_dir: Path, dest_dir: Path) -> None:
    """Add the contents of ``source_dir`` under ``dest_dir``; symlinks are entries, never followed."""
    with os.scandir(source_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                _add_dir(plan, dest_dir / entry.name, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
                _walk(plan, Path(entry.path), dest_dir / entry.name)
            else:
                _add_file(plan, Path(entry.path), dest_dir / entry.name)


def _classify_dir(plan: _Plan, dest: str, prev_files: set[str], prev_dirs: set[str]) -> None:
    if os.path.isdir(dest):
        if dest in prev_dirs:
            plan.owned_dirs.append(dest)  # ours from last time: keep counting it as created by s3deploy
    elif os.path.lexists(dest) and dest not in prev_files:
        if os.path.isdir(dest):
            return  # created just now by a section installing next to this one: not ours, no conflict
        plan.conflicts.append(f"{dest} (a file is where a folder is needed)")
    else:
        plan.owned_dirs.append(dest)


def _classify_file(plan: _Plan, dest: str, behavior: str, prev_files: set[str], prev_dirs: set[str]) -> None:
    if not os.path.lexists(dest) or dest in prev_files:
        return
    if os.path.isdir(dest) and not os.path.islink(dest):
        if dest not in prev_dirs:
            plan.conflicts.append(f"{dest} (a folder is where a file is needed)")
    elif behavior == "DISALLOW":
        plan.conflicts.append(dest)
    elif behavior == "RETAIN":
        del plan.files[dest]
        plan.retained.append(dest)
        logger.info("keeping %s: it exists and file_exists_behavior is RETAIN", dest)
    else:
        logger.info("replacing %s: it exists and file_exists_behavior is OVERWRITE", dest)


def _conflict_message(conflicts: list[str]) -> str:
    shown = "\n  ".join(conflicts[:MAX_LISTED_CONFLICTS])
    more = len(conflicts) - MAX_LISTED_CONFLICTS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return (
        f"Install: {len(conflicts)} file(s) already exist that this section did not install "
        f"(file_exists_behavior DISALLOW); nothing was changed:\n  {shown}{tail}\n"
        "Remove them, or set file_exists_behavior: OVERWRITE or RETAIN in the appspec."
    )


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys(first + second))


def _write_list(path: Path, files: list[str], dirs: list[str]) -> None:
    """Replace the cleanup list atomically (tmp + fsync + rename + fsync of the folder)."""
    data = json.dumps({"version": _LIST_VERSION, "files": files, "dirs": dirs}, indent=0)
    try:
        atomic_write(path, data)
    except OSError as e:
        raise InstallError(f"cannot write cleanup list {path}: {e}") from e


def _remove_previous(
    prev_files: list[str], prev_dirs: list[str], keep_files: set[str], keep_dirs: set[str]
) -> None:
    """Remove last install's files that the new one does not replace, then its folders that are empty."""
    removed = 0
    for path in prev_files:
        if path in keep_files:
            continue  # replaced atomically by the copy, no gap in between
        try:
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
                removed += 1
            elif os.path.isdir(path):
                logger.warning("not removing %s: listed as a file but it is now a folder", path)
        except OSError as e:
            raise InstallError(f"cannot remove previously installed {path}: {e}") from e
    for path in sorted(prev_dirs, key=lambda p: p.count("/"), reverse=True):
        if path in keep_dirs or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            os.rmdir(path)
        except OSError:
            logger.info("keeping folder %s: it holds files this section did not install", path)
    logger.debug("removed %d files of the previous install", removed)


def _copy(plan: _Plan) -> None:
    for dest in plan.dirs:  # parents come before children (insertion order)
        try:
            if not os.path.isdir(dest):
                os.mkdir(dest)
        except FileExistsError as e:
            # Sections with disjoint destinations under one new parent install at once: the other one
            # may create that parent between our check and our mkdir. A folder there is all we need.
            if not os.path.isdir(dest):
                raise InstallError(f"cannot create folder {dest}: {e}") from e
        except OSError as e:
            raise InstallError(f"cannot create folder {dest}: {e}") from e
    files = list(plan.files.items())
    if len(files) < PARALLEL_MIN_FILES:
        for dest, source in files:
            _install_file(source, dest)
    else:
        _copy_parallel(files)
    # folder modes last, deepest first: a read-only source folder must not block the copies into it
    for dest in reversed(plan.owned_dirs):
        mode = plan.dirs[dest]
        try:
            if mode is not None:
                os.chmod(dest, mode)
        except OSError as e:
            raise InstallError(f"cannot set mode {mode:o} on folder {dest}: {e}") from e


def _copy_parallel(files: list[tuple[str, Path]]) -> None:
    """Copy ``files`` over COPY_THREADS threads; the first failure stops every thread and is raised.

    Every folder exists already and every destination is distinct (the plan refuses two sources for
    one), so the files need no order among them. The cleanup list written before covers all of them,
    so a failure leaves nothing on disk that the list does not hold.
    """
    failed = threading.Event()

    def run(batch: list[tuple[str, Path]]) -> None:
        for dest, source in batch:
            if failed.is_set():
                return
            try:
                _install_file(source, dest)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="install") as pool:
        # Each thread logs with the deployment's section and id (log.py): a copy of the context each.
        futures = [pool.submit(contextvars.copy_context().run, run, batch) for batch in _batches(files)]
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error


def _batches(files: list[tuple[str, Path]]) -> list[list[tuple[str, Path]]]:
    """``files`` grouped by folder (in plan order), consecutive folders joined up to COPY_BATCH files."""
    by_folder: dict[str, list[tuple[str, Path]]] = {}
    for dest, source in files:
        by_folder.setdefault(os.path.dirname(dest), []).append((dest, source))
    batches: list[list[tuple[str, Path]]] = [[]]
    for group in by_folder.values():
        if len(batches[-1]) >= COPY_BATCH:
            batches.append([])
        batches[-1].extend(group)
    return batches


def _install_file(source: Path, dest: str) -> None:
    try:
        _copy_one(source, dest)
    except OSError as e:
        raise InstallError(f"cannot install {source} as {dest}: {e}") from e


def _copy_one(source: Path, dest: str) -> None:
    """Copy one file or symlink next to ``dest`` under a temporary name, then rename it over ``dest``.

    One lstat of the source gives its kind, mode and times. The temporary name is created exclusively,
    never written through (one left by a crash could be a link to anything), and removed on failure, so
    nothing stays on disk that the cleanup list does not name.
    """
    st = os.lstat(source)
    if not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InstallError(f"cannot install {source} as {dest}: it is neither a regular file nor a symlink")
    tmp = f"{dest}{_TMP_SUFFIX}"
    try:
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(source)
            _exclusive(tmp, lambda path: os.symlink(target, path))
        else:
            _copy_file(source, tmp, st)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _exclusive(tmp: str, create: Callable[[str], _T]) -> _T:
    """``create(tmp)``, which fails if ``tmp`` exists; a ``tmp`` left by a crash is removed first."""
    try:
        return create(tmp)
    except FileExistsError:
        os.unlink(tmp)
        return create(tmp)


def _copy_file(source: Path, tmp: str, st: os.stat_result) -> None:
    """Write ``source``'s bytes, mode and times (from ``st``) to the new file ``tmp``."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = _exclusive(tmp, lambda path: os.open(path, _CREATE_FLAGS, 0o600))
        try:
            _copy_bytes(src, out)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_bytes(src: int, out: int) -> None:
    try:
        while os.sendfile(out, src, None, _SENDFILE_BYTES) > 0:
            pass
        return
    except OSError as e:
        # like shutil: a filesystem without sendfile gets plain reads and writes, if nothing was written
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or os.lseek(out, 0, os.SEEK_CUR):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view) :]


def _preflight_permissions(permissions: tuple[Permission, ...]) -> None:
    """Fail before anything changes when a permission cannot be applied on this host."""
    for i, perm in enumerate(permissions):
        where = f"permissions[{i}] (object {perm.object})"
        if perm.owner is not None:
            _lookup(pwd.getpwnam, perm.owner, f"{where}: owner {perm.owner!r} is not a user on this host")
        if perm.group is not None:
            _lookup(grp.getgrnam, perm.group, f"{where}: group {perm.group!r} is not a group on this host")
        for j, text in enumerate(perm.acls):
            try:
                acl.compile_rules([text])
            except acl.AclError as e:
                raise InstallError(f"{where}: acls[{j}]: {e}") from e
        if perm.context is not None and not _selinux_ready():
            raise InstallError(f"{where}: context needs SELinux enabled and chcon installed; it is not here")


def _lookup(func: Callable[[str], object], name: str, message: str) -> None:
    try:
        func(name)
    except KeyError as e:
        raise InstallError(message) from e


def _selinux_ready() -> bool:
    return shutil.which("chcon") is not None and os.path.exists("/sys/fs/selinux/enforce")


def _apply_permissions(permissions: tuple[Permission, ...], plan: _Plan) -> None:
    if not permissions:
        return
    installed = [(p, True) for p in plan.owned_dirs] + [(p, False) for p in plan.files]
    for perm in permissions:
        try:  # names are looked up once per permission, not once per file
            uid = pwd.getpwnam(perm.owner).pw_uid if perm.owner is not None else -1
            gid = grp.getgrnam(perm.group).gr_gid if perm.group is not None else -1
            rules = acl.compile_rules(perm.acls)
        except (LookupError, acl.AclError) as e:
            raise InstallError(f"permissions (object {perm.object}): {e}") from e
        for path, is_dir in installed:
            if not _matches(perm, path, is_dir) or os.path.islink(path):
                continue
            try:
                _apply_one(perm, path, uid, gid, rules)
            except (OSError, acl.AclError, subprocess.CalledProcessError) as e:
                detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
                raise InstallError(
                    f"permissions (object {perm.object}): cannot apply to {path}: {detail}"
                ) from e


def _matches(perm: Permission, path: str, is_dir: bool) -> bool:
    """CodeDeploy's matching: "**" is everything under ``object``; another pattern is a glob on the names
    of ``object``'s direct children. The object itself counts when this install put it there."""
    if ("directory" if is_dir else "file") not in perm.type:
        return False
    obj = os.path.normpath(perm.object)
    if path == obj:
        return perm.pattern == "**" and not perm.except_
    if not path.startswith(obj.rstrip("/") + "/"):
        return False
    rel = path[len(obj.rstrip("/")) + 1 :]
    if perm.pattern != "**" and ("/" in rel or not fnmatchcase(rel, perm.pattern)):
        return False
    name = rel.rsplit("/", 1)[-1]
    return not any(fnmatchcase(name, pattern) for pattern in perm.except_)


def _apply_one(perm: Permission, path: str, uid: int, gid: int, rules: list[acl.Rule]) -> None:
    # chown first: it clears setuid/setgid bits that a later chmod must be able to set
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid, follow_symlinks=False)
    if perm.mode is not None:
        os.chmod(path, perm.mode)
    if rules:
        acl.apply(path, rules)
    if perm.context is not None:
        args = ["chcon", "-t", perm.context.type]
        args += ["-u", perm.context.user] if perm.context.user else []
        args += ["-l", perm.context.range] if perm.context.range else []
        _run([*args, path])


def _run(args: list[str]) -> None:
    executable = shutil.which(args[0])
    if executable is None:
        raise InstallError(f"{args[0]} is needed for permissions but is not installed")
    subprocess.run(
        [executable, *args[1:]], check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
