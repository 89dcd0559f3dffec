"""Atomic activation on real folders: switches under readers, the first switch over a real folder, switching
back, pruning, links planted by another user, filesystems that cannot exchange."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3deploy.errors import InstallError
from s3deploy.install import activation
from s3deploy.install.activation import Previous, live_release, prepare_release, prune, switch, switch_back
from tests.readers import readers as reading

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
# every release holds these files, each with the release's marker: a reader that resolved D once must
# find the same marker in all of them
FILES = ("index.html", "css/site.css", "js/app/main.js")


def dest(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir(exist_ok=True)
    return tmp_path / "www" / "html"


def releases_root(d: Path) -> Path:
    return d.parent / f".{d.name}.s3deploy-releases"


def fill(folder: Path, marker: str) -> Path:
    for rel in FILES:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(f"{marker}\n" * 200)
    return folder


def make_release(d: Path, deployment_id: str) -> Path:
    return fill(prepare_release(d, deployment_id), deployment_id)


def readers(d: Path) -> contextlib.AbstractContextManager[tuple[list[str], set[str]]]:
    """Three threads reading D while the body runs (tests/readers.py)."""
    return reading(d, FILES, 200)


def as_user(uid: int, folder: Path, script: str) -> None:
    """Run the shell ``script`` as ``uid``, with $D naming ``folder`` through an inherited descriptor (the
    user could not reach it by its path under pytest's root-only tmp_path)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        env = {"PATH": "/usr/bin:/bin", "D": f"/proc/self/fd/{fd}"}
        subprocess.run(["/bin/sh", "-ec", script], user=uid, group=uid, pass_fds=(fd,), env=env, check=True)
    finally:
        os.close(fd)


def test_release_root_sits_beside_the_destination_under_a_name_of_its_own(tmp_path: Path) -> None:
    d = dest(tmp_path)
    assert activation.release_root_for(d) == releases_root(d)
    assert activation.release_root_for("/var/www/html/") == Path("/var/www/.html.s3deploy-releases")
    for bad in ("/", "relative/path", "//"):
        with pytest.raises(InstallError, match="activation needs"):
            activation.release_root_for(bad)


def test_prepare_release_makes_a_fresh_folder_only_root_can_write(tmp_path: Path) -> None:
    d = dest(tmp_path)
    old_umask = os.umask(0)
    try:
        release = prepare_release(d, "d-AAAAAAAAA")
    finally:
        os.umask(old_umask)
    (release / "leftover").write_text("from an interrupted attempt")
    assert prepare_release(d, "d-AAAAAAAAA") == release
    assert list(release.iterdir()) == []
    for folder in (releases_root(d), release):
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        assert stat.S_IMODE(st.st_mode) == 0o755
    assert not d.exists()  # D itself appears only with the switch
    for bad in ("", "../x", "a/b", ".hidden", "replaced-20250101T000000Z"):
        with pytest.raises(InstallError, match="expected a deployment id"):
            prepare_release(d, bad)


def test_readers_never_see_a_missing_file_or_a_mix_during_hundreds_of_switches(tmp_path: Path) -> None:
    d = dest(tmp_path)
    releases = [make_release(d, f"d-{i}") for i in range(3)]
    switch(d, releases[0])
    with readers(d) as (problems, seen):
        for i in range(1, 301):
            switch(d, releases[i % 3])
    assert problems == []
    assert len(seen) > 1  # the readers did see switches happen
    assert live_release(d) == releases[0]
    assert os.readlink(d) == ".html.s3deploy-releases/d-0"  # relative: works through any path to D
    assert sorted(p.name for p in releases_root(d).iterdir()) == [
        "d-0",
        "d-1",
        "d-2",
    ]  # no temporary link left


def test_first_switch_over_a_real_folder_keeps_it_and_is_atomic_for_readers(tmp_path: Path) -> None:
    d = dest(tmp_path)
    fill(d, "d-original")
    (d / "uploads").mkdir(mode=0o700)
    (d / "uploads" / "avatar.png").write_bytes(b"\x89PNG")
    os.chown(d / "uploads", NOBODY, NOBODY)
    before = {p: (p.lstat().st_ino, p.lstat().st_mode, p.lstat().st_uid) for p in d.rglob("*")}
    folder_inode = d.lstat().st_ino
    release = make_release(d, "d-1")
    with readers(d) as (problems, seen):
        for _ in range(100):  # the first switch, and back, many times over
            previous = switch(d, release)
            switch_back(previous)
    assert problems == []
    assert seen == {"d-original", "d-1"}
    previous = switch(d, release)
    aside = previous.release_dir
    assert previous.moved_aside and aside is not None and aside.parent == releases_root(d)
    assert aside.name.startswith("replaced-")
    assert aside.lstat().st_ino == folder_inode  # moved, not copied, and nothing deleted
    assert {aside / p.relative_to(d): v for p, v in before.items()} == {
        p: (p.lstat().st_ino, p.lstat().st_mode, p.lstat().st_uid) for p in aside.rglob("*")
    }
    assert (aside / "uploads" / "avatar.png").read_bytes() == b"\x89PNG"
    assert d.is_symlink() and (d / "index.html").read_text().startswith("d-1")
    switch_back(previous)
    assert not d.is_symlink() and d.lstat().st_ino == folder_inode
    assert not aside.exists()


def test_switch_back_returns_to_the_previous_release_and_undoes_a_first_deployment(tmp_path: Path) -> None:
    d = dest(tmp_path)
    first, second = make_release(d, "d-1"), make_release(d, "d-2")
    assert switch(d, first) == Previous(d, None)
    previous = switch(d, second)
    assert previous == Previous(d, first)
    switch_back(previous)
    assert live_release(d) == first and (d / "index.html").read_text().startswith("d-1")
    assert second.is_dir()  # the failed release stays until pruned
    switch_back(Previous(d, None))
    assert not os.path.lexists(d) and first.is_dir()


def test_switch_refuses_a_folder_that_is_not_one_of_its_releases(tmp_path: Path) -> None:
    d = dest(tmp_path)
    make_release(d, "d-1")
    (releases_root(d) / "replaced-20250101T000000Z").mkdir()  # a folder moved aside: switch_back's only
    assert live_release(d) is None and live_release(tmp_path / "no" / "such" / "html") is None
    for bad in (
        tmp_path,
        releases_root(d) / "d-9",
        releases_root(d) / "..",
        tmp_path / "www",
        releases_root(d) / "replaced-20250101T000000Z",
    ):
        with pytest.raises(InstallError, match="is not a release folder"):
            switch(d, bad)
    assert not os.path.lexists(d)


def test_a_link_at_d_that_s3deploy_did_not_make_is_moved_aside_not_followed(tmp_path: Path) -> None:
    d = dest(tmp_path)
    elsewhere = fill(tmp_path / "site", "elsewhere")
    d.symlink_to(elsewhere)
    release = make_release(d, "d-1")
    previous = switch(d, release)
    assert previous.moved_aside and previous.release_dir is not None
    assert os.readlink(previous.release_dir) == str(elsewhere)  # the link itself was kept
    assert (elsewhere / "index.html").read_text().startswith("elsewhere")
    switch_back(previous)
    assert os.readlink(d) == str(elsewhere)


def test_prune_keeps_the_live_release_the_kept_ones_and_folders_moved_aside(tmp_path: Path) -> None:
    d = dest(tmp_path)
    fill(d, "d-original")
    releases = [make_release(d, f"d-{i}") for i in range(1, 6)]
    aside = switch(d, releases[0]).release_dir
    switch(d, releases[3])  # d-4 is live; d-2 is the last good one (the caller says so)
    root = releases_root(d)
    (root / ".link-0123456789ab").symlink_to(".html.s3deploy-releases/d-1")  # left by a crash
    (root / ".prune-0123456789ab").mkdir()  # a deletion a crash interrupted
    (root / ".prune-0123456789ab" / "f").write_text("x")
    (root / ".link-ba9876543210").mkdir()  # D's former folder, exchanged just before a crash
    (root / ".link-ba9876543210" / "f").write_text("kept")
    (root / "notes.txt").write_text("an operator's file")
    assert prune(d, {"d-2"}) == ["d-1", "d-3", "d-5"]
    left = sorted(p.name for p in root.iterdir())
    assert left[:3] == ["d-2", "d-4", "notes.txt"] and len(left) == 5 and aside and aside.name in left
    (crashed,) = [root / name for name in left[3:] if name != aside.name]
    assert crashed.name.startswith("replaced-") and (crashed / "f").read_text() == "kept"
    assert (d / "index.html").read_text().startswith("d-4")
    assert prune(d, set()) == ["d-2"]  # the live release stays whatever keep says
    assert live_release(d) == releases[3]
    assert prune(tmp_path / "never" / "deployed", set()) == []


@pytest.mark.skipif(not IS_ROOT, reason="planting as another user needs root")
def test_prune_never_follows_a_link_another_user_planted_in_a_release(tmp_path: Path) -> None:
    d = dest(tmp_path)
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious").write_text("must survive")
    old = make_release(d, "d-1")
    (old / "uploads" / "deep").mkdir(parents=True)
    os.chown(old / "uploads", NOBODY, NOBODY)  # permissions handed it to the application user
    deep = old / "uploads" / "deep"
    for i in range(300):  # deeper than remove_tree holds descriptors for
        deep = deep / str(i)
    deep.mkdir(parents=True)
    (deep / "link").symlink_to(victim)
    as_user(NOBODY, old / "uploads", f'ln -s {victim} "$D/escape" && ln -s {victim}/sub/precious "$D/file"')
    assert (old / "uploads" / "escape").lstat().st_uid == NOBODY
    switch(d, make_release(d, "d-2"))
    assert prune(d, set()) == ["d-1"]
    assert not old.exists()
    assert (victim / "sub" / "precious").read_text() == "must survive"
    assert sorted(p.name for p in releases_root(d).iterdir()) == ["d-2"]


@pytest.mark.skipif(not IS_ROOT, reason="planting as another user needs root")
def test_a_releases_folder_swapped_for_a_link_by_the_parent_s_owner_is_refused(tmp_path: Path) -> None:
    d = dest(tmp_path)
    os.chown(d.parent, NOBODY, NOBODY)  # the application user owns D's parent (say /srv/app)
    release = make_release(d, "d-1")
    switch(d, release)
    target = tmp_path / "etc"
    target.mkdir()
    as_user(
        NOBODY,
        d.parent,
        f'mv "$D/.html.s3deploy-releases" "$D/moved" && ln -s {target} "$D/.html.s3deploy-releases"',
    )
    for attempt in (
        lambda: prepare_release(d, "d-2"),
        lambda: switch(d, releases_root(d) / "d-1"),
        lambda: prune(d, set()),
    ):
        with pytest.raises(InstallError, match="s3deploy-releases is not a folder"):
            attempt()
    assert list(target.iterdir()) == []


def test_a_parent_reached_through_a_link_root_did_not_plant_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(tmp_path, 0o777)  # anyone could have made the link below
    try:
        (tmp_path / "via").symlink_to(real)
        with pytest.raises(InstallError, match="symbolic link that root did not plant"):
            prepare_release(tmp_path / "via" / "html", "d-1")
        os.chmod(tmp_path, 0o755)  # root's folder, writable by root alone: an operator's link is followed
        release = prepare_release(tmp_path / "via" / "html", "d-1")
    finally:
        os.chmod(tmp_path, 0o700)
    assert release == tmp_path / "via" / ".html.s3deploy-releases" / "d-1"
    assert (real / ".html.s3deploy-releases" / "d-1").is_dir()


@contextlib.contextmanager
def mounted(kind: str, where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", kind, "-o", options, kind, str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount {kind} here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting needs root")
def test_a_filesystem_that_cannot_exchange_gets_a_clear_error_and_keeps_d(tmp_path: Path) -> None:
    # an overlay cannot exchange a folder of its lower layer (as in a container image): EXDEV
    lower = tmp_path / "lower"
    fill(lower / "www" / "html", "d-original")
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    options = f"lowerdir={lower},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'},redirect_dir=off"
    with mounted("overlay", tmp_path / "merged", options) as merged:
        d = merged / "www" / "html"
        release = make_release(d, "d-1")
        with pytest.raises(InstallError) as caught:
            switch(d, release)
        message = str(caught.value)
        assert str(d) in message and "RENAME_EXCHANGE" in message and "activation = copy" in message
        assert not d.is_symlink() and (d / "index.html").read_text().startswith("d-original")
        assert sorted(p.name for p in releases_root(d).iterdir()) == ["d-1"]  # no link left behind


def test_deactivate_turns_d_back_into_a_real_folder_without_a_gap_for_readers(tmp_path: Path) -> None:
    d = dest(tmp_path)
    assert activation.deactivate(d) is None  # never activated: nothing to do
    switch(d, make_release(d, "d-0"))
    with readers(d) as (problems, seen):
        for i in range(1, 31):  # to activation = copy and back, many times over
            assert activation.deactivate(d) == f"d-{i - 1}"  # D: a real folder, the release it linked to
            assert switch(d, make_release(d, f"d-{i}")).moved_aside  # and a link again
    assert problems == []
    assert len(seen) > 1
    assert activation.deactivate(d) == "d-30"
    assert not d.is_symlink() and (d / "index.html").read_text().startswith("d-30")
    assert live_release(d) is None
    assert (releases_root(d) / "d-30" / "index.html").read_text().startswith("d-30")  # D's old link text
    assert prune(d, set()) == []
    left = [p.name for p in releases_root(d).iterdir()]
    assert len(left) == 30 and all(name.startswith("replaced-") for name in left)  # every former D kept
