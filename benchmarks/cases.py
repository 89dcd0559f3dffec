"""The cases B1-B6. Each runs the agent and its baseline in the same run, interleaved, and returns rows."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fleet, inputs
from benchmarks.harness import Row, median, p95, probe, ratio_row, run_json, settle, timed

MiB = 1 << 20


@dataclass
class Bench:
    """What every case gets: the S3 server, a boto3 client on it, a scratch folder, settings."""

    endpoint: str
    client: Any
    work: Path
    env: dict[str, str]
    reps: int
    idle_s: float
    log: Callable[[str], None]

    def bucket(self, name: str, *, versioned: bool = False) -> str:
        self.client.create_bucket(Bucket=name)
        if versioned:
            self.client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path


def _interleaved(reps: int, runners: dict[str, Callable[[], float | None]]) -> dict[str, list[float]]:
    """Run every runner once per repetition, rotating their order; skip a runner that returns None."""
    results: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            settle()
            value = runners[name]()
            if value is not None:
                results[name].append(value)
    return results


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
HEAD_LOOP = """
import sys, time, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
interval, targets = float(sys.argv[2]), [t.split("/", 1) for t in sys.argv[3:]]
while True:
    started = time.monotonic()
    for bucket, key in targets:
        c.head_object(Bucket=bucket, Key=key)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _tiny_bundle(b: Bench, name: str, dest: Path, hook_body: str = "true") -> bytes:
    root = inputs.bundle_dir(b.fresh(name), dest, 1, hook_body)
    data = inputs.zipped(root, b.work / f"{name}.zip").read_bytes()
    shutil.rmtree(root)
    return data


def _config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, keys in sections.items():
        lines += [f"[{name}]", *(f"{k} = {v}" for k, v in keys.items()), ""]
    path.write_text("\n".join(lines))
    return path


def _daemon(b: Bench, config: Path, state: Path, log: Path, level: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "s3deploy", "run", "--all", "-c", str(config), "--state-dir", str(state)]
    with open(log, "wb") as out:
        return subprocess.Popen([*cmd, "--log-level", level], stdout=out, stderr=subprocess.STDOUT, env=b.env)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


# --------------------------------------------------------------------------- B4
def b4_latency(b: Bench, interval_s: float = 5.0, n_sections: int = 5) -> list[Row]:
    bucket = b.bucket("bench-b4", versioned=True)  # new versions without waiting out LastModified
    payload = _tiny_bundle(b, "b4-bundle", b.work / "b4-www")
    sections = {
        f"lat{i}": {
            "s3_bucket": bucket,
            "target_file_key": f"lat/{i}.zip",
            "endpoint_url": b.endpoint,
            "poll_interval": interval_s,
            "destination": b.work / "b4-www" / str(i),
            "last_fetch_time": "2099-01-01 00:00:00+0000",
        }
        for i in range(n_sections)
    }
    for i in range(n_sections):
        b.client.put_object(Bucket=bucket, Key=f"lat/{i}.zip", Body=payload)
    log = b.work / "b4-daemon.log"
    daemon = _daemon(b, _config(b.work / "b4.ini", sections), b.fresh("b4-state"), log, "INFO")
    seen_naive: dict[str, float] = {}
    stop = threading.Event()

    def naive_loop() -> None:  # the baseline: HEAD every key each interval, note ETag changes
        known: dict[str, str] = {}
        while not stop.is_set():
            started = time.monotonic()
            for i in range(n_sections):
                key = f"lat/{i}.zip"
                version = b.client.head_object(Bucket=bucket, Key=key)["VersionId"]
                if key in known and known[key] != version:
                    seen_naive[version] = time.monotonic()
                known[key] = version
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))

    thread = threading.Thread(target=naive_loop, daemon=True)
    ours: list[float] = []
    base: list[float] = []
    samples = max(6, 2 * b.reps)
    try:
        _wait_for_line(log, "watching", 60)
        thread.start()
        time.sleep(interval_s + 1)  # past the first (baseline) polls
        rng = random.Random(4)
        for n in range(samples):
            time.sleep(rng.uniform(0, interval_s))
            section = f"lat{n % n_sections}"
            version = b.client.put_object(
                Bucket=bucket, Key=f"lat/{n % n_sections}.zip", Body=payload + str(n).encode()
            )["VersionId"]
            uploaded = time.monotonic()
            detected = _wait_for_line(log, f"[{section}] new revision {version}", 3 * interval_s + 10)
            ours.append(detected - uploaded)
            deadline = time.monotonic() + 2 * interval_s
            while version not in seen_naive and time.monotonic() < deadline:
                time.sleep(0.01)
            if version in seen_naive:
                base.append(seen_naive[version] - uploaded)
    finally:
        stop.set()
        _stop(daemon)
    limit = interval_s + 1
    mo = p95(ours)
    mb = p95(base) if base else None
    return [
        Row(
            f"B4 detection latency p95, poll {interval_s:g} s ({len(ours)} uploads)",
            f"{mo:.2f} s",
            f"{mb:.2f} s" if mb is not None else "n/a",
            mo / mb if mb else None,
            f"≤{limit:g} s",
            mo <= limit,
            "baseline: a HEAD loop at the same interval; ours: upload done → 'new revision' logged",
            {"ours": ours, "baseline": base},
        )
    ]


