"""bundle/: hostile archives end in a BundleError naming the entry (printable, bounded), nothing written."""

from __future__ import annotations

import errno
import io
import lzma
import os
import sqlite3
import stat
import struct
import subprocess
import tarfile
import threading
import zipfile
import zlib
from pathlib import Path

import pytest

from s3deploy.bundle import checks
from s3deploy.bundle.extract import unpack
from s3deploy.bundle.formats import detect_format
from s3deploy.errors import BundleError
from s3deploy.publish import check_path
from tests.test_bundle import (
    BIG,
    Spec,
    assert_refused,
    dest,  # noqa: F401 - fixture
    tree,
    unix_info,
    write_tar,
    write_zip,
)


def assert_clean_message(error: BundleError, limit: int = 600) -> str:
    """What an operator sees and SQLite stores: no control characters, valid UTF-8, not too long."""
    text = str(error)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), text
    text.encode("utf-8")  # no lone surrogates from undecodable names
    sqlite3.connect(":memory:").execute("select ?", (text,)).fetchone()
    assert len(text) <= limit, len(text)
    return text


# --- names -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_a_path_1500_folders_deep_is_refused_naming_it(tmp_path: Path, dest: Path, kind: str) -> None:  # noqa: F811
    deep = "/".join(["d"] * 1500) + "/x.txt"
    entries: list[Spec] = [(deep, "file", "v", 0o644)]
    archive = (
        write_zip(tmp_path / "b.zip", entries)
        if kind == "zip"
        else write_tar(tmp_path / "b.tgz", entries, "w:gz")
    )
    error = assert_refused(
        archive, dest, tmp_path, 'entry "d/d/d/', f"more than {checks.MAX_DEPTH} folders deep"
    )
    assert_clean_message(error)
    assert list(dest.iterdir()) == []


