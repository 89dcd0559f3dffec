"""bundle/: unpacking stays within SPEC §8's 150 MiB whatever the number of entries (peak RSS measured).

The unpack runs in a fresh process that has imported the agent's modules first (boto3 and all, as the
daemon has), and reports its peak RSS (VmHWM). RSS is a resource bound, not a timing.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

LIMIT_MIB = 150
ENTRIES = 199_000  # under the default max_files (200,000)

PROBE = """
import sys
from pathlib import Path

import s3deploy.deployer  # noqa: F401 - the daemon's own imports count too
from s3deploy.bundle.extract import unpack

root = unpack(Path(sys.argv[1]), Path(sys.argv[2]), max_files=200_000, max_unpacked_bytes=10 * 2**30)
with open("/proc/self/status") as f:
    peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(root, peak_kib)
"""


def many_entries_zip(path: Path, entries: int) -> Path:
    """``entries`` small files, 500 per folder, with the folder entries and paths ~40 characters long."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for n in range(entries):
            if n % 500 == 0:
                folder = zipfile.ZipInfo(f"app/pkg{n // 500:03d}/")
                folder.external_attr = (stat.S_IFDIR | 0o755) << 16
                zf.writestr(folder, b"")
            info = zipfile.ZipInfo(f"app/pkg{n // 500:03d}/module-file-{n:06d}.js")
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | (0o755 if n % 8 == 0 else 0o644)) << 16
            zf.writestr(info, b"export default %d;\n" % n)
    return path


@pytest.mark.timeout(600)
def test_a_199000_entry_zip_unpacks_under_150_mib(tmp_path: Path) -> None:
    archive = many_entries_zip(tmp_path / "many.zip", ENTRIES)
    dest = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(archive), str(dest)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root, peak_kib = proc.stdout.split()
    assert Path(root) == dest
    assert int(peak_kib) < LIMIT_MIB * 1024, f"peak RSS {int(peak_kib) / 1024:.0f} MiB"
    last = dest / "app" / f"pkg{(ENTRIES - 1) // 500:03d}" / f"module-file-{ENTRIES - 1:06d}.js"
    assert last.read_bytes() == b"export default %d;\n" % (ENTRIES - 1)
    assert sum(len(os.listdir(d)) for d in (dest / "app").iterdir()) == ENTRIES
