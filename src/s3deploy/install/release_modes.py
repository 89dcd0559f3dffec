"""Release folders that only root can change, and the modes the bundle gave their entries.

A release folder holds the scripts the next deployment runs as root (the previous release's
ApplicationStop, a rollback's hooks). A bundle may carry a 0777 folder or a 0666 file; kept as is under
the state directory, any local user could rewrite them. So right after unpacking, ``restrict_release``
strips group and other write from every entry (links are never followed), recording first the original
modes of the entries it narrows in the release's ``modes.json`` (``{"version": 1, "modes": {relative
path: mode}}``, 0600). Install reads that file (``read_release_modes``), so installed files still get the
modes the bundle gives them; a rollback from disk reads the same file.

Its hooks run as root with the release as their working folder and may open it up again (``chmod -R
a+w .``, a 0777 cache folder): from then on anyone may have changed its scripts. ``check_release`` finds
that before a release is used again (releases.py: the previous release's ApplicationStop, a rollback),
and refuses it rather than run what it holds as root.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from s3deploy.common.files import atomic_write
from s3deploy.errors import BundleError, InstallError
from s3deploy.install.dirs import DIR_FLAGS, open_entry
from s3deploy.state.layout import release_modes_file

logger = logging.getLogger(__name__)

#: Group and other write: what no entry under the state directory may keep.
SHARED_WRITE = 0o022
_VERSION = 1


def restrict_release(bundle_root: Path) -> int:
    """Remove group/other write from ``bundle_root`` and everything in it and record the modes narrowed
    in the release's modes file (``release_modes_file``); returns how many entries were narrowed.
    Raises BundleError for an entry the agent does not own (something else wrote into the release while
    it was unpacked)."""
    owner = os.geteuid()
    narrowed: dict[str, int] = {}
    by_inode: dict[tuple[int, int], int] = {}  # hard links share one mode: record the original for each name
    try:
        for dir_fd, name, rel in _entries(bundle_root):
            _narrow(dir_fd, name, rel, owner, narrowed, by_inode)
    except OSError as e:
        raise BundleError(f"cannot remove group/other write from the release at {bundle_root}: {e}") from e
    modes_file = release_modes_file(bundle_root)
    try:
        atomic_write(modes_file, json.dumps({"version": _VERSION, "modes": narrowed}, indent=0))
    except OSError as e:
        raise BundleError(f"cannot write {modes_file}: {e}") from e
    if narrowed:
        logger.info(
            "release: group/other write removed from %d entries (their modes are kept for Install)",
            len(narrowed),
        )
    return len(narrowed)


def check_release(bundle_root: Path) -> None:
    """Raise BundleError naming the first file or folder of the release that another user owns or that
    group or others may write (a hook opened it after it was unpacked): what it holds may have been
    changed by anyone, so nothing of it may run as root."""
    owner = os.geteuid()
    try:
        for dir_fd, name, rel in _entries(bundle_root):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue  # a link's mode means nothing; a socket or fifo is not run
            if st.st_uid != owner or st.st_mode & SHARED_WRITE:
                raise BundleError(
                    f"release entry {rel!r} is owned by uid {st.st_uid} with mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: writable by others since it was unpacked (a hook "
                    "opened it?), so anyone may have changed what it holds; nothing of it runs again"
                )
    except OSError as e:
        raise BundleError(f"cannot check the release at {bundle_root}: {e}") from e


def _entries(bundle_root: Path) -> Iterator[tuple[int, str, str]]:
    """(folder descriptor, name, path relative to the bundle) of the bundle root and everything in it,
    top down, no link followed."""
    root = os.open(bundle_root, DIR_FLAGS)
    try:
        yield root, ".", "."
    finally:
        os.close(root)
    for top, dirnames, filenames, top_fd in os.fwalk(bundle_root, follow_symlinks=False):
        rel_top = os.path.relpath(top, bundle_root)
        for name in dirnames + filenames:
            yield top_fd, name, name if rel_top == "." else f"{rel_top}/{name}"


def _narrow(
    dir_fd: int,
    name: str,
    rel: str,
    owner: int,
    narrowed: dict[str, int],
    by_inode: dict[tuple[int, int], int],
) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_uid != owner:
        raise BundleError(
            f"release entry {rel!r} is owned by uid {st.st_uid}, not by the agent: something else wrote into "
            "the release folder while it was unpacked; refusing it"
        )
    if stat.S_ISLNK(st.st_mode):
        return  # a link's own mode means nothing
    mode = stat.S_IMODE(st.st_mode)
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        mode = by_inode.setdefault((st.st_dev, st.st_ino), mode)
    if mode & SHARED_WRITE:
        narrowed[rel] = mode
    if st.st_mode & SHARED_WRITE:
        try:
            fd, _ = open_entry(name, dir_fd, rel)
        except InstallError as e:
            raise BundleError(f"release entry {rel!r}: {e}") from e
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~SHARED_WRITE)
        finally:
            os.close(fd)


def read_release_modes(bundle_root: Path) -> dict[Path, int]:
    """The modes the bundle gave the entries that ``restrict_release`` narrowed, by their path; empty
    when the release has no modes file (a bundle that was never restricted)."""
    path = release_modes_file(bundle_root)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InstallError(f"{path} is unreadable ({e}); redeploy the revision to rebuild the release") from e
    modes = doc.get("modes") if isinstance(doc, dict) else None
    if not isinstance(modes, dict) or not all(
        isinstance(m, int) and 0 <= m <= 0o7777 for m in modes.values()
    ):
        raise InstallError(
            f'{path}: expected {{"modes": {{path: mode}}}}; redeploy the revision to rebuild the release'
        )
    return {bundle_root / rel if rel != "." else bundle_root: mode for rel, mode in modes.items()}
