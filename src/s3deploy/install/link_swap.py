"""Putting a link in D's place, and the moves around it inside the releases folder.

Every new link is made inside the releases folder (a ``.link-`` name) and moved into D's place from there,
so a crash leaves nothing in D's parent but D. Where D is something s3deploy did not make, the move is
one ``renameat2(RENAME_EXCHANGE)``: D's former contents land in the releases folder in the same step and
get a ``replaced-<UTC time>`` name; nothing there is ever deleted. Each change is synced to disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable

from s3deploy.errors import InstallError
from s3deploy.install.dirs import DIR_FLAGS
from s3deploy.install.releases_folder import (
    ASIDE_PREFIX,
    BRIDGE_DIR,
    LINK_PREFIX,
    RELEASE_DIR_MODE,
    Place,
    is_release_name,
    remove_tree,
    unique,
)
from s3deploy.install.renameat2 import RENAME_EXCHANGE, RENAME_NOREPLACE, UNSUPPORTED, renameat2

logger = logging.getLogger(__name__)


def put_link(place: Place, release: str) -> tuple[str, str | None]:
    """Make D a link to ``release``; returns what D was: ("ours", the release it led to), ("missing",
    None), or ("aside", the name its former contents now have in the releases folder)."""
    root_fd = place.need_root()
    tidy(place)
    kind, current = place.read_destination()
    link = unique(LINK_PREFIX)
    os.symlink(place.link_target(release), link, dir_fd=root_fd)
    if kind == "ours" and current:
        _move_link(
            place, link, lambda: os.rename(link, place.name, src_dir_fd=root_fd, dst_dir_fd=place.parent_fd)
        )
        result: tuple[str, str | None] = ("ours", current)
    elif kind == "missing":
        _move_link(place, link, lambda: rename_noreplace(root_fd, link, place.parent_fd, place.name))
        result = ("missing", None)
    else:
        _move_link(place, link, lambda: _exchange(place, link))
        aside = move_aside(place, link)
        was = {"folder": "a real folder", "link": f"a link to {current}"}.get(kind, "a file")
        logger.warning(
            "activation: %s was %s; it is kept as %s (delete it once you no longer need it)",
            place.destination,
            was,
            place.release_path(aside),
        )
        result = ("aside", aside)
    sync(place.parent_fd)
    sync(root_fd)
    return result


def take_link_away(place: Place) -> None:
    """Remove D when it is a link of ours (moved into the releases folder first; anything else kept)."""
    link = unique(LINK_PREFIX)
    rename_noreplace(place.parent_fd, place.name, place.need_root(), link)
    _dispose(place, link)
    sync(place.parent_fd)


def _move_link(place: Place, link: str, rename: Callable[[], None]) -> None:
    """Run ``rename`` (which moves the new link ``link`` into D's place); on failure remove the link."""
    try:
        rename()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link, dir_fd=place.need_root())
        raise


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    try:
        renameat2(src_fd, src, dst_fd, dst, RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in UNSUPPORTED - {errno.EXDEV}:
            raise
        if exists(dst_fd, dst):
            raise FileExistsError(errno.EEXIST, "exists", dst) from e
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _exchange(place: Place, link: str) -> None:
    """Swap the new link ``link`` (in the releases folder) with D; InstallError when the filesystem cannot."""
    try:
        renameat2(place.need_root(), link, place.parent_fd, place.name, RENAME_EXCHANGE)
    except OSError as e:
        raise _exchange_error(place.destination, e) from e


def exchange_back(place: Place, name: str, *, bridge: bool = False) -> None:
    """Swap the folder ``name`` of the releases folder with D (a link of ours), then delete that link.

    With ``bridge`` (``name`` is the release D links to) the link is kept and made to lead to D from where
    it lands: a reader that read D's link text just before the swap still finds the folder (``prune``
    removes the bridge later).
    """
    root_fd = place.need_root()
    if bridge:
        _build_bridge(place, name)
    try:
        renameat2(root_fd, name, place.parent_fd, place.name, RENAME_EXCHANGE)
    except OSError as e:
        raise _exchange_error(place.destination, e) from e
    if not bridge:
        _dispose(place, name)  # the link D was (rename(2) moved the link itself, nothing behind it)
    sync(place.parent_fd)
    sync(root_fd)


def _build_bridge(place: Place, name: str) -> None:
    """After the exchange D's old link lies at ``name`` in the releases folder, its text
    ``.<D>.s3deploy-releases/<name>`` now read from there: ``.<D>.s3deploy-releases -> .bridge`` and
    ``.bridge/<name> -> ../../<D>`` make that text lead to D, the folder, from the first instant."""
    root_fd = place.need_root()
    with contextlib.suppress(FileExistsError):
        os.mkdir(BRIDGE_DIR, RELEASE_DIR_MODE, dir_fd=root_fd)
    bridge_fd = os.open(BRIDGE_DIR, DIR_FLAGS, dir_fd=root_fd)
    try:
        _replace_link(bridge_fd, name, f"../../{place.name}")
    finally:
        os.close(bridge_fd)
    _replace_link(root_fd, place.root_name, BRIDGE_DIR)


def _replace_link(dir_fd: int, name: str, text: str) -> None:
    link = unique(LINK_PREFIX)
    os.symlink(text, link, dir_fd=dir_fd)
    os.replace(link, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove_bridges(place: Place) -> None:
    """Delete what ``exchange_back(bridge=True)`` left: D's old links, then the bridge itself."""
    root_fd = place.need_root()
    with os.scandir(root_fd) as entries:
        links = [e.name for e in entries if e.is_symlink()]
    for name in links:
        if os.readlink(name, dir_fd=root_fd) in (place.link_target(name), BRIDGE_DIR):
            os.unlink(name, dir_fd=root_fd)
    if exists(root_fd, BRIDGE_DIR):
        remove_tree(root_fd, BRIDGE_DIR, place.root)


def _exchange_error(destination: str, e: OSError) -> InstallError:
    if e.errno in UNSUPPORTED:
        return InstallError(
            f"{destination}: the filesystem cannot swap it with a link in one step (renameat2 "
            f"RENAME_EXCHANGE: {e.strerror}; it needs Linux 3.15 or later and ext4, xfs, btrfs or tmpfs, "
            "not an overlay's lower layer, NFS or FUSE); move the folder away yourself "
            f"(mv {destination} {destination}.old) and deploy again, or keep activation = copy"
        )
    if e.errno == errno.EBUSY:
        return InstallError(f"{destination} is a mount point; activation needs a folder it can replace")
    return InstallError(f"{destination}: cannot swap it with the release link: {e.strerror}")


def move_aside(place: Place, name: str) -> str:
    """Give D's former contents (now ``name`` in the releases folder) a ``replaced-<UTC time>`` name."""
    root_fd = place.need_root()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        aside = f"{ASIDE_PREFIX}{stamp}" + (f"-{n}" if n > 1 else "")
        try:
            rename_noreplace(root_fd, name, root_fd, aside)
            return aside
        except FileExistsError:
            continue
    raise InstallError(f"{place.root}: too many folders named {ASIDE_PREFIX}{stamp}*")


def tidy(place: Place) -> None:
    """Finish what a crash interrupted: the ``.link-`` entries left in the releases folder."""
    with os.scandir(place.need_root()) as entries:
        leftovers = [e.name for e in entries if e.name.startswith(LINK_PREFIX)]
    for name in leftovers:
        _dispose(place, name)


def _dispose(place: Place, name: str) -> None:
    """Unlink ``name`` of the releases folder when it is a link of ours; anything else there (D's former
    contents exchanged just before a crash, something swapped in for D) is moved aside, never deleted."""
    root_fd = place.need_root()
    try:
        target = os.readlink(name, dir_fd=root_fd)
    except OSError:
        target = ""
    head, _, release = target.partition("/")
    if head == place.root_name and is_release_name(release):
        os.unlink(name, dir_fd=root_fd)  # the link itself: nothing behind it is touched
    else:
        aside = move_aside(place, name)
        logger.warning("activation: %s was not a link of s3deploy's; kept as %s", place.destination, aside)


def exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def sync(fd: int) -> None:
    """Make a rename in the folder ``fd`` durable (the new link survives a power cut)."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise InstallError(f"cannot sync a folder after switching: {e.strerror}") from e
