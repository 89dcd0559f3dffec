"""What every case gets (``Bench``) and the helpers several case modules share: interleaved runs, a
config.ini, the daemon as a process and its /proc figures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import inputs
from benchmarks.harness import settle

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
