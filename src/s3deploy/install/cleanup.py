"""The cleanup list: what a section's last Install put on disk, and removing it before the next one.

``installed/<section>.list`` (``StateLayout.cleanup_list``) holds, as JSON,
``{"version": 2, "files": [absolute paths], "dirs": [folders s3deploy created], "roots": [destinations]}``.
JSON rather than CodeDeploy's one-path-a-line text, so any path (even one with a newline) round-trips.
``roots`` (new in version 2; a version 1 list has none) are the ``files`` destinations of that Install:
inside them no link is ever followed (``dirs.Dirs``).

The lists of all sections live in one folder. A file that section B replaces under OVERWRITE moves from
the list of the section that installed it to B's (``take_over``): from then on B's next Install removes
it and the former owner's does not. A file kept under RETAIN stays with whoever installed it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from s3deploy.common.files import atomic_write
from s3deploy.errors import InstallError
from s3deploy.install.cancel import checkpoint
from s3deploy.install.dirs import Dirs, split

logger = logging.getLogger(__name__)

_LIST_VERSION = 2


@dataclass
class Installed:
    """What one cleanup list holds."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)

    def union(self, other: Installed) -> Installed:
        """Both lists in one (what a crash in the middle of an Install must still cover)."""
        return Installed(
            *(
                list(dict.fromkeys(mine + theirs))
                for mine, theirs in zip(self._lists(), other._lists(), strict=True)
            )
        )

    def _lists(self) -> tuple[list[str], list[str], list[str]]:
        return self.files, self.dirs, self.roots


def read_list(path: Path) -> Installed:
    """The cleanup list at ``path``; a missing list is empty."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Installed()
    except (OSError, ValueError) as e:
        raise InstallError(
            f"cleanup list {path} is unreadable ({e}); delete it to start over "
            "(the files it listed will then count as already present)"
        ) from e
    lists: list[list[str]] = []
    for key in ("files", "dirs", "roots"):
        value = doc.get(key, [] if key == "roots" else None) if isinstance(doc, dict) else None
        if not isinstance(value, list) or not all(isinstance(p, str) and p.startswith("/") for p in value):
            raise InstallError(
                f'cleanup list {path}: expected {{"files": [...], "dirs": [...], "roots": [...]}} '
                "of absolute paths"
            )
        lists.append(value)
    return Installed(*lists)


def write_list(path: Path, installed: Installed) -> None:
    """Replace the cleanup list atomically (tmp + fsync + rename + fsync of the folder)."""
    doc = {
        "version": _LIST_VERSION,
        "files": installed.files,
        "dirs": installed.dirs,
        "roots": installed.roots,
    }
    try:
        atomic_write(path, json.dumps(doc, indent=0))
    except OSError as e:
        raise InstallError(f"cannot write cleanup list {path}: {e}") from e


def take_over(cleanup_list: Path, adopted: set[str]) -> None:
    """Remove ``adopted`` (files this section now replaces under OVERWRITE) from the other sections'
    lists next to ``cleanup_list``. Sections that share a file share a destination, so their Installs
    never run at once (destination locks): no other Install changes those lists meanwhile."""
    if not adopted or not cleanup_list.parent.is_dir():
        return
    for other in sorted(cleanup_list.parent.iterdir()):
        if other == cleanup_list or other.suffix != cleanup_list.suffix or other.name.startswith("."):
            continue
        try:
            theirs = read_list(other)
        except InstallError as e:
            logger.warning("not checking %s for files taken over: %s", other, e)
            continue
        moved = adopted.intersection(theirs.files)
        if moved:
            theirs.files = [p for p in theirs.files if p not in moved]
            write_list(other, theirs)
            logger.info(
                "%d file(s) installed by %s now belong to this section (OVERWRITE)", len(moved), other.name
            )


def check_reachable(previous: Installed, dirs: Dirs) -> None:
    """Open the folder of every entry of the previous list under the link rule, so a planted link fails
    the Install before anything is removed (InstallError naming it)."""
    for parent in sorted({split(p)[0] for p in previous.files + previous.dirs}):
        try:
            dirs.open(parent)
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone already: nothing of it to remove
        except OSError as e:
            raise InstallError(f"cannot open folder {parent} of the previous release: {e}") from e


def remove_previous(
    previous: Installed, keep_files: set[str], keep_dirs: set[str], dirs: Dirs, cancel: threading.Event | None
) -> None:
    """Remove the previous Install's files that the new one does not replace, then its folders that are
    then empty (deepest first). Only entries themselves are removed; no link is followed."""
    removed = 0
    for path in sorted(set(previous.files) - keep_files):  # replaced ones: atomically, by the copy
        checkpoint(cancel)
        parent, name = split(path)
        try:
            fd = dirs.open(parent)
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                logger.warning("not removing %s: listed as a file but it is now a folder", path)
                continue
            os.unlink(name, dir_fd=fd)
            removed += 1
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise InstallError(f"cannot remove previously installed {path}: {e}") from e
    for path in sorted(set(previous.dirs) - keep_dirs, key=lambda p: p.count("/"), reverse=True):
        checkpoint(cancel)
        parent, name = split(path)
        try:
            fd = dirs.open(parent)
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                os.rmdir(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise InstallError(f"cannot remove previously created folder {path}: {e}") from e
            logger.info("keeping folder %s: it holds files this section did not install", path)
    logger.debug("removed %d files of the previous install", removed)
