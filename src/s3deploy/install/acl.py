"""POSIX ACLs for appspec ``permissions[].acls``: read as the CodeDeploy agent reads them, applied as its
``setfacl --set`` applies them, written by s3deploy itself as xattrs (no setfacl needed).

An entry is split on ":" and read from the right, as the agent's ``AceInfo`` does: PERMS, then NAME, then
an optional KIND (``u[ser]``, ``g[roup]``, ``m[ask]``, ``o[ther]``; without one: a user, or the mask or
other entry when NAME is ``m[ask]``/``o[ther]``), then an optional ``d[efault]``. So ``u:bob:rwx``,
``bob:rw`` (user bob), ``d:bob:rwx`` (default user bob), ``default::rw`` (default owner), ``m::7``,
``mask:`` (an empty mask), ``d:o:3``. PERMS is letters from ``rwx-`` (any order; empty is ``---``) or one
octal digit. The owner, owning group and other entries outside a default ACL come from the mode, as with
the agent: ``u::rwx``, ``g::r`` and ``o::r`` are refused ("use mode").

Applying is the agent's ``ChangeAclCommand``: the owner, owning group and other entries are the mode's
bits; when a named entry is given without a mask, the mask is the mode's group bits (so ``u:www-data:rwx``
on a 0640 file leaves it 0640 with www-data effectively ``r--``); a default ACL gets the same completion
from the mode, its mask being its owning group's entry. The result replaces the object's access ACL (and,
when default entries are given, its default ACL), as ``setfacl --set`` does. The kernel takes an ACL as an
extended attribute (``system.posix_acl_access`` / ``system.posix_acl_default``: little-endian, version
2, entries sorted by tag and id). A default entry applies to folders only: on a file it is skipped.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_VERSION = 2
_KINDS = {"u": "u", "user": "u", "g": "g", "group": "g", "m": "m", "mask": "m", "o": "o", "other": "o"}
_DEFAULTS = ("d", "default")
_BITS = {"r": 4, "w": 2, "x": 1, "-": 0}
FORM = "[d:][u|g|m|o:]NAME:PERMS, e.g. u:deploy:rwx, d:g:www-data:r-x, m::rx"

ACL = dict[tuple[int, int], int]


class AclError(ValueError):
    """An ACL entry that cannot be parsed, resolved or applied; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One parsed entry; ``name`` is resolved to an id only when applied (it may not exist elsewhere)."""

    default: bool
    kind: str  # u, g, m, o
    name: str
    perm: int


def parse(text: str) -> Entry:
    """Parse one entry's text as the agent does (syntax only: names are looked up by ``resolve``)."""
    parts = text.split(":")[::-1]
    if not 2 <= len(parts) <= 4:
        raise AclError(f"{text!r} is not an ACL entry; expected {FORM}")
    default = len(parts) == 4
    if default and parts[3] not in _DEFAULTS:
        raise AclError(f"{text!r} is not an ACL entry: {parts[3]!r} is not d or default; expected {FORM}")
    kind: str | None = None
    if len(parts) >= 3:
        if parts[2] in _DEFAULTS and not default:
            default = True
        elif parts[2] in _KINDS and parts[2] not in _DEFAULTS:
            kind = _KINDS[parts[2]]
        else:
            raise AclError(
                f"{text!r} is not an ACL entry: {parts[2]!r} is not u, g, m, o or d; expected {FORM}"
            )
    name = parts[1]
    if _KINDS.get(name) in ("m", "o"):  # the agent: a kind of its own, or a user literally named so
        kind, name = (
            (_KINDS[name], "") if kind is None else (kind, "mask" if _KINDS[name] == "m" else "other")
        )
    kind = kind or "u"
    if name and kind in ("m", "o"):
        raise AclError(f"{text!r}: {'mask' if kind == 'm' else 'other'} entries take no name ({kind}::PERMS)")
    if not name and not default and kind != "m":
        raise AclError(
            f"{text!r}: the owner, owning group and other entries come from `mode` (set it there); "
            "acls takes named users and groups, the mask, and default (d:) entries, as CodeDeploy does"
        )
    return Entry(default, kind, name, _perm(text, parts[0]))


