"""Staging a bundle into a release folder: the ``files`` entries for D, moved there where they may be.

With ``activation = symlink`` the files for D go into a fresh release folder (``activation``), and the
unpacked bundle already holds them on the same filesystem: renaming a folder of it into the release costs
one ``rename(2)`` instead of a copy of every file. A bundle entry is **moved** unless it must stay in the
bundle, in which case it is **copied** (``copy_file_range``, so a reflink on btrfs/xfs; else sendfile):

- the folder holding a hook script stays whole (its other files are often sourced by the script), and so
  does the appspec; for the bundle root that means its files, not its sub-folders. The bundle lives in
  the root-only state directory; a release beside D may be handed to the application user by
  ``permissions``, and ApplicationStop of this release later runs as root from the bundle;
- a file with more than one hard link is copied: moving one name would share its inode (and so its
  contents, owner and mode) between the release and the names that stay in the bundle. For the same
  reason the release is never made of hard links to the bundle;
- the source of another ``files`` entry (inside D or not) stays for that entry;
- everything is copied when the release is on another filesystem than the state directory, or when the
  caller asks (``move=False``).

Files get the mode the bundle gave them (``modes``: what unpacking narrowed), their mtime, root as owner;
links stay links. Folders keep the bundle's mode without group/other write; folders that only lead to an
entry's destination are 0755. The semantics are Install's: a folder source's contents go into the
destination, a file source into the destination folder, two sources for one path are an error. What was
moved is no longer in the bundle (S3DEPLOY_BUNDLE_DIR): a hook after Install finds it in the release.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s3deploy.appspec import AppSpec, FileMapping
from s3deploy.errors import InstallError
from s3deploy.install.cancel import checkpoint
from s3deploy.install.copy import copy_file
from s3deploy.install.releases_folder import RELEASE_DIR_MODE, Place, failing, normalized

logger = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What staging did: ``moved`` lists bundle-relative paths renamed into the release (each a whole file
    or folder), ``copied`` counts files and links copied."""

    moved: list[str] = field(default_factory=list)
    copied: int = 0
    duration_s: float = 0.0


def split_mappings(
    mappings: Iterable[FileMapping], destination: Path | str
) -> tuple[tuple[FileMapping, ...], tuple[FileMapping, ...]]:
    """(entries going to D or inside it, the others); InstallError for an entry whose destination holds
    D (it would copy through D's link into the live release)."""
    dest = normalized(destination)
    inside: list[FileMapping] = []
    outside: list[FileMapping] = []
    for mapping in mappings:
        target = os.path.normpath(mapping.destination)
        if target == dest or target.startswith(dest + "/"):
            inside.append(mapping)
        elif dest.startswith(target.rstrip("/") + "/"):
            raise InstallError(
                f"files: destination {mapping.destination} holds {dest}, which activation = symlink makes a "
                f"link to the live release; point the entry at {dest} (or below it), or elsewhere"
            )
        else:
            outside.append(mapping)
    return tuple(inside), tuple(outside)


def bundle_keep(spec: AppSpec) -> list[str]:
    """The bundle-relative paths that must stay in the bundle: the appspec and every hook script."""
    keep = [spec.source_file] if spec.source_file else []
    keep += [script.location for scripts in spec.hooks.values() for script in scripts]
    return keep


def stage_release(
    bundle_root: Path,
    mappings: Sequence[FileMapping],
    destination: Path | str,
    release_dir: Path | str,
    *,
    keep: Iterable[str],
    modes: Mapping[Path, int] | None = None,
    others: Iterable[FileMapping] = (),
    move: bool = True,
    cancel: threading.Event | None = None,
) -> StageReport:
    """Put the ``mappings`` (all going to D or inside it: ``split_mappings``) into ``release_dir``.

    ``keep``: bundle-relative paths that stay in the bundle (``bundle_keep``); ``modes``: the bundle's
    modes of entries unpacking narrowed, by path; ``others``: the entries outside D, whose sources stay.
    Raises InstallError naming the entry.
    """
    started = time.monotonic()
    with Place(destination, create=False) as place, failing(f"opening release folder {release_dir}"):
        release_fd = place.open_release(release_dir)
    stager = _Stager(bundle_root, place.destination, release_fd, os.fspath(release_dir), modes or {}, move)
    stager.cancel = cancel
    try:
        with failing(f"staging {bundle_root} into {release_dir}"):
            stager.keep(keep)
            stager.stage(mappings, tuple(others))
    finally:
        os.close(release_fd)
    stager.report.duration_s = time.monotonic() - started
    logger.info(
        "release: %d entries moved, %d files copied into %s in %.2fs",
        len(stager.report.moved),
        stager.report.copied,
        release_dir,
        stager.report.duration_s,
    )
    return stager.report


