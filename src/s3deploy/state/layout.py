"""The state directory's layout and modes: the one module that builds paths inside it.

```
STATE_DIR/                      0711 root: others may pass through (runas hooks reach their release), not list
  state.db (+ -wal, -shm)       0600: deployments, sections
  daemon.lock                   0600: flock held by the running daemon
  locks/                        0700: <section>.lock per section, paths/<hash>.lock per destination folder
  releases/<section>/<id>/      0711 each: one folder per deployment; bundle/ inside (no group/other write)
    modes.json                  0600: modes the bundle gave the entries whose group/other write was removed
    activation.json             0600: activation = symlink: its release folder beside the destination
  logs/<section>/<id>.log       0700 folders, 0600 files: every hook output line of that deployment
  installed/<section>.list      0700 folder, 0600 files: what this section's last Install put on disk
  hooks/<section>.json          0700 folder, 0600 files: the session of the running hook (a restart stops it)
```

Who can do what: only the agent's user (root) writes anything here and reads the database, the logs, the
locks and the cleanup lists. Another local user can open none of those (so cannot flock a lock file to
stall the agent, nor read hook output or errors), cannot list STATE_DIR or releases/, and can reach a
release only by its exact path: that is what a ``runas`` hook gets (its cwd and S3DEPLOY_BUNDLE_DIR) so it
can read its bundle; nothing under releases/ is writable by group or others.

``prepare()`` makes the directory, and brings one made by an older s3deploy (0755 folders, 0644 files)
to these modes, logging what it changed. The state directory must belong to the user running s3deploy.
Section names become one path component each (percent-encoded, so any name is one safe file name).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from s3deploy.errors import S3DeployError
from s3deploy.state import modes

logger = logging.getLogger(__name__)

#: The state directory and the release folders: others may pass through (a runas hook reaches its
#: release by its path), never list.
SHARED_DIR_MODE = 0o711
#: Folders that hold only root's data (logs, locks, cleanup lists).
PRIVATE_DIR_MODE = 0o700
#: Files that hold root's data (the database, logs, lock files, cleanup lists).
PRIVATE_FILE_MODE = 0o600
_MAX_NAME_BYTES = 200
_RELEASE_MODES = "modes.json"
_ACTIVATION_RECORD = "activation.json"


def section_dir_name(section: str) -> str:
    """A section name as one file name: percent-encoded; very long names shortened with a hash."""
    name = quote(section, safe="")
    if len(name.encode()) > _MAX_NAME_BYTES:  # file names are limited to 255 bytes
        name = name[:100] + "-" + hashlib.sha256(section.encode()).hexdigest()[:16]
    return name


def release_modes_file(bundle_root: Path) -> Path:
    """The modes file beside the bundle folder of a release (``releases/<section>/<id>/bundle``), found
    from the bundle's path alone: what unpacking writes and Install (and a rollback from disk) reads."""
    return bundle_root.parent / _RELEASE_MODES


def activation_record_file(bundle_root: Path) -> Path:
    """The record of what activation = symlink did with a release (install/release_record.py), beside
    its bundle folder like the modes file."""
    return bundle_root.parent / _ACTIVATION_RECORD


