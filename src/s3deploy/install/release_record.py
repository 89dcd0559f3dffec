"""What ``activation = symlink`` did with one release, kept in the state directory beside its bundle.

``activation.json`` (``state.layout.activation_record_file``; 0600, root's) says where the release's
folder beside the destination is, whether it is complete, and whether entries of the bundle were moved
into it (then the bundle alone can no longer rebuild the release: only a switch back to that folder
restores it). It is written before anything is moved, so a crash never leaves a bundle that lost entries
without a record saying so. The first switch over a real folder also records what it moved aside and
which release was installed then, so a rollback to that release puts the folder back, and the entries
of D that left the section's cleanup list then, so that putting the folder back restores them too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from s3deploy.common.files import atomic_write
from s3deploy.errors import InstallError

_VERSION = 1


@dataclass(frozen=True)
class ReleaseRecord:
    """``destination``: D when the release was staged; ``staged``: its folder beside D is complete
    (permissions applied); ``moved``: entries of the bundle were (or may have been) moved into that
    folder; ``replaced``: the ``replaced-*`` folder its first switch made of D; ``installed_before``: the
    release installed when that happened; ``forgotten``: the cleanup list's files, folders and roots in D
    that the copy Installs had put there (they went aside with the folder)."""

    destination: str
    staged: bool = False
    moved: bool = False
    replaced: str | None = None
    installed_before: str | None = None
    forgotten: list[list[str]] | None = None


def read_record(path: Path) -> ReleaseRecord | None:
    """The record at ``path``; None when there is none (a release activation never staged)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InstallError(f"{path} is unreadable ({e}); deploy the revision again from S3") from e
    try:
        if not isinstance(doc, dict) or doc.pop("version", None) != _VERSION:
            raise TypeError("unknown version")
        record = ReleaseRecord(**doc)
        if not all(isinstance(v, str | None) for v in (record.destination, record.replaced)):
            raise TypeError("a path is not a string")
        lists = record.forgotten
        if lists is not None and not (
            isinstance(lists, list)
            and len(lists) == 3
            and all(isinstance(paths, list) and all(isinstance(p, str) for p in paths) for paths in lists)
        ):
            raise TypeError("forgotten is not three lists of paths")
    except TypeError as e:
        raise InstallError(
            f"{path}: expected an activation record of version {_VERSION} ({e}); deploy the revision again"
        ) from e
    return record


def write_record(path: Path, record: ReleaseRecord) -> None:
    """Replace the record atomically (durable before the caller moves anything)."""
    try:
        atomic_write(path, json.dumps({"version": _VERSION, **asdict(record)}, indent=0))
    except OSError as e:
        raise InstallError(f"cannot write the activation record {path}: {e}") from e
