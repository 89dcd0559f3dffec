"""The Install step on real folders: files mapping, cleanup list, file_exists_behavior, modes, permissions."""

from __future__ import annotations

import errno
import functools
import grp
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from s3deploy.appspec import load_appspec
from s3deploy.errors import InstallError
from s3deploy.install import acl
from s3deploy.install import copy as copy_module
from s3deploy.install.cleanup import read_list
from s3deploy.install.installer import InstallReport, install

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


def read_cleanup_list(path: Path) -> tuple[list[str], list[str]]:
    installed = read_list(path)
    return installed.files, installed.dirs


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


@pytest.fixture(params=["sequential", "threads"])
def host(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """Every test on ``host`` runs twice: files copied in order, and over the copy lanes (the path plans
    of PARALLEL_MIN_FILES files take)."""
    if request.param == "threads":
        monkeypatch.setattr(copy_module, "PARALLEL_MIN_FILES", 1)
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
    assert stat.S_IMODE((host.dest / "conf").stat().st_mode) == 0o755  # mkdir's, as with CodeDeploy
    assert os.readlink(host.dest / "link") == "conf/a.txt"
    assert os.readlink(host.dest / "dirlink") == "conf" and (host.dest / "dirlink").is_symlink()
    assert os.readlink(host.dest / "dangling") == "/nonexistent/target"
    assert (host.dest / "run.sh").stat().st_mtime_ns == (bundle / "app/run.sh").stat().st_mtime_ns


def test_read_only_source_folder_is_copied(host: Host) -> None:
    bundle = host.release({"app/ro/a.txt": "a"}, app_spec(host.dest))
    os.chmod(bundle / "app/ro", 0o555)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert (host.dest / "ro/a.txt").read_text() == "a"
    assert stat.S_IMODE((host.dest / "ro").stat().st_mode) == 0o755  # mkdir's, not the bundle folder's


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
        ("    context: {type: httpd_sys_content_t}\n", "context needs SELinux"),
        (
            "    acls: ['u:nobody:r', 'u:no-such-user-s3deploy:r']\n",
            r"acls\[1\]: 'no-such-user-s3deploy' is not a user",
        ),
    ],
)
def test_context_needs_its_tools_and_bad_acls_fail_before_anything_changes(
    host: Host, monkeypatch: pytest.MonkeyPatch, extra: str, message: str
) -> None:
    monkeypatch.setenv("PATH", str(host.tmp / "empty-bin"))
    spec = app_spec(host.dest, f"permissions:\n  - object: {host.dest}\n{extra}")
    bundle = host.release({"app/a.txt": "a"}, spec)
    with pytest.raises(InstallError, match=message):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert not host.dest.exists()


