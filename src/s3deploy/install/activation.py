"""Atomic activation (SPEC §12): each release in its own folder, the destination a link switched in one step.

With ``activation = symlink`` a deployment does not copy into the live folder D. It prepares a fresh
release folder beside D (``prepare_release``), stages the bundle's files for D into it
(``release_stage.stage_release``), applies permissions there, then ``switch`` makes D a symbolic link to
it with one ``rename(2)`` of a new link over the old one: a reader of D sees the whole old release or the
whole new one, never a mix and never nothing. The first switch over a real folder D swaps it with the link
in one ``renameat2(RENAME_EXCHANGE)`` and keeps it, as ``replaced-<time>`` in the releases folder. A
rollback is ``switch_back`` (or a ``switch`` to an older release): no copy. ``prune`` deletes old
releases, never the live one, never one the caller keeps, never a folder moved aside.
``releases_folder`` describes the folder's layout and how it is reached without following a planted link.

The caller serializes every call for one destination (the section's destination lock). Every error is an
InstallError naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from s3deploy.errors import InstallError
from s3deploy.install.releases_folder import (
    ASIDE_PREFIX,
    LINK_PREFIX,
    PRUNE_PREFIX,
    RELEASE_DIR_MODE,
    MissingFolder,
    Place,
    is_release_name,
    normalized,
    remove_tree,
    root_name,
    unique,
)
from s3deploy.install.renameat2 import RENAME_EXCHANGE, RENAME_NOREPLACE, UNSUPPORTED, renameat2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Previous:
    """What D led to before a switch, for ``switch_back``.

    ``release_dir``: the folder D linked to, or D's former real folder now moved aside (``moved_aside``);
    None when D did not exist.
    """

    destination: Path
    release_dir: Path | None
    moved_aside: bool = False


def release_root_for(destination: Path | str) -> Path:
    """The folder holding D's releases: ``<parent>/.<name>.s3deploy-releases`` (not created here)."""
    path = normalized(destination)
    return Path(path).parent / root_name(path)


