"""Faults the SeaweedFS proxy of tests/s3server.py cannot make alone: a GET body held half-sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from tests.s3server import FaultProxy

STALL_MIN_BYTES = 16384


class _StallingWriter:
    """Wraps a handler's wfile: a body write of STALL_MIN_BYTES or more sends half, then waits."""

    def __init__(self, raw: BinaryIO, proxy: StallingProxy) -> None:
        self._raw = raw
        self._proxy = proxy

    def write(self, data: bytes) -> int:
        if self._proxy.stalling.is_set() and len(data) >= STALL_MIN_BYTES:
            half = len(data) // 2
            self._raw.write(data[:half])
            self._raw.flush()
            self._proxy.stalled.set()
            self._proxy.release.wait(60)
            return half + self._raw.write(data[half:])
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class StallingProxy(FaultProxy):
    """A FaultProxy that can also hold a GET body half-sent (``stalling``) until ``release`` is set."""

    def __init__(self, upstream_url: str) -> None:
        self.stalling = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        super().__init__(upstream_url)

    def _handler_class(self) -> Any:
        base = super()._handler_class()
        proxy = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.wfile = _StallingWriter(self.wfile, proxy)

        return Handler

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def stalling_proxy(seaweed: SeaweedServer) -> Iterator[StallingProxy]:
    """A proxy in front of SeaweedFS that can hold a GET body half-sent."""
    proxy = StallingProxy(seaweed.endpoint_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
