"""Install as the section's ``activation`` says (SPEC §12): copying into the live folder, or a release
folder beside the destination D that D is switched to.

``activation = symlink`` (``ReleaseActivation.install``): every ``files`` entry for D or inside it is
staged into a fresh release folder beside D (``release_stage``: the bundle's folders are moved there where
they may be), ``permissions`` are applied inside it, the entries outside D are installed by copying as
before (with their cleanup list), and Install ends with the switch: D becomes a link to the release in one
``rename(2)`` (``activation.switch``). A rollback reinstalls a release that was staged before by switching
back to its folder: nothing is copied. What staging moved is no longer in the bundle, so such a release is
restored only by a switch (``release_record``); one whose folder is gone cannot be rebuilt from disk and
the rollback fails naming it. A release never staged (deployed with ``activation = copy``) is staged again
by copying from its bundle, except the release installed before the first switch: the folder that switch
moved aside is put back in D's place.

``activation = copy`` (``install_copy``): the Install of ``installer``, after turning D back into a real
folder when it is still a link to a release (the section used ``activation = symlink`` before): its files
then count as this section's, as a previous release's would.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from s3deploy.appspec import AppSpec, FileMapping
from s3deploy.errors import InstallError
from s3deploy.install.activation import (
    Previous,
    deactivate,
    live_release,
    prepare_release,
    release_root_for,
    switch,
    switch_back,
)
from s3deploy.install.cancel import checkpoint
from s3deploy.install.cleanup import Installed, read_list, write_list
from s3deploy.install.dirs import Dirs, inside
from s3deploy.install.installer import InstallReport, install
from s3deploy.install.permissions import apply_to, check_file_objects, preflight
from s3deploy.install.release_modes import read_release_modes
from s3deploy.install.release_record import ReleaseRecord, read_record, write_record
from s3deploy.install.release_stage import bundle_keep, split_mappings, stage_release
from s3deploy.install.releases_folder import normalized, root_name
from s3deploy.state.layout import activation_record_file

logger = logging.getLogger(__name__)


class ReleaseActivation:
    """One deployment's Install under ``activation = symlink``, and the release variables its hooks see.

    ``release_id``: the deployment that unpacked the bundle (a rollback reuses that release's folder);
    ``record_of``: the activation record of a release by id; ``fresh``: a new revision (its bundle's
    folders may be moved into the release) rather than a release reinstalled from disk.
    """

    def __init__(
        self, destination: Path, release_id: str, record_of: Callable[[str], Path], *, fresh: bool
    ) -> None:
        self.destination = normalized(destination)
        self.release_id = release_id
        self.record_of = record_of
        self.fresh = fresh
        self.release_dir = str(release_root_for(self.destination) / release_id)
        self.previous_dir = ""

    def begin(self) -> None:
        """Note the release D leads to before anything runs (S3DEPLOY_PREVIOUS_RELEASE_DIR)."""
        live = live_release(self.destination)
        self.previous_dir = str(live) if live is not None else ""

    def hook_env(self) -> dict[str, str]:
        """S3DEPLOY_RELEASE_DIR and S3DEPLOY_PREVIOUS_RELEASE_DIR as they are now (they change at Install)."""
        return {"S3DEPLOY_RELEASE_DIR": self.release_dir, "S3DEPLOY_PREVIOUS_RELEASE_DIR": self.previous_dir}

    def install(
        self,
        bundle_root: Path,
        spec: AppSpec,
        *,
        cleanup_list: Path,
        installed_before: str | None,
        cancel: threading.Event | None = None,
        owner_check: bool = True,
    ) -> InstallReport:
        """Stage (or find) the release, install the entries outside D, switch D; raises InstallError.

        ``installed_before``: the release whose Install last completed (recorded when the switch moves a
        real folder aside, so a rollback to it puts that folder back)."""
        started = time.monotonic()
        dest = self.destination
        mappings = spec.files or (FileMapping("/", dest),)
        inside_d, outside = split_mappings(mappings, dest)
        if owner_check:
            preflight(spec.permissions)
        forgotten = _forget_destination(cleanup_list, dest)
        record_path = self.record_of(self.release_id)
        record = read_record(record_path)
        restore: tuple[Previous, ReleaseRecord] | None = None
        staged = "reused"
        if self.fresh or not _reusable(record, dest, self.release_dir):
            restore = None if self.fresh else self._aside_to_restore()
            if restore is None:
                if record is not None and record.moved:
                    raise InstallError(
                        f"release {self.release_id} cannot be rebuilt: its files were moved from its bundle "
                        f"into {self.release_dir} when it was activated, and that folder is gone "
                        f"(or was made for another destination); deploy its revision again from S3"
                    )
                base = record if record is not None and record.destination == dest else None
                staged = self._stage(bundle_root, spec, (inside_d, outside), record_path, base, cancel)
        report = install(
            bundle_root,
            spec,
            default_destination=None,
            cleanup_list=cleanup_list,
            owner_check=False,
            cancel=cancel,
            mappings=outside,
        )
        checkpoint(cancel)
        if restore is not None:
            switch_back(restore[0])
            self.release_dir = dest  # the folder put back is D itself again
            if restore[1].forgotten:  # what the copy Installs put there is this section's again
                write_list(cleanup_list, read_list(cleanup_list).union(Installed(*restore[1].forgotten)))
        else:
            previous = switch(dest, self.release_dir)
            self.previous_dir = str(previous.release_dir or "")
            if previous.moved_aside and self.fresh:
                done = read_record(record_path) or ReleaseRecord(dest)
                aside = str(previous.release_dir)
                lists = [forgotten.files, forgotten.dirs, forgotten.roots]
                write_record(
                    record_path,
                    replace(done, replaced=aside, installed_before=installed_before, forgotten=lists),
                )
        report.duration_s = time.monotonic() - started
        logger.info(
            "Install: %s is now %s (%s; %d files copied outside it) in %.2fs",
            dest,
            self.release_dir,
            "put back" if restore is not None else staged,
            report.copied,
            report.duration_s,
        )
        return report

    def _stage(
        self,
        bundle_root: Path,
        spec: AppSpec,
        entries: tuple[tuple[FileMapping, ...], tuple[FileMapping, ...]],
        record_path: Path,
        record: ReleaseRecord | None,
        cancel: threading.Event | None,
    ) -> str:
        """A fresh release folder with the ``entries`` for D (the others' sources stay), permissions
        applied; recorded before and after (on top of ``record``). Returns what staging did, for the log."""
        mappings, others = entries
        move = self.fresh  # a release reinstalled from disk keeps its bundle whole
        record = record or ReleaseRecord(self.destination)
        write_record(record_path, replace(record, staged=False, moved=move))
        release = prepare_release(self.destination, self.release_id)
        staged = stage_release(
            bundle_root,
            mappings,
            self.destination,
            release,
            keep=bundle_keep(spec),
            modes=read_release_modes(bundle_root),
            others=others,
            move=move,
            cancel=cancel,
        )
        _permissions_in_release(spec, self.destination, str(release), cancel)
        write_record(record_path, replace(record, staged=True, moved=bool(staged.moved)))
        return f"staged: {len(staged.moved)} entries moved, {staged.copied} copied"

    def _aside_to_restore(self) -> tuple[Previous, ReleaseRecord] | None:
        """The folder the live release's first switch moved aside (and that release's record), when this
        rollback restores the release that was installed then (a section that went from copy to
        symlink)."""
        live = live_release(self.destination)
        if live is None:
            return None
        record = read_record(self.record_of(live.name))
        if (
            record is None
            or record.destination != self.destination
            or record.replaced is None
            or record.installed_before != self.release_id
            or not _is_folder(record.replaced)
        ):
            return None
        logger.info("rollback: %s was a folder before %s; putting it back", self.destination, live.name)
        return Previous(Path(self.destination), Path(record.replaced), moved_aside=True), record


def install_copy(
    bundle_root: Path,
    spec: AppSpec,
    *,
    default_destination: Path | None,
    cleanup_list: Path,
    cancel: threading.Event | None = None,
) -> InstallReport:
    """``activation = copy``: ``installer.install``, after turning D back into a real folder if it is a
    link to a release. InstallError for a release whose files activation moved out of its bundle."""
    record = read_record(activation_record_file(bundle_root))
    if record is not None and record.moved:
        raise InstallError(
            f"this release was activated with activation = symlink and its files were moved from its bundle "
            f"({bundle_root}) into {record.destination}'s release folder: it cannot be copied again; "
            "set activation = symlink to switch back to it, or deploy its revision again from S3"
        )
    if default_destination is not None and _links_to_release(normalized(default_destination)):
        _leave_activation(normalized(default_destination), cleanup_list)
    return install(
        bundle_root, spec, default_destination=default_destination, cleanup_list=cleanup_list, cancel=cancel
    )


def _leave_activation(dest: str, cleanup_list: Path) -> None:
    """D back to a real folder: the live release takes its place (``deactivate``), its entries listed in
    the cleanup list first (a crash in between leaves a list that covers them)."""
    live = live_release(dest)
    if live is None:
        return
    folders, files, links = _tree(str(live), dest)
    previous = read_list(cleanup_list)
    write_list(cleanup_list, previous.union(Installed(files + links, [dest, *folders], [dest])))
    release = deactivate(dest)
    logger.warning(
        "activation = copy: %s is a folder again (it was release %s); its %d files count as installed by "
        "this section",
        dest,
        release,
        len(files) + len(links),
    )


def _forget_destination(cleanup_list: Path, dest: str) -> Installed:
    """Entries in or at D leave the cleanup list: what a copy Install put in D stays in the folder the first
    switch moves aside (nothing of D's is removed file by file while readers use it). Returns them."""
    listed = read_list(cleanup_list)
    lists = (listed.files, listed.dirs, listed.roots)
    kept = Installed(*([p for p in paths if p != dest and not inside(p, dest)] for paths in lists))
    gone = Installed(*([p for p in paths if p == dest or inside(p, dest)] for paths in lists))
    if gone.files or gone.dirs or gone.roots:
        write_list(cleanup_list, kept)
        logger.info("activation = symlink: %s is no longer in this section's cleanup list", dest)
    return gone


def _permissions_in_release(spec: AppSpec, dest: str, release: str, cancel: threading.Event | None) -> None:
    """Apply ``permissions`` to what the release holds, each path matched as it will be seen through D."""
    if not spec.permissions:
        return
    folders, files, links = _tree(release, dest)
    check_file_objects(spec.permissions, {*files, *links})
    entries = [(dest, True), *((p, True) for p in folders), *((p, False) for p in files)]
    with Dirs([release]) as dirs:
        apply_to(spec.permissions, entries, dirs, cancel, lambda path: release + path[len(dest) :])


def _tree(release: str, dest: str) -> tuple[list[str], list[str], list[str]]:
    """(folders, files, links) of ``release`` as paths inside D. Read through ``Dirs`` rooted at the
    release (which ``permissions`` may have handed to the application user): no link is followed (one
    swapped in for a folder meanwhile fails, naming it), no recursion, however deep the tree."""
    folders: list[str] = []
    files: list[str] = []
    links: list[str] = []
    with Dirs([release]) as dirs:
        todo = [release]
        while todo:
            folder = todo.pop()
            here = dest + folder[len(release) :]
            children = []
            for name, kind in sorted((dirs.listing(folder) or {}).items()):
                if kind == "dir":
                    folders.append(f"{here}/{name}")
                    children.append(f"{folder}/{name}")
                else:
                    (links if kind == "link" else files).append(f"{here}/{name}")
            todo += reversed(children)  # depth first in name order: Dirs reuses the open folders
    return folders, files, links


def _links_to_release(dest: str) -> bool:
    """Whether D is a link whose text names a release in its releases folder (no folder opened)."""
    try:
        return os.readlink(dest).startswith(root_name(dest) + "/")
    except OSError:
        return False


def _reusable(record: ReleaseRecord | None, dest: str, release_dir: str) -> bool:
    return record is not None and record.staged and record.destination == dest and _is_folder(release_dir)


def _is_folder(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
