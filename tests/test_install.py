"""The Install step on real folders: files mapping, cleanup list, file_exists_behavior, modes, permissions."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from pathlib import Path

import pytest

from s3deploy.appspec import AppSpec, load_appspec
from s3deploy.errors import InstallError
from s3deploy.install import InstallReport, install, read_cleanup_list

Tree = dict[str, str]


def make_bundle(root: Path, files: Tree, appspec: str | None = None) -> Path:
    """A bundle folder holding ``files`` (relative path -> text) and, if given, appspec.yml."""
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if appspec is not None:
        (root / "appspec.yml").write_text("version: 0.0\nos: linux\n" + appspec)
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: (kind, mode, content or link target) — a byte-level listing."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink():
                listing[str(path)] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                listing[str(path)] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                listing[str(path)] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes().hex())
    return listing


class Host:
    """A fake host: a destination folder and a state folder, with a helper to run one install."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.dest = tmp_path / "srv"
        self.cleanup_list = tmp_path / "state" / "installed" / "prod.list"
        self.releases = 0

    def release(self, files: Tree, appspec: str | None = None) -> Path:
        self.releases += 1
        return make_bundle(self.tmp / f"release{self.releases}", files, appspec)

    def deploy(
        self, files: Tree, appspec: str | None = None, *, default: bool = False
    ) -> tuple[Path, InstallReport]:
        bundle = self.release(files, appspec)
        report = install(
            bundle,
            load_appspec(bundle),
            default_destination=self.dest if default else None,
            cleanup_list=self.cleanup_list,
        )
        return bundle, report


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def app_spec(dest: Path, extra: str = "") -> str:
    return f"files:\n  - source: app\n    destination: {dest}\n" + extra


def test_second_install_removes_what_the_first_installed(host: Host) -> None:
    spec = app_spec(host.dest / "app")
    _, report1 = host.deploy(
        {"app/a.txt": "1", "app/sub/b.txt": "1", "app/gone/deep/c.txt": "1", "app/shared/d.txt": "1"}, spec
    )
    (host.dest / "app/shared/foreign.txt").write_text("operator's")
    _, report2 = host.deploy({"app/a.txt": "2", "app/sub/new.txt": "2"}, spec)

    app = host.dest / "app"
    assert sorted(p.relative_to(app).as_posix() for p in app.rglob("*")) == [
        "a.txt",
        "shared",
        "shared/foreign.txt",
        "sub",
        "sub/new.txt",
    ]
    assert (app / "a.txt").read_text() == "2"
    files, dirs = read_cleanup_list(host.cleanup_list)
    assert sorted(files) == sorted(report2.files) == [str(app / "a.txt"), str(app / "sub/new.txt")]
    assert str(host.dest) in dirs and str(app / "sub") in dirs and str(app / "gone") not in dirs
    assert str(app / "gone/deep/c.txt") in report1.files


def test_disallow_conflict_changes_nothing_and_lists_every_conflict(host: Host) -> None:
    spec = app_spec(host.dest)
    host.deploy({"app/mine.txt": "1", "app/sub/mine2.txt": "1"}, spec)
    (host.dest / "a.txt").write_text("foreign a")
    (host.dest / "sub/b.txt").write_text("foreign b")
    before, list_before = snapshot(host.tmp / "srv"), host.cleanup_list.read_bytes()
    bundle = host.release({"app/a.txt": "2", "app/sub/b.txt": "2", "app/c.txt": "2"}, spec)

    with pytest.raises(InstallError) as info:
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    message = str(info.value)
    assert "2 file(s) already exist" in message
    assert str(host.dest / "a.txt") in message and str(host.dest / "sub/b.txt") in message
    assert "OVERWRITE or RETAIN" in message
    assert snapshot(host.tmp / "srv") == before
    assert host.cleanup_list.read_bytes() == list_before


def test_disallow_message_is_capped(host: Host) -> None:
    host.dest.mkdir()
    for i in range(13):
        (host.dest / f"f{i:02}").write_text("x")
    bundle = host.release({f"app/f{i:02}": "y" for i in range(13)}, app_spec(host.dest))
    with pytest.raises(InstallError, match=r"(?s)13 file\(s\).*\.\.\. and 3 more") as info:
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert str(host.dest / "f09") in str(info.value) and str(host.dest / "f10") not in str(info.value)


def test_overwrite_adopts_the_file_so_the_next_install_removes_it(host: Host) -> None:
    spec = app_spec(host.dest, "file_exists_behavior: OVERWRITE\n")
    host.dest.mkdir()
    (host.dest / "config.ini").write_text("foreign")
    _, report = host.deploy({"app/config.ini": "ours"}, spec)
    assert (host.dest / "config.ini").read_text() == "ours"
    assert str(host.dest / "config.ini") in read_cleanup_list(host.cleanup_list)[0]
    assert report.copied == 1
    host.deploy({"app/other.txt": "x"}, spec)
    assert not (host.dest / "config.ini").exists()