def test_acls_are_applied_without_setfacl(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """CodeDeploy needs setfacl; s3deploy writes the ACL itself (no tool on PATH here), as the agent's
    ``setfacl --set`` would: the mask is the mode's group bits (0640: r--), so nobody may read, not write."""
    monkeypatch.setenv("PATH", str(host.tmp / "empty-bin"))
    nobody = pwd.getpwnam("nobody")
    perms = (
        f"permissions:\n  - object: {host.dest}\n    pattern: '**'\n    except: [secret.txt]\n"
        "    type: [file, directory]\n    acls: ['u:nobody:rwx', 'd:u:nobody:r']\n"
    )
    bundle = host.release(
        {"app/a.txt": "a", "app/secret.txt": "s", "app/sub/b.txt": "b"}, app_spec(host.dest, perms)
    )
    for name in ("a.txt", "secret.txt", "sub/b.txt"):
        (bundle / "app" / name).chmod(0o640)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    a, sub, u = str(host.dest / "a.txt"), str(host.dest / "sub"), acl.UNDEFINED_ID
    assert acl.read(a) == {
        (acl.USER_OBJ, u): 6, (acl.USER, nobody.pw_uid): 7, (acl.GROUP_OBJ, u): 4,
        (acl.MASK, u): 4, (acl.OTHER, u): 0,
    }  # fmt: skip
    assert os.stat(a).st_mode & 0o777 == 0o640  # the mask is the group bits: the mode is unchanged
    assert acl.read(str(host.dest / "secret.txt")) is None  # excepted
    assert acl.read(a, acl.DEFAULT) is None  # a default entry is for folders only
    assert acl.read(sub, acl.DEFAULT) == {
        (acl.USER_OBJ, u): 7, (acl.USER, nobody.pw_uid): 4, (acl.GROUP_OBJ, u): 5,
        (acl.MASK, u): 5, (acl.OTHER, u): 5,
    }  # fmt: skip
    # The kernel applies it: a file created in sub inherits nobody's entry.
    (host.dest / "sub" / "new.txt").write_text("new")
    assert (acl.USER, nobody.pw_uid) in (acl.read(str(host.dest / "sub" / "new.txt")) or {})
    if os.geteuid() == 0:  # and enforces it: nobody reads a.txt (not writes), not secret.txt (root's, 640)
        code = (
            "import os, sys\n"
            "os.chdir(sys.argv[1]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[3]))\n"
            "try:\n    f = open(sys.argv[4], sys.argv[5])\n"
            "    print(f.read() if 'r' in f.mode else 'written')\n"
            "except PermissionError:\n    print('denied')\n"
        )
        as_nobody = [sys.executable, "-c", code, str(host.dest), str(nobody.pw_gid), str(nobody.pw_uid)]
        run = functools.partial(subprocess.run, capture_output=True, text=True)
        assert run([*as_nobody, "a.txt", "r"]).stdout == "a\n"
        assert run([*as_nobody, "a.txt", "a"]).stdout == "denied\n"
        assert run([*as_nobody, "secret.txt", "r"]).stdout == "denied\n"


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


def test_no_files_and_no_destination_installs_nothing_and_removes_the_previous_release(host: Host) -> None:
    """Issue 13 item 1: a hooks-only appspec installs nothing, as with the agent, whose
    ``generate_instructions`` loops over ``application_specification.files`` (``yaml_hash['files'] || []``)
    after the previous release's cleanup file was executed."""
    host.deploy({"app/a.txt": "1"}, app_spec(host.dest / "app"))
    bundle = host.release({"index.html": "hi"}, "")
    report = install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert report.files == [] and report.copied == 0
    assert not host.dest.exists()  # the previous release's files and the folders it created are gone
    assert read_cleanup_list(host.cleanup_list) == ([], [])


def test_a_bundle_without_an_appspec_needs_a_destination(host: Host) -> None:
    bundle = host.release({"index.html": "hi"})
    with pytest.raises(InstallError, match="bundle has no appspec and section has no `destination`"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)


def test_two_sources_for_one_destination_fail(host: Host) -> None:
    spec = (
        f"files:\n  - source: a/x.txt\n    destination: {host.dest}\n"
        f"  - source: b/x.txt\n    destination: {host.dest}\n"
    )
    bundle = host.release({"a/x.txt": "a", "b/x.txt": "b"}, spec)
    with pytest.raises(InstallError, match="same destination"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert not host.dest.exists()


def test_a_file_named_like_the_installers_temporary_copy_is_refused(host: Host) -> None:
    """Copying x goes through x.s3deploy-tmp: a bundle holding both would lose one without a word."""
    bundle = host.release({"app/x": "x", "app/x.s3deploy-tmp": "mine"}, app_spec(host.dest))
    with pytest.raises(InstallError, match=r"x\.s3deploy-tmp would be overwritten by the temporary copy of"):
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


def relative_snapshot(root: Path) -> dict[str, tuple[str, int, str, int]]:
    """``snapshot`` keyed by path under ``root``, with each file's mtime (links and folders: 0)."""
    return {
        str(Path(path).relative_to(root)): (
            *entry,
            Path(path).lstat().st_mtime_ns if entry[0] == "file" else 0,
        )
        for path, entry in snapshot(root).items()
    }


def big_tree(folders: int, per_folder: int) -> Tree:
    """``folders`` x ``per_folder`` files under ``app/``, in the order the plan copies them."""
    names = [f"d{d:02}/f{f:03}" for d in range(folders) for f in range(per_folder)]
    return {f"app/{name}": f"{name}\n" * (len(name) % 7) for name in names}


def test_big_tree_is_copied_exactly_by_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = Host(tmp_path)
    bundle = host.release({}, app_spec(host.dest / "www"))
    app = bundle / "app"
    for d in range(8):
        folder = app / f"pkg{d}" / "mod"
        folder.mkdir(parents=True)
        for f in range(60):
            path = folder / f"f{f:02}"
            path.write_bytes(os.urandom(f * 97) if f % 3 else b"#!/bin/sh\necho hi\n" * f)
            path.chmod([0o755, 0o640, 0o600, 0o4755, 0o444][f % 5])
        (folder / "link").symlink_to("f01")
        (folder / "dangling").symlink_to("/nonexistent/target")
        (app / f"pkg{d}" / "up").symlink_to("mod")
        folder.chmod(0o750)
    (app / "big.bin").write_bytes(os.urandom(3 << 20))
    planned = sum(1 for p in app.rglob("*") if not p.is_dir() or p.is_symlink())
    assert planned >= copy_module.PARALLEL_MIN_FILES
    writers: dict[str, set[str]] = {}  # folder -> threads that copied into it
    real_copy_one = copy_module.copy_one

    def spy(source: Path, folder: int, dest: str, mode: int | None) -> None:
        writers.setdefault(os.path.dirname(dest), set()).add(threading.current_thread().name)
        real_copy_one(source, folder, dest, mode)

    monkeypatch.setattr(copy_module, "copy_one", spy)
    report = install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)

    for folder in [app, *app.rglob("*")]:  # Install gives the folders it creates mkdir's mode
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    assert relative_snapshot(host.dest / "www") == relative_snapshot(app)
    assert stat.S_IMODE((host.dest / "www/pkg3/mod/f03").stat().st_mode) == 0o4755
    threads = set().union(*writers.values())
    assert len(threads) > 1 and all(name.startswith("install") for name in threads)
    assert all(len(names) == 1 for names in writers.values())  # one thread per folder: no lock waits
    listed = set(read_cleanup_list(host.cleanup_list)[0])
    assert report.copied == planned
    assert listed == {
        str(host.dest / "www" / p.relative_to(app))
        for p in app.rglob("*")
        if not p.is_dir() or p.is_symlink()
    }


@pytest.mark.parametrize(
    ("injection", "message"),
    [("fifo", "neither a regular file nor a symlink"), ("removed", "No such file or directory")],
    ids=["fifo", "removed"],
)
def test_failure_in_a_parallel_copy_names_the_file_and_the_list_covers_what_was_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, injection: str, message: str
) -> None:
    host = Host(tmp_path)
    spec = app_spec(host.dest)
    host.deploy({"app/old/gone.txt": "1"}, spec)
    tree = big_tree(10, 60)
    bundle = host.release(tree, spec)
    names = [rel.removeprefix("app/") for rel in tree]
    assert len(names) >= copy_module.PARALLEL_MIN_FILES
    # in the middle of the plan and of its folder, whose files one thread copies in order
    broken, before_it = "d04/f048", "d04/f047"
    if injection == "fifo":  # planned as a file, found to be something else when copied
        (bundle / "app" / broken).unlink()
        os.mkfifo(bundle / "app" / broken)
    else:  # gone from the bundle after the plan, before its copy
        real_copy_one = copy_module.copy_one

        def remove_next(source: Path, folder: int, dest: str, mode: int | None) -> None:
            real_copy_one(source, folder, dest, mode)
            if source == bundle / "app" / before_it:
                (bundle / "app" / broken).unlink()

        monkeypatch.setattr(copy_module, "copy_one", remove_next)

    with pytest.raises(InstallError) as info:
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert f"cannot install {bundle / 'app' / broken} as {host.dest / broken}" in str(info.value)
    assert message in str(info.value)

    files, dirs = read_cleanup_list(host.cleanup_list)
    on_disk = list(host.dest.rglob("*"))
    copied = {str(p) for p in on_disk if not p.is_dir()}
    assert 48 <= len(copied) < len(names)
    assert copied <= set(files)  # every file on disk is one the next install may remove
    assert {str(p) for p in on_disk if p.is_dir()} <= set(dirs)
    assert not any(p.endswith(".s3deploy-tmp") for p in copied)

    # the next release installs cleanly over the half-copied one and nothing of it stays behind
    host.deploy({"app/new.txt": "2"}, spec)
    assert [p.name for p in host.dest.iterdir()] == ["new.txt"]


