"""FLEET: 20 real agents on this machine roll one revision out with ``max_concurrent = 25%`` (SPEC §10).

Measured through a counting proxy in front of the S3 server (the agents talk to it; the benchmark's own
reads go straight to the server):

- the time from the upload to the last host's success, against the ideal ⌈N/k⌉ × one host's deployment
  time (one agent deploying the same bundle alone, median of three); target ≤ 1.3 × ideal + two poll
  intervals;
- the S3 requests per host per hour while idle afterwards, split into coordination requests (keys under
  the fleet prefix: heartbeats) and the bundle watch (HEADs); target ≤ 12 coordination requests.
The hooks' own timestamps also give the most hosts that deployed at once (it must be k).
"""

from __future__ import annotations

import http.client
import math
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from benchmarks.harness import Row, median
from s3deploy.bundle.pack import make_zip

SECTION = "Web"
KEY = "web/app.zip"
FLEET_PREFIX = ".s3deploy/"


class BenchLike(Protocol):
    """What this case uses of benchmarks.bench.Bench (not imported: cases imports this module)."""

    endpoint: str
    client: Any
    work: Path
    env: dict[str, str]
    idle_s: float
    log: Callable[[str], None]

    def bucket(self, name: str, *, versioned: bool = False) -> str: ...

    def fresh(self, name: str) -> Path: ...


