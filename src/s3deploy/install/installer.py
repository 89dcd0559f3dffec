"""The Install step: copy the bundle's ``files`` onto this host, with CodeDeploy's semantics (SPEC §7).

The sequence makes a failure leave a known state:
1. read this section's cleanup list (``cleanup``; missing = empty) and the release's modes file;
2. check the permissions (owners, groups, ACL entries, SELinux), open every folder the previous list
   names and plan everything (``plan``), all through ``dirs.Dirs`` (no planted link followed; one that
   would have to be is refused, naming it), and check every conflict: nothing on disk has changed yet;
3. move files replaced under OVERWRITE out of other sections' lists, write the union of the previous list
   and the plan (so a crash or a cancel from here on leaves a list that covers both releases), remove the
   previous release's files that the new one does not replace and its folders that are then empty, create
   the folders and copy (``copy``), apply permissions (``permissions``); a cancel flag is checked before
   each file;
4. write the final list: exactly what is installed now.

With no ``files`` in the appspec the whole bundle (appspec and scripts included, as CodeDeploy's
``source: /`` does) goes into the section's ``destination``; with no ``destination`` either, nothing is
installed (the previous release's files are still removed) and the hooks run, as with CodeDeploy; a
bundle without any appspec needs a ``destination``.
Files kept under RETAIN are never in the list, so no later install removes them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from s3deploy.appspec import AppSpec, FileMapping
from s3deploy.errors import InstallError
from s3deploy.install.cleanup import check_reachable, read_list, remove_previous, take_over, write_list
from s3deploy.install.copy import copy_files, create_dirs
from s3deploy.install.dirs import Dirs
from s3deploy.install.permissions import apply_permissions, check_file_objects, preflight
from s3deploy.install.plan import conflict_message, make_plan
from s3deploy.install.release_modes import read_release_modes

logger = logging.getLogger(__name__)


@dataclass
class InstallReport:
    """What one Install did: ``files``/``dirs`` are exactly what the new cleanup list holds."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    copied: int = 0
    skipped_retained: int = 0
    duration_s: float = 0.0


def install(
    bundle_root: Path,
    spec: AppSpec,
    *,
    default_destination: Path | None,
    cleanup_list: Path,
    owner_check: bool = True,
    cancel: threading.Event | None = None,
    mappings: tuple[FileMapping, ...] | None = None,
) -> InstallReport:
    """Install ``spec.files`` from ``bundle_root`` and record them in ``cleanup_list``; raises InstallError
    (InstallCancelled once ``cancel`` is set: it is checked before each file and folder is changed).

    ``default_destination`` receives the whole bundle when the appspec has no ``files``. ``owner_check``
    checks before anything changes that every permission's owner and group exist, that every acls entry
    parses and names a user or group of this host, and that chcon and SELinux are there when context is
    used (False: they fail when applied). ``mappings``: the entries to install instead of the appspec's
    (activation = symlink installs only those outside its destination this way).
    """
    started = time.monotonic()
    mappings = _mappings(spec, default_destination) if mappings is None else mappings
    previous = read_list(cleanup_list)
    modes = read_release_modes(bundle_root)
    if owner_check:
        preflight(spec.permissions)
    roots = [os.path.normpath(m.destination) for m in mappings] + previous.roots
    with Dirs(roots) as dirs:
        check_reachable(previous, dirs)
        plan = make_plan(bundle_root, mappings, spec.file_exists_behavior, previous, dirs, cancel)
        if plan.conflicts:
            raise InstallError(conflict_message(plan.conflicts))
        check_file_objects(spec.permissions, plan.files)
        installed = plan.installed
        take_over(cleanup_list, plan.adopted)
        write_list(cleanup_list, previous.union(installed))
        remove_previous(previous, set(plan.files), set(plan.owned_dirs), dirs, cancel)
        create_dirs(plan, dirs, cancel)
        copy_files(plan, modes, roots, cancel)
        apply_permissions(spec.permissions, plan, dirs, cancel)
    write_list(cleanup_list, installed)
    report = InstallReport(
        files=installed.files,
        dirs=installed.dirs,
        copied=len(installed.files),
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


def _mappings(spec: AppSpec, default_destination: Path | None) -> tuple[FileMapping, ...]:
    if spec.files:
        return spec.files
    if default_destination is None:
        if spec.source_file is None:  # SPEC §7: a bundle without an appspec is installed whole, somewhere
            raise InstallError("bundle has no appspec and section has no `destination`; set one of them")
        logger.info("no `files` in the appspec and no `destination` for the section: nothing to install")
        return ()
    return (FileMapping("/", str(default_destination)),)
