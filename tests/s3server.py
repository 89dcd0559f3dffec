"""Test fixtures: real S3-compatible servers (SeaweedFS, moto) and a fault-injecting proxy.

Fixtures:
- ``aws_env`` (session, autouse): fake credentials, no ~/.aws files, no instance-metadata lookups.
- ``seaweed`` (session): one ``weed mini`` for the whole run.
- ``s3_client``: a plain sync boto3 client on ``seaweed`` for test setup.
- ``make_bucket(versioned=False) -> str``: a fresh bucket, emptied and deleted afterwards.
- ``moto_server``: moto's ThreadedMotoServer on a free port (its endpoint URL), stopped afterwards.
- ``fault_proxy``: a :class:`FaultProxy` in front of ``seaweed`` that fails requests on demand.
- ``pool`` / ``ep``: an ``S3Pool`` for in-process tests and the ``Endpoint`` of ``seaweed``.
"""

from __future__ import annotations

import http.client
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from s3deploy.devtools.seaweed import SeaweedServer, free_port
from s3deploy.source.s3 import Endpoint, S3Pool

_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fake credentials for the whole session; the developer's ~/.aws and instance role never leak in."""
    saved = {name: os.environ.get(name) for name in _AWS_VARS}
    home = tmp_path_factory.mktemp("aws")
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    for name in _AWS_VARS:
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        AWS_EC2_METADATA_DISABLED="true",  # no 1 s IMDS timeouts when a test removes the credentials
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[SeaweedServer]:
    """One SeaweedFS S3 server for the whole test session."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sync_client(endpoint_url: str) -> Any:
    """A plain boto3 S3 client with the test credentials, path-style, for test setup."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 2}),
    )


@pytest.fixture
def s3_client(seaweed: SeaweedServer) -> Any:
    """A sync boto3 client on the session's SeaweedFS."""
    return sync_client(seaweed.endpoint_url)


def _delete_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for item in doomed:
            client.delete_object(Bucket=bucket, **item)
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def make_bucket(s3_client: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``make_bucket(versioned=False)`` creates a uniquely named bucket; all are deleted after."""
    created: list[str] = []

    def make(versioned: bool = False) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        s3_client.create_bucket(Bucket=name)
        created.append(name)
        if versioned:
            s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    yield make
    for name in created:
        _delete_bucket(s3_client, name)


@pytest.fixture
def moto_server() -> Iterator[str]:
    """moto's S3 in a thread on a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Fault:
    """What to do to the next ``times`` requests with this method."""

    method: str
    times: int
    status: int = 0  # answer with this status and an S3 error body instead of forwarding
    code: str = ""
    truncate_to: int | None = None  # forward, but send only this many body bytes, then drop the connection
    corrupt: bool = False  # forward, but flip one byte of the body


class FaultProxy:
    """An HTTP proxy in front of an S3 server that fails, truncates or corrupts requests on demand.

    Requests are forwarded unchanged (Host included, so signatures still match) unless a queued
    :class:`Fault` for that method applies. Bodies are read whole: meant for test-sized objects.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for m, _ in self.seen if m == method)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.seen.append((method, path))
            for fault in self.faults:
                if fault.method == method and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.status:
                    self._send_error(fault)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = resp.getheaders()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in headers:
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                declared = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", declared or "0")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault is not None and fault.corrupt and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault is not None and fault.truncate_to is not None:
                    self.wfile.write(data[: fault.truncate_to])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def _send_error(self, fault: Fault) -> None:
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                    f"<Message>injected by FaultProxy</Message></Error>"
                ).encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(xml)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

        return Handler


@pytest.fixture
def fault_proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's SeaweedFS."""
    proxy = FaultProxy(seaweed.endpoint_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
async def pool() -> AsyncIterator[S3Pool]:
    """An S3Pool for in-process tests, closed afterwards."""
    async with S3Pool() as p:
        yield p


@pytest.fixture
def ep(seaweed: SeaweedServer) -> Endpoint:
    """The Endpoint of the session's SeaweedFS."""
    return Endpoint(endpoint_url=seaweed.endpoint_url)