def _wait_for_line(log: Path, text: str, timeout: float) -> float:
    """Poll the daemon's log every 10 ms; the monotonic time at which ``text`` first appeared."""
    deadline = time.monotonic() + timeout
    with open(log, "rb") as f:
        buf = b""
        needle = text.encode()
        while True:
            chunk = f.read()
            now = time.monotonic()
            if chunk:
                buf = (buf + chunk)[-1_000_000:]
                if needle in buf:
                    return now
            if now > deadline:
                raise RuntimeError(f"{text!r} not in {log} after {timeout:.0f}s")
            time.sleep(0.01)


# --------------------------------------------------------------------------- B5 / B6
AWS_CP_STANDIN = """
import sys, boto3
from botocore.config import Config
bucket, key = sys.argv[2][5:].split("/", 1)
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
c.download_file(bucket, key, sys.argv[3])
"""


def _deploy_case(b: Bench, name: str, app_entries: int, hook_body: str) -> tuple[Path, Path, str]:
    """Upload a bundle for section ``name``; return its config, destination and s3 URL."""
    bucket = b.bucket(f"bench-{name.lower()}")
    www = b.work / f"{name}-www"
    root = inputs.bundle_dir(b.fresh(f"{name}-bundle"), www, app_entries, hook_body)
    archive = inputs.zipped(root, b.work / f"{name}.zip")
    shutil.rmtree(root)
    with open(archive, "rb") as f:  # one PUT, as `s3deploy publish` does: a checksum to verify
        b.client.put_object(Bucket=bucket, Key="bundle.zip", Body=f)
    keys = {"s3_bucket": bucket, "target_file_key": "bundle.zip", "endpoint_url": b.endpoint}
    return _config(b.work / f"{name}.ini", {name: keys}), www, f"s3://{bucket}/bundle.zip"


def _ours_deploy(b: Bench, config: Path, name: str, www: Path) -> float:
    shutil.rmtree(www, ignore_errors=True)
    res = run_json(probe("deploy", str(config), str(b.fresh(f"{name}-state")), name), b.env)
    if not res["ok"]:
        raise RuntimeError(f"{name}: the deployment failed: {res.get('error')}")
    return float(res["seconds"])


def b5_end_to_end(b: Bench, n_entries: int = 20_000) -> list[Row]:
    config, www, url = _deploy_case(b, "B5", n_entries, "true")
    aws = shutil.which("aws")
    if aws is not None:
        fetch = f"{aws} s3 cp --quiet --endpoint-url {b.endpoint} {url} b5.zip"
        note = "baseline: aws s3 cp && unzip -q && cp -a"
    else:
        fetch = f"{sys.executable} -c '{AWS_CP_STANDIN}' {b.endpoint} {url} b5.zip"
        note = "aws CLI not installed: boto3 download_file in python -c stands in for aws s3 cp"
    pipeline = f"cd {b.work} && rm -rf b5-shell b5.zip && {fetch} && unzip -q b5.zip -d b5-shell "
    pipeline += f"&& mkdir -p {www} && cp -a b5-shell/app/. {www}/"

    def shell() -> float:
        shutil.rmtree(www, ignore_errors=True)
        return timed([pipeline], b.env, shell=True)

    res = _interleaved(b.reps, {"ours": lambda: _ours_deploy(b, config, "B5", www), "shell": shell})
    note += "; ours: one daemon poll (HEAD → pinned GET → unpack → Install → 4 hooks → state)"
    return [
        ratio_row(
            f"B5 end to end, {n_entries // 1000}k-file bundle", res["ours"], res["shell"], 0.6, note=note
        )
    ]


def b6_overhead(b: Bench, hook_s: float = 0.1) -> list[Row]:
    stamps = b.work / "b6-stamps"
    body = f'echo "$(date +%s.%N) start" >> {stamps}\nsleep {hook_s}\necho "$(date +%s.%N) end" >> {stamps}'
    config, www, _ = _deploy_case(b, "B6", 1, body)
    totals: list[float] = []
    hooks: list[float] = []
    for _ in range(b.reps):
        stamps.unlink(missing_ok=True)
        settle()
        totals.append(_ours_deploy(b, config, "B6", www))
        times = [float(line.split()[0]) for line in stamps.read_text().splitlines()]
        hooks.append(sum(end - start for start, end in zip(times[::2], times[1::2], strict=True)))
    overheads = [t - h for t, h in zip(totals, hooks, strict=True)]
    over = median(overheads)
    return [
        Row(
            f"B6 tiny bundle: overhead beyond the hooks' own time (4 hooks of {hook_s:g} s)",
            f"{over * 1000:.0f} ms (total {median(totals):.2f} s)",
            f"{median(hooks):.2f} s in hooks",
            None,
            "≤200 ms",
            over <= 0.2,
            samples={"total": totals, "hooks": hooks},
        )
    ]


def _b5_symlink(b: Bench) -> list[Row]:
    from benchmarks.activation import b5_symlink  # its own file, built on B5's helpers here

    return b5_symlink(b)


CASES: dict[str, Callable[[Bench], list[Row]]] = {
    "B1": b1_download,
    "B2": b2_unpack,
    "B3": b3_idle,
    "B4": b4_latency,
    "B5": b5_end_to_end,
    "B6": b6_overhead,
    "B5-SYMLINK": _b5_symlink,
    "FLEET": fleet.fleet_rollout,
}
