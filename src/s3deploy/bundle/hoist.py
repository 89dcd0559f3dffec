"""Which folder of an unpacked archive is the bundle root.

An archive whose only top-level entry is a folder holding appspec.yml (a zip of the folder itself, as
made by many tools) is unpacked from inside that folder, as CodeDeploy does. Decided from the checked
index, before anything is written, so that links are checked against that root too.
"""

from __future__ import annotations

from s3deploy.bundle.checks import DIR, FILE, HARDLINK, IMPLIED, Index

#: The names an appspec may have at the bundle root, in order of preference.
APPSPEC_NAMES = ("appspec.yml", "appspec.yaml")


def bundle_top(index: Index) -> str | None:
    """The single top-level folder to unpack from, or None when the root is the archive's own root."""
    if len(index.tops) != 1:
        return None
    (top,) = index.tops
    if index.kind(top) not in (DIR, IMPLIED):  # a link to a folder is not hoisted into
        return None
    if any(index.kind_of(f"{top}/{name}") in (FILE, HARDLINK) for name in APPSPEC_NAMES):
        return top
    return None
