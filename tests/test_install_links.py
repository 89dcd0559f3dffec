"""Install never follows a link it did not plant (issue 9 item 1).

The attack: an appspec gives the application user (here ``nobody``) the web root; that user replaces an
installed folder with a link to a root-owned folder (a stand-in for /etc/cron.d). The next deployment, as
root, must not delete, write, chown, chmod or set an ACL on anything there: it fails before anything
changes, naming the link. An operator's own link above the destination (/var/www -> /data/www) still
works.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.appspec import load_appspec
from s3deploy.errors import InstallError
from s3deploy.install import installer as installer_module
from s3deploy.install.cleanup import Installed, read_list
from s3deploy.install.installer import install
from tests.test_install import make_bundle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user, as the agent")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def root() -> Iterator[Path]:
    """A folder the application user can reach (tmp_path's parents are private to root)."""
    with tempfile.TemporaryDirectory(prefix="s3deploy-links-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def full_snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` (included): mode, owner, content or link target, and ACL xattrs."""
    tree: dict[str, tuple[Any, ...]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        xattrs = (
            () if path.is_symlink() else tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
        )
        body: Any = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
        tree[str(path.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid, body, xattrs)
    return tree


def victim_folder(root: Path) -> Path:
    """A root-owned folder outside every destination, holding files named like the release's."""
    victim = root / "cron.d"
    victim.mkdir(mode=0o755)
    for name in ("a.txt", "b.txt", "job"):
        (victim / name).write_text(f"root's {name}\n")
        (victim / name).chmod(0o644)
    return victim


def as_nobody(script: str) -> None:
    """Run the shell ``script`` as the application user, as an attacker with that account would."""
    subprocess.run(["/bin/sh", "-ec", script], user=NOBODY.pw_uid, group=NOBODY.pw_gid, check=True, cwd="/")


def owned_spec(dest: Path, extra: str = "") -> str:
    return (
        f"files:\n  - source: app\n    destination: {dest}\n"
        f"permissions:\n  - object: {dest}\n    owner: nobody\n{extra}"
    )


def deploy(root: Path, tag: str, files: dict[str, str], spec: str) -> Path:
    bundle = make_bundle(root / f"release-{tag}", files, spec)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=root / "state" / "prod.list")
    return bundle


def refused(root: Path, tag: str, files: dict[str, str], spec: str, match: str) -> None:
    with pytest.raises(InstallError, match=match):
        deploy(root, tag, files, spec)


def test_a_folder_the_app_user_replaced_with_a_link_is_refused_and_nothing_there_changes(root: Path) -> None:
    dest, victim = root / "srv", victim_folder(root)
    deploy(root, "v1", {"app/index.html": "1", "app/www/a.txt": "1", "app/www/b.txt": "1"}, owned_spec(dest))
    assert (dest / "www").stat().st_uid == NOBODY.pw_uid  # the application user owns the web root
    as_nobody(f"mv {dest}/www {dest}/www-old; ln -s {victim} {dest}/www")
    before, dest_before, list_before = (
        full_snapshot(victim),
        full_snapshot(dest),
        read_list(root / "state/prod.list"),
    )

    # v2 writes www/a.txt and www/c.txt, drops www/b.txt, chmods everything 0777 and sets an ACL
    spec = owned_spec(dest, "    mode: 777\n    acls: ['u:nobody:rwx']\n")
    v2 = {"app/index.html": "2", "app/www/a.txt": "2", "app/www/c.txt": "2"}
    refused(root, "v2", v2, spec, f"{dest}/www is a symbolic link inside a destination")

    assert full_snapshot(victim) == before  # nothing deleted, written, chowned, chmodded or ACL'd there
    assert full_snapshot(dest) == dest_before  # and nothing changed in the destination either
    assert read_list(root / "state/prod.list") == list_before


def test_a_link_where_only_the_previous_release_had_files_is_refused_before_its_cleanup(root: Path) -> None:
    dest, victim = root / "srv", victim_folder(root)
    deploy(root, "v1", {"app/index.html": "1", "app/www/a.txt": "1", "app/www/b.txt": "1"}, owned_spec(dest))
    as_nobody(f"rm -r {dest}/www; ln -s {victim} {dest}/www")
    before = full_snapshot(victim)
    refused(root, "v2", {"app/index.html": "2"}, owned_spec(dest), f"{dest}/www is a symbolic link inside")
    assert full_snapshot(victim) == before  # www/a.txt and www/b.txt were not removed through the link
    assert (dest / "index.html").read_text() == "1"


def test_the_destination_itself_replaced_by_the_app_user_is_refused(root: Path) -> None:
    """The operator gave the application user the folder holding the destination: a link it puts there
    is its own (not root's), so it is not followed, even at the destination root."""
    apps, victim = root / "apps", victim_folder(root)
    apps.mkdir()
    os.chown(apps, NOBODY.pw_uid, NOBODY.pw_gid)
    dest = apps / "site"
    deploy(root, "v1", {"app/a.txt": "1", "app/b.txt": "1"}, owned_spec(dest))
    as_nobody(f"rm -r {dest}; ln -s {victim} {dest}")
    before = full_snapshot(victim)
    refused(
        root,
        "v2",
        {"app/a.txt": "2"},
        owned_spec(dest, "    mode: 777\n"),
        f"{dest} is a symbolic link that root did not plant",
    )
    assert full_snapshot(victim) == before


def test_an_operators_link_above_the_destination_is_followed(root: Path) -> None:
    """/var/www -> /data/www, made by root in a root-only folder: the destination lives at the target."""
    data = root / "data"
    (data / "www").mkdir(parents=True)
    (root / "var-www").symlink_to(data / "www")
    dest = root / "var-www" / "html"
    deploy(
        root,
        "v1",
        {"app/a.txt": "1", "app/sub/b.txt": "1"},
        f"files:\n  - source: app\n    destination: {dest}\n",
    )
    assert (data / "www/html/sub/b.txt").read_text() == "1"
    deploy(root, "v2", {"app/a.txt": "2"}, f"files:\n  - source: app\n    destination: {dest}\n")
    assert sorted(p.name for p in (data / "www/html").iterdir()) == ["a.txt"]
    # an operator's link as the destination itself is followed too
    (data / "site").mkdir()
    (root / "site").symlink_to(data / "site")
    deploy(root, "v3", {"app/c.txt": "3"}, f"files:\n  - source: app\n    destination: {root / 'site'}\n")
    assert (data / "site/c.txt").read_text() == "3"
    assert not (data / "www/html").exists()  # v2's files and the folder v1 created are gone


@pytest.mark.parametrize("folder_mode", [0o777, 0o775, 0o1777])
def test_a_root_link_in_a_folder_others_can_write_is_not_followed(root: Path, folder_mode: int) -> None:
    """Another user could swap such a link between the check and the use: only a root-only folder counts."""
    shared, victim = root / "shared", victim_folder(root)
    shared.mkdir()
    shared.chmod(folder_mode)
    (shared / "site").symlink_to(victim)
    dest = shared / "site" / "html"
    before = full_snapshot(victim)
    refused(
        root,
        "v1",
        {"app/a.txt": "1"},
        f"files:\n  - source: app\n    destination: {dest}\n",
        f"{shared}/site is a symbolic link that root did not plant",
    )
    assert full_snapshot(victim) == before


def test_a_link_planted_after_the_plan_is_not_followed_by_the_cleanup_or_the_copy(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the link appears between the checks and the changes (here, when the union list is
    written). Every change goes through folder descriptors, so the swapped link is met and refused."""
    dest, victim = root / "srv", victim_folder(root)
    deploy(root, "v1", {"app/www/a.txt": "1", "app/www/b.txt": "1"}, owned_spec(dest))
    real_write = installer_module.write_list

    def swap_then_write(path: Path, installed: Installed) -> None:
        if not (dest / "www").is_symlink():
            as_nobody(f"mv {dest}/www {dest}/www-old; ln -s {victim} {dest}/www")
        real_write(path, installed)

    monkeypatch.setattr(installer_module, "write_list", swap_then_write)
    before = full_snapshot(victim)
    spec = owned_spec(dest, "    mode: 777\n")
    refused(
        root,
        "v2",
        {"app/www/a.txt": "2", "app/www/c.txt": "2"},
        spec,
        f"{dest}/www is a symbolic link inside",
    )
    assert full_snapshot(victim) == before
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_uid == 0
