"""acl: the entry text CodeDeploy hands to setfacl, and the kernel's xattr format."""

from __future__ import annotations

import pytest

from s3deploy.install import acl
from s3deploy.install.acl import Entry


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("u:deploy:rwx", Entry(False, "u", "deploy", 7)),
        ("user:deploy:r-x", Entry(False, "u", "deploy", 5)),
        ("g::r", Entry(False, "g", "", 4)),
        ("group:www-data:6", Entry(False, "g", "www-data", 6)),
        ("m::rx", Entry(False, "m", "", 5)),
        ("mask:r", Entry(False, "m", "", 4)),
        ("o::-", Entry(False, "o", "", 0)),
        ("other:x", Entry(False, "o", "", 1)),
        ("d:u:1001:rw", Entry(True, "u", "1001", 6)),
        ("default:g::---", Entry(True, "g", "", 0)),
        (" u:deploy:wr ", Entry(False, "u", "deploy", 6)),
    ],
)
def test_parse_accepts_what_setfacl_accepts(text: str, entry: Entry) -> None:
    assert acl.parse(text) == entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deploy:rwx", "is not an ACL entry"),
        ("x:deploy:rwx", "is not an ACL entry"),
        ("u:deploy:rwx:extra", "is not an ACL entry"),
        ("u:deploy:", "permissions must be"),
        ("u:deploy:8", "permissions must be"),
        ("u:deploy:rwX", "permissions must be"),
        ("m:deploy:r", "mask entries take no name"),
    ],
)
def test_parse_refuses_with_the_entry_named(text: str, message: str) -> None:
    with pytest.raises(acl.AclError, match=message) as info:
        acl.parse(text)
    assert repr(text) in str(info.value)


def test_resolve_names_ids_and_unknown_users() -> None:
    assert acl.resolve(acl.parse("u:root:r")) == (acl.USER, 0)
    assert acl.resolve(acl.parse("g:0:r")) == (acl.GROUP, 0)
    assert acl.resolve(acl.parse("u::r")) == (acl.USER_OBJ, acl.UNDEFINED_ID)
    assert acl.resolve(acl.parse("o::r")) == (acl.OTHER, acl.UNDEFINED_ID)
    with pytest.raises(acl.AclError, match="'no-such-group-s3deploy' is not a group on this host"):
        acl.resolve(acl.parse("g:no-such-group-s3deploy:r"))


def test_encode_sorts_by_tag_and_id_and_decodes_back() -> None:
    u = acl.UNDEFINED_ID
    entries = {(acl.OTHER, u): 0, (acl.USER, 7): 4, (acl.USER_OBJ, u): 6, (acl.USER, 3): 5, (acl.MASK, u): 5}
    blob = acl.encode(entries)
    assert blob[:4] == b"\x02\x00\x00\x00" and len(blob) == 4 + 8 * 5
    tags = [int.from_bytes(blob[4 + 8 * i : 6 + 8 * i], "little") for i in range(5)]
    assert tags == [acl.USER_OBJ, acl.USER, acl.USER, acl.MASK, acl.OTHER]
    assert acl.decode(blob) == entries
    with pytest.raises(acl.AclError, match="unexpected ACL format"):
        acl.decode(b"\x01\x00\x00\x00")
