"""bundle/: real archives built here with zipfile/tarfile, unpacked into tmp_path, checked on disk."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from s3deploy.bundle.checks import Index
from s3deploy.bundle.extract import unpack
from s3deploy.bundle.formats import detect_format
from s3deploy.bundle.member import Member
from s3deploy.bundle.pack import make_zip
from s3deploy.errors import BundleError

BIG = 10**9

# (name, kind, data-or-target, mode); kind is "file" | "dir" | "symlink" | "hardlink" | "chr" | "blk" | "fifo"
Spec = tuple[str, str, str, int]


def write_zip(path: Path, entries: Iterable[Spec], *, system: int = 3) -> Path:
    """A zip with Unix modes in external_attr, like Info-ZIP's `zip -y` writes."""
    types = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "chr": stat.S_IFCHR}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, kind, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = system
            info.external_attr = (types[kind] | mode) << 16 if system == 3 else mode
            zf.writestr(info, data.encode())
    return path


def write_tar(path: Path, entries: Iterable[Spec], mode: str = "w") -> Path:
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]  # mode is one of the w:* literals
        for name, kind, data, perm in entries:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = perm
            if kind == "file":
                info.size = len(data.encode())
                tf.addfile(info, io.BytesIO(data.encode()))
            else:
                info.linkname = data
                tf.addfile(info)
    return path