def test_retain_keeps_the_file_and_never_removes_it(host: Host) -> None:
    spec = app_spec(host.dest, "file_exists_behavior: RETAIN\n")
    host.dest.mkdir()
    (host.dest / "config.ini").write_text("foreign")
    _, report = host.deploy({"app/config.ini": "ours", "app/x.txt": "x"}, spec)
    assert (host.dest / "config.ini").read_text() == "foreign"
    assert report.skipped_retained == 1 and report.files == [str(host.dest / "x.txt")]
    assert str(host.dest / "config.ini") not in read_cleanup_list(host.cleanup_list)[0]
    host.deploy({"app/y.txt": "y"}, spec)
    assert (host.dest / "config.ini").read_text() == "foreign"
    assert not (host.dest / "x.txt").exists()


def test_file_source_lands_in_destination_folder_and_missing_folders_are_created(host: Host) -> None:
    spec = (
        f"files:\n  - source: config/app.conf\n    destination: {host.dest}/etc/deep\n"
        f"  - source: web\n    destination: {host.dest}/www\n"
    )
    _, report = host.deploy({"config/app.conf": "conf", "web/index.html": "hi", "web/css/s.css": "s"}, spec)
    assert (host.dest / "etc/deep/app.conf").read_text() == "conf"
    assert (host.dest / "www/index.html").read_text() == "hi"
    assert (host.dest / "www/css/s.css").read_text() == "s"
    assert not (host.dest / "www/web").exists()
    for created in (
        host.dest,
        host.dest / "etc",
        host.dest / "etc/deep",
        host.dest / "www",
        host.dest / "www/css",
    ):
        assert str(created) in report.dirs
    # a release going elsewhere removes every folder the first one created
    other = host.tmp / "other"
    host.deploy({"x.txt": "x"}, f"files:\n  - source: x.txt\n    destination: {other}\n")
    assert not host.dest.exists()
    assert (other / "x.txt").read_text() == "x"


