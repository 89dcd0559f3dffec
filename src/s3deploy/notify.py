"""systemd's notify protocol (sd_notify) without extra dependencies: READY, STATUS, RELOADING,
STOPPING and WATCHDOG datagrams written to ``$NOTIFY_SOCKET``. Without the variable every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd (Type=notify). Errors are logged, never raised."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is spelled with a leading "@" in the variable.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); True when the datagram went out."""
        if not self.address:
            return False
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as e:
            logger.warning("systemd notify to %r failed: %s", self.address, e)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def reloading(self) -> None:
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(stopping=1)

    async def watchdog(self, stop: asyncio.Event) -> None:
        """Ping WATCHDOG=1 from the event loop at half the interval, so a stuck loop gets restarted."""
        if not self.watchdog_s or not self.address:
            return
        while not stop.is_set():
            self.send(watchdog=1)
            try:
                await asyncio.wait_for(stop.wait(), self.watchdog_s / 2)
            except TimeoutError:
                pass
