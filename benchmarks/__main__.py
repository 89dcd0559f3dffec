"""``python -m benchmarks [--full] [--reps N] [--only B1,B2] [--out DIR] [--list]``: run, print, save
the table."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from benchmarks.bench import Bench
from benchmarks.cases import CASES
from benchmarks.cli import CASES as CLI_CASES
from benchmarks.detection import DETECTION_CASES
from benchmarks.harness import Row, metadata, render, write_results
from benchmarks.signing import CASES as SIGNING_CASES
from s3deploy.devtools.seaweed import SeaweedServer

CASES.update(SIGNING_CASES)
CASES.update(DETECTION_CASES)
CASES.update(CLI_CASES)


def _env(home: Path) -> dict[str, str]:
    """Credentials for the local server only; the user's AWS files and instance role never leak in."""
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")])),
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--full", action="store_true", help="B3 over 10 minutes and 5 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per case (default 3, --full 5)")
    parser.add_argument("--idle", type=float, help="seconds B3 measures the idle daemon (default 120)")
    parser.add_argument("--only", help="comma-separated cases, e.g. B1,B3")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where latest.md/json go")
    parser.add_argument("--list", action="store_true", help="print the cases, one a line, and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    reps = args.reps or (5 if args.full else 3)
    idle_s = args.idle or (600.0 if args.full else 120.0)
    wanted = [c.strip().upper() for c in args.only.split(",")] if args.only else list(CASES)
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        parser.error(f"--only: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    rows: list[Row] = []
    meta = metadata(reps, idle_s)
    with tempfile.TemporaryDirectory(prefix="s3deploy-bench-") as tmp:
        work = Path(tmp)
        (work / "aws").mkdir()
        env = _env(work / "aws")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        with SeaweedServer(work / "seaweed") as server:
            client = boto3.client(
                "s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"})
            )
            bench = Bench(server.endpoint_url, client, work, env, reps, idle_s, _say)
            for name in wanted:
                _say(f"{name} ...")
                started = time.monotonic()
                try:
                    new = CASES[name](bench)
                except Exception as e:  # one broken case must not hide the others' results
                    new = [Row(name, "error", "—", None, "—", False, f"{type(e).__name__}: {e}")]
                rows += new
                for row in new:
                    _say(f"  {row.case}: {row.ours} vs {row.baseline} → {row.result}")
                _say(f"  ({time.monotonic() - started:.0f} s)")
    path = write_results(args.out, rows, meta)
    print()
    print(render(rows, meta))
    print(f"written to {path} and {path.with_suffix('.json')}")
    # A MISS is a result, reported in the table; only a case that could not run fails the command.
    return 1 if any(r.ours == "error" for r in rows) else 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
