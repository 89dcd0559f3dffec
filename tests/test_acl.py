"""acl: entries read as the CodeDeploy agent reads them, ACLs written as its ``setfacl --set`` writes them.

The parse cases are the agent's own (its test/instance_agent/plugins/codedeploy/
application_specification_test.rb); the applied ACLs are compared entry for entry with what the real
setfacl makes of the agent's command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from s3deploy.install import acl
from s3deploy.install.acl import Entry


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        # "With permission with acl with valid ace with 4 parts"
        ("d:u:bob:rwx", Entry(True, "u", "bob", 7)),
        ("default:g:dev:rw", Entry(True, "g", "dev", 6)),
        # "... with 3 parts": d:bob:rwx is a default *user* entry, default::rw the default owner entry
        ("d:bob:rwx", Entry(True, "u", "bob", 7)),
        ("default::rw", Entry(True, "u", "", 6)),
        ("m::7", Entry(False, "m", "", 7)),
        ("mask::7", Entry(False, "m", "", 7)),
        ("g:dev:7", Entry(False, "g", "dev", 7)),
        ("group:dev:7", Entry(False, "g", "dev", 7)),
        ("u:bob:7", Entry(False, "u", "bob", 7)),
        ("user:bob:7", Entry(False, "u", "bob", 7)),
        ("u:mask:7", Entry(False, "u", "mask", 7)),
        ("u:other:7", Entry(False, "u", "other", 7)),
        ("u:m:7", Entry(False, "u", "mask", 7)),  # the agent: `@name = "mask"`, whatever was written
        # "... with 2 parts": a user, or the mask; "mask:" is an empty mask
        ("bob:0", Entry(False, "u", "bob", 0)),
        ("bob:rw", Entry(False, "u", "bob", 6)),
        ("m:7", Entry(False, "m", "", 7)),
        ("mask:", Entry(False, "m", "", 0)),
        # "With valid permission object": numeric permissions
        ("u:henry:7", Entry(False, "u", "henry", 7)),
        ("d:g:manager:rw", Entry(True, "g", "manager", 6)),
        ("d:o:3", Entry(True, "o", "", 3)),
        ("d:m::r-x", Entry(True, "m", "", 5)),
        ("u:deploy:", Entry(False, "u", "deploy", 0)),  # no letters: ---
        ("u:deploy:wrr", Entry(False, "u", "deploy", 6)),
        ("d:u:1001:rw", Entry(True, "u", "1001", 6)),
    ],
)
def test_parse_accepts_what_the_agent_accepts(text: str, entry: Entry) -> None:
    """The agent's AceInfo: ``parts = ace.split(":", -1).reverse``; ``if (parts.length < 2) ||
    (parts.length > 4)`` raise; ``parts[3]`` must be d/default; ``parts[2]`` d/default, m, o, g or u;
    ``if parts[1].eql?("m") || parts[1].eql?("mask")`` then ``if @type.nil? @type = "mask" else @name =
    "mask"``; ``else if @type.nil? @type = "user" end; @name = parts[1]``; one digit 0-7 is octal, else
    each character one of r, w, x, -."""
    assert acl.parse(text) == entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7", "is not an ACL entry"),  # "ace with too few parts"
        ("d:u:bob:7:rwx", "is not an ACL entry"),  # "too many parts"
        ("invalid:u:bob:7:rwx", "is not an ACL entry"),
        ("x:bob:rwx", "is not an ACL entry"),
        ("d:d:bob:rwx", "is not an ACL entry"),  # "default as first and second part"
        ("q:u:bob:rwx", "is not an ACL entry"),
        ("mask:name:rwx", "mask entries take no name"),  # "ace with mask with name"
        ("d:other:name:rwx", "other entries take no name"),  # "ace with other with name"
        ("user:bob:rwxd", "invalid character 'd'"),  # "invalid permission character"
        ("u:bob:8", "invalid character '8'"),
        ("u:bob:07", "invalid character '0'"),
        (" u:bob:rwx", "is not an ACL entry"),
        ("u::rwx", "come from `mode`"),  # "Use mode to set the base acl entry"
        ("g::r", "come from `mode`"),
        ("o::r", "come from `mode`"),
        ("other:x", "come from `mode`"),
        (":rwx", "come from `mode`"),
    ],
)
def test_parse_refuses_what_the_agent_refuses_with_the_entry_named(text: str, message: str) -> None:
    """The agent raises AppSpecValidationException for each (``Invalid acl entry``, ``contains an
    invalid character``, and ``if (!internal && !@default && !@type.eql?("mask") && @name.empty?)``:
    ``Use mode to set the base acl entry``)."""
    with pytest.raises(acl.AclError, match=message) as info:
        acl.parse(text)
    assert repr(text) in str(info.value)


def test_resolve_names_ids_and_unknown_users() -> None:
    assert acl.resolve(acl.parse("u:root:r")) == (acl.USER, 0)
    assert acl.resolve(acl.parse("g:0:r")) == (acl.GROUP, 0)
    assert acl.resolve(acl.parse("d::r")) == (acl.USER_OBJ, acl.UNDEFINED_ID)
    assert acl.resolve(acl.parse("d:o:r")) == (acl.OTHER, acl.UNDEFINED_ID)
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


# ---------------------------------------------------------------- against the real setfacl --set
# (folder?, mode, appspec acls, what the agent's ChangeAclCommand hands to `setfacl --set`)
SETFACL_CASES = {
    # install_instruction_test.rb "contains a setfacl command": acl ["user:bob:rwx",
    # "default:user:bob:rwx"], mode 100421, full acl "user:bob:rwx,default:user:bob:rwx,user::r--,
    # group::-w-,other::--x,mask::-w-,default:user::r--,default:group::-w-,default:other::--x,
    # default:mask::-w-" (a folder here: a real setfacl refuses default entries on a file)
    "agent-test": (
        True,
        0o421,
        ["user:nobody:rwx", "default:user:nobody:rwx"],
        "user:nobody:rwx,default:user:nobody:rwx,user::r--,group::-w-,other::--x,mask::-w-,"
        "default:user::r--,default:group::-w-,default:other::--x,default:mask::-w-",
    ),
    # issue 13: u:www-data:rwx on a 0640 file leaves it 0640, www-data effectively r--
    "mask-from-mode": (
        False,
        0o640,
        ["u:www-data:rwx"],
        "user:www-data:rwx,user::rw-,group::r--,other::---,mask::r--",
    ),
    "mask-given": (
        False,
        0o640,
        ["u:nobody:rwx", "m::rwx"],
        "user:nobody:rwx,mask::rwx,user::rw-,group::r--,other::---",
    ),
    "empty-mask": (
        False,
        0o660,
        ["bob:rw", "mask:"],
        "user:bob:rw-,mask::---,user::rw-,group::rw-,other::---",
    ),
    "numeric": (
        False,
        0o754,
        ["u:65534:6", "g:nogroup:5"],
        "user:65534:rw-,group:nogroup:r-x,user::rwx,group::r-x,other::r--,mask::r-x",
    ),
    "later-wins": (
        False,
        0o644,
        ["u:nobody:rwx", "u:nobody:r"],
        "user:nobody:r--,user::rw-,group::r--,other::r--,mask::r--",
    ),
    "only-mask": (False, 0o600, ["m::7"], "mask::rwx,user::rw-,group::---,other::---"),
    # a default ACL completed from the mode; its mask is its owning group entry
    "defaults": (
        True,
        0o750,
        ["d:g:nogroup:rx", "default::rw", "d:o:3"],
        "default:group:nogroup:r-x,default:user::rw-,default:other::-wx,user::rwx,group::r-x,other::---,"
        "default:group::r-x,default:mask::r-x",
    ),
    "default-group-given": (
        True,
        0o755,
        ["d:bob:rwx", "d:g::r"],
        "default:user:bob:rwx,default:group::r--,user::rwx,group::r-x,other::r-x,default:user::rwx,"
        "default:other::r-x,default:mask::r--",
    ),
    "default-mask-given": (
        True,
        0o700,
        ["d:u:nobody:rwx", "d:m::r"],
        "default:user:nobody:rwx,default:mask::r--,user::rwx,group::---,other::---,default:user::rwx,"
        "default:group::---,default:other::---",
    ),
}


def getfacl(path: Path) -> str:
    out = subprocess.run(
        ["getfacl", "-n", "-p", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("# file:"))


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl/getfacl (apt-get install acl)")
@pytest.mark.parametrize("case", list(SETFACL_CASES))
def test_applied_acls_are_what_setfacl_set_makes_of_the_agents_command(tmp_path: Path, case: str) -> None:
    """The agent's ChangeAclCommand: ``perm = "%o" % File.stat(@object).mode``; ``add_ace(":#{perm[0]}")``,
    ``"g::#{perm[1]}"``, ``"o::#{perm[2]}"``; ``if @acl.has_base_named? && !@acl.has_base_mask?
    add_ace("m::#{perm[1]}")``; with a default entry the missing ``d::``, ``d:g::``, ``d:o:`` from the
    mode and ``if @acl.has_default_named? && !@acl.has_default_mask?
    add_ace(@acl.get_default_group_ace.sub("group:","mask"))``; then ``setfacl --set #{acl} #{@object}``.
    Both objects start with ACLs of their own: ``--set`` replaces the access ACL (a folder's default
    ACL too when default entries are given)."""
    for name in ("bob", "www-data"):
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            # Another xdist worker may create it between the check and here: 9 is useradd's "exists".
            made = subprocess.run(["useradd", "--system", "--no-create-home", name], capture_output=True)
            assert made.returncode in (0, 9), made.stderr
    is_dir, mode, texts, agent_command = SETFACL_CASES[case]
    ours, theirs = tmp_path / "ours", tmp_path / "setfacl"
    for path in (ours, theirs):
        path.mkdir() if is_dir else path.write_text("x")
        extra = "u:daemon:rwx" + (",d:u:daemon:r" if is_dir else "")
        subprocess.run(["setfacl", "-m", extra, str(path)], check=True)  # ACLs from before
        path.chmod(mode)
    subprocess.run(["setfacl", "--set", agent_command, str(theirs)], check=True)
    fd = os.open(ours, os.O_RDONLY)
    try:
        acl.apply(fd, acl.compile_rules(texts), str(ours))
    finally:
        os.close(fd)
    assert getfacl(ours) == getfacl(theirs)
    assert ours.stat().st_mode == theirs.stat().st_mode
