"""CLI (issue 15 item 2): the commands a user types, timed as whole processes (wall clock, from exec to
exit), through the .venv's ``s3deploy`` entry point as a user runs it.

A realistic config.ini (four sections on the benchmark's S3 server) and a state directory the case creates
with one real deployment, so ``status`` and ``history`` have something to show. Shell completion is timed
the way bash asks for it (``_S3DEPLOY_COMPLETE=complete_bash``, section names from the config). Baselines in
the same run, interleaved: ``python -c pass`` (the same interpreter) and ``aws --version`` when the AWS CLI
is installed. Each runner runs a few times first, uncounted, so every one starts with warm caches.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench import Bench, _config, _interleaved, _tiny_bundle
from benchmarks.harness import Row, median, timed

TARGET_S = 0.25
WARMUP_RUNS = 2
SECTIONS = ("Web", "Api", "Worker", "Admin")


def _entry_point() -> Path:
    """The ``s3deploy`` script installed beside the interpreter running the benchmarks."""
    exe = Path(sys.executable).with_name("s3deploy")
    if not exe.is_file():
        raise RuntimeError(f"CLI: no s3deploy entry point beside {sys.executable}; run `make install`")
    return exe


def _setup(b: Bench, exe: Path) -> tuple[Path, Path]:
    """config.ini with a few sections, and a state directory holding one real deployment of Web."""
    bucket = b.bucket("bench-cli")
    root = b.fresh("cli")
    root.mkdir()
    sections = {}
    for name in SECTIONS:
        key = f"apps/{name.lower()}/bundle.zip"
        www = root / "www" / name.lower()
        b.client.put_object(Bucket=bucket, Key=key, Body=_tiny_bundle(b, f"cli-{name}", www))
        sections[name] = {
            "s3_bucket": bucket,
            "target_file_key": key,
            "endpoint_url": b.endpoint,
            "poll_interval": 30,
            "destination": www,
        }
    config = _config(root / "config.ini", sections)
    state = root / "state"
    cmd = [str(exe), "deploy", SECTIONS[0], "-c", str(config), "--state-dir", str(state)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=b.env, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"CLI: deploying {SECTIONS[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return config, state


def _commands(exe: Path, config: Path, state: Path) -> dict[str, list[str]]:
    cfg = ["-c", str(config)]
    both = [*cfg, "--state-dir", str(state)]
    return {
        "--help": [str(exe), "--help"],
        "list": [str(exe), "list", *cfg],
        "status": [str(exe), "status", *both],
        "history": [str(exe), "history", SECTIONS[0], *both],
        "suspend": [str(exe), "suspend", SECTIONS[1], *both],
        "resume": [str(exe), "resume", SECTIONS[1], *both],
        "validate": [str(exe), "validate", *cfg],
    }


def _runner(
    cmd: list[str], env: dict[str, str], cpu: list[float] | None = None
) -> Callable[[], float | None]:
    """Wall seconds of one run; its CPU seconds (user + system) appended to ``cpu`` when given: on a busy
    machine the wall clock includes waiting for a core, the CPU time does not."""

    def run() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = timed(cmd, env, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return wall

    return run


def _completion(b: Bench, exe: Path, config: Path, cpu: list[float]) -> Callable[[], float | None]:
    """Bash completing ``s3deploy status -c config.ini <TAB>``: section names read from the config."""
    words = f"s3deploy status -c {config} "
    env = dict(b.env, _S3DEPLOY_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD="4")
    out = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    if out.split() != list(SECTIONS):
        raise RuntimeError(f"CLI: completion of {words!r} printed {out!r}, expected {' '.join(SECTIONS)}")
    return _runner([str(exe)], env, cpu)


def cli_commands(b: Bench) -> list[Row]:
    exe = _entry_point()
    config, state = _setup(b, exe)
    commands = _commands(exe, config, state)
    cpu: dict[str, list[float]] = {label: [] for label in [*commands, "completion"]}
    runners = {label: _runner(cmd, b.env, cpu[label]) for label, cmd in commands.items()}
    runners["completion"] = _completion(b, exe, config, cpu["completion"])
    runners["python -c pass"] = _runner([sys.executable, "-c", "pass"], b.env)
    aws = shutil.which("aws")
    runners["aws --version"] = _runner([aws, "--version"], b.env) if aws else lambda: None
    for _ in range(WARMUP_RUNS):  # not counted: page cache, .pyc files, the first SQLite open
        for run in runners.values():
            run()
    for values in cpu.values():
        values.clear()  # the warm-up runs' CPU
    res = _interleaved(b.reps, runners)
    base = median(res.pop("python -c pass"))
    aws_s = res.pop("aws --version")
    note = f"wall clock of the whole process (and its CPU), median of {b.reps} after {WARMUP_RUNS} warm-ups"
    rows = [
        Row(
            f"CLI s3deploy {label}" if label != "completion" else "CLI bash completion of section names",
            f"{median(values):.3f} s (CPU {median(cpu[label]):.3f} s)",
            f"{base:.3f} s",
            median(values) / base,
            f"≤{TARGET_S:g} s",
            median(values) <= TARGET_S,
            f"baseline: python -c pass (same interpreter); {note}" if label == "--help" else "",
            {"ours": values, "cpu": cpu[label]},
        )
        for label, values in res.items()
    ]
    slowest = max(res, key=lambda label: median(res[label]))
    worst = median(res[slowest])
    rows.append(
        Row(
            f"CLI slowest command ({slowest}) vs aws --version",
            f"{worst:.3f} s",
            f"{median(aws_s):.3f} s" if aws_s else "n/a",
            worst / median(aws_s) if aws_s else None,
            f"≤{TARGET_S:g} s",
            worst <= TARGET_S if aws_s else None,
            "" if aws_s else "aws CLI not installed (pip install awscli): baseline skipped",
            {"ours": res[slowest], "baseline": aws_s},
        )
    )
    return rows


CASES: dict[str, Callable[[Bench], list[Row]]] = {"CLI": cli_commands}
