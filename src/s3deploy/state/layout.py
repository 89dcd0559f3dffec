"""The state directory's layout: the one module that builds paths inside it.

```
STATE_DIR/                      0711 root: others may pass through (runas hooks reach their release), not list
  state.db (+ -wal, -shm)       0600: deployments, sections
  daemon.lock                   0600: flock held by the running daemon
  locks/                        0700: <section>.lock per section, paths/<hash>.lock per destination folder
  releases/<section>/<id>/      0711: one folder per deployment; bundle/ inside (no group/other write)
    modes.json                  0600: modes the bundle gave the entries whose group/other write was removed
  logs/<section>/<id>.log       0700 folders, 0600 files: every hook output line of that deployment
  installed/<section>.list      0700 folder: what this section's last Install put on disk
```

Section names become one path component each (percent-encoded, so any name is one safe file name).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from s3deploy.errors import S3DeployError

#: The state directory itself: traversable by others (a runas hook reaches its release), never listable.
STATE_DIR_MODE = 0o711
#: Folders that hold only root's data (logs, locks, cleanup lists).
PRIVATE_DIR_MODE = 0o700
#: Files that hold root's data (the database, logs, lock files, cleanup lists).
PRIVATE_FILE_MODE = 0o600
_MAX_NAME_BYTES = 200
_RELEASE_MODES = "modes.json"


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


@dataclass(frozen=True)
class StateLayout:
    """Where everything lives under one state directory. Only builds paths; ``prepare`` makes folders."""

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

    @property
    def logs_root(self) -> Path:
        return self.root / "logs"

    def log_file(self, section: str, deployment_id: str) -> Path:
        return self.logs_root / section_dir_name(section) / f"{deployment_id}.log"

    def cleanup_list(self, section: str) -> Path:
        return self.root / "installed" / f"{section_dir_name(section)}.list"

    def prepare(self) -> None:
        """Create the state directory and its top folders with their modes (root-only where private).

        Raises S3DeployError naming the path when it cannot (a file where the folder should be, no
        permission).
        """
        folders = [
            (self.root, STATE_DIR_MODE),
            (self.lock_dir, PRIVATE_DIR_MODE),
            (self.logs_root, PRIVATE_DIR_MODE),
            (self.root / "installed", PRIVATE_DIR_MODE),
            (self.releases_root, STATE_DIR_MODE),
        ]
        for folder, mode in folders:
            try:
                folder.mkdir(mode=mode, parents=True, exist_ok=True)
            except FileExistsError as e:
                raise S3DeployError(f"state directory: {folder} exists and is not a folder") from e
            except OSError as e:
                raise S3DeployError(f"state directory: cannot create {folder}: {e.strerror or e}") from e
            if not folder.is_dir() or folder.is_symlink():
                raise S3DeployError(f"state directory: {folder} exists and is not a folder")
