"""Atomic activation (SPEC §12): each release in its own folder, the destination a link switched in one step.

With ``activation = symlink`` a deployment does not copy into the live folder D. It prepares a fresh
release folder beside D (``prepare_release``), stages the bundle's files for D into it
(``release_stage.stage_release``), applies permissions there, then ``switch`` makes D a symbolic link to
it with one ``rename(2)`` of a new link over the old one: a reader of D sees the whole old release or the
whole new one, never a mix and never nothing. The first switch over a real folder D swaps it with the link
in one ``renameat2(RENAME_EXCHANGE)`` and keeps it, as ``replaced-<time>`` in the releases folder. A
rollback is ``switch_back`` (or a ``switch`` to an older release): no copy. ``prune`` deletes old
releases, never the live one, never one the caller keeps, never a folder moved aside.
``releases_folder`` describes the folder's layout and how it is reached without following a planted link;
``link_swap`` the moves that put a link in D's place.

The caller serializes every call for one destination (the section's destination lock). Every error is an
InstallError naming the path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from s3deploy.errors import InstallError
from s3deploy.install.link_swap import (
    exchange_back,
    exists,
    put_link,
    remove_bridges,
    sync,
    take_link_away,
    tidy,
)
from s3deploy.install.releases_folder import (
    ASIDE_PREFIX,
    PRUNE_PREFIX,
    RELEASE_DIR_MODE,
    MissingFolder,
    Place,
    failing,
    is_release_name,
    normalized,
    remove_tree,
    root_name,
    unique,
)

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
        failing(f"preparing release {deployment_id} of {place.destination}"),
    ):
        root_fd = place.need_root()
        if place.read_destination() == ("ours", deployment_id):
            raise InstallError(
                f"{place.release_path(deployment_id)} is the live release of {place.destination}"
            )
        if exists(root_fd, deployment_id):
            doomed = unique(PRUNE_PREFIX)
            os.rename(deployment_id, doomed, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            remove_tree(root_fd, doomed, place.root)
            logger.info(
                "activation: deleted %s left by an interrupted deployment", place.release_path(deployment_id)
            )
        os.mkdir(deployment_id, RELEASE_DIR_MODE, dir_fd=root_fd)
        os.chmod(deployment_id, RELEASE_DIR_MODE, dir_fd=root_fd)  # whatever the umask
        sync(root_fd)
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
        failing(f"switching {place.destination} to {release_dir}"),
    ):
        release = place.release_of(release_dir)
        kind, name = put_link(place, release)
    dest = Path(place.destination)
    if kind == "aside":
        assert name is not None
        previous = Previous(dest, place.release_path(name), moved_aside=True)
    else:
        previous = Previous(dest, place.release_path(name) if name else None)
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
    with Place(previous.destination, create=False) as place, failing(f"switching {place.destination} back"):
        if previous.release_dir is None:
            if place.read_destination()[0] == "missing":
                return
            take_link_away(place)
        else:
            exchange_back(place, place.aside_of(previous.release_dir))
    logger.info("activation: %s restored to %s", previous.destination, previous.release_dir or "nothing")


def deactivate(destination: Path | str) -> str | None:
    """Turn D back into a real folder (to go back to ``activation = copy``): the live release folder itself
    takes D's place in one exchange, so readers see no gap. Returns the deployment id of the release that
    became D; None when D was not a link of ours. Other releases stay until ``prune``."""
    try:
        place = Place(destination, create=False)
    except MissingFolder:
        return None
    with place, failing(f"turning {place.destination} into a folder"):
        kind, release = place.read_destination()
        if kind != "ours" or not release:
            return None
        exchange_back(place, release, bridge=True)
    logger.info("activation: %s is a real folder again (it was release %s)", place.destination, release)
    return release


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
        with failing(f"pruning the releases of {place.destination}"):
            _, live = place.read_destination()
            tidy(place)
            remove_bridges(place)
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
