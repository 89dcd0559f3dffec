"""Staging a bundle into a release folder: what is moved, what stays in the bundle and is copied, modes,
hard links, conflicts, and a release on another filesystem than the state directory."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3deploy.appspec import AppSpec, FileMapping, HookScript
from s3deploy.errors import InstallError
from s3deploy.install.activation import live_release, prepare_release, switch
from s3deploy.install.release_stage import bundle_keep, split_mappings, stage_release

IS_ROOT = os.geteuid() == 0
APP = {
    "app/index.php": "<?php echo 1;",
    "app/css/site.css": "body{}",
    "app/vendor/lib/x.php": "<?php",
    "scripts/start.sh": "#!/bin/sh\n. ./scripts/common.sh\n",
    "scripts/common.sh": "PORT=80",
    "scripts/lib/util.sh": "true",
    "conf/nginx.conf": "server {}",
    "appspec.yml": "version: 0.0",
    "README": "read me",
}


def make_bundle(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_ino for p in root.rglob("*")}


def contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def stage(tmp_path: Path, mappings: list[FileMapping], **kwargs: object) -> tuple[Path, Path]:
    d = tmp_path / "www" / "html"
    release = prepare_release(d, "d-1")
    keep = kwargs.pop("keep", ["appspec.yml", "scripts/start.sh"])
    stage_release(tmp_path / "bundle", mappings, d, release, keep=keep, **kwargs)  # type: ignore[arg-type]
    return d, release


def test_folders_without_hook_scripts_are_moved_and_the_hook_folder_is_copied(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    before = inodes(bundle)
    d = tmp_path / "www" / "html"
    release = prepare_release(d, "d-1")
    report = stage_release(
        bundle, [FileMapping("/", str(d))], d, release, keep=["appspec.yml", "scripts/start.sh"]
    )
    assert contents(release) == APP
    assert sorted(report.moved) == ["app", "conf"]
    after = inodes(release)
    for rel in ("app", "app/index.php", "app/vendor/lib/x.php", "conf/nginx.conf"):
        assert after[rel] == before[rel]  # renamed, not copied
    for rel in ("scripts/start.sh", "scripts/common.sh", "scripts/lib/util.sh", "appspec.yml", "README"):
        assert after[rel] != before[rel]  # the hook's folder (whole) and the root's files are copies...
        assert (bundle / rel).read_text() == APP[rel]  # ...and stay in the bundle for the hooks
    assert not (bundle / "app").exists() and report.copied == 5


def test_a_hard_linked_file_is_copied_never_shared_with_the_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    os.link(bundle / "scripts" / "start.sh", bundle / "app" / "start.sh")  # unpacking makes tar hardlinks
    d, release = stage(tmp_path, [FileMapping("app", str(tmp_path / "www" / "html"))])
    assert (release / "start.sh").lstat().st_ino != (bundle / "scripts" / "start.sh").lstat().st_ino
    assert (bundle / "scripts" / "start.sh").lstat().st_nlink == 2  # the bundle keeps its two names
    assert (release / "css" / "site.css").lstat().st_nlink == 1 and (release / "index.php").is_file()


def test_modes_come_from_the_bundle_and_folders_get_no_group_or_other_write(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    for path in (
        bundle / "app" / "index.php",
        bundle / "scripts" / "common.sh",
        bundle / "conf" / "nginx.conf",
    ):
        path.chmod(0o644)  # unpacking narrowed them from 0666; the modes file says so
    (bundle / "app" / "css").chmod(0o750)
    modes = {p: 0o666 for p in (bundle / "app" / "index.php", bundle / "conf" / "nginx.conf")}
    modes[bundle / "scripts" / "common.sh"] = 0o664
    d = tmp_path / "www" / "html"
    old_umask = os.umask(0)
    try:
        stage(tmp_path, [FileMapping("/", str(d)), FileMapping("app", str(d / "deep" / "er"))], modes=modes)
    finally:
        os.umask(old_umask)
    release = tmp_path / "www" / ".html.s3deploy-releases" / "d-1"
    mode = {str(p.relative_to(release)): stat.S_IMODE(p.lstat().st_mode) for p in release.rglob("*")}
    assert mode["app/index.php"] == mode["deep/er/index.php"] == 0o666
    assert mode["scripts/common.sh"] == 0o664  # copied
    assert mode["conf/nginx.conf"] == 0o666 and not (bundle / "conf").exists()  # moved
    assert mode["app/css"] == mode["deep/er/css"] == 0o750
    assert mode["deep"] == mode["deep/er"] == mode["scripts"] == 0o755
    assert all(m & 0o022 == 0 for rel, m in mode.items() if (release / rel).is_dir())
    assert (bundle / "scripts" / "common.sh").stat().st_mode & 0o777 == 0o644  # the bundle stays narrowed


def test_the_source_of_another_entry_stays_in_the_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    d = tmp_path / "www" / "html"
    inside, outside = split_mappings(
        [
            FileMapping("/", str(d)),
            FileMapping("conf", "/etc/nginx/sites"),
            FileMapping("app/css", f"{d}/s"),
        ],
        d,
    )
    assert outside == (FileMapping("conf", "/etc/nginx/sites"),)
    release = prepare_release(d, "d-1")
    report = stage_release(bundle, inside, d, release, keep=[], others=outside)
    assert (bundle / "conf" / "nginx.conf").is_file()
    assert (bundle / "app" / "css" / "site.css").is_file()  # needed by the third entry: copied twice
    assert (release / "app" / "css" / "site.css").is_file() and (release / "s" / "site.css").is_file()
    assert (release / "conf" / "nginx.conf").is_file()
    assert sorted(report.moved) == ["README", "app/index.php", "app/vendor", "appspec.yml", "scripts"]


def test_a_hook_script_that_is_a_link_keeps_the_folder_it_leads_to(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", {**APP, "app/bin/stop.sh": "#!/bin/sh"})
    (bundle / "scripts" / "stop.sh").symlink_to("../app/bin/stop.sh")
    spec = AppSpec(source_file="appspec.yml", hooks={"ApplicationStop": (HookScript("scripts/stop.sh"),)})
    assert bundle_keep(spec) == ["appspec.yml", "scripts/stop.sh"]
    d, release = stage(tmp_path, [FileMapping("app", str(tmp_path / "www" / "html"))], keep=bundle_keep(spec))
    assert (bundle / "app" / "bin" / "stop.sh").is_file() and (release / "bin" / "stop.sh").is_file()
    assert not (bundle / "app" / "vendor").exists()


def test_copy_everything_when_asked_and_a_file_source_lands_in_its_folder(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    before = contents(bundle)
    d = tmp_path / "www" / "html"
    (bundle / "app" / "link").symlink_to("css/site.css")
    _, release = stage(
        tmp_path, [FileMapping("app", str(d)), FileMapping("README", f"{d}/doc")], keep=[], move=False
    )
    assert {**before, "app/link": "body{}"} == contents(bundle)
    assert (release / "doc" / "README").read_text() == "read me"
    assert os.readlink(release / "link") == "css/site.css"


def test_two_sources_for_one_path_are_refused_naming_it(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle", {**APP, "other/index.php": "two"})
    d = tmp_path / "www" / "html"
    with pytest.raises(InstallError, match=r"two sources go to the same destination .*/d-1/index\.php"):
        stage(tmp_path, [FileMapping("app", str(d)), FileMapping("other", str(d))])
    with pytest.raises(InstallError, match="is not in the bundle"):
        stage(tmp_path, [FileMapping("missing", str(d))])


def test_an_entry_whose_destination_holds_d_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "www" / "html"
    with pytest.raises(InstallError, match=r"holds .*/www/html, which activation = symlink makes a link"):
        split_mappings([FileMapping("/", str(tmp_path / "www"))], d)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "other-fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_release_on_another_filesystem_than_the_state_dir_is_copied(tmp_path: Path, tmpfs: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", APP)
    before = contents(bundle)
    d = tmpfs / "www" / "html"
    release = prepare_release(d, "d-1")
    report = stage_release(bundle, [FileMapping("/", str(d))], d, release, keep=["appspec.yml"])
    assert report.moved == [] and report.copied == len(APP)
    assert contents(release) == APP and contents(bundle) == before
    switch(d, release)
    assert live_release(d) == release and (d / "app" / "index.php").read_text() == APP["app/index.php"]