def test_modes_and_symlinks_are_kept(host: Host) -> None:
    bundle = host.release(
        {"app/run.sh": "#!/bin/sh\n", "app/secret": "s", "app/conf/a.txt": "a"}, app_spec(host.dest)
    )
    os.chmod(bundle / "app/run.sh", 0o755)
    os.chmod(bundle / "app/secret", 0o600)
    os.chmod(bundle / "app/conf", 0o750)
    os.symlink("conf/a.txt", bundle / "app/link")
    os.symlink("conf", bundle / "app/dirlink")
    os.symlink("/nonexistent/target", bundle / "app/dangling")
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)

    assert stat.S_IMODE((host.dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((host.dest / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((host.dest / "conf").stat().st_mode) == 0o750
    assert os.readlink(host.dest / "link") == "conf/a.txt"
    assert os.readlink(host.dest / "dirlink") == "conf" and (host.dest / "dirlink").is_symlink()
    assert os.readlink(host.dest / "dangling") == "/nonexistent/target"
    assert (host.dest / "run.sh").stat().st_mtime_ns == (bundle / "app/run.sh").stat().st_mtime_ns


def test_read_only_source_folder_is_copied(host: Host) -> None:
    bundle = host.release({"app/ro/a.txt": "a"}, app_spec(host.dest))
    os.chmod(bundle / "app/ro", 0o555)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert (host.dest / "ro/a.txt").read_text() == "a"
    assert stat.S_IMODE((host.dest / "ro").stat().st_mode) == 0o555


def test_permissions_pattern_except_type_and_mode(host: Host) -> None:
    spec = app_spec(
        host.dest / "app",
        f"permissions:\n"
        f"  - object: {host.dest}/app\n    pattern: '*.sh'\n    except: [skip.sh]\n"
        "    mode: 750\n    type: [file]\n"
        f"  - object: {host.dest}/app\n    type: [directory]\n    mode: '0700'\n",
    )
    files = {"app/run.sh": "", "app/skip.sh": "", "app/readme.txt": "", "app/bin/nested.sh": ""}
    host.deploy(files, spec)
    app = host.dest / "app"
    modes = {p.relative_to(app).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [app, *app.rglob("*")]}
    assert modes == {
        ".": 0o700,  # created by this install, so the object itself counts
        "run.sh": 0o750,
        "skip.sh": 0o644,
        "readme.txt": 0o644,
        "bin": 0o700,
        "bin/nested.sh": 0o644,  # CodeDeploy: a pattern other than "**" matches direct children only
    }


def test_permissions_leave_existing_folders_and_foreign_files_alone(host: Host) -> None:
    host.dest.mkdir(mode=0o755)
    (host.dest / "foreign.txt").write_text("f")
    spec = app_spec(host.dest, f"permissions:\n  - object: {host.dest}\n    mode: 600\n")
    host.deploy({"app/a.txt": "a"}, spec)
    assert stat.S_IMODE(host.dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((host.dest / "foreign.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((host.dest / "a.txt").stat().st_mode) == 0o600


def test_permissions_owner_and_group_by_name(host: Host) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    spec = app_spec(
        host.dest, f"permissions:\n  - object: {host.dest}\n    owner: {user}\n    group: {group}\n"
    )
    host.deploy({"app/a.txt": "a"}, spec)
    st = (host.dest / "a.txt").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_unknown_owner_fails_before_anything_changes(host: Host) -> None:
    spec = app_spec(host.dest, f"permissions:\n  - object: {host.dest}\n    owner: no-such-user-s3deploy\n")
    bundle = host.release({"app/a.txt": "a"}, spec)
    with pytest.raises(InstallError, match="owner 'no-such-user-s3deploy' is not a user"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert not host.dest.exists() and not host.cleanup_list.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    acls: ['u:nobody:r']\n", "acls need setfacl, not installed"),
        ("    context: {type: httpd_sys_content_t}\n", "context needs SELinux"),
    ],
)
def test_acls_and_context_need_their_tools(
    host: Host, monkeypatch: pytest.MonkeyPatch, extra: str, message: str
) -> None:
    monkeypatch.setenv("PATH", str(host.tmp / "empty-bin"))
    spec = app_spec(host.dest, f"permissions:\n  - object: {host.dest}\n{extra}")
    bundle = host.release({"app/a.txt": "a"}, spec)
    with pytest.raises(InstallError, match=message):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert not host.dest.exists()


def test_stale_list_from_a_crash_is_cleaned_up(host: Host) -> None:
    spec = app_spec(host.dest / "app")
    host.deploy({"app/a.txt": "1"}, spec)
    # a crash after the union list was written: it also names a half-installed release's files and folder
    (host.dest / "app/half").mkdir()
    (host.dest / "app/half/partial.txt").write_text("partial")
    (host.dest / "app/b.txt").write_text("partial")
    files, dirs = read_cleanup_list(host.cleanup_list)
    host.cleanup_list.write_text(
        json.dumps(
            {
                "version": 1,
                "files": [
                    *files,
                    str(host.dest / "app/half/partial.txt"),
                    str(host.dest / "app/b.txt"),
                    str(host.dest / "app/never-copied.txt"),
                ],
                "dirs": [*dirs, str(host.dest / "app/half")],
            }
        )
    )
    host.deploy({"app/b.txt": "2"}, spec)  # b.txt is not a conflict: the list holds it
    assert sorted(p.name for p in (host.dest / "app").iterdir()) == ["b.txt"]
    assert (host.dest / "app/b.txt").read_text() == "2"
    assert read_cleanup_list(host.cleanup_list)[0] == [str(host.dest / "app/b.txt")]


def test_no_files_installs_whole_bundle_into_default_destination(host: Host) -> None:
    bundle, report = host.deploy({"index.html": "hi", "scripts/AfterInstall.sh": "#!/bin/sh\n"}, default=True)
    assert sorted(p.relative_to(host.dest).as_posix() for p in host.dest.rglob("*")) == [
        "index.html",
        "scripts",
        "scripts/AfterInstall.sh",
    ]
    assert report.copied == 2


def test_no_files_and_no_destination_fails(host: Host) -> None:
    bundle = host.release({"index.html": "hi"})
    with pytest.raises(InstallError, match="no `files` in its appspec and section has no `destination`"):
        install(bundle, AppSpec(), default_destination=None, cleanup_list=host.cleanup_list)


def test_two_sources_for_one_destination_fail(host: Host) -> None:
    spec = (
        f"files:\n  - source: a/x.txt\n    destination: {host.dest}\n"
        f"  - source: b/x.txt\n    destination: {host.dest}\n"
    )
    bundle = host.release({"a/x.txt": "a", "b/x.txt": "b"}, spec)
    with pytest.raises(InstallError, match="same destination"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert not host.dest.exists()


def test_corrupt_cleanup_list_is_reported(host: Host) -> None:
    host.cleanup_list.parent.mkdir(parents=True)
    host.cleanup_list.write_text("{not json")
    bundle = host.release({"app/a.txt": "a"}, app_spec(host.dest))
    with pytest.raises(InstallError, match=f"cleanup list {host.cleanup_list} is unreadable"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)


def test_permission_on_a_single_installed_file(host: Host) -> None:
    spec = app_spec(host.dest, f"permissions:\n  - object: {host.dest}/run.sh\n    mode: 0700\n")
    host.deploy({"app/run.sh": "#!/bin/sh\n", "app/other.sh": ""}, spec)
    assert stat.S_IMODE((host.dest / "run.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE((host.dest / "other.sh").stat().st_mode) == 0o644