def prepare_release(destination: Path | str, deployment_id: str) -> Path:
    """Create the empty release folder of ``deployment_id`` for D (0755, the agent's) and return its path.

    Creates D's parent folders and the releases folder when missing. A folder left by an interrupted
    attempt with the same id is deleted first; the live release is refused.
    """
    if not is_release_name(deployment_id) or deployment_id.startswith(ASIDE_PREFIX):
        raise InstallError(f"release name {deployment_id!r}: expected a deployment id such as d-7Q2K9ZP1A")
    with (
        Place(destination, create=True) as place,
        _failing(f"preparing release {deployment_id} of {place.destination}"),
    ):
        root_fd = place.need_root()
        if place.read_destination() == ("ours", deployment_id):
            raise InstallError(
                f"{place.release_path(deployment_id)} is the live release of {place.destination}"
            )
        if _exists(root_fd, deployment_id):
            doomed = unique(PRUNE_PREFIX)
            os.rename(deployment_id, doomed, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            remove_tree(root_fd, doomed, place.root)
            logger.info(
                "activation: deleted %s left by an interrupted deployment", place.release_path(deployment_id)
            )
        try:
            os.mkdir(deployment_id, RELEASE_DIR_MODE, dir_fd=root_fd)
            os.chmod(deployment_id, RELEASE_DIR_MODE, dir_fd=root_fd)
        except OSError as e:
            raise InstallError(
                f"cannot create release folder {place.release_path(deployment_id)}: {e.strerror}"
            ) from e
        _sync(root_fd)
        return place.release_path(deployment_id)


def live_release(destination: Path | str) -> Path | None:
    """The release folder D links to now; None when D is not such a link (missing, a real folder...)."""
    try:
        with Place(destination, create=False) as place:
            kind, release = place.read_destination()
            return place.release_path(release) if kind == "ours" and release else None
    except MissingFolder:
        return None


def switch(destination: Path | str, release_dir: Path | str) -> Previous:
    """Make D a link to ``release_dir`` (a folder ``prepare_release`` made) in one atomic step.

    D a link of ours (or missing): a new link is renamed over it. D anything else (a real folder, a file,
    a link s3deploy did not make): it is exchanged with the new link in one ``renameat2(RENAME_EXCHANGE)``
    and kept in the releases folder as ``replaced-<time>``. Returns what D led to before.
    """
    started = time.monotonic()
    with (
        Place(destination, create=False) as place,
        _failing(f"switching {place.destination} to {release_dir}"),
    ):
        root_fd = place.need_root()
        release = place.release_of(release_dir)
        _tidy(place)
        kind, current = place.read_destination()
        link = unique(LINK_PREFIX)
        os.symlink(place.link_target(release), link, dir_fd=root_fd)
        dest = Path(place.destination)
        if kind == "ours" and current:
            _move_link(
                place,
                link,
                lambda: os.rename(link, place.name, src_dir_fd=root_fd, dst_dir_fd=place.parent_fd),
            )
            previous = Previous(dest, place.release_path(current))
        elif kind == "missing":
            _move_link(place, link, lambda: _rename_noreplace(root_fd, link, place.parent_fd, place.name))
            previous = Previous(dest, None)
        else:
            _move_link(place, link, lambda: _exchange(place, link))
            aside = _move_aside(place, link)
            logger.warning(
                "activation: %s was %s; it is kept as %s (delete it once you no longer need it)",
                dest,
                "a real folder"
                if kind == "folder"
                else f"a link to {current}"
                if kind == "link"
                else "a file",
                place.release_path(aside),
            )
            previous = Previous(dest, place.release_path(aside), moved_aside=True)
        _sync(place.parent_fd)
        _sync(root_fd)
    logger.info(
        "activation: %s -> %s in %.1f ms",
        dest,
        place.release_path(release),
        (time.monotonic() - started) * 1e3,
    )
    return previous


def switch_back(previous: Previous) -> None:
    """Undo a switch: D leads again to what ``previous`` says it led to (no copy).

    A folder that was moved aside becomes D again (exchanged with the link in one step); with nothing
    before, the link D is taken away.
    """
    if previous.release_dir is not None and not previous.moved_aside:
        switch(previous.destination, previous.release_dir)
        return
    with Place(previous.destination, create=False) as place, _failing(f"switching {place.destination} back"):
        root_fd = place.need_root()
        if previous.release_dir is None:
            if place.read_destination()[0] == "missing":
                return
            link = unique(LINK_PREFIX)
            _rename_noreplace(place.parent_fd, place.name, root_fd, link)
            _dispose(place, link)  # unlinks it when it is one of ours, moves it aside otherwise
        else:
            _exchange_back(place, place.aside_of(previous.release_dir))
        _sync(place.parent_fd)
        _sync(root_fd)
    logger.info("activation: %s restored to %s", previous.destination, previous.release_dir or "nothing")


def deactivate(destination: Path | str) -> Path | None:
    """Turn D back into a real folder (to go back to ``activation = copy``): the live release folder itself
    takes D's place in one exchange, so readers see no gap. Returns the release that became D; None when D
    was not a link of ours. Other releases stay until ``prune``."""
    with Place(destination, create=False) as place, _failing(f"turning {place.destination} into a folder"):
        kind, release = place.read_destination()
        if kind != "ours" or not release:
            return None
        _exchange_back(place, release)
        _sync(place.parent_fd)
        _sync(place.need_root())
        logger.info(
            "activation: %s is a real folder again (it was %s)",
            place.destination,
            place.release_path(release),
        )
        return place.release_path(release)


def prune(destination: Path | str, keep: Collection[str]) -> list[str]:
    """Delete D's release folders except those named in ``keep`` and the live one; returns those deleted.

    ``keep`` must hold the last successful deployment's id (and any other to keep). Folders moved aside
    (``replaced-*``) and anything that is not a real folder with a release name are left alone; nothing
    inside a release is followed. Raises one InstallError after trying every folder, naming the failures.
    """
    try:
        place = Place(destination, create=False)
    except MissingFolder:
        return []
    with place:
        if place.root_fd is None:
            return []
        root_fd = place.root_fd
        with _failing(f"pruning the releases of {place.destination}"):
            _, live = place.read_destination()
            _tidy(place)
            with os.scandir(root_fd) as entries:
                names = sorted(
                    e.name
                    for e in entries
                    if e.is_dir(follow_symlinks=False) or e.name.startswith(PRUNE_PREFIX)
                )
        removed: list[str] = []
        errors: list[str] = []
        for name in names:
            protected = name == live or name in keep or name.startswith(ASIDE_PREFIX)
            if not name.startswith(PRUNE_PREFIX) and (protected or not is_release_name(name)):
                continue
            try:
                doomed = name
                if not name.startswith(PRUNE_PREFIX):  # renamed first: a crash leaves no half release
                    doomed = unique(PRUNE_PREFIX)
                    os.rename(name, doomed, src_dir_fd=root_fd, dst_dir_fd=root_fd)
                    removed.append(name)
                remove_tree(root_fd, doomed, place.root)
            except (OSError, InstallError) as e:
                errors.append(str(e))
        if removed:
            logger.info(
                "activation: pruned %d release(s) of %s: %s",
                len(removed),
                place.destination,
                ", ".join(removed),
            )
        if errors:
            raise InstallError(f"pruning the releases of {place.destination}: " + "; ".join(errors))
        return removed


def _move_link(place: Place, link: str, rename: Callable[[], None]) -> None:
    """Run ``rename`` (which moves the new link ``link`` into D's place); on failure remove the link."""
    try:
        rename()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link, dir_fd=place.need_root())
        raise


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    try:
        renameat2(src_fd, src, dst_fd, dst, RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in UNSUPPORTED - {errno.EXDEV}:
            raise
        if _exists(dst_fd, dst):
            raise FileExistsError(errno.EEXIST, "exists", dst) from e
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _exchange(place: Place, link: str) -> None:
    """Swap the new link ``link`` (in the releases folder) with D; InstallError when the filesystem cannot."""
    try:
        renameat2(place.need_root(), link, place.parent_fd, place.name, RENAME_EXCHANGE)
    except OSError as e:
        raise _exchange_error(place.destination, e) from e


def _exchange_back(place: Place, name: str) -> None:
    """Swap the folder ``name`` of the releases folder with D (a link of ours), then delete that link."""
    root_fd = place.need_root()
    try:
        renameat2(root_fd, name, place.parent_fd, place.name, RENAME_EXCHANGE)
    except OSError as e:
        raise _exchange_error(place.destination, e) from e
    _dispose(place, name)  # the link D was (rename(2) moved the link itself, nothing behind it)


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


def _move_aside(place: Place, name: str) -> str:
    """Give D's former contents (now ``name`` in the releases folder) a ``replaced-<UTC time>`` name."""
    root_fd = place.need_root()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        aside = f"{ASIDE_PREFIX}{stamp}" + (f"-{n}" if n > 1 else "")
        try:
            _rename_noreplace(root_fd, name, root_fd, aside)
            return aside
        except FileExistsError:
            continue
    raise InstallError(f"{place.root}: too many folders named {ASIDE_PREFIX}{stamp}*")


def _tidy(place: Place) -> None:
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
        aside = _move_aside(place, name)
        logger.warning("activation: %s was not a link of s3deploy's; kept as %s", place.destination, aside)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Turn an OSError into an InstallError that says what was being done and on which path."""
    try:
        yield
    except OSError as e:
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n)
        raise InstallError(f"{what}: {e.strerror or e}" + (f" ({names})" if names else "")) from e


def _sync(fd: int) -> None:
    """Make a rename in the folder ``fd`` durable (the new link survives a power cut)."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise InstallError(f"cannot sync a folder after switching: {e.strerror}") from e