def test_max_depth_is_accepted_one_more_is_refused(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    ok = "/".join(["d"] * (checks.MAX_DEPTH - 1)) + "/x"
    root = unpack(
        write_zip(tmp_path / "ok.zip", [(ok, "file", "v", 0o644)]),
        tmp_path / "out",
        max_files=9,
        max_unpacked_bytes=BIG,
    )
    assert (root / ok).read_text() == "v"
    archive = write_zip(tmp_path / "b.zip", [(ok + "/y", "file", "v", 0o644)])
    assert_refused(archive, dest, tmp_path, "folders deep")


def test_names_the_filesystem_cannot_hold_are_refused_before_writing(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    long_part = "n" * 256
    archive = write_zip(
        tmp_path / "b.zip", [("ok", "file", "v", 0o644), (f"a/{long_part}", "file", "v", 0o644)]
    )
    error = assert_refused(archive, dest, tmp_path, "has a name over 255 bytes")
    assert "more characters)" in assert_clean_message(error)  # the 258-character name is cut short
    too_long = "/".join(["p" * 200] * 21)  # 4,220 bytes: over PATH_MAX
    archive = write_zip(tmp_path / "c.zip", [(too_long, "file", "v", 0o644)])
    assert_refused(archive, dest, tmp_path, "is a path over")
    assert list(dest.iterdir()) == []


def test_a_non_utf8_tar_name_in_an_error_is_escaped(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("../caf\udce9")  # the byte 0xe9: latin-1, not UTF-8
        tf.addfile(info, io.BytesIO(b""))
    assert b"../caf\xe9" in archive.read_bytes()
    error = assert_refused(archive, dest, tmp_path, "escapes the bundle folder")
    assert 'entry "../caf\\udce9"' in assert_clean_message(error)


def test_a_non_utf8_name_that_is_safe_is_unpacked_as_is(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("caf\udce9.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    root = unpack(archive, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert os.listdir(os.fsencode(root)) == [b"caf\xe9.txt"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_escape_sequences_in_entry_names_are_shown_escaped(tmp_path: Path, dest: Path, kind: str) -> None:  # noqa: F811
    name = "../\x1b]0;pwned\x07\x1b[2J\rFAKE LOG LINE\u202e"
    entries: list[Spec] = [(name, "file", "v", 0o644)]
    archive = (
        write_zip(tmp_path / "b.zip", entries) if kind == "zip" else write_tar(tmp_path / "b.tar", entries)
    )
    text = assert_clean_message(assert_refused(archive, dest, tmp_path, "escapes the bundle folder"))
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x0dFAKE LOG LINE\\u202e" in text


def test_a_huge_name_is_named_but_bounded(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = write_zip(tmp_path / "b.zip", [("../" + "z" * 60_000, "file", "v", 0o644)])
    text = assert_clean_message(assert_refused(archive, dest, tmp_path, 'entry "../zzz'))
    assert "more characters)" in text


# --- hoisting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["..", "../top/x", "sub/../..", "../.."])
def test_a_link_leaving_the_hoisted_root_is_refused(tmp_path: Path, dest: Path, target: str) -> None:  # noqa: F811
    entries: list[Spec] = [
        ("top/", "dir", "", 0o755),
        ("top/appspec.yml", "file", "version: 0.0\nos: linux\n", 0o644),
        ("top/sub/", "dir", "", 0o755),
        ("top/x", "file", "x", 0o644),
        ("top/up", "symlink", target, 0o777),
    ]
    error = assert_refused(
        write_zip(tmp_path / "b.zip", entries), dest, tmp_path, 'entry "top/up"', "points outside"
    )
    if target != "../..":  # inside the archive's root but not the bundle's: says which root it leaves
        assert 'the bundle root once unpacked from its top folder "top"' in str(error)
    assert list(dest.iterdir()) == []


def test_links_inside_the_hoisted_root_and_unhoisted_parent_links_are_fine(tmp_path: Path) -> None:
    hoisted: list[Spec] = [
        ("top/appspec.yml", "file", "v", 0o644),
        ("top/sub/", "dir", "", 0o755),
        ("top/sub/up", "symlink", "..", 0o777),
        ("top/here", "symlink", "sub/up/appspec.yml", 0o777),
    ]
    root = unpack(write_zip(tmp_path / "h.zip", hoisted), tmp_path / "h", max_files=9, max_unpacked_bytes=BIG)
    assert root == tmp_path / "h" / "top"
    assert (root / "here").read_text() == "v"
    # Two top-level entries: the root is the archive's own, where top/up -> .. stays inside.
    flat: list[Spec] = [
        ("top/appspec.yml", "file", "v", 0o644),
        ("top/up", "symlink", "..", 0o777),
        ("x", "file", "", 0o644),
    ]
    root = unpack(write_zip(tmp_path / "f.zip", flat), tmp_path / "f", max_files=9, max_unpacked_bytes=BIG)
    assert root == tmp_path / "f"


def test_links_too_costly_to_resolve_are_refused_not_resolved_for_hours(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    # Each link: 2,040 steps, each a lookup of a path of up to 4 KiB; 300 of them would take minutes.
    folder = "/".join(["d"] * 200)
    entries: list[Spec] = [(f"{folder}/l{n}", "symlink", "/".join(["x"] * 2040), 0o777) for n in range(300)]
    error = assert_refused(write_zip(tmp_path / "b.zip", entries), dest, tmp_path, "cannot be checked")
    assert f"more than {checks.LINK_CHARS >> 20} MiB of paths" in assert_clean_message(error)
    assert list(dest.iterdir()) == []


def test_a_symlinked_top_folder_is_not_hoisted_into(tmp_path: Path) -> None:
    entries: list[Spec] = [("top", "symlink", ".", 0o777)]
    root = unpack(
        write_tar(tmp_path / "b.tar", entries), tmp_path / "out", max_files=9, max_unpacked_bytes=BIG
    )
    assert root == tmp_path / "out"


# --- kinds and duplicates --------------------------------------------------------------------------------

CONFLICTS = [
    ([("a", "file", "v", 0o644), ("a/b", "file", "v", 0o644)], '"a/b"', 'inside "a", which is a file'),
    ([("a/b", "file", "v", 0o644), ("a", "file", "v", 0o644)], '"a"', "conflicts with a folder"),
    ([("a/", "dir", "", 0o755), ("a", "file", "v", 0o644)], '"a"', "conflicts with a folder"),
    (
        [("a", "file", "v", 0o644), ("a/", "dir", "", 0o755)],
        '"a"',  # tarfile drops a folder's trailing slash
        "folder where the archive already has a file",
    ),
]


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(("entries", "entry", "why"), CONFLICTS)
def test_a_file_and_a_folder_at_one_path_are_refused_before_writing(
    tmp_path: Path,
    dest: Path,  # noqa: F811
    entries: list[Spec],
    entry: str,
    why: str,
) -> None:
    assert_refused(write_tar(tmp_path / "b.tar", entries), dest, tmp_path, entry, why)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("later", [("x/a", "symlink", "../t", 0o777), ("x/a", "file", "two", 0o644)])
def test_replacing_the_target_of_a_hardlink_is_refused(tmp_path: Path, dest: Path, later: Spec) -> None:  # noqa: F811
    # Linking the final "x/a" (a symlink "../t") as "h" would give "h" that target from the root; and
    # which content a hardlink to a replaced file means differs between tools.
    entries: list[Spec] = [("x/a", "file", "one", 0o644), ("h", "hardlink", "x/a", 0o644), later]
    error = assert_refused(write_tar(tmp_path / "b.tar", entries), dest, tmp_path, 'entry "x/a"')
    assert 'replaces "x/a", which an earlier hardlink links to' in str(error)
    assert list(dest.iterdir()) == []


def test_duplicates_in_a_tar_last_one_wins(tmp_path: Path) -> None:
    entries: list[Spec] = [
        ("a", "file", "one", 0o644),
        ("h", "hardlink", "b", 0o644),
        ("a", "file", "two", 0o600),
    ]
    entries.insert(1, ("b", "file", "b", 0o644))
    out = unpack(
        write_tar(tmp_path / "b.tar", entries), tmp_path / "out", max_files=9, max_unpacked_bytes=BIG
    )
    assert (out / "a").read_text() == "two" and (out / "h").read_text() == "b"
    assert tree(out) == {"a": ("file", 0o600), "b": ("file", 0o644), "h": ("file", 0o644)}


# --- tar headers -----------------------------------------------------------------------------------------


def test_a_chain_of_gnu_long_names_is_refused_not_a_recursion_error(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    link = tarfile.TarInfo._create_gnu_long_header("x" * 100, tarfile.GNUTYPE_LONGNAME, "utf-8", "strict")  # type: ignore[attr-defined]
    last = tarfile.TarInfo("f").tobuf(tarfile.GNU_FORMAT)
    archive = tmp_path / "b.tar"
    archive.write_bytes(link * 3000 + last + bytes(1024))
    assert_clean_message(assert_refused(archive, dest, tmp_path, "b.tar: corrupt or truncated tar archive"))


def test_a_huge_pax_header_is_refused_without_reading_it(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = tmp_path / "b.tgz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "c" * (3 << 20)}
        tf.addfile(info, io.BytesIO(b""))
    assert archive.stat().st_size < 100_000
    assert_refused(archive, dest, tmp_path, "tar headers of one entry take more than")


def test_a_negative_tar_size_is_refused(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    header = bytearray(tarfile.TarInfo("a").tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\xff" * 11 + b"\x00"  # base-256: a negative size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    archive = tmp_path / "b.tar"
    archive.write_bytes(bytes(header) + bytes(1024))
    assert_refused(archive, dest, tmp_path, 'entry "a" is corrupt (a negative size)')


def test_xz_needing_a_huge_dictionary_is_refused_clearly(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    data = write_tar(tmp_path / "b.tar", [("a.txt", "file", "hello", 0o644)]).read_bytes()
    archive = tmp_path / "b.txz"
    archive.write_bytes(lzma.compress(data, preset=9))  # a 64 MiB dictionary
    assert_refused(archive, dest, tmp_path, "b.txz: xz-compressed with a dictionary needing over 20 MiB")
    archive.write_bytes(lzma.compress(data, preset=7) + lzma.compress(b"", preset=1))  # two streams
    out = unpack(archive, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert (out / "a.txt").read_text() == "hello"


def test_a_gzip_stream_that_is_not_a_tar_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "b.tgz"
    path.write_bytes(zlib.compress(b"just text " * 100, wbits=31))
    with pytest.raises(BundleError, match="not a zip or tar archive"):
        detect_format(path)


# --- zip details -----------------------------------------------------------------------------------------


def test_lzma_and_bzip2_members_small_and_large(tmp_path: Path) -> None:
    big = os.urandom(1 << 16) * 30
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("l.bin", 0o755), big, zipfile.ZIP_LZMA)
        zf.writestr(unix_info("l.txt", 0o644), b"small", zipfile.ZIP_LZMA)
        zf.writestr(unix_info("b.bin", 0o644), big, zipfile.ZIP_BZIP2)
    out = unpack(archive, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert (out / "l.bin").read_bytes() == big and (out / "b.bin").read_bytes() == big
    assert (out / "l.txt").read_bytes() == b"small"
    assert tree(out)["l.bin"] == ("file", 0o755)


def test_a_zip_with_data_in_front_unpacks(tmp_path: Path) -> None:
    inner = write_zip(tmp_path / "b.zip", [("run.sh", "file", "#!/bin/sh\n", 0o755)])
    sfx = tmp_path / "sfx.bin"
    sfx.write_bytes(b"#!/bin/sh\nexit 0\n" * 50 + inner.read_bytes())
    out = unpack(sfx, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert tree(out) == {"run.sh": ("file", 0o755)}


def _handmade_zip64(name: bytes, data: bytes) -> bytes:
    """One stored member whose central directory entry keeps its sizes and offset in a zip64 extra."""
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0)
    extra = struct.pack("<2H3Q", 1, 24, len(data), len(data), 0)
    central = struct.pack(
        "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(name), len(extra), 0, 0, 0, (stat.S_IFREG | 0o640) << 16, 0xFFFFFFFF,
    )  # fmt: skip
    body = local + name + data
    directory = central + name + extra
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)
    return body + directory + end


def test_zip64_sizes_and_offsets_in_the_extra_field(tmp_path: Path) -> None:
    archive = tmp_path / "b.zip"
    archive.write_bytes(_handmade_zip64(b"big.bin", b"data" * 100))
    with zipfile.ZipFile(archive) as zf:  # the stdlib agrees it is valid
        assert zf.read("big.bin") == b"data" * 100
    out = unpack(archive, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert tree(out) == {"big.bin": ("file", 0o640)}


def test_a_local_header_naming_another_file_is_refused(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = write_zip(tmp_path / "b.zip", [("good.txt", "file", "v", 0o644)])
    data = archive.read_bytes()
    at = data.index(b"good.txt")  # the local header's copy comes first
    archive.write_bytes(data[:at] + b"evil.txt" + data[at + 8 :])
    assert_refused(archive, dest, tmp_path, '"good.txt"', "local header names another file")


def test_an_unsupported_compression_method_is_refused_before_writing(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = write_zip(tmp_path / "b.zip", [("a.txt", "file", "v", 0o644), ("b.txt", "file", "v", 0o644)])
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the last member's central entry: method at +10
    struct.pack_into("<H", data, central + 10, 99)
    archive.write_bytes(bytes(data))
    assert_refused(archive, dest, tmp_path, '"b.txt"', "compression method 99")
    assert list(dest.iterdir()) == []


def test_an_lzma_member_asking_for_a_4_gib_dictionary_is_refused(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("l.bin", 0o644), b"x" * 100, zipfile.ZIP_LZMA)
    data = bytearray(archive.read_bytes())
    at = data.index(b"l.bin") + len("l.bin")  # the data: version (2), props size (2), props (5)
    struct.pack_into("<L", data, at + 5, 0xFFFFFFFF)  # the dictionary size in the properties
    archive.write_bytes(bytes(data))
    assert_refused(archive, dest, tmp_path, '"l.bin"', "an LZMA dictionary of 4294967295 bytes")


def test_a_corrupt_lzma_member_is_refused_naming_it(tmp_path: Path, dest: Path) -> None:  # noqa: F811
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("l.bin", 0o644), lzma.compress(b"") + os.urandom(3 << 20), zipfile.ZIP_LZMA)
    data = bytearray(archive.read_bytes())
    data[200:260] = os.urandom(60)
    archive.write_bytes(bytes(data))
    assert_clean_message(assert_refused(archive, dest, tmp_path, '"l.bin"', "corrupt"))


# --- not an archive file ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_validate_and_unpack_refuse_a_fifo_and_a_device_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "bundle.zip"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a fifo"), (Path("/dev/zero"), "a device")):
        problems = check_path(path).problems
        assert len(problems) == 1 and "not a regular file or a folder" in problems[0], problems
        with pytest.raises(BundleError, match=f"is {what}, not a zip or tar archive file"):
            unpack(path, tmp_path / "out", max_files=9, max_unpacked_bytes=BIG)
    assert not any(t.name.startswith("unpack") for t in threading.enumerate())


# --- a full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_a_bundle_error_naming_the_entry_with_enospc_as_cause(
    tmp_path: Path, tiny_disk: Path
) -> None:
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(unix_info("small.txt", 0o644), b"x")
        zf.writestr(unix_info("big.bin", 0o644), os.urandom(3 << 20), zipfile.ZIP_STORED)
    with pytest.raises(
        BundleError, match=r'entry "big.bin" cannot be written \(No space left on device\)'
    ) as exc:
        unpack(archive, tiny_disk / "bundle", max_files=9, max_unpacked_bytes=BIG)
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.ENOSPC
