"""The cases B1-B3 and the registry of the project's own cases (B4-B6 in endtoend.py). Each runs the agent
and its baseline in the same run, interleaved, and returns rows."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import fleet, inputs
from benchmarks.activation import b5_symlink
from benchmarks.bench import (
    HEAD_LOOP,
    Bench,
    MiB,
    _config,
    _cpu_s,
    _daemon,
    _interleaved,
    _rss_mib,
    _stop,
    _tiny_bundle,
)
from benchmarks.endtoend import b4_latency, b5_end_to_end, b6_overhead
from benchmarks.harness import Row, probe, ratio_row, run_json, timed

# --------------------------------------------------------------------------- B1
BOTO3_DOWNLOAD = """
import sys, time, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
t = time.perf_counter()
c.download_file(sys.argv[2], sys.argv[3], sys.argv[4])
print(time.perf_counter() - t)
"""


def b1_download(b: Bench, size: int = 512 * MiB) -> list[Row]:
    bucket = b.bucket("bench-b1")
    src = inputs.big_file(b.work / "b1.bin", size)
    digest = _sha256_of(src)
    with open(src, "rb") as f:  # one PUT: S3 keeps an MD5 ETag and a CRC32 checksum for it
        b.client.put_object(Bucket=bucket, Key="big.bin", Body=f)
    src.unlink()
    url = b.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "big.bin"}, ExpiresIn=3600
    )
    curl = shutil.which("curl")
    rss: list[float] = []
    out = b.work / "b1-out"
    out.mkdir()

    def dest(tag: str) -> str:
        for old in out.iterdir():
            old.unlink()
        return str(out / f"{tag}-{time.monotonic_ns()}")

    def ours() -> float:
        res = run_json(probe("download", b.endpoint, bucket, "big.bin", dest("ours")), b.env)
        rss.append(res["peak_rss_mib"])
        return float(res["seconds"])

    def ours_sha256() -> float:  # a signed bundle: verified against its manifest's sha256 as it lands
        flag = f"--expect-sha256={digest}"
        res = run_json(probe("download", b.endpoint, bucket, "big.bin", dest("sha"), flag), b.env)
        rss.append(res["peak_rss_mib"])
        return float(res["seconds"])

    def boto3_() -> float:
        cmd = [sys.executable, "-c", BOTO3_DOWNLOAD, b.endpoint, bucket, "big.bin", dest("boto3")]
        return float(subprocess.run(cmd, capture_output=True, text=True, env=b.env, check=True).stdout)

    def curl_() -> float | None:
        if curl is None:
            return None
        cmd = [curl, "-sS", "-f", "-o", dest("curl"), "-w", "%{time_total}", url]
        return float(subprocess.run(cmd, capture_output=True, text=True, env=b.env, check=True).stdout)

    res = _interleaved(b.reps, {"ours": ours, "boto3": boto3_, "curl": curl_, "sha256": ours_sha256})
    shutil.rmtree(out)
    b.client.delete_object(Bucket=bucket, Key="big.bin")
    what = f"B1 download {size // MiB} MiB, pinned + verified"
    rows = [
        ratio_row(f"{what}, vs boto3 download_file", res["ours"], res["boto3"], 0.75),
        ratio_row(
            f"{what}, vs curl -o",
            res["ours"],
            res["curl"] or None,
            1.15,
            note="" if curl else "curl not installed (apt-get install curl): baseline skipped",
        ),
        ratio_row(f"{what} against a signed sha256, vs without", res["sha256"], res["ours"], 1.1),
    ]
    peak = max(rss)
    rows.append(Row("B1 download peak RSS", f"{peak:.0f} MiB", "—", None, "≤120 MiB", peak <= 120))
    return rows


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- B2
def _tree_signature(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: kind, mode bits, and content or link target."""
    sig: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                sig[rel] = ("link", 0, os.readlink(full))
            elif os.path.isdir(full):
                sig[rel] = ("dir", st.st_mode & 0o777, "")
            else:
                with open(full, "rb") as f:
                    sig[rel] = ("file", st.st_mode & 0o777, str(hash(f.read())))
    return sig


