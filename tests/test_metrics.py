"""Prometheus metrics: text rendered from state and counters, the textfile, a real daemon's endpoint."""

from __future__ import annotations

import asyncio
import http.client
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3deploy.devtools.seaweed import SeaweedServer, free_port
from s3deploy.metrics import Monitor, status_line, write_textfile
from s3deploy.state.store import StateStore
from tests.agent import DaemonProcess, appspec, cli, hook_script, wait_until, write_config, zip_bytes

KEY = "app/bundle.zip"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text → {(name, labels): value}; fails on any line that is not a comment or a sample."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def labels_of(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str
) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    """GET http://127.0.0.1:port/path → (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = scrape(port)
    assert status == 200
    return parse(body)


def polls(port: int, section: str) -> float:
    """How many S3 checks the daemon behind ``port`` made for ``section`` (0 while it is not up yet)."""
    try:
        return sample(metrics(port), "s3deploy_polls_total", section=section)
    except (OSError, AssertionError):
        return 0


def wait_for_polls(port: int, section: str, more: int = 2, timeout: float = 20) -> None:
    """Wait until the daemon has made ``more`` complete checks of ``section`` after now."""
    start = polls(port, section)
    wait_until(lambda: polls(port, section) >= start + more, timeout=timeout, interval=0.1)


# ------------------------------------------------------------------------------ rendering


def test_render_reads_state_and_counters_and_escapes_labels(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        monitor = Monitor(store)
        monitor.watch(["Prod", 'We"ird\\Name', "Fresh"])
        ok = store.start(
            section="Prod", bucket="b", key="k", etag="e1", version_id="v1", identity="v1",
            release_dir=None, log_path=None,
        )  # fmt: skip
        store.finish(ok.id, "succeeded")
        bad = store.start(
            section="Prod", bucket="b", key="k", etag="e2", version_id="v2", identity="v2",
            release_dir=None, log_path=None,
        )  # fmt: skip
        monitor.deployment_finished(store.finish(bad.id, "failed", failed_event="ValidateService"))
        running = store.start(
            section='We"ird\\Name', bucket="b", key="k", etag="e3", version_id=None, identity="e3@t",
            release_dir=None, log_path=None,
        )  # fmt: skip
        store.set_suspended("Fresh", True)
        monitor.polled("Prod", None)
        monitor.polled("Prod", "S3 unreachable")

        samples = parse(monitor.render())
        line = status_line(store, monitor.sections)
    finally:
        store.close()

    assert sample(samples, "s3deploy_polls_total", section="Prod") == 2
    assert sample(samples, "s3deploy_poll_errors_total", section="Prod") == 1
    assert sample(samples, "s3deploy_deployments_total", section="Prod", status="failed") == 1
    assert sample(samples, "s3deploy_deployments_total", section="Prod", status="succeeded") == 0
    assert sample(samples, "s3deploy_section_state", section="Prod", state="failed") == 1
    assert sample(samples, "s3deploy_section_state", section="Prod", state="idle") == 0
    assert sample(samples, "s3deploy_last_deployment_status", section="Prod", status="failed") == 1
    assert sample(samples, "s3deploy_last_deployment_status", section="Prod", status="succeeded") == 0
    assert sample(samples, "s3deploy_last_deployment_duration_seconds", section="Prod") >= 0
    assert sample(samples, "s3deploy_last_deployment_timestamp_seconds", section="Prod") > 1.7e9
    # The installed release is the one that succeeded, not the failed attempt.
    assert labels_of(samples, "s3deploy_current_revision_info") == [
        {"section": "Prod", "deployment_id": ok.id, "etag": "e1", "version_id": "v1"}
    ]
    # A section name with a quote and a backslash survives the label escaping.
    assert sample(samples, "s3deploy_section_state", section='We\\"ird\\\\Name', state="deploying") == 1
    assert sample(samples, "s3deploy_section_suspended", section="Fresh") == 1
    assert sample(samples, "s3deploy_section_state", section="Fresh", state="never") == 1
    assert line == (
        f'3 sections: Prod failed, We"ird\\Name deploying {running.id}, Fresh not deployed yet (suspended)'
    )


def test_write_textfile_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "collector" / "s3deploy.prom"
    write_textfile(target, "a 1\n")
    inode = target.stat().st_ino
    write_textfile(target, "a 2\n")
    assert target.read_text() == "a 2\n"
    assert target.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["s3deploy.prom"]


# ------------------------------------------------------------------------------ a running daemon


def test_scrape_a_running_daemon_and_see_a_deployment_change_the_values(
    tmp_path: Path,
    seaweed: SeaweedServer,
    make_bucket: Callable[..., str],
    s3_client: Any,
    daemons: Callable[..., DaemonProcess],
) -> None:
    bucket = make_bucket(versioned=True)
    state_dir, dest, textfile = tmp_path / "state", tmp_path / "www", tmp_path / "prom" / "s3deploy.prom"
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": {
                "s3_bucket": bucket,
                "target_file_key": KEY,
                "endpoint_url": seaweed.endpoint_url,
                "poll_interval": 0.2,
            },
            "Down": {
                "s3_bucket": "nowhere",
                "target_file_key": KEY,
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "poll_interval": 0.2,
            },
        },
    )
    bundle = {
        "appspec.yml": appspec(dest, {"AfterInstall": "scripts/ok.sh"}),
        "scripts/ok.sh": hook_script(""),
    }
    v1 = s3_client.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes({**bundle, "app/v": "1"}))
    port = free_port()
    daemons(config, state_dir, "--all", "--metrics-port", str(port), "--metrics-textfile", str(textfile))

    def deployed(version: str) -> bool:
        try:
            info = labels_of(metrics(port), "s3deploy_current_revision_info")
        except OSError:
            return False
        return [i["version_id"] for i in info if i["section"] == "Web"] == [version]

    wait_until(lambda: deployed(v1["VersionId"]), timeout=30)
    first = metrics(port)
    assert sample(first, "s3deploy_deployments_total", section="Web", status="succeeded") == 1
    assert sample(first, "s3deploy_section_state", section="Web", state="idle") == 1
    assert sample(first, "s3deploy_last_deployment_status", section="Web", status="succeeded") == 1
    finished_1 = sample(first, "s3deploy_last_deployment_timestamp_seconds", section="Web")
    # The unreachable section is counted, and does not stop the other one.
    wait_until(lambda: sample(metrics(port), "s3deploy_poll_errors_total", section="Down") >= 2, timeout=20)
    assert sample(metrics(port), "s3deploy_polls_total", section="Web") >= 1

    v2 = s3_client.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes({**bundle, "app/v": "2"}))
    wait_until(lambda: deployed(v2["VersionId"]), timeout=30)
    second = metrics(port)
    assert sample(second, "s3deploy_deployments_total", section="Web", status="succeeded") == 2
    assert sample(second, "s3deploy_last_deployment_timestamp_seconds", section="Web") > finished_1
    assert (dest / "v").read_text() == "2"

    # The textfile carries the same families, rewritten after each poll or deployment.
    wait_until(lambda: textfile.exists() and v2["VersionId"] in textfile.read_text(), timeout=10)
    from_file = parse(textfile.read_text())
    assert sample(from_file, "s3deploy_deployments_total", section="Web", status="succeeded") == 2

    status, ctype, body = scrape(port)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "# TYPE s3deploy_polls_total counter" in body
    assert scrape(port, "/nothing")[0] == 404
    # The endpoint adds the standard process and Python metrics; the textfile does not (node_exporter,
    # which reads it, has process metrics of its own).
    assert sample(parse(body), "process_resident_memory_bytes") > 10 << 20
    assert labels_of(parse(body), "python_info")
    assert "process_" not in textfile.read_text()
    # OpenMetrics for a scraper that asks for it.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    assert resp.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and 's3deploy_polls_total{section="Web"}' in text


def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    """A silent client does not keep one of the endpoint's few connections (nor its descriptor)."""
    store = StateStore(tmp_path / "state.db")

    async def main() -> bytes:
        monitor = Monitor(store, port=0)
        await monitor.start()
        assert monitor._endpoint is not None
        stop = asyncio.Event()
        running = asyncio.create_task(monitor.run(stop))
        reader, writer = await asyncio.open_connection("127.0.0.1", monitor._endpoint.port)
        try:
            async with asyncio.timeout(30):
                return await reader.read()  # b"" once the server closes it
        finally:
            writer.close()
            stop.set()
            await running

    try:
        assert asyncio.run(main()) == b""
    finally:
        store.close()