class _Stager:
    def __init__(
        self,
        bundle: Path,
        destination: str,
        release_fd: int,
        release: str,
        modes: Mapping[Path, int],
        move: bool,
    ) -> None:
        self.bundle = os.path.normpath(bundle)
        self.destination = destination
        self.release_fd = release_fd
        self.release = release
        self.copy_only = not move or os.stat(self.bundle).st_dev != os.fstat(release_fd).st_dev
        self.report = StageReport()
        self.modes = {
            _rel(self.bundle, os.fspath(p)): m for p, m in modes.items() if _under(os.fspath(p), self.bundle)
        }
        self.kept_trees: set[str] = set()
        self.root_files_kept = False
        self.linked: set[str] = set()  # files with other hard links
        self.pinned: set[str] = set()  # the current entry's kept trees, with the other entries' sources
        self.above: set[str] = set()  # every folder holding something pinned or linked
        self.moved: dict[str, str] = {}  # bundle-relative source -> release-relative destination
        self.folder_modes: list[tuple[str, int]] = []
        self.cancel: threading.Event | None = None

    def keep(self, locations: Iterable[str]) -> None:
        """Keep each bundle-relative ``location``'s folder, and that of the file it resolves to."""
        for location in locations:
            rel = os.path.normpath(location.lstrip("/"))
            real = os.path.realpath(os.path.join(self.bundle, rel))
            for path in (rel, _rel(self.bundle, real) if _under(real, self.bundle) else rel):
                parent = path.rpartition("/")[0]
                if parent:
                    self.kept_trees.add(parent)
                else:
                    self.root_files_kept = True

    def stage(self, mappings: Sequence[FileMapping], others: tuple[FileMapping, ...]) -> None:
        sources = [self._source(m) for m in mappings]
        other_sources = {self._source(m) for m in others}
        if not self.copy_only:
            for source in sources:
                self._find_links(source)
        for i, (mapping, source) in enumerate(zip(mappings, sources, strict=True)):
            self.pinned = set(self.kept_trees) | other_sources | {s for j, s in enumerate(sources) if j != i}
            self.above = {a for p in self.pinned | self.linked for a in _ancestors(p)}
            path = os.path.normpath(mapping.destination)
            if path != self.destination and not _under(path, self.destination):
                raise InstallError(
                    f"files: destination {mapping.destination} is not {self.destination} or in it"
                )
            target = _rel(self.destination, path)
            self._make_dirs(target)
            if self._is_dir(source):
                self._merge(source, target)
            else:
                self._place(source, _join(target, source.rpartition("/")[2]))
        self._restore_modes()
        for rel, mode in reversed(self.folder_modes):
            os.chmod(rel, mode, dir_fd=self.release_fd)

    def _source(self, mapping: FileMapping) -> str:
        rel = os.path.normpath(mapping.source.strip("/")) if mapping.source.strip("/") else ""
        if rel == ".." or rel.startswith("../") or not os.path.lexists(self._abs(rel)):
            raise InstallError(f"files source {mapping.source!r} is not in the bundle ({self.bundle})")
        return rel

    def _abs(self, rel: str) -> str:
        return f"{self.bundle}/{rel}" if rel else self.bundle

    def _is_dir(self, rel: str) -> bool:
        return stat.S_ISDIR(os.lstat(self._abs(rel)).st_mode)

    def _find_links(self, source: str) -> None:
        """Record the files under ``source`` that have other hard links (iterative: deep trees are fine)."""
        todo = [source]
        while todo:
            folder = todo.pop()
            if not self._is_dir(folder):
                if os.lstat(self._abs(folder)).st_nlink > 1:
                    self.linked.add(folder)
                continue
            with os.scandir(self._abs(folder)) as entries:
                for entry in entries:
                    rel = _join(folder, entry.name)
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(rel)
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_nlink > 1
                    ):
                        self.linked.add(rel)

    def _decide(self, rel: str, is_dir: bool) -> str:
        """ "move" the entry, "copy" it whole, or "split" (a folder: create it, then decide per entry)."""
        if self.copy_only or rel in self.linked or any(a in self.pinned for a in (rel, *_ancestors(rel))):
            return "copy"
        if not is_dir and "/" not in rel and self.root_files_kept:
            return "copy"
        return "split" if is_dir and rel in self.above else "move"

    def _merge(self, source: str, target: str) -> None:
        """Put the contents of the bundle folder ``source`` into the release folder ``target``."""
        with os.scandir(self._abs(source)) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            self._place(_join(source, name), _join(target, name))

    def _place(self, source: str, target: str) -> None:
        checkpoint(self.cancel)
        st = os.lstat(self._abs(source))
        is_dir = stat.S_ISDIR(st.st_mode)
        existing = self._lstat(target)
        if existing is not None:
            if is_dir and stat.S_ISDIR(existing.st_mode):
                self._merge(source, target)  # two entries fill one folder, as Install allows
                return
            raise InstallError(
                f"files: two sources go to the same destination {self._shown(target)} "
                f"(bundle entry {source!r} and an earlier one)"
            )
        decision = self._decide(source, is_dir)
        if decision == "move" and self._rename(source, target):
            return
        if decision == "split":
            self._mkdir(target, stat.S_IMODE(st.st_mode) & ~0o022)
            self._merge(source, target)
        elif is_dir:
            self._copy_tree(source, target)
        else:
            self._copy_entry(source, target, st)

    def _rename(self, source: str, target: str) -> bool:
        try:
            os.rename(self._abs(source), target, dst_dir_fd=self.release_fd)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self.copy_only = True  # a mount between the bundle and the release: copy from now on
            return False
        self.moved[source] = target
        self.report.moved.append(source)
        return True

    def _copy_tree(self, source: str, target: str) -> None:
        todo = [(source, target)]
        while todo:
            folder, dest = todo.pop()
            self._mkdir(dest, stat.S_IMODE(os.lstat(self._abs(folder)).st_mode) & ~0o022)
            with os.scandir(self._abs(folder)) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append((_join(folder, entry.name), _join(dest, entry.name)))
                    else:
                        rel = _join(folder, entry.name)
                        self._copy_entry(rel, _join(dest, entry.name), entry.stat(follow_symlinks=False))

    def _copy_entry(self, source: str, target: str, st: os.stat_result) -> None:
        checkpoint(self.cancel)
        path = self._abs(source)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), target, dir_fd=self.release_fd)
        elif stat.S_ISREG(st.st_mode):
            mode = self.modes.get(source, stat.S_IMODE(st.st_mode))
            copy_file(path, self.release_fd, target, mode)
        else:
            raise InstallError(f"bundle entry {source!r} is neither a file, a folder nor a symbolic link")
        self.report.copied += 1

    def _make_dirs(self, target: str) -> None:
        """Create ``target`` and its parents in the release (0755) where missing."""
        done = ""
        for part in [p for p in target.split("/") if p]:
            done = _join(done, part)
            existing = self._lstat(done)
            if existing is None:
                self._mkdir(done, RELEASE_DIR_MODE)
            elif not stat.S_ISDIR(existing.st_mode):
                raise InstallError(
                    f"files: {self._shown(done)} is a file in the release but a folder is needed"
                )

    def _mkdir(self, target: str, mode: int) -> None:
        os.mkdir(target, 0o700, dir_fd=self.release_fd)
        self.folder_modes.append((target, mode))

    def _lstat(self, target: str) -> os.stat_result | None:
        try:
            return os.stat(target or ".", dir_fd=self.release_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _restore_modes(self) -> None:
        """Moved files get back the modes unpacking narrowed (folders keep theirs, narrowed)."""
        for rel, mode in self.modes.items():
            moved_from = next((a for a in (rel, *_ancestors(rel)) if a in self.moved), None)
            if moved_from is None:
                continue
            target = self.moved[moved_from] + rel[len(moved_from) :]
            st = self._lstat(target)
            if st is not None and stat.S_ISREG(st.st_mode):
                os.chmod(target, mode, dir_fd=self.release_fd)  # a file of ours: nobody else writes here

    def _shown(self, target: str) -> str:
        return f"{self.release}/{target}" if target else self.release


def _rel(root: str, path: str) -> str:
    """``path`` relative to ``root`` ("" for root itself); both normalized absolute paths."""
    return "" if path == root else path[len(root.rstrip("/")) + 1 :]


def _under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _ancestors(rel: str) -> list[str]:
    """The folders holding ``rel``, nearest first (the bundle root "" last)."""
    out: list[str] = []
    while rel:
        rel = rel.rpartition("/")[0]
        out.append(rel)
    return out