@dataclass(frozen=True)
class StateLayout:
    """Where everything lives under one state directory. Builds paths; ``prepare`` and
    ``create_release_dir`` make folders with their modes."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def lock_dir(self) -> Path:
        return self.root / "locks"

    def section_lock(self, section: str) -> Path:
        return self.lock_dir / f"{section_dir_name(section)}.lock"

    def destination_lock(self, folder: str) -> Path:
        """The lock file standing for the folder ``folder`` (any path maps to one short file name)."""
        return self.lock_dir / "paths" / f"{hashlib.sha256(folder.encode()).hexdigest()[:32]}.lock"

    @property
    def releases_root(self) -> Path:
        return self.root / "releases"

    def section_releases(self, section: str) -> Path:
        return self.releases_root / section_dir_name(section)

    def release_dir(self, section: str, deployment_id: str) -> Path:
        return self.section_releases(section) / deployment_id

    def activation_record(self, section: str, deployment_id: str) -> Path:
        """The activation record of the release ``deployment_id`` unpacked (``activation_record_file``)."""
        return self.release_dir(section, deployment_id) / _ACTIVATION_RECORD

    @property
    def logs_root(self) -> Path:
        return self.root / "logs"

    def log_file(self, section: str, deployment_id: str) -> Path:
        return self.logs_root / section_dir_name(section) / f"{deployment_id}.log"

    @property
    def installed_root(self) -> Path:
        return self.root / "installed"

    def cleanup_list(self, section: str) -> Path:
        return self.installed_root / f"{section_dir_name(section)}.list"

    def create_release_dir(self, section: str, deployment_id: str) -> Path:
        """Make (or keep) the release folder of a deployment, 0711 like its parents; returns it."""
        folder = self.release_dir(section, deployment_id)
        for path in (self.releases_root, self.section_releases(section), folder):
            _make_dir(path, SHARED_DIR_MODE, parents=True)
        return folder

    @property
    def hooks_dir(self) -> Path:
        return self.root / "hooks"

    def hook_session(self, section: str) -> Path:
        """The record of the hook ``section`` runs now (removed when it ends)."""
        return self.hooks_dir / f"{section_dir_name(section)}.json"

    def prepare(self) -> None:
        """Create the state directory and its top folders with their modes, tightening those of a state
        directory made by an older s3deploy (see the module docstring).

        Raises S3DeployError naming the path when it cannot: a file where a folder should be, a folder
        that belongs to another user, no permission.
        """
        _make_dir(self.root, SHARED_DIR_MODE, parents=True, follow=True)
        folders = [
            (self.releases_root, SHARED_DIR_MODE),
            (self.lock_dir, PRIVATE_DIR_MODE),
            (self.lock_dir / "paths", PRIVATE_DIR_MODE),
            (self.logs_root, PRIVATE_DIR_MODE),
            (self.installed_root, PRIVATE_DIR_MODE),
            (self.hooks_dir, PRIVATE_DIR_MODE),
        ]
        files = [self.database, self.root / "state.db-wal", self.root / "state.db-shm", self.daemon_lock]
        # The root last: a tightening cut short (a crash) is noticed and done again at the next start.
        wanted = [*folders, *((f, PRIVATE_FILE_MODE) for f in files), (self.root.resolve(), SHARED_DIR_MODE)]
        if any(_bits(path) not in (None, mode) for path, mode in wanted):
            self._tighten()
        for path, mode in folders:
            _make_dir(path, mode)
        for path, mode in wanted:
            before = _bits(path)
            if before is not None and before != mode and modes.set_mode(path, mode):
                logger.warning("state directory: %s was mode %04o, now %04o", path, before, mode)

    def _tighten(self) -> None:
        """Bring the trees of an older state directory to the model (their tops are set by prepare)."""
        private = modes.private(PRIVATE_DIR_MODE, PRIVATE_FILE_MODE)
        trees = [(self.lock_dir, private), (self.logs_root, private), (self.installed_root, private)]
        trees.append((self.hooks_dir, private))
        trees.append((self.releases_root, _release_rule))
        for top, rule in trees:
            if not top.is_dir() or top.is_symlink():
                continue
            changes = modes.apply_tree(top, rule)
            if changes.count:
                logger.warning(
                    "state directory: tightened %s under %s (made by an older s3deploy)", changes, top
                )


def _release_rule(depth: int, is_dir: bool, bits: int) -> int:
    """releases/, releases/<section>/ and each release folder 0711; below them no group/other write."""
    if is_dir and depth <= 2:
        return SHARED_DIR_MODE
    return bits & ~0o022


def _bits(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None


def _make_dir(path: Path, mode: int, *, parents: bool = False, follow: bool = False) -> None:
    """``path`` as a folder of the user running s3deploy, created with ``mode`` if missing. ``follow``:
    a symlink to a folder is accepted (the state directory itself may be one)."""
    try:
        path.mkdir(mode=mode, parents=parents)
    except FileExistsError:
        pass
    except NotADirectoryError as e:
        raise S3DeployError(f"state directory: a parent of {path} is not a folder") from e
    except OSError as e:
        raise S3DeployError(f"state directory: cannot create {path}: {e.strerror or e}") from e
    else:
        os.chmod(path, mode)  # mkdir's mode went through the umask
        return
    try:
        st = path.stat() if follow else path.lstat()
    except OSError as e:
        raise S3DeployError(f"state directory: cannot use {path}: {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise S3DeployError(
            f"state directory: {path} exists and is not a folder; move it away or use another --state-dir"
        )
    if st.st_uid != os.geteuid():
        raise S3DeployError(
            f"state directory: {path} belongs to uid {st.st_uid}, not to the user running s3deploy "
            f"(uid {os.geteuid()}): run s3deploy as its owner, or use another --state-dir"
        )
