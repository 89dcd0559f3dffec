"""bundle/: random and hostile archives (seeded). Every outcome is an unpacked tree that stays inside the
folder, or a BundleError with a printable, bounded message; nothing is ever written outside.

``S3DEPLOY_FUZZ_SEED`` changes the seed and ``S3DEPLOY_FUZZ_CASES`` the number of cases per test.
"""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from s3deploy.bundle import extract
from s3deploy.bundle.extract import unpack
from s3deploy.bundle.pack import make_zip
from s3deploy.errors import BundleError
from tests.test_bundle import snapshot

SEED = int(os.environ.get("S3DEPLOY_FUZZ_SEED", "20240609"))
CASES = int(os.environ.get("S3DEPLOY_FUZZ_CASES", "150"))
PARTS = ["a", "b", "sub", "..", ".", "", "C:", "x\x00y", "\x1b[2J", "\u202e", "caf\udce9", "n" * 260, "\\"]
TARGETS = ["a", "../x", "..", "../..", "/etc", "sub/..", "b/../..", "a/b", "", ".", "x" * 5000, "l0", "l1/.."]
KINDS = ["file", "file", "file", "dir", "symlink", "symlink", "hardlink", "chr", "fifo"]


def random_name(rng: random.Random) -> str:
    depth = rng.choice([1, 1, 2, 3, 5, 300])
    sep = rng.choice(["/", "/", "\\"])
    name = sep.join(rng.choice(PARTS[:6]) if rng.random() < 0.8 else rng.choice(PARTS) for _ in range(depth))
    return rng.choice(["", "/", "./", "../"]) + name if rng.random() < 0.2 else name


def random_entries(rng: random.Random) -> list[tuple[str, str, bytes, int]]:
    entries = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice(KINDS)
        target = rng.choice(TARGETS) if rng.random() < 0.7 else f"l{rng.randint(0, 3)}"
        data = (
            target.encode("utf-8", "surrogateescape")
            if kind in ("symlink", "hardlink")
            else os.urandom(rng.choice([0, 10, 5000]))
        )
        name = random_name(rng) if rng.random() < 0.7 else f"l{rng.randint(0, 3)}"
        entries.append((name, kind, data, rng.choice([0o644, 0o755, 0o4777, 0o1777, 0])))
    return entries


def raw_zip(entries: list[tuple[str, str, bytes, int]], rng: random.Random) -> bytes:
    """A zip written by hand, so names can hold any bytes (NUL, invalid UTF-8) and flags anything."""
    types = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "chr": stat.S_IFCHR}
    body, directory = b"", b""
    for name, kind, data, mode in entries:
        raw = name.encode("utf-8", "surrogateescape")
        method = 8 if rng.random() < 0.5 else 0
        stored = zlib.compress(data)[2:-4] if method == 8 else data
        flags = rng.choice([0x800, 0x800, 0, 0x1, 0x8])
        crc = zlib.crc32(data) if rng.random() < 0.95 else 0
        attr = (types.get(kind, stat.S_IFIFO) | (mode & 0o7777)) << 16
        offset = len(body)
        body += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0, crc, len(stored), len(data), len(raw), 0
        )
        body += raw + stored
        directory += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, flags, method, 0, 0, crc, len(stored),
            len(data) if rng.random() < 0.95 else rng.randint(0, 1 << 20), len(raw), 0, 0, 0, 0, attr, offset,
        )  # fmt: skip
        directory += raw
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(body), 0
    )
    return body + directory + end


def raw_tar(entries: list[tuple[str, str, bytes, int]], mode: str) -> bytes:
    types = {
        "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE,
    }  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for name, kind, data, perm in entries:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = perm
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode("utf-8", "surrogateescape")
                tf.addfile(info)
    return out.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        at = rng.randrange(len(buf)) if buf else 0
        if action < 0.5 and buf:
            for _ in range(rng.randint(1, 16)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif action < 0.7:
            del buf[at:]
        elif action < 0.85:
            buf[at:at] = buf[at : at + rng.randint(1, 2000)]
        elif len(buf) >= 4:
            struct.pack_into(
                "<L", buf, min(at, max(len(buf) - 4, 0)), rng.choice([0, 0xFFFFFFFF, 1 << 31, 7])
            )
    return bytes(buf)


def check_outcome(archive: Path, sandbox: Path) -> str:
    """Unpack into sandbox/rel/bundle; assert the invariants; return "ok" or "refused"."""
    dest = sandbox / "rel" / "bundle"
    before = snapshot(sandbox, dest)
    outcome = "ok"
    try:
        unpack(archive, dest, max_files=60, max_unpacked_bytes=1 << 20)
    except BundleError as e:
        text = str(e)
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), text
        text.encode("utf-8")
        assert len(text) <= 1500, len(text)
        outcome = "refused"
    assert snapshot(sandbox, dest) == before
    assert (sandbox / "outside" / "keep.txt").read_text() == "original"
    real_dest = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode), full
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), full
            resolved = os.path.realpath(full)
            assert resolved == real_dest or resolved.startswith(real_dest + os.sep), (full, resolved)
    return outcome


@pytest.fixture
def sandbox_maker(tmp_path: Path):  # type: ignore[no-untyped-def]
    counter = iter(range(1_000_000))

    def make() -> Path:
        box = tmp_path / f"case{next(counter)}"
        (box / "outside").mkdir(parents=True)
        (box / "outside" / "keep.txt").write_text("original")
        (box / "rel").mkdir()
        return box

    return make


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("parallel", [False, True])
def test_random_hostile_zips(sandbox_maker, parallel: bool, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    if parallel:
        monkeypatch.setattr(extract, "PARALLEL_MIN_ENTRIES", 1)
    rng = random.Random(SEED + parallel)
    outcomes = []
    for _ in range(CASES):
        box = sandbox_maker()
        archive = box / "b.zip"
        data = raw_zip(random_entries(rng), rng)
        archive.write_bytes(mutate(data, rng) if rng.random() < 0.3 else data)
        outcomes.append(check_outcome(archive, box))
    assert {"ok", "refused"} <= set(outcomes)  # the generator reaches both outcomes


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_random_hostile_tars(sandbox_maker, mode: str) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(SEED + len(mode))
    outcomes = []
    for _ in range(CASES):
        box = sandbox_maker()
        archive = box / "b.tar"
        try:
            data = raw_tar(random_entries(rng), mode)
        except (ValueError, UnicodeError):
            continue  # tarfile cannot write that name
        archive.write_bytes(mutate(data, rng) if rng.random() < 0.3 else data)
        outcomes.append(check_outcome(archive, box))
    assert {"ok", "refused"} <= set(outcomes)


def test_mutated_real_bundles(sandbox_maker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    for n in range(20):
        (src / "scripts" / f"s{n}.sh").write_bytes(os.urandom(n * 300))
    (src / "scripts" / "up").symlink_to("..")
    (src / "current").symlink_to("scripts/s1.sh")
    valid_zip = tmp_path / "v.zip"
    make_zip(src, valid_zip)
    valid = {"zip": valid_zip.read_bytes()}
    for mode in ("w", "w:gz", "w:bz2"):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode=mode) as tf:  # type: ignore[call-overload]
            tf.add(src, arcname="top")
        valid[mode] = out.getvalue()
    rng = random.Random(SEED)
    outcomes = []
    for n in range(CASES * 2):
        kind = list(valid)[n % len(valid)]
        box = sandbox_maker()
        archive = box / "bundle"
        archive.write_bytes(mutate(valid[kind], rng))
        outcomes.append(check_outcome(archive, box))
    assert "refused" in outcomes
