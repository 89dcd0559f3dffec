"""What the benchmarks run in a fresh process to measure the agent: prints one JSON object.

``python -m benchmarks.probe download ENDPOINT BUCKET KEY DEST``: HEAD + pinned, verified download;
seconds (imports and client creation excluded) and the process's peak RSS (VmHWM).
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


async def _download(endpoint: str, bucket: str, key: str, dest: str) -> dict[str, Any]:
    from s3deploy.source.s3 import Endpoint, S3Pool

    ep = Endpoint(endpoint_url=endpoint)
    async with S3Pool() as pool:
        await pool.client(ep)
        started = time.perf_counter()
        rev = await pool.head(ep, bucket, key)
        await pool.download(rev, ep, Path(dest))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def _unpack(archive: str, dest: str) -> dict[str, Any]:
    from s3deploy.bundle.extract import unpack

    started = time.perf_counter()
    unpack(Path(archive), Path(dest), max_files=1_000_000, max_unpacked_bytes=1 << 40)
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}


async def _deploy(config_path: str, state_dir: str, section: str) -> dict[str, Any]:
    from s3deploy.config import load_config
    from s3deploy.deployer import Agent
    from s3deploy.runtime.daemon import check
    from s3deploy.source.s3 import S3Pool
    from s3deploy.state.locks import SectionLocks
    from s3deploy.state.store import StateStore
    from s3deploy.watcher import Watcher

    sec = load_config(Path(config_path)).section(section)
    state = StateStore(Path(state_dir) / "state.db")
    try:
        async with S3Pool() as pool:
            agent = Agent(Path(state_dir), state, pool, SectionLocks(Path(state_dir)))
            watcher = Watcher(sec, agent)
            await pool.client(watcher.endpoint)  # the daemon's client is long open
            started = time.perf_counter()
            result = await check(watcher)
            seconds = time.perf_counter() - started
    finally:
        state.close()
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
