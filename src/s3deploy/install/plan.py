"""Planning an Install: everything it will do, decided and checked before anything on disk changes.

The plan maps the bundle onto the destinations as CodeDeploy does (a folder source copies its contents
into the destination, a file source lands inside the destination folder, missing folders are created),
and reads the destinations through ``dirs.Dirs`` (no planted link is followed; one that would have to be
is refused here, naming it). It sees the destination as it will be once the previous Install's files are
removed, so every conflict is found first: a file this section did not install (DISALLOW), a file where a
folder is needed, and a folder where a file is needed, including a folder of the previous release that
still holds someone else's files (its files would be removed before the copy failed).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from s3deploy.appspec import FileMapping
from s3deploy.errors import InstallError
from s3deploy.install.cancel import checkpoint
from s3deploy.install.cleanup import Installed
from s3deploy.install.dirs import Dirs, split

logger = logging.getLogger(__name__)

MAX_LISTED_CONFLICTS = 10
TMP_SUFFIX = ".s3deploy-tmp"


@dataclass
class Plan:
    """What an Install does: ``dirs`` parents first, each "create" (this Install makes it) or "exists"."""

    dirs: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # destination -> source in the bundle
    links: set[str] = field(default_factory=set)  # planned files that are symlinks (permissions skip them)
    owned_dirs: list[str] = field(default_factory=list)  # folders s3deploy creates, or created before
    roots: list[str] = field(default_factory=list)  # the destinations of ``files``
    retained: list[str] = field(default_factory=list)
    adopted: set[str] = field(default_factory=set)  # replaced under OVERWRITE, not installed by this section
    conflicts: list[str] = field(default_factory=list)

    @property
    def installed(self) -> Installed:
        """The cleanup list once this plan is carried out."""
        return Installed(list(self.files), list(self.owned_dirs), list(self.roots))


def make_plan(
    bundle_root: Path,
    mappings: tuple[FileMapping, ...],
    behavior: str,
    previous: Installed,
    dirs: Dirs,
    cancel: threading.Event | None = None,
) -> Plan:
    """The plan of ``mappings``; raises InstallError for a mistake of the appspec or an unsafe link, and
    returns conflicts in ``plan.conflicts`` (``conflict_message`` words them). ``cancel`` is checked
    before each folder of the bundle is read."""
    planner = _Planner(bundle_root, behavior, previous, dirs, cancel)
    for mapping in mappings:
        planner.add(mapping)
    plan = planner.plan
    clash = next(
        (f for f in plan.files if f.endswith(TMP_SUFFIX) and f[: -len(TMP_SUFFIX)] in plan.files), None
    )
    if clash is not None:
        raise InstallError(
            f"files: {clash} would be overwritten by the temporary copy of {clash[: -len(TMP_SUFFIX)]}; "
            f"rename it (names ending in {TMP_SUFFIX} are the installer's own)"
        )
    return plan


def conflict_message(conflicts: list[str]) -> str:
    shown = "\n  ".join(conflicts[:MAX_LISTED_CONFLICTS])
    more = len(conflicts) - MAX_LISTED_CONFLICTS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return (
        f"Install: {len(conflicts)} file(s) already exist that this section did not install "
        f"(file_exists_behavior DISALLOW, or a file and a folder in each other's place); nothing was "
        f"changed:\n  {shown}{tail}\n"
        "Remove them, or set file_exists_behavior: OVERWRITE or RETAIN in the appspec."
    )


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


class _Planner:
    def __init__(
        self,
        bundle_root: Path,
        behavior: str,
        previous: Installed,
        dirs: Dirs,
        cancel: threading.Event | None,
    ) -> None:
        self.bundle_root = bundle_root
        self.cancel = cancel
        self.behavior = behavior
        self.prev_files = set(previous.files)
        self.prev_dirs = set(previous.dirs)
        self.dirs = dirs
        self.plan = Plan()
        self._listings: dict[str, dict[str, str] | None] = {}

    def add(self, mapping: FileMapping) -> None:
        source = mapping.source_in(self.bundle_root)
        destination = os.path.normpath(mapping.destination)
        if not os.path.lexists(source):
            raise InstallError(f"files source {mapping.source!r} is not in the bundle ({self.bundle_root})")
        self.plan.roots.append(destination)
        parts = [p for p in destination.split("/") if p]
        for i in range(1, len(parts) + 1):  # the destination and its parents, top down
            self._want_dir("/" + "/".join(parts[:i]))
        if source.is_dir() and not source.is_symlink():
            self._walk(source, destination)
        else:
            self._want_file(source, _join(destination, source.name), source.is_symlink())

    def _walk(self, source_root: Path, dest_root: str) -> None:
        """Plan the contents of ``source_root`` under ``dest_root``, parents first; links are entries."""
        stack = [(source_root, dest_root)]
        while stack:
            source_dir, dest_dir = stack.pop()
            checkpoint(self.cancel)
            try:
                with os.scandir(source_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise InstallError(f"cannot read {source_dir} in the bundle: {e}") from e
            subdirs = []
            for entry in entries:
                dest = _join(dest_dir, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    self._want_dir(dest)
                    subdirs.append((Path(entry.path), dest))
                else:
                    self._want_file(Path(entry.path), dest, entry.is_symlink())
            self._listings.pop(dest_dir, None)  # its entries are planned: free the memory
            stack.extend(reversed(subdirs))

    def _kind(self, path: str) -> str:
        """What is at ``path`` now, as the plan sees it ("missing" below a folder the plan creates)."""
        parent, name = split(path)
        if self.plan.dirs.get(parent, "exists") != "exists":
            return "missing"
        if parent not in self._listings:
            try:
                self._listings[parent] = self.dirs.listing(parent)
            except OSError as e:
                raise InstallError(f"cannot read folder {parent}: {e}") from e
        listing = self._listings[parent]
        return "missing" if listing is None else listing.get(name, "missing")

    def _want_dir(self, path: str) -> None:
        plan = self.plan
        if path in plan.files:
            raise InstallError(
                f"files: {path} is both a folder and a file ({plan.files[path]}) in the appspec"
            )
        if path in plan.dirs:
            return
        kind = self._kind(path)
        if kind == "dir":
            plan.dirs[path] = "exists"
            if path in self.prev_dirs:
                plan.owned_dirs.append(path)  # ours from last time: keep counting it as created by s3deploy
        elif kind == "missing" or path in self.prev_files:  # a file of ours there is removed first
            plan.dirs[path] = "create"
            plan.owned_dirs.append(path)
        elif kind == "link":
            plan.dirs[path] = self._linked_dir(path)
        else:
            plan.dirs[path] = "blocked"
            plan.conflicts.append(f"{path} (a file is where a folder is needed)")

    def _linked_dir(self, path: str) -> str:
        """A link where a folder is needed: followed if the link rule allows (InstallError if not)."""
        try:
            self.dirs.open(path)
            return "exists"
        except (FileNotFoundError, NotADirectoryError):
            self.plan.conflicts.append(
                f"{path} (a link to something that is not a folder is where a folder is needed)"
            )
            return "blocked"
        except OSError as e:
            raise InstallError(f"cannot open folder {path}: {e}") from e

    def _want_file(self, source: Path, dest: str, is_link: bool) -> None:
        plan = self.plan
        if dest in plan.files or dest in plan.dirs:
            other = plan.files.get(dest, "a folder")
            raise InstallError(f"files: two sources ({source} and {other}) go to the same destination {dest}")
        plan.files[dest] = source
        if is_link:
            plan.links.add(dest)
        kind = self._kind(dest)
        if kind == "missing":
            return
        if kind == "dir":
            self._file_over_folder(dest)
        elif dest in self.prev_files:
            return  # ours: replaced by the copy
        elif self.behavior == "DISALLOW":
            plan.conflicts.append(dest)
        elif self.behavior == "RETAIN":
            del plan.files[dest]
            plan.links.discard(dest)
            plan.retained.append(dest)
            logger.info("keeping %s: it exists and file_exists_behavior is RETAIN", dest)
        else:
            plan.adopted.add(dest)
            logger.info("replacing %s: it exists and file_exists_behavior is OVERWRITE", dest)

    def _file_over_folder(self, dest: str) -> None:
        """A folder where the new release has a file: fine only if it is the previous release's and holds
        nothing else (the cleanup then removes it before the copy)."""
        if dest not in self.prev_dirs:
            self.plan.conflicts.append(f"{dest} (a folder is where a file is needed)")
            return
        foreign = self._foreign_inside(dest)
        if foreign is not None:
            self.plan.conflicts.append(
                f"{dest} (a folder of the previous release is where a file is needed, and it holds "
                f"{foreign}, which this section did not install)"
            )

    def _foreign_inside(self, folder: str) -> str | None:
        """The first entry under ``folder`` that the previous Install did not create, if any."""
        pending = [folder]
        while pending:
            current = pending.pop()
            try:
                listing = self.dirs.listing(current) or {}
            except OSError as e:
                raise InstallError(f"cannot read folder {current}: {e}") from e
            for name, kind in sorted(listing.items()):
                path = _join(current, name)
                if kind == "dir" and path in self.prev_dirs:
                    pending.append(path)
                elif kind == "dir" or path not in self.prev_files:
                    return path
        return None