def test_metrics_port_in_use_exits_2_before_watching(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(
            tmp_path / "config.ini",
            {"Web": {"s3_bucket": "b", "target_file_key": KEY, "endpoint_url": "http://127.0.0.1:9"}},
        )
        proc = cli(
            "run", "--all", "-c", str(config), "--state-dir", str(tmp_path / "s"), "--metrics-port", str(port)
        )
    assert proc.returncode == 2
    assert f"--metrics-port {port}" in proc.stderr


def test_metrics_flags_are_refused_with_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.ini", {"Web": {"s3_bucket": "b", "target_file_key": KEY}})
    proc = cli("run", "--all", "--once", "-c", str(config), "--metrics-port", "9999")
    assert proc.returncode == 2 and "not --once" in proc.stderr


# ------------------------------------------------------------------------------ a hostile local user


class Flood:
    """Keeps up to ``size`` connections to 127.0.0.1:port open from a thread, never sending a byte, and
    opens new ones as the server closes them: a local user trying to take the daemon's descriptors."""

    def __init__(self, port: int, size: int, threads: int = 8) -> None:
        self.port, self.size = port, size // threads
        self.stop = threading.Event()
        self.opened = self.attempts = 0  # approximate (threads race on +=): only compared to a bound
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket()
        sock.settimeout(0.2)
        self.attempts += 1
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _run(self) -> None:
        socks: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                while len(socks) < self.size and not self.stop.is_set():
                    sock = self._connect()
                    if sock is None:
                        break
                    socks.append(sock)
                readable, _, _ = select.select(socks, [], [], 0.05) if socks else ([], [], [])
                for sock in readable:  # closed by the server (or sent something): open another one
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        socks.remove(sock)
                        sock.close()
                time.sleep(0.002)
        finally:
            for sock in socks:
                sock.close()


def test_a_connection_flood_cannot_take_the_daemons_file_descriptors(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """Before: every connection held a descriptor until its 5 s timeout, so 600 held connections took all
    of a daemon's 256 ("Too many open files", thousands of log lines) and deployments failed."""
    bucket, dest, state_dir = make_bucket(versioned=True), tmp_path / "www", tmp_path / "state"
    config = write_config(tmp_path / "config.ini", {"Web": {
        "s3_bucket": bucket, "target_file_key": KEY, "endpoint_url": seaweed.endpoint_url,
        "poll_interval": 0.2,
    }})  # fmt: skip
    bundle = {
        "appspec.yml": appspec(dest, {"AfterInstall": "scripts/ok.sh"}),
        "scripts/ok.sh": hook_script(""),
    }
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes({**bundle, "app/v": "1"}))
    port, log = free_port(), tmp_path / "daemon.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "s3deploy", "run", "--all", "-c", str(config), "--state-dir",
             str(state_dir), "--metrics-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=low_fd_limit, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: (dest / "v").exists(), timeout=60)
        with Flood(port, size=600) as flood:
            wait_until(lambda: flood.opened >= 40 and flood.attempts >= 200, timeout=60)
            s3_client.put_object(Bucket=bucket, Key=KEY, Body=zip_bytes({**bundle, "app/v": "2"}))
            wait_until(lambda: (dest / "v").read_text() == "2", timeout=60)
            wait_until(lambda: flood.attempts >= 400, timeout=60)
        assert daemon.poll() is None
        assert "Too many open files" not in log.read_text(), log.read_text()[-3000:]
        # Once the flood is over the endpoint answers again, and shows the daemon's own descriptors.
        samples = wait_until(lambda: _try_metrics(port), timeout=30)
        assert sample(samples, "s3deploy_deployments_total", section="Web", status="succeeded") == 2
        assert sample(samples, "process_max_fds") == 256
        assert sample(samples, "process_open_fds") < 128
    finally:
        daemon.terminate()
        daemon.wait(timeout=40)
    warnings = [line for line in log.read_text().splitlines() if "new ones wait until one ends" in line]
    assert 1 <= len(warnings) <= 3, warnings  # at most one a minute, however many were kept waiting


def _try_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    try:
        return metrics(port)
    except (OSError, AssertionError):
        return None
