"""B4-B6, the agent end to end: B4 an upload detected by the running daemon, against a HEAD loop; B5 and
B6 a bundle deployed (one daemon poll through the probe), against a shell pipeline (B5) and against the
hooks' own time (B6). B5-SYMLINK (activation.py) builds on B5's helpers here."""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
from pathlib import Path

from benchmarks import inputs
from benchmarks.bench import Bench, _config, _daemon, _interleaved, _stop, _tiny_bundle
from benchmarks.harness import Row, median, p95, probe, ratio_row, run_json, settle, timed


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


def shell_pipeline(b: Bench, url: str, tag: str, www: Path) -> tuple[str, str]:
    """B5's baseline as one shell line (``aws s3 cp && unzip -q && cp -a`` into ``www``, working files
    named after ``tag`` in the bench folder), and the note saying what fetched the bundle."""
    aws = shutil.which("aws")
    if aws is not None:
        fetch = f"{aws} s3 cp --quiet --endpoint-url {b.endpoint} {url} {tag}.zip"
        note = "baseline: aws s3 cp && unzip -q && cp -a"
    else:
        fetch = f"{sys.executable} -c '{AWS_CP_STANDIN}' {b.endpoint} {url} {tag}.zip"
        note = "aws CLI not installed: boto3 download_file in python -c stands in for aws s3 cp"
    pipeline = f"cd {b.work} && rm -rf {tag}-shell {tag}.zip && {fetch} && unzip -q {tag}.zip -d {tag}-shell "
    pipeline += f"&& mkdir -p {www} && cp -a {tag}-shell/app/. {www}/"
    return pipeline, note


def b5_end_to_end(b: Bench, n_entries: int = 20_000) -> list[Row]:
    config, www, url = _deploy_case(b, "B5", n_entries, "true")
    pipeline, note = shell_pipeline(b, url, "b5", www)

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
