"""Measuring, comparing and reporting: rows of (case, ours, baseline, ratio, target, PASS/MISS)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the results table. ``ratio`` is ours/baseline when both are measured."""

    case: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: not measured (a baseline tool is missing)
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def result(self) -> str:
        return {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (with few samples: the largest but none above the rank)."""
    ordered = sorted(values)
    rank = max(1, -(-95 * len(ordered) // 100))
    return ordered[rank - 1]


def ratio_row(
    case: str, ours: list[float], base: list[float] | None, limit: float, unit: str = "s", note: str = ""
) -> Row:
    """A row comparing medians: PASS when median(ours)/median(baseline) <= limit."""
    mo = median(ours)
    if not base:
        return Row(case, f"{mo:.2f} {unit}", "n/a", None, f"≤{limit:g}×", None, note, {"ours": ours})
    mb = median(base)
    r = mo / mb
    return Row(
        case,
        f"{mo:.2f} {unit}",
        f"{mb:.2f} {unit}",
        r,
        f"≤{limit:g}×",
        r <= limit,
        note,
        {"ours": ours, "baseline": base},
    )


def run_json(cmd: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    """Run a probe and parse the JSON object it prints last."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def timed(cmd: list[str], env: dict[str, str], timeout: float = 600, shell: bool = False) -> float:
    """Wall-clock seconds of a command that must succeed."""
    started = time.perf_counter()
    proc = subprocess.run(
        cmd if not shell else cmd[0],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        shell=shell,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds


def probe(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.probe", *args]


def settle() -> None:
    """Flush dirty pages so one run's writeback does not slow the next one down."""
    os.sync()


def render(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"Run {meta['started']} on {meta['host']} ({meta['cores']} cores), {meta['reps']} repetitions "
        f"per case (medians), B3 over {meta['idle_s']:.0f} s.",
        "",
        "| case | ours | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else "—"
        lines.append(f"| {row.case} | {row.ours} | {row.baseline} | {ratio} | {row.target} | {row.result} |")
    notes = [f"- {row.case}: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: list[Row], meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = render(rows, meta)
    (out_dir / "latest.md").write_text(table)
    data = {"meta": meta, "rows": [asdict(r) | {"result": r.result} for r in rows]}
    (out_dir / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    return out_dir / "latest.md"


def metadata(reps: int, idle_s: float) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node() and platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "reps": reps,
        "idle_s": idle_s,
    }