class CountingProxy:
    """Forwards every request to the S3 server unchanged and counts it: coordination (a key or prefix
    under the fleet prefix) or bundle watch (everything else)."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kind = "coordination" if FLEET_PREFIX in unquote(unquote(self.path)) else "watch"
                with proxy.lock:
                    proxy.counts[kind] += 1
                    proxy.counts[f"{kind} {self.command}"] += 1
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                length_out = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length_out or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        return Handler


def _bundle(work: Path, hook_s: float, version: str) -> bytes:
    """A hooks-only bundle (installed whole into each host's destination): ApplicationStart stamps the
    trace and takes ``hook_s`` seconds."""
    root = work / "fleet-bundle"
    shutil.rmtree(root, ignore_errors=True)
    (root / "scripts").mkdir(parents=True)
    trace = work / "fleet-trace"
    script = root / "scripts" / "start.sh"
    stamp = f'"$S3DEPLOY_HOST_ID $(date +%s.%N)" >> {trace}'
    script.write_text(f"#!/bin/sh\necho start {stamp}\nsleep {hook_s}\necho end {stamp}\n")
    script.chmod(0o755)
    (root / "index.html").write_text(f"<h1>{version}</h1>\n")
    (root / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nhooks:\n  ApplicationStart:\n    - location: scripts/start.sh\n"
    )
    archive = work / "fleet-bundle.zip"
    make_zip(root, archive)
    return archive.read_bytes()


def _most_at_once(trace: Path) -> int:
    events = []
    for line in trace.read_text().splitlines():
        kind, _, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    peak = current = 0
    for _, step in sorted(events):
        current += step
        peak = max(peak, current)
    return peak


class Agents:
    """``count`` agents (``s3deploy run``), each its own host id, config, state and destination."""

    def __init__(self, b: BenchLike, tag: str, count: int, bucket: str, endpoint: str, **keys: Any) -> None:
        self.b = b
        self.roots = [b.fresh(f"{tag}-{i:02d}") for i in range(count)]
        self.names = [f"{tag}-{i:02d}" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for root in self.roots:
            root.mkdir(parents=True)
            section = {
                "s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": endpoint,
                "destination": root / "www", **keys,
            }  # fmt: skip
            (root / "config.ini").write_text(
                f"[{SECTION}]\n" + "".join(f"{k} = {v}\n" for k, v in section.items())
            )

    def start(self) -> None:
        for name, root in zip(self.names, self.roots, strict=True):
            cmd = [sys.executable, "-m", "s3deploy", "run", "--all", "-c", str(root / "config.ini")]
            cmd += ["--state-dir", str(root / "state"), "--host-id", name, "--log-level", "WARNING"]
            with open(root / "agent.log", "wb") as out:
                self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.b.env))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def finished(self) -> list[tuple[str, float, float] | None]:
        """Per agent: (status, started, finished) of its newest deployment (epoch seconds), or None."""
        out: list[tuple[str, float, float] | None] = []
        for root in self.roots:
            db = root / "state" / "state.db"
            row = None
            if db.exists():
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    row = conn.execute(
                        "SELECT status, started_at, finished_at FROM deployments ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                except sqlite3.OperationalError:
                    row = None
                finally:
                    conn.close()
            if row is None or row[2] is None:
                out.append(None)
            else:
                out.append((row[0], _epoch(row[1]), _epoch(row[2])))
        return out


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"FLEET: {what} within {timeout_s:.0f}s")
        time.sleep(0.2)


def _heartbeats(b: BenchLike, bucket: str) -> int:
    prefix = f"{FLEET_PREFIX}web%2Fapp.zip/hosts/"
    return int(b.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0))


def _solo(b: BenchLike, endpoint: str, poll_s: float, hook_s: float) -> list[float]:
    """One agent alone (its own bucket, so its own fleet): its deployment time, three times."""
    bucket = b.bucket("bench-fleet-solo")
    agents = Agents(b, "solo", 1, bucket, endpoint, poll_interval=poll_s, max_concurrent="25%")
    agents.start()
    times = []
    try:
        _wait("the solo agent did not start", lambda: _heartbeats(b, bucket) == 1, 120)
        for rep in range(3):
            b.client.put_object(Bucket=bucket, Key=KEY, Body=_bundle(b.work, hook_s, f"solo-{rep}"))
            _wait("the solo agent did not deploy", lambda n=rep: _solo_done(agents, n), 120)
            done = agents.finished()[0]
            assert done is not None and done[0] == "succeeded", done
            times.append(done[2] - done[1])
    finally:
        agents.stop()
    return times


def _solo_done(agents: Agents, rep: int) -> bool:
    db = agents.roots[0] / "state" / "state.db"
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        count = conn.execute("SELECT count(*) FROM deployments WHERE finished_at IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return int(count) > rep


def fleet_rollout(
    b: BenchLike,
    n_hosts: int = 20,
    share_pct: int = 25,
    poll_s: float = 5.0,
    hook_s: float = 2.0,
    min_idle_s: float = 600.0,
) -> list[Row]:
    k = max(1, n_hosts * share_pct // 100)
    idle_s = max(min_idle_s, b.idle_s)  # at least one heartbeat period (10 minutes)
    with CountingProxy(b.endpoint) as proxy:
        solo = _solo(b, proxy.url, poll_s, hook_s)
        payload = _bundle(b.work, hook_s, "fleet")
        one = median(solo)
        b.log(f"  FLEET: one host alone deploys in {one:.2f} s; starting {n_hosts} agents")
        bucket = b.bucket("bench-fleet")
        agents = Agents(
            b, "host", n_hosts, bucket, proxy.url, poll_interval=poll_s, max_concurrent=f"{share_pct}%"
        )
        (b.work / "fleet-trace").unlink(missing_ok=True)
        agents.start()
        try:
            _wait("the agents did not all start", lambda: _heartbeats(b, bucket) == n_hosts, 300)
            time.sleep(2 * poll_s)  # every agent past its first polls (404: nothing published yet)
            before = proxy.snapshot()
            uploaded = time.time()
            b.client.put_object(Bucket=bucket, Key=KEY, Body=payload)
            _wait("the rollout did not end", lambda: all(agents.finished()), 600)
            during = proxy.snapshot() - before
            done = [d for d in agents.finished() if d is not None]
            failed = [d for d in done if d[0] != "succeeded"]
            if failed:
                raise RuntimeError(
                    f"FLEET: {len(failed)} host(s) did not succeed; see {agents.roots[0].parent}"
                )
            rollout_s = max(d[2] for d in done) - uploaded
            fleet_median = median([d[2] - d[1] for d in done])
            most = _most_at_once(b.work / "fleet-trace")
            b.log(f"  FLEET: rollout {rollout_s:.1f} s; idle for {idle_s:.0f} s (heartbeats every 10 min)")
            time.sleep(2 * poll_s)
            start = proxy.snapshot()
            time.sleep(idle_s)
            idle = proxy.snapshot() - start
        finally:
            agents.stop()
    ideal = math.ceil(n_hosts / k) * one
    limit = 1.3 * ideal + 2 * poll_s
    per_hour = 3600.0 / idle_s / n_hosts
    coordination = idle["coordination"] * per_hour
    watch = idle["watch"] * per_hour
    per_host_rollout = (during["coordination"]) / n_hosts
    return [
        Row(
            f"FLEET {n_hosts} agents, max_concurrent {share_pct}% (k = {k}): upload → last host succeeded",
            f"{rollout_s:.1f} s",
            f"{ideal:.1f} s ideal",
            rollout_s / ideal,
            f"≤1.3× ideal + 2 polls ({limit:.1f} s)",
            rollout_s <= limit and most <= k,
            f"ideal = ⌈{n_hosts}/{k}⌉ × {one:.2f} s (one host alone, median of 3: "
            f"{', '.join(f'{t:.2f}' for t in solo)}); poll {poll_s:g} s; a deployment took "
            f"{fleet_median:.2f} s (median) within the fleet; at most {most} at once (hooks' timestamps); "
            f"{per_host_rollout:.1f} coordination requests per host during the rollout",
            {"solo": solo, "rollout": [rollout_s]},
        ),
        Row(
            f"FLEET {n_hosts} agents idle: coordination requests per host per hour",
            f"{coordination:.1f}",
            f"{watch:.0f} bundle watch",
            None,
            "≤12",
            coordination <= 12,
            f"counted by a proxy over {idle_s:.0f} s: {dict(sorted(idle.items()))}",
            {"idle": [float(idle["coordination"]), float(idle["watch"])]},
        ),
    ]
