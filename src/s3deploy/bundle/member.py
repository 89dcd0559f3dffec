"""What an archive reader hands to the checks and the writer: one member, as the archive describes it.

The zip and tar readers (zipfmt.py, tarfmt.py) turn their headers into ``Member`` values; checks.py
decides whether they are safe; writer.py writes them. Entry names come from the archive, so they reach
messages only through ``entry()``: escaped (``printable``) and cut short (``bounded``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Literal, Protocol

from s3deploy.common.text import bounded

CHUNK_BYTES = 1 << 20
#: Longest symlink target (PATH_MAX): a longer one is refused, never buffered.
MAX_LINK_BYTES = 4096

Kind = Literal["file", "dir", "symlink", "hardlink"]


@dataclass(slots=True)
class Member:
    """One archive member. ``name`` is as stored (for messages), ``size`` the size its header declares,
    ``target`` a symlink's target or a hardlink's (raw) target name, ``ref`` the reader's own handle."""

    name: str
    kind: Kind
    mode: int = 0
    size: int = 0
    target: str = ""
    ref: object = None


def entry(name: str) -> str:
    """``entry "NAME"`` for a message: control characters escaped, long names shortened."""
    return f'entry "{bounded(name)}"'


def shown(value: object, limit: int = 300) -> str:
    """Any other archive-controlled text (a link target, a library's error) made safe for a message."""
    return bounded(value, limit)


class Reader(Protocol):
    """An open archive: its members in order, and a member's data."""

    label: str
    #: True when ``chunks`` may be called from several threads and in any order (zip); a tar member's
    #: data must be read right after ``members()`` yielded it, in the same thread.
    parallel: bool
    #: How many entries the archive says it holds, when it says so before they are read (zip).
    count: int | None

    def members(self) -> Generator[Member, None, None]:
        """Every member, in archive order; each call is a fresh pass over the archive."""
        ...

    def chunks(self, member: Member) -> Generator[bytes, None, None]:
        """The member's data, at most CHUNK_BYTES at a time, checked against its header."""
        ...
