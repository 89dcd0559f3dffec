"""The safety checks every archive member passes before anything is written, and the limits.

Refused, naming the entry: absolute paths, ``..`` leaving the folder, NUL bytes, names the filesystem
cannot hold (a component over 255 bytes, a path over PATH_MAX, more than MAX_DEPTH folders deep), links
that point outside (resolved through the archive's other links), writing through a link, overwriting a
link, a file where a folder is (or the other way round), hardlinks to anything but an earlier file, more
than ``max_files`` entries, more than ``max_unpacked_bytes`` declared.

``Index`` remembers what the checks need and nothing more: the kind of every path keyed by the path's
hash (an int, whatever the name's length), the folders' names and modes, the links and their targets.
What it holds is counted against INDEX_BYTES, so a hostile directory is refused instead of exhausting
memory. Two paths whose hashes collide (about 2^-64, the hash is randomised per process) read as one: a
file then goes missing, a conflict is refused, or a parent folder is taken as known. None of these can
write outside: every link is still resolved by its real path and must stay inside.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from s3deploy.bundle.member import Member, entry, shown
from s3deploy.errors import BundleError

# Kinds in the index (small ints: no object per entry). IMPLIED: a folder only named as a parent.
FILE, HARDLINK, SYMLINK, DIR, IMPLIED = range(1, 6)
_KINDS = {"file": FILE, "hardlink": HARDLINK, "symlink": SYMLINK, "dir": DIR}
#: Deepest path accepted: deeper trees break tools that walk them recursively (and no bundle needs it).
MAX_DEPTH = 256
_MAX_PATH_BYTES = 4095  # PATH_MAX less its NUL
_MAX_NAME_BYTES = 255  # NAME_MAX
#: Memory the checks may use for names and link targets (200,000 entries of 120-character paths).
INDEX_BYTES = 48 << 20
_SLOT_BYTES = 80  # a dict or set slot, with the table's spare room
_INT_BYTES = 32  # an int object (modes, ordinals)
#: Path characters link resolution may look up in all (a few hundred ms; 200,000 links use a tenth).
LINK_CHARS = 512 << 20
# Like the kernel's ELOOP limit: a chain of more links than this is refused as a loop.
_MAX_LINK_HOPS = 40


def normalise(label: str, name: str, *, max_path_bytes: int = _MAX_PATH_BYTES) -> str:
    """Map an archive name to a safe relative path ("" for the root folder), or raise naming the entry.

    Backslashes count as separators: Windows tools write them, and ``..\\x`` must not slip through.
    A ``..`` that stays inside (``a/../b``) is resolved; one that leaves the folder is refused.
    """
    if "\x00" in name:
        raise BundleError(f"{label}: {entry(name)} has a NUL byte in its name")
    unified = name.replace("\\", "/")
    parts = unified.split("/")
    if unified.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":" and parts[0][0].isalpha()):
        raise BundleError(f"{label}: {entry(name)} is an absolute path; entries must be relative")
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise BundleError(f"{label}: {entry(name)} escapes the bundle folder")
            out.pop()
        elif len(os.fsencode(part)) > _MAX_NAME_BYTES:
            raise BundleError(f"{label}: {entry(name)} has a name over {_MAX_NAME_BYTES} bytes")
        else:
            out.append(part)
    if len(out) > MAX_DEPTH:
        raise BundleError(f"{label}: {entry(name)} is more than {MAX_DEPTH} folders deep")
    path = "/".join(out)
    if len(os.fsencode(path)) > max_path_bytes:
        raise BundleError(f"{label}: {entry(name)} is a path over {max_path_bytes} bytes once unpacked")
    return path


class LinkBudget:
    """Characters of paths link resolution may still look up: bounds the CPU a hostile set of links
    (long chains of long targets, each step a lookup of a path up to PATH_MAX) can take."""

    def __init__(self, chars: int) -> None:
        self.left = chars


def _resolve(
    link_path: str, target: str, links: dict[str, str], floor: int, budget: LinkBudget | None = None
) -> tuple[str, str | None]:
    """Follow ``target`` of the link at ``link_path`` through ``links``: (final path, problem or None)."""
    if not target or "\x00" in target:
        return "", "has an empty or invalid target"
    if target.startswith("/"):
        return "", f'points to the absolute path "{shown(target)}"'
    here = link_path.rpartition("/")[0]  # the folder holding the link, then where the walk is
    depth = here.count("/") + 1 if here else 0
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if depth <= floor:
                return "", f'points outside the bundle folder ("{shown(target)}")'
            here = here.rpartition("/")[0]
            depth -= 1
            continue
        here = f"{here}/{part}" if here else part
        depth += 1
        if budget is not None:
            budget.left -= len(here)
            if budget.left < 0:
                why = f"more than {LINK_CHARS >> 20} MiB of paths (too many links, or chains too long)"
                return "", f"cannot be checked: resolving the archive's links looks up {why}"
        hop = links.get(here)
        if hop is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or hop.startswith("/"):
            return "", f'points outside the bundle folder or loops ("{shown(target)}")'
        here = here.rpartition("/")[0]
        depth -= 1
        pending.extend(reversed(hop.split("/")))
    return here, None


def link_problem(link_path: str, target: str, links: dict[str, str], floor: int = 0) -> str | None:
    """Why ``target`` (of the symlink at ``link_path``) leaves the root, or None if it stays inside.

    Resolves component by component through the other links of the same tree, so a chain like
    ``a -> b/..`` with ``b -> ..`` is caught, which a purely textual check would miss. With ``floor``
    the root is that many folders down (a bundle unpacked from inside its single top folder).
    """
    return _resolve(link_path, target, links, floor)[1]


class Index:
    """Every path of the archive with its kind, checked as members arrive in archive order.

    A later duplicate of a file or link wins (``final``): only its last occurrence is written.
    """

    def __init__(
        self, label: str, max_files: int, max_unpacked_bytes: int, max_path_bytes: int, declared: int | None
    ) -> None:
        self.label = label
        self.declared_count = declared
        self.max_files = max_files
        self.max_bytes = max_unpacked_bytes
        self.max_path_bytes = max_path_bytes
        self.kinds: dict[int, int] = {}  # hash(path) -> kind
        self.folder_paths: list[str] = []  # declared or implied, each after its parent
        self.links: dict[str, str] = {}
        self.hardlinks: dict[str, str] = {}
        self.linked: set[str] = set()  # hardlink targets: never replaced by a later duplicate
        self.dir_modes: dict[str, int] = {}
        self.last: dict[int, int] = {}  # hash(path) -> ordinal of its final occurrence, duplicates only
        self.count = 0
        self.declared = 0
        self.held = 0
        self.tops: set[str] = set()
        self.budget = LinkBudget(LINK_CHARS)

    def _fail(self, member: Member, why: str) -> BundleError:
        return BundleError(f"{self.label}: {entry(member.name)} {why}")

    def path(self, member: Member) -> str:
        return normalise(self.label, member.name, max_path_bytes=self.max_path_bytes)

    def add(self, member: Member, ordinal: int) -> None:
        """Check ``member`` (the ``ordinal``-th of the archive) against the limits and what came before."""
        path = self.path(member)
        if not path:
            if member.kind == "dir":
                return  # "./": the root folder itself
            raise self._fail(member, "has an empty name")
        if self.count >= self.max_files:
            many = (
                f"{self.declared_count} entries exceed max_files={self.max_files}"
                if self.declared_count and self.declared_count > self.max_files
                else f"more than max_files={self.max_files} entries"
            )
            raise BundleError(f"{self.label}: {many} ({entry(member.name)} is one too many)")
        self.count += 1
        self.declared += member.size
        if self.declared > self.max_bytes:
            raise BundleError(
                f"{self.label}: declared unpacked size exceeds max_unpacked_bytes={self.max_bytes} "
                f"at {entry(member.name)} ({member.size} bytes)"
            )
        self._parents(member, path)
        kind = _KINDS[member.kind]
        hardlink_target = self._hardlink_target(member) if kind == HARDLINK else ""
        key = hash(path)
        before = self.kinds.get(key)
        if before is not None:
            self._replace(member, path, kind, before, ordinal)
        else:
            self._hold(member, _SLOT_BYTES + _INT_BYTES)
            self._top(path)
            if kind == DIR:
                self._folder(member, path)
        self.kinds[key] = kind
        if kind == DIR:
            self._hold(member, sys.getsizeof(path) + _SLOT_BYTES + _INT_BYTES)
            self.dir_modes[path] = member.mode
        elif kind == SYMLINK:
            if not member.target or member.target.startswith("/") or "\x00" in member.target:
                raise self._fail(member, f"is a symlink that {link_problem(path, member.target, {})}")
            self._hold(member, sys.getsizeof(path) + sys.getsizeof(member.target) + _SLOT_BYTES)
            self.links[path] = member.target  # resolved in check_links, once every link is known
        elif kind == HARDLINK:
            self._hold(member, sys.getsizeof(path) + sys.getsizeof(hardlink_target) + 2 * _SLOT_BYTES)
            self.hardlinks[path] = hardlink_target
            self.linked.add(hardlink_target)

    def _replace(self, member: Member, path: str, kind: int, before: int, ordinal: int) -> None:
        """A second entry at ``path``: a file or link replaces a file, a folder entry a folder."""
        if before in (DIR, IMPLIED) and kind != DIR:
            raise self._fail(member, "conflicts with a folder of the same name")
        if before == SYMLINK:
            raise self._fail(member, f'would overwrite the symlink "{shown(path)}"')
        if before in (FILE, HARDLINK) and kind == DIR:
            raise self._fail(member, "is a folder where the archive already has a file")
        if path in self.linked:  # which of the two would the hardlink mean? tar: the first, zip: n/a
            raise self._fail(member, f'replaces "{shown(path)}", which an earlier hardlink links to')
        if before in (FILE, HARDLINK):
            self._hold(member, _SLOT_BYTES + _INT_BYTES)
            self.last[hash(path)] = ordinal

    def _parents(self, member: Member, path: str) -> None:
        """Record the folders above ``path``, outermost first; refuse writing under a file or link."""
        cut = path.rfind("/")
        missing: list[str] = []
        while cut > 0:
            parent = path[:cut]
            kind = self.kinds.get(hash(parent))
            if kind == SYMLINK:
                raise self._fail(member, f'would be written through symlink "{shown(parent)}"')
            if kind in (FILE, HARDLINK):
                raise self._fail(member, f'is inside "{shown(parent)}", which is a file of the archive')
            if kind is not None:
                break
            missing.append(parent)
            cut = parent.rfind("/")
        for parent in reversed(missing):
            self._hold(member, _SLOT_BYTES + _INT_BYTES)
            self.kinds[hash(parent)] = IMPLIED
            self._top(parent)
            self._folder(member, parent)

    def _folder(self, member: Member, path: str) -> None:
        self._hold(member, sys.getsizeof(path) + 8)
        self.folder_paths.append(path)

    def _top(self, path: str) -> None:
        if len(self.tops) < 2:  # all hoisting needs to know: one top-level name, or several
            self.tops.add(path.partition("/")[0])

    def _hardlink_target(self, member: Member) -> str:
        try:
            target = normalise(self.label, member.target)
        except BundleError as e:
            raise self._fail(
                member, f'is a hardlink to "{shown(member.target)}", outside the bundle folder'
            ) from e
        if self.kind(target) not in (FILE, HARDLINK):
            raise self._fail(
                member,
                f'is a hardlink to "{shown(member.target)}", which is not an earlier file of the archive',
            )
        return target

    def _hold(self, member: Member, size: int) -> None:
        self.held += size
        if self.held > INDEX_BYTES:
            raise self._fail(
                member,
                f"is one too many: the archive's names and link targets need more than "
                f"{INDEX_BYTES >> 20} MiB to check (too many or too long paths)",
            )

    def check_links(self, top: str | None) -> None:
        """Check every symlink against the final set of links and the final root (``top`` when hoisted).

        A later link can redirect an earlier one; a link that stays inside the archive can still leave
        the folder the bundle is unpacked from (``top/up -> ..``).
        """
        floor = 1 if top else 0
        for path, target in self.links.items():
            problem = _resolve(path, target, self.links, floor, self.budget)[1]
            if problem and top:
                problem += f', the bundle root once unpacked from its top folder "{shown(top)}"'
            if problem:
                raise BundleError(f"{self.label}: {entry(path)} is a symlink that {problem}")

    def folders(self) -> Iterator[str]:
        """Every folder to create, declared or implied, each after its parent."""
        return iter(self.folder_paths)

    def final(self, path: str, ordinal: int) -> bool:
        """Whether the ``ordinal``-th member, at ``path``, is the occurrence to write."""
        if not self.last:
            return True
        last = self.last.get(hash(path))
        return last is None or last == ordinal

    def kind(self, path: str) -> int | None:
        """The final kind of the entry at ``path`` (None when there is none)."""
        return self.kinds.get(hash(path))

    def kind_of(self, path: str) -> int | None:
        """The final kind at ``path``, a symlink followed (None when absent, escaping or a loop)."""
        kind = self.kind(path)
        if kind == SYMLINK:
            final, problem = _resolve(path, self.links[path], self.links, 0, self.budget)
            return None if problem else DIR if final == "" else self.kind(final)
        return kind
