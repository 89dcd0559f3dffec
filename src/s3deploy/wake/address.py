"""Where a queue is: its URL, the endpoint its client talks to, and the region it signs for.

The SQS client talks to the queue URL's own scheme and host (SPEC §13), so a VPC endpoint or a local
SQS-compatible server works without an extra setting. The signing region comes from an AWS host name
(``sqs.eu-west-1.amazonaws.com``, the legacy ``eu-west-1.queue.amazonaws.com``, a VPC endpoint's
``...sqs.eu-west-1.vpce.amazonaws.com``); for any other host it is the section's region, else the
profile's, else us-east-1 (which an SQS-compatible server ignores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_REGION = r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2})"
_AWS_HOSTS = (
    re.compile(rf"(?:.+\.)?sqs(?:-fips)?\.{_REGION}\.(?:vpce\.)?amazonaws\.com(?:\.cn)?"),
    re.compile(rf"{_REGION}\.queue\.amazonaws\.com(?:\.cn)?"),
)
_LEGACY_US_EAST_1 = "queue.amazonaws.com"
_MAX_URL_CHARS = 2048


@dataclass(frozen=True)
class QueueAddress:
    """A parsed queue URL. Hashable: the daemon keeps one listener per (address, credentials)."""

    url: str
    endpoint_url: str  # scheme://host[:port] of the URL
    host_region: str | None  # the region an AWS host name names, None for other hosts

    @property
    def name(self) -> str:
        """The queue's name (the URL's last path segment), for messages."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def signing_region(self, configured: str | None) -> str:
        """The region requests are signed for: the host's, else ``configured``, else us-east-1."""
        return self.host_region or configured or "us-east-1"


def parse_queue_url(url: str) -> QueueAddress:
    """Check a queue URL (``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``, or any http(s) URL of an
    SQS-compatible server) and split it. Raises ValueError saying what is expected."""
    expected = "an SQS queue URL like https://sqs.eu-west-1.amazonaws.com/123456789012/deploy-wakeups"
    if len(url) > _MAX_URL_CHARS or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"{expected} (no spaces or control characters, at most {_MAX_URL_CHARS})")
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
        raise ValueError(expected) from None
    if parts.scheme not in ("http", "https") or not hostname or (port is not None and port <= 0):
        raise ValueError(expected)
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{expected}, without user:password@ (credentials come from the profile)")
    if parts.query or parts.fragment or not parts.path.strip("/"):
        raise ValueError(f"{expected}: the path names the queue, and there is no ?query or #fragment")
    host = hostname.lower()
    region = None
    if host == _LEGACY_US_EAST_1:
        region = "us-east-1"
    else:
        for pattern in _AWS_HOSTS:
            match = pattern.fullmatch(host)
            if match:
                region = match.group("region")
                break
    return QueueAddress(url=url, endpoint_url=f"{parts.scheme}://{parts.netloc}", host_region=region)
