"""POSIX ACLs for appspec ``permissions[].acls``, applied as ``setfacl -m`` would, without setfacl.

An entry is the text form CodeDeploy passes to setfacl: ``[d[efault]:]KIND:[NAME]:PERMS`` with KIND one of
``u[ser]``, ``g[roup]``, ``m[ask]``, ``o[ther]``; NAME a user or group name or number (empty: the owner,
the owning group; always empty for mask and other); PERMS letters from ``rwx-`` or one octal digit.

The kernel takes an ACL as an extended attribute (``system.posix_acl_access``, and for folders
``system.posix_acl_default``: little-endian, version 2, entries sorted by tag and id). The new entries are
merged into the object's ACL (or the minimal one its mode bits stand for), and the mask is recomputed
from the group and named entries unless the entry list sets it, as ``setfacl -m`` does. A default
entry applies to folders only: on a file it is skipped (files cannot hold a default ACL).
"""

from __future__ import annotations

import errno
import functools
import grp
import operator
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
_BITS = {"r": 4, "w": 2, "x": 1, "-": 0}
FORM = "[d:]u|g|m|o:[NAME]:PERMS, e.g. u:deploy:rwx or d:g:www-data:r-x"


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
    """Parse one entry's text (syntax only: names are looked up by ``resolve``)."""
    parts = text.strip().split(":")
    default = parts[0] in ("d", "default")
    if default:
        parts = parts[1:]
    if len(parts) == 2 and _KINDS.get(parts[0]) in ("m", "o"):
        parts = [parts[0], "", parts[1]]  # setfacl also takes m:rwx and o:r
    if len(parts) != 3 or parts[0] not in _KINDS:
        raise AclError(f"{text!r} is not an ACL entry; expected {FORM}")
    kind, name, perms = _KINDS[parts[0]], parts[1], parts[2]
    if name and kind in ("m", "o"):
        raise AclError(f"{text!r}: {'mask' if kind == 'm' else 'other'} entries take no name ({kind}::PERMS)")
    return Entry(default, kind, name, _perm(text, perms))


def _perm(text: str, perms: str) -> int:
    if len(perms) == 1 and perms in "01234567":
        return int(perms)
    if not perms or any(c not in _BITS for c in perms):
        raise AclError(f"{text!r}: permissions must be letters from rwx- or one octal digit, got {perms!r}")
    value = 0
    for c in perms:
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


def decode(blob: bytes) -> dict[tuple[int, int], int]:
    """An ACL xattr as {(tag, id): perm}."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != _VERSION:
        raise AclError("unexpected ACL format on disk")
    acl: dict[tuple[int, int], int] = {}
    for offset in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, offset)
        acl[(tag, ident)] = perm
    return acl


def encode(acl: dict[tuple[int, int], int]) -> bytes:
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(acl.items())
    )


def read(path: str, name: str = ACCESS) -> dict[tuple[int, int], int] | None:
    """The ACL stored on ``path`` (None when it has none: its mode bits are all there is)."""
    try:
        return decode(os.getxattr(path, name))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def _from_mode(mode: int) -> dict[tuple[int, int], int]:
    return {
        (USER_OBJ, UNDEFINED_ID): (mode >> 6) & 7,
        (GROUP_OBJ, UNDEFINED_ID): (mode >> 3) & 7,
        (OTHER, UNDEFINED_ID): mode & 7,
    }


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


def apply(path: str, rules: Sequence[Rule]) -> None:
    """Merge ``rules`` into ``path``'s access ACL (and, on a folder, its default ACL)."""
    st = os.stat(path)
    access = read(path, ACCESS) or _from_mode(st.st_mode)
    for default in (False, True):
        mine = [r for r in rules if r.default == default]
        if not mine or (default and not stat.S_ISDIR(st.st_mode)):
            continue
        base = access if not default else read(path, DEFAULT) or {
            key: perm for key, perm in access.items() if key[0] in (USER_OBJ, GROUP_OBJ, OTHER)
        }  # fmt: skip
        acl = {**base, **{r.key: r.perm for r in mine}}
        mask_given = any(r.key[0] == MASK for r in mine)
        if not mask_given and any(tag in (USER, GROUP, MASK) for tag, _ in acl):
            acl[(MASK, UNDEFINED_ID)] = functools.reduce(
                operator.or_, (perm for (tag, _), perm in acl.items() if tag in (USER, GROUP, GROUP_OBJ)), 0
            )
        try:
            os.setxattr(path, DEFAULT if default else ACCESS, encode(acl))
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                raise AclError(f"the filesystem of {path} does not support ACLs (mount it with acl)") from e
            raise
        if not default:
            access = acl