def _many_entries_zip(path: Path, entries: int) -> Path:
    """``entries`` tiny files, 500 per folder: what costs memory is the number of entries, not bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for n in range(entries):
            info = zipfile.ZipInfo(f"app/pkg{n // 500:03d}/module-file-{n:06d}.js")
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, b"export default %d;\n" % n)
    return path


def b2_unpack(b: Bench, n_entries: int = 20_000, many_entries: int = 199_000) -> list[Row]:
    tree = inputs.file_tree(b.work / "b2-tree", n_entries)
    archive = inputs.zipped(tree, b.work / "b2.zip")
    shutil.rmtree(tree)
    unzip = shutil.which("unzip")

    def ours() -> float:
        dest = b.fresh("b2-ours")
        return float(run_json(probe("unpack", str(archive), str(dest)), b.env)["seconds"])

    def unzip_() -> float | None:
        if unzip is None:
            return None
        return timed([unzip, "-q", str(archive), "-d", str(b.fresh("b2-unzip"))], b.env)

    res = _interleaved(b.reps, {"ours": ours, "unzip": unzip_})
    note = ""
    exact: bool | None = None
    if unzip is not None:
        exact = _tree_signature(b.work / "b2-ours") == _tree_signature(b.work / "b2-unzip")
        note = "trees identical to unzip's (modes, symlinks, bytes)" if exact else "TREE DIFFERS from unzip's"
    else:
        note = "unzip not installed (apt-get install unzip): baseline skipped"
    row = ratio_row(
        f"B2 unpack {n_entries // 1000}k-file zip", res["ours"], res["unzip"] or None, 0.7, note=note
    )
    if exact is False:
        row.passed = False
    for name in ("b2-ours", "b2-unzip"):
        shutil.rmtree(b.work / name, ignore_errors=True)
    many = _many_entries_zip(b.work / "b2-many.zip", many_entries)
    peak = float(run_json(probe("unpack", str(many), str(b.fresh("b2-many"))), b.env)["peak_rss_mib"])
    shutil.rmtree(b.work / "b2-many", ignore_errors=True)
    many.unlink()
    limit = 150  # SPEC §8, for the whole agent; this is the unpack alone
    what = f"B2 unpack peak RSS, {many_entries // 1000}k-entry zip"
    return [row, Row(what, f"{peak:.0f} MiB", "—", None, f"≤{limit} MiB", peak <= limit)]


# --------------------------------------------------------------------------- B3
def b3_idle(b: Bench, n_sections: int = 200, n_buckets: int = 4, interval_s: float = 5.0) -> list[Row]:
    payload = _tiny_bundle(b, "b3-bundle", b.work / "b3-www")
    sections: dict[str, dict[str, Any]] = {}
    targets = []
    for i in range(n_buckets):
        bucket = b.bucket(f"bench-b3-{i}")
        for j in range(n_sections // n_buckets):
            key = f"apps/app{j:03d}/bundle.zip"
            b.client.put_object(Bucket=bucket, Key=key, Body=payload)
            targets.append(f"{bucket}/{key}")
            sections[f"app-{i}-{j:03d}"] = {
                "s3_bucket": bucket,
                "target_file_key": key,
                "endpoint_url": b.endpoint,
                "poll_interval": interval_s,
                "destination": b.work / "b3-www" / f"{i}-{j}",
                # Already deployed: the daemon records a baseline and then only watches.
                "last_fetch_time": "2099-01-01 00:00:00+0000",
            }
    config = _config(b.work / "b3.ini", sections)
    daemon = _daemon(b, config, b.fresh("b3-state"), b.work / "b3-daemon.log", "WARNING")
    naive = subprocess.Popen(
        [sys.executable, "-c", HEAD_LOOP, b.endpoint, str(interval_s), *targets],
        stdout=subprocess.DEVNULL,
        env=b.env,
    )
    try:
        warmup = max(3 * interval_s, 15.0)
        b.log(f"  B3: {n_sections} sections warming up {warmup:.0f}s, then measuring {b.idle_s:.0f}s")
        time.sleep(warmup)
        if daemon.poll() is not None or naive.poll() is not None:
            raise RuntimeError(f"B3: a process died; see {b.work / 'b3-daemon.log'}")
        cpu0, base0 = _cpu_s(daemon.pid), _cpu_s(naive.pid)
        rss_samples = [_rss_mib(daemon.pid)]
        started = time.monotonic()
        while time.monotonic() - started < b.idle_s:
            time.sleep(min(interval_s, b.idle_s - (time.monotonic() - started)))
            rss_samples.append(_rss_mib(daemon.pid))
        elapsed = time.monotonic() - started
        ours_pct = 100 * (_cpu_s(daemon.pid) - cpu0) / elapsed
        base_pct = 100 * (_cpu_s(naive.pid) - base0) / elapsed
        peak = _rss_mib(daemon.pid, "VmHWM")
    finally:
        _stop(daemon)
        _stop(naive)
    growth = rss_samples[-1] - rss_samples[0]
    what = f"B3 idle, {n_sections} sections, poll {interval_s:g} s"
    return [
        Row(
            f"{what}: CPU (one core = 100%)",
            f"{ours_pct:.2f} %",
            f"{base_pct:.2f} %",
            ours_pct / base_pct if base_pct else None,
            "≤2 %",
            ours_pct <= 2.0,
            "baseline: a boto3 loop HEADing every object each interval",
            {"ours": [ours_pct], "baseline": [base_pct]},
        ),
        Row(
            f"{what}: RSS",
            f"{rss_samples[-1]:.0f} MiB (peak {peak:.0f}, {growth:+.1f} over {elapsed:.0f} s)",
            "—",
            None,
            "≤80 MiB, flat (±4 MiB)",
            peak <= 80 and abs(growth) <= 4,
            samples={"rss": rss_samples},
        ),
    ]


CASES: dict[str, Callable[[Bench], list[Row]]] = {
    "B1": b1_download,
    "B2": b2_unpack,
    "B3": b3_idle,
    "B4": b4_latency,
    "B5": b5_end_to_end,
    "B6": b6_overhead,
    "B5-SYMLINK": b5_symlink,
    "FLEET": fleet.fleet_rollout,
}
