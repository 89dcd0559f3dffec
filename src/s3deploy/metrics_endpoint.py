"""``run --metrics-port N``: a small HTTP/1.0 server on 127.0.0.1:N for Prometheus scrapes.

Any local user can connect to it, so it is built to be hammered without hurting the agent:
- at most MAX_CONNECTIONS are accepted at once; the next ones wait in the kernel's listen queue (of
  that size too), where they cost the agent no file descriptor: no flood of connections can take the
  descriptors the deployments need;
- each connection gets REQUEST_TIMEOUT_S for its whole exchange, and a request head of at most
  MAX_HEAD_BYTES;
- one rendering at a time, shared by every request that arrived before it started or within
  RENDER_REUSE_S of its start, so scraping in a loop cannot keep the state database and the CPU busy;
- what goes wrong is logged at most once per LOG_EVERY_S, with the count of what was not logged.

The body is prometheus_client's: the text format 0.0.4, or OpenMetrics when the scraper asks for it
(``Accept``), gzipped when accepted. Its own server is not used: it runs a thread per connection, with
no limit and no timeout.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from s3deploy.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 8192
RENDER_REUSE_S = 1.0
LOG_EVERY_S = 60.0
ACCEPT_RETRY_S = 0.1


class _ThrottledWarning:
    """A warning logged at most once per LOG_EVERY_S; the next one says how many were not."""

    def __init__(self) -> None:
        self._next_at = 0.0
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._next_at = self._suppressed, 0, now + LOG_EVERY_S
        more = f" ({suppressed} more since the last such message)" if suppressed else ""
        logger.warning(message + more, *args)


class MetricsEndpoint:
    """The listening socket (``listen()``) and the accept loop (``serve()``, until cancelled)."""

    def __init__(self, registry: CollectorRegistry, sock: socket.socket) -> None:
        self.registry = registry
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._render_lock = asyncio.Lock()
        self._rendered: dict[str, tuple[float, bytes]] = {}  # content type -> (render started, body)
        self._busy = _ThrottledWarning()
        self._failed = _ThrottledWarning()

    @classmethod
    def listen(cls, registry: CollectorRegistry, port: int) -> MetricsEndpoint:
        """Listen on 127.0.0.1:port for ``registry``; ConfigError when the port cannot be had (exit 2)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1: {e.strerror}; pick a free port"
            ) from e
        endpoint = cls(registry, sock)
        logger.info("metrics on http://127.0.0.1:%d/metrics", endpoint.port)
        return endpoint

    async def serve(self) -> None:
        """Accept and answer connections, MAX_CONNECTIONS at a time, until cancelled; then close."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    if self._slots.locked():
                        self._busy(
                            "metrics: %d connections open on 127.0.0.1:%d; new ones wait until one ends",
                            MAX_CONNECTIONS,
                            self.port,
                        )
                    await self._slots.acquire()
                    try:
                        conn, _ = await loop.sock_accept(self.sock)
                    except OSError as e:  # a client gone before accept(), no descriptor left: go on
                        self._slots.release()
                        self._failed("metrics: accepting a connection failed: %s", e.strerror or e)
                        await asyncio.sleep(ACCEPT_RETRY_S)
                        continue
                    except BaseException:
                        self._slots.release()
                        raise
                    tg.create_task(self._handle(conn))
        finally:
            self.sock.close()

    async def _handle(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        answered = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD_BYTES)
                # drain() then waits until everything is sent: nothing is left to send after close().
                writer.transport.set_write_buffer_limits(high=0)
                await self._exchange(reader, writer)
            answered = True
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception as e:  # a scrape must never take the agent down
            self._failed("metrics: a request failed: %s", e)
        finally:
            self._slots.release()
            if writer is None:
                conn.close()
            elif answered:
                writer.close()
            else:
                writer.transport.abort()  # a client that does not read gets no say in when we close

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.0: read the request head, answer, close. Only GET/HEAD of /metrics (or /)."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, _, rest = request_line.partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        extra = ""
        if method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
        elif path not in ("/metrics", "/"):
            status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
        else:
            status = "200 OK"
            body, ctype = await self._render(headers.get("accept", ""))
            if "gzip" in headers.get("accept-encoding", ""):
                body, extra = gzip.compress(body), "Content-Encoding: gzip\r\n"
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(body)
        await writer.drain()

    async def _render(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for; one rendering at a time, reused when fresh."""
        encoder, ctype = choose_encoder(accept)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        async with self._render_lock:
            started, body = self._rendered.get(ctype, (float("-inf"), b""))
            if started < arrived - RENDER_REUSE_S:
                started = loop.time()
                body = await asyncio.to_thread(encoder, self.registry)
                self._rendered[ctype] = (started, body)
        return body, ctype
