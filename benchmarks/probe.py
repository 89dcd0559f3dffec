"""What the benchmarks run in a fresh process to measure the agent: prints one JSON object.

``python -m benchmarks.probe download ENDPOINT BUCKET KEY DEST [--sha256 | --expect-sha256=HEX]``: HEAD +
pinned, verified download (``--sha256``: also the SHA-256 of the bytes written; ``--expect-sha256``:
verified against that SHA-256 instead of S3's checksum, as a signed bundle is); seconds (imports and
client creation excluded) and the process's peak RSS (VmHWM).
``python -m benchmarks.probe unpack ARCHIVE DEST``: ``bundle.unpack`` in this process; seconds and the
process's peak RSS.
``python -m benchmarks.probe deploy CONFIG STATE_DIR SECTION``: one daemon poll of SECTION (detect →
download → unpack → install → hooks → state) with the S3 client already open, as in the daemon.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _download(endpoint: str, bucket: str, key: str, dest: str, *flags: str) -> dict[str, Any]:
    from s3deploy.source.s3 import Endpoint, S3Pool

    ep = Endpoint(endpoint_url=endpoint)
    async with S3Pool() as pool:
        await pool.client(ep)
        started = time.perf_counter()
        rev = await pool.head(ep, bucket, key)
        expect = next((f.split("=", 1)[1] for f in flags if f.startswith("--expect-sha256=")), None)
        await pool.download(rev, ep, Path(dest), sha256="--sha256" in flags, expect_sha256=expect)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def _unpack(archive: str, dest: str) -> dict[str, Any]:
    from s3deploy.bundle.extract import unpack

    started = time.perf_counter()
    unpack(Path(archive), Path(dest), max_files=1_000_000, max_unpacked_bytes=1 << 40)
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}


async def _deploy(config_path: str, state_dir: str, section: str) -> dict[str, Any]:
    from s3deploy.config import load_config
    from s3deploy.runtime.agent import Agent, check

    config = load_config(Path(config_path))
    async with Agent(config, Path(state_dir)) as agent:
        watcher = await agent.watcher(config.section(section))
        await watcher.ctx.pool.client(watcher.endpoint)  # the daemon's client is long open
        started = time.perf_counter()
        result = await check(watcher)
        seconds = time.perf_counter() - started
    ok = result.deployment is not None and result.deployment.status == "succeeded"
    return {"seconds": seconds, "ok": ok, "error": getattr(result, "error", None)}


def main(argv: list[str]) -> None:
    what, args = argv[0], argv[1:]
    if what == "download":
        out = asyncio.run(_download(*args))
    elif what == "unpack":
        out = _unpack(*args)
    elif what == "deploy":
        out = asyncio.run(_deploy(*args))
    else:
        raise SystemExit(f"unknown probe {what!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