def _perm(text: str, perms: str) -> int:
    if len(perms) == 1 and perms in "01234567":
        return int(perms)
    value = 0
    for c in perms:
        if c not in _BITS:
            raise AclError(
                f"{text!r}: permissions must be letters from rwx- or one octal digit "
                f"(invalid character {c!r})"
            )
        value |= _BITS[c]
    return value


def resolve(entry: Entry) -> tuple[int, int]:
    """(tag, id) of ``entry`` on this host; AclError when its user or group does not exist here."""
    if entry.kind in ("m", "o"):
        return (MASK if entry.kind == "m" else OTHER), UNDEFINED_ID
    if not entry.name:
        return (USER_OBJ if entry.kind == "u" else GROUP_OBJ), UNDEFINED_ID
    if entry.name.isdigit():
        return (USER if entry.kind == "u" else GROUP), int(entry.name)
    try:
        if entry.kind == "u":
            return USER, pwd.getpwnam(entry.name).pw_uid
        return GROUP, grp.getgrnam(entry.name).gr_gid
    except KeyError:
        what = "user" if entry.kind == "u" else "group"
        raise AclError(f"{entry.name!r} is not a {what} on this host") from None


def decode(blob: bytes) -> ACL:
    """An ACL xattr as {(tag, id): perm}."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != _VERSION:
        raise AclError("unexpected ACL format on disk")
    acl: ACL = {}
    for offset in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, offset)
        acl[(tag, ident)] = perm
    return acl


def encode(acl: ACL) -> bytes:
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(acl.items())
    )


def read(target: str | int, name: str = ACCESS) -> ACL | None:
    """The ACL stored on ``target`` (a path or an open descriptor); None when it has none."""
    try:
        return decode(
            os.getxattr(target, name, follow_symlinks=False)
            if isinstance(target, str)
            else os.getxattr(target, name)
        )
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


@dataclass(frozen=True)
class Rule:
    """An entry resolved on this host: what ``apply`` writes."""

    default: bool
    key: tuple[int, int]  # (tag, id)
    perm: int


def compile_rules(texts: Sequence[str]) -> list[Rule]:
    """Parse and resolve entries once (a permission applies them to every matching path)."""
    rules = []
    for text in texts:
        entry = parse(text)
        rules.append(Rule(entry.default, resolve(entry), entry.perm))
    return rules


def full_acls(rules: Sequence[Rule], mode: int) -> tuple[ACL, ACL | None]:
    """The access ACL and (when default entries are given) the default ACL the agent's
    ``setfacl --set`` writes for ``rules`` on an object of ``mode``. Later entries win, as with setfacl."""
    owner, group, other = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    access: ACL = {r.key: r.perm for r in rules if not r.default}
    access.update(
        {(USER_OBJ, UNDEFINED_ID): owner, (GROUP_OBJ, UNDEFINED_ID): group, (OTHER, UNDEFINED_ID): other}
    )
    if _named(access):
        access.setdefault((MASK, UNDEFINED_ID), group)
    given = [r for r in rules if r.default]
    if not given:
        return access, None
    default: ACL = {r.key: r.perm for r in given}
    # the agent's default mask is the first default owning-group entry (the mode's group bits if none)
    default_group = next((r.perm for r in given if r.key[0] == GROUP_OBJ), group)
    for tag, perm in ((USER_OBJ, owner), (GROUP_OBJ, group), (OTHER, other)):
        default.setdefault((tag, UNDEFINED_ID), perm)
    if _named(default):
        default.setdefault((MASK, UNDEFINED_ID), default_group)
    return access, default


def _named(acl: ACL) -> bool:
    return any(tag in (USER, GROUP) for tag, _ in acl)


def apply(fd: int, rules: Sequence[Rule], where: str) -> None:
    """Replace the ACLs of the file or folder open as ``fd`` as ``setfacl --set`` would (``where`` names
    it in errors). A folder keeps its default ACL unless default entries are given."""
    st = os.fstat(fd)
    access, default = full_acls(rules, st.st_mode)
    try:
        os.setxattr(fd, ACCESS, encode(access))  # the kernel sets the mode's bits from it
        if default is not None and stat.S_ISDIR(st.st_mode):
            os.setxattr(fd, DEFAULT, encode(default))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            raise AclError(f"the filesystem of {where} does not support ACLs (mount it with acl)") from e
        raise