def test_a_temporary_file_left_by_a_crash_is_replaced_not_written_through(host: Host) -> None:
    victim = host.tmp / "victim"
    victim.write_text("untouched")
    host.dest.mkdir()
    os.link(victim, host.dest / "a.txt.s3deploy-tmp")  # a hardlink: writing into it would change victim
    os.symlink(victim, host.dest / "b.txt.s3deploy-tmp")
    host.deploy({"app/a.txt": "a", "app/b.txt": "b"}, app_spec(host.dest))
    assert victim.read_text() == "untouched"
    assert sorted(p.name for p in host.dest.iterdir()) == ["a.txt", "b.txt"]
    assert (host.dest / "a.txt").read_text() == "a" and not (host.dest / "b.txt").is_symlink()


def test_filesystem_without_sendfile_gets_plain_reads_and_writes(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sendfile(*args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", no_sendfile)  # no such filesystem here to test on
    payload = os.urandom(3 << 20)
    bundle = host.release({"app/small.txt": "s"}, app_spec(host.dest))
    (bundle / "app/big.bin").write_bytes(payload)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert (host.dest / "big.bin").read_bytes() == payload
    assert (host.dest / "small.txt").read_text() == "s"


def test_a_failed_write_names_the_file_and_leaves_no_temporary_file(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_copy(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    # a disk error, which nothing here can produce, from whichever fast copy the kernel offers
    monkeypatch.setattr(os, "copy_file_range", failing_copy)
    monkeypatch.setattr(os, "sendfile", failing_copy)
    bundle = host.release({"app/a.txt": "a"}, app_spec(host.dest))
    named = re.escape(f"cannot install {bundle / 'app/a.txt'} as {host.dest / 'a.txt'}: ")
    with pytest.raises(InstallError, match=named + ".*Input/output"):
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=host.cleanup_list)
    assert list(host.dest.iterdir()) == []


# ---- sections installing side by side (disjoint destinations under one new parent)
def _sibling_bundle(tmp_path: Path, shared: Path) -> Path:
    appspec = f"files:\n  - source: app\n    destination: {shared / 'www'}\n"
    return make_bundle(tmp_path / "release", {"app/index.html": "www\n"}, appspec)


def test_a_new_parent_created_by_another_section_just_before_our_mkdir_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sections with disjoint destinations under one new folder install at once (their destination locks
    only share ancestors): the other one may create that folder between this install's plan and mkdir."""
    shared = tmp_path / "srv"
    bundle = _sibling_bundle(tmp_path, shared)
    real_mkdir = os.mkdir

    def the_other_section_wins(path: Any, *args: Any, **kwargs: Any) -> None:
        if path == shared.name and not shared.exists():
            real_mkdir(shared)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", the_other_section_wins)
    report = install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=tmp_path / "a.list")
    assert (shared / "www" / "index.html").read_text() == "www\n"
    assert str(shared / "www") in report.dirs