def snapshot(root: Path, skip: Path) -> set[str]:
    """Every path under root except those under skip: what a refused archive must not change."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p != skip and skip not in p.parents:
                seen.add(str(p.relative_to(root)))
    return seen


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("original")
    (tmp_path / "rel").mkdir()  # dest's parent exists, as the release folder does
    return tmp_path / "rel" / "bundle"


def assert_refused(archive: Path, dest: Path, tmp_path: Path, *words: str, **limits: int) -> BundleError:
    """Unpacking must raise naming the entry, and leave everything outside dest untouched."""
    before = snapshot(tmp_path, dest)
    with pytest.raises(BundleError) as exc:
        unpack(
            archive,
            dest,
            max_files=limits.get("max_files", 1000),
            max_unpacked_bytes=limits.get("max_bytes", BIG),
        )
    for word in words:
        assert word in str(exc.value)
    assert snapshot(tmp_path, dest) == before
    assert (tmp_path / "outside" / "keep.txt").read_text() == "original"
    return exc.value


def tree(root: Path) -> dict[str, tuple[str, int | str]]:
    """Kind and mode (or link target) of everything under root."""
    out: dict[str, tuple[str, int | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "file", stat.S_IMODE(st.st_mode))
    return out


# --- make_zip and round trips ----------------------------------------------------------------------------


def build_app(src: Path) -> None:
    (src / "scripts").mkdir(parents=True)
    (src / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    (src / "scripts" / "start.sh").write_text("#!/bin/sh\necho started\n")
    (src / "scripts" / "start.sh").chmod(0o755)
    (src / "secret.conf").write_text("x")
    (src / "secret.conf").chmod(0o600)
    (src / "empty").mkdir()
    (src / "private").mkdir(mode=0o750)
    (src / "private").chmod(0o750)
    (src / "current").symlink_to("scripts/start.sh")
    (src / "scripts" / "up").symlink_to("..")  # a link to a folder, inside the tree
    (src / "dangling").symlink_to("not-yet-there")


def test_make_zip_round_trip_keeps_modes_links_and_empty_dirs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_app(src)
    count = make_zip(src, tmp_path / "b.zip")
    assert count == 9
    root = unpack(tmp_path / "b.zip", tmp_path / "out", max_files=100, max_unpacked_bytes=BIG)
    assert root == tmp_path / "out"
    assert tree(root) == tree(src)
    assert tree(root)["scripts/start.sh"] == ("file", 0o755)
    assert tree(root)["current"] == ("link", "scripts/start.sh")
    assert (root / "current").read_text() == "#!/bin/sh\necho started\n"
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert all(i.create_system == 3 for i in zf.infolist())
        assert [i.filename for i in zf.infolist()] == sorted(i.filename for i in zf.infolist())


def test_make_zip_is_deterministic_and_skips_its_own_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_app(src)
    make_zip(src, tmp_path / "one.zip")
    os.utime(src / "secret.conf", (1, 1))  # mtimes do not change the bytes
    assert make_zip(src, src / "inside.zip") == 9
    assert (src / "inside.zip").read_bytes() == (tmp_path / "one.zip").read_bytes()


@pytest.mark.parametrize("target", ["../outside", "/etc", "scripts/../../x", "loop/.."])
def test_make_zip_refuses_links_pointing_outside(tmp_path: Path, target: str) -> None:
    src = tmp_path / "src"
    build_app(src)
    (src / "loop").symlink_to("scripts/up")  # scripts/up -> .. : loop resolves to src itself
    (src / "bad").symlink_to(target)
    with pytest.raises(BundleError, match="symlink bad"):
        make_zip(src, tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()


def test_make_zip_refuses_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe")
    with pytest.raises(BundleError, match="pipe: not a file, folder or symlink"):
        make_zip(tmp_path / "src", tmp_path / "b.zip")


def test_tar_and_tgz_round_trip_with_hardlink(tmp_path: Path) -> None:
    entries: list[Spec] = [
        ("app", "dir", "", 0o750),
        ("app/run.sh", "file", "#!/bin/sh\n", 0o755),
        ("app/data.txt", "file", "data", 0o640),
        ("app/same.txt", "hardlink", "app/data.txt", 0o640),
        ("app/link", "symlink", "run.sh", 0o777),
    ]
    for mode, name in (("w", "b.tar"), ("w:gz", "b.tgz"), ("w:bz2", "b.tbz"), ("w:xz", "b.txz")):
        out = tmp_path / f"out-{name}"
        root = unpack(write_tar(tmp_path / name, entries, mode), out, max_files=10, max_unpacked_bytes=BIG)
        assert root == out  # no appspec inside "app": not hoisted
        assert tree(out) == {
            "app": ("dir", 0o750),
            "app/run.sh": ("file", 0o755),
            "app/data.txt": ("file", 0o640),
            "app/same.txt": ("file", 0o640),
            "app/link": ("link", "run.sh"),
        }
        assert (out / "app/same.txt").stat().st_ino == (out / "app/data.txt").stat().st_ino


def test_setuid_setgid_dropped_and_owner_keeps_access_to_folders(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "b.zip",
        [
            ("ro", "dir", "", 0o555),
            ("ro/f", "file", "x", 0o755),
            ("suid", "file", "x", 0o4755),
            ("g", "dir", "", 0o2775),
        ],
    )
    out = unpack(archive, tmp_path / "out", max_files=10, max_unpacked_bytes=BIG)
    assert tree(out) == {
        "ro": ("dir", 0o755),
        "ro/f": ("file", 0o755),
        "suid": ("file", 0o755),
        "g": ("dir", 0o775),
    }


def test_windows_zip_without_modes_gets_defaults_and_backslashes_are_separators(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "win.zip",
        [
            ("docs/", "dir", "", 0x10),
            ("docs\\readme.txt", "file", "hi", 0x20),
            ("run.bat", "file", "x", 0x20),
        ],
        system=0,
    )
    out = unpack(archive, tmp_path / "out", max_files=10, max_unpacked_bytes=BIG)
    assert tree(out) == {
        "docs": ("dir", 0o755),
        "docs/readme.txt": ("file", 0o644),
        "run.bat": ("file", 0o644),
    }


def test_duplicate_file_entry_last_one_wins(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = write_zip(
            tmp_path / "b.zip", [("a.txt", "file", "old", 0o644), ("a.txt", "file", "new", 0o600)]
        )
    out = unpack(archive, tmp_path / "out", max_files=10, max_unpacked_bytes=BIG)
    assert (out / "a.txt").read_text() == "new"
    assert tree(out) == {"a.txt": ("file", 0o600)}


# --- hoisting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "hoisted"),
    [
        ([("app/", "dir", "", 0o755), ("app/appspec.yml", "file", "v", 0o644)], True),
        ([("app/appspec.yaml", "file", "v", 0o644), ("app/s/x.sh", "file", "v", 0o755)], True),
        ([("app/appspec.yml", "file", "v", 0o644), ("other.txt", "file", "v", 0o644)], False),
        ([("app/readme", "file", "v", 0o644)], False),
        ([("appspec.yml", "file", "v", 0o644)], False),
    ],
)
def test_hoisting_only_into_a_single_top_folder_holding_the_appspec(
    tmp_path: Path, entries: list[Spec], hoisted: bool
) -> None:
    out = tmp_path / "out"
    root = unpack(write_zip(tmp_path / "b.zip", entries), out, max_files=10, max_unpacked_bytes=BIG)
    assert root == (out / "app" if hoisted else out)


# --- detection -------------------------------------------------------------------------------------------


def test_detect_format_by_content_not_name(tmp_path: Path) -> None:
    files: list[Spec] = [("a.txt", "file", "a", 0o644)]
    assert detect_format(write_zip(tmp_path / "looks.tar.gz", files)) == "zip"
    assert detect_format(write_tar(tmp_path / "looks.zip", files)) == "tar"
    assert detect_format(write_tar(tmp_path / "bundle.bin", files, "w:gz")) == "tar"
    assert detect_format(write_tar(tmp_path / "noext", files, "w:xz")) == "tar"
    sfx = tmp_path / "sfx.bin"  # a zip with a stub in front, like self-extracting archives
    sfx.write_bytes(b"#!/bin/sh\nexit 0\n" + (tmp_path / "looks.tar.gz").read_bytes())
    assert detect_format(sfx) == "zip"


@pytest.mark.parametrize("content", [b"", b"hello, this is not an archive at all" * 40, os.urandom(4096)])
def test_garbage_is_refused(tmp_path: Path, dest: Path, content: bytes) -> None:
    junk = tmp_path / "bundle.zip"
    junk.write_bytes(content)
    with pytest.raises(BundleError, match=r"^bundle.zip: not a zip or tar archive \(first bytes"):
        detect_format(junk)
    assert_refused(junk, dest, tmp_path, "bundle.zip")


# --- refusals --------------------------------------------------------------------------------------------

ESCAPES = [
    ([("../x", "file", "pwn", 0o644)], "../x", "escapes the bundle folder"),
    ([("a/../../x", "file", "pwn", 0o644)], "a/../../x", "escapes the bundle folder"),
    ([("..\\..\\x", "file", "pwn", 0o644)], "..\\..\\x", "escapes the bundle folder"),
    ([("/abs", "file", "pwn", 0o644)], "/abs", "absolute path"),
    ([("C:/abs", "file", "pwn", 0o644)], "C:/abs", "absolute path"),
    ([("etc", "symlink", "/etc", 0o777), ("etc/passwd", "file", "pwn", 0o644)], "etc", "absolute path"),
    ([("up", "symlink", "../..", 0o777)], "up", "points outside"),
    ([("d/up", "symlink", "../../outside", 0o777)], "d/up", "points outside"),
    ([("b", "symlink", ".", 0o777), ("a", "symlink", "b/..", 0o777)], '"a"', "points outside"),
    ([("a", "symlink", "b", 0o777), ("b", "symlink", "a", 0o777)], '"a"', "loops"),
    (
        [("sub/", "dir", "", 0o755), ("l", "symlink", "sub", 0o777), ("l/x", "file", "v", 0o644)],
        "l/x",
        "through",
    ),
    ([("l", "symlink", "sub", 0o777), ("l", "file", "v", 0o644)], '"l"', "overwrite the symlink"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(("entries", "entry", "why"), ESCAPES)
def test_zip_unsafe_entries_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, entries: list[Spec], entry: str, why: str
) -> None:
    archive = write_zip(tmp_path / "bundle.zip", entries)
    err = assert_refused(archive, dest, tmp_path, f"{entry}", why)
    assert str(err).startswith("bundle.zip: entry ")
    assert list(dest.iterdir()) == []


def test_zip_refusal_message_format(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(
        tmp_path / "bundle.zip", [("ok.txt", "file", "v", 0o644), ("../x", "file", "v", 0o644)]
    )
    err = assert_refused(archive, dest, tmp_path)
    assert str(err) == 'bundle.zip: entry "../x" escapes the bundle folder'


TAR_REFUSALS = [
    ([("../x", "file", "pwn", 0o644)], "../x", "escapes the bundle folder"),
    ([("/abs/x", "file", "pwn", 0o644)], "/abs/x", "absolute path"),
    ([("etc", "symlink", "/etc", 0o777), ("etc/passwd", "file", "pwn", 0o644)], "etc", "absolute path"),
    ([("up", "symlink", "../../outside", 0o777)], "up", "points outside"),
    ([("h", "hardlink", "../outside/keep.txt", 0o644)], '"h"', "outside the bundle folder"),
    ([("h", "hardlink", "nowhere.txt", 0o644)], '"h"', "not an earlier file"),
    (
        [("h", "hardlink", "later.txt", 0o644), ("later.txt", "file", "v", 0o644)],
        '"h"',
        "not an earlier file",
    ),
    ([("null", "chr", "", 0o666)], "null", "device file"),
    ([("sda", "blk", "", 0o660)], "sda", "device file"),
    ([("pipe", "fifo", "", 0o644)], "pipe", "a fifo"),
    ([("l", "symlink", ".", 0o777), ("l/x", "file", "v", 0o644)], "l/x", "through symlink"),
]


@pytest.mark.parametrize(("entries", "entry", "why"), TAR_REFUSALS)
def test_tar_unsafe_entries_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, entries: list[Spec], entry: str, why: str
) -> None:
    archive = write_tar(tmp_path / "bundle.tgz", entries, "w:gz")
    assert_refused(archive, dest, tmp_path, "bundle.tgz: entry", entry, why)
    assert list(dest.iterdir()) == []


def test_zip_device_entry_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "bundle.zip", [("dev/null", "chr", "", 0o666)])
    assert_refused(archive, dest, tmp_path, '"dev/null"', "device")


def test_non_empty_destination_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "b.zip", [("a", "file", "v", 0o644)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        unpack(archive, tmp_path / "out", max_files=10, max_unpacked_bytes=BIG)


# --- limits ----------------------------------------------------------------------------------------------


def test_too_many_entries_refused_in_zip_and_tar(tmp_path: Path, dest: Path) -> None:
    entries: list[Spec] = [(f"f{i}", "file", "v", 0o644) for i in range(6)]
    zipped, tarred = write_zip(tmp_path / "b.zip", entries), write_tar(tmp_path / "b.tar", entries)
    assert_refused(
        zipped, dest, tmp_path, '6 entries exceed max_files=5 (entry "f5" is one too many)', max_files=5
    )
    assert_refused(
        tarred, dest, tmp_path, 'more than max_files=5 entries (entry "f5" is one too many)', max_files=5
    )
    assert list(dest.iterdir()) == []
    assert unpack(tmp_path / "b.tar", dest, max_files=6, max_unpacked_bytes=BIG) == dest


def test_zip_bomb_refused_on_declared_size(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.txt", b"ok")
        with zf.open("zeros.bin", "w") as f:
            for _ in range(16):
                f.write(bytes(1 << 20))
    assert archive.stat().st_size < 200_000
    assert_refused(archive, dest, tmp_path, '"zeros.bin"', "max_unpacked_bytes", max_bytes=8 << 20)
    assert list(dest.iterdir()) == []


def test_bytes_counted_while_streaming_when_headers_understate(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile and tarfile never read past a declared size, so make the declared sizes lie to the plan
    # to prove the streaming counter still stops at the limit.
    archive = write_zip(
        tmp_path / "b.zip", [("a.bin", "file", "x" * 3000, 0o644), ("b.bin", "file", "y" * 3000, 0o644)]
    )
    real_add = Index.add

    def understating_add(self: Index, member: Member, ordinal: int) -> None:
        member.size = 1
        real_add(self, member, ordinal)

    monkeypatch.setattr(Index, "add", understating_add)
    assert_refused(
        archive, dest, tmp_path, '"b.bin"', "more data than the archive's headers declare", max_bytes=5000
    )


def test_lying_zip_header_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "bundle.zip", [("big.bin", "file", "A" * 50_000, 0o644)])
    data = bytearray(archive.read_bytes())
    struct.pack_into("<I", data, 22, 100)  # uncompressed size in the local header
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, 100)  # and in the central directory
    archive.write_bytes(bytes(data))
    assert_refused(archive, dest, tmp_path, 'entry "big.bin"', "corrupt", max_bytes=1000)


# --- corrupt archives ------------------------------------------------------------------------------------


def test_corrupt_crc_refused_naming_the_entry(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr("bad.txt", "MARKER-0123456789")
    data = archive.read_bytes().replace(b"MARKER-0123456789", b"MARKER-0123456780")
    archive.write_bytes(data)
    assert_refused(archive, dest, tmp_path, 'entry "bad.txt"', "CRC")


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_truncated_archive_refused(tmp_path: Path, dest: Path, kind: str) -> None:
    entries: list[Spec] = [(f"f{i}.txt", "file", os.urandom(3000).hex(), 0o644) for i in range(4)]
    if kind == "zip":
        archive = write_zip(tmp_path / "bundle.zip", entries)
    else:
        archive = write_tar(tmp_path / f"bundle.{kind}", entries, "w:gz" if kind == "tgz" else "w")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    err = assert_refused(archive, dest, tmp_path, archive.name)
    assert "corrupt" in str(err) or "not a zip or tar" in str(err)


def unix_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def test_large_and_bzip2_members_are_streamed(tmp_path: Path) -> None:
    big = os.urandom(1 << 16) * 40  # 2.5 MiB: over the small-member fast path
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("big.bin", 0o755), big, zipfile.ZIP_DEFLATED)
        zf.writestr(unix_info("notes.txt", 0o640), b"bz" * 100, zipfile.ZIP_BZIP2)
    out = unpack(archive, tmp_path / "out", max_files=10, max_unpacked_bytes=BIG)
    assert (out / "big.bin").read_bytes() == big
    assert (out / "notes.txt").read_bytes() == b"bz" * 100
    assert tree(out) == {"big.bin": ("file", 0o755), "notes.txt": ("file", 0o640)}


def test_corrupt_large_member_refused_naming_the_entry(tmp_path: Path, dest: Path) -> None:
    big = os.urandom(3 << 20)
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("big.bin", 0o644), big, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = data.find(big[2 << 20 : (2 << 20) + 64])
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert_refused(archive, dest, tmp_path, 'entry "big.bin"', "CRC")
