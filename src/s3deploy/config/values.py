"""Parsers of config.ini values: raw text in, a typed value out, or ``Invalid`` saying what is expected.

Each parser raises ``Invalid`` and nothing else, whatever the text (``keys.parse_value`` relies on it, and
``tests/test_config.py`` fuzzes every key). ``Invalid("")`` means "the key's own description says it all".
"""

from __future__ import annotations

import configparser
import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from s3deploy.fleet.keys import check_prefix
from s3deploy.fleet.policy import MaxConcurrent
from s3deploy.wake.address import parse_queue_url as _check_queue_url

MAX_SECONDS = 365 * 24 * 3600.0
"""Longest duration a key accepts (a year): longer means "never" and overflows some waits."""
MAX_COUNT = 1_000_000_000
"""Largest whole number a count key accepts (SQLite and the OS take nothing near it)."""


class Invalid(ValueError):
    """A raw value is not acceptable; the message says what is expected ("" = the key's description)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def has_control(raw: str) -> bool:
    """True when ``raw`` holds a control character or a lone surrogate (undecodable command-line bytes)."""
    return _CONTROL.search(raw) is not None


_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


def parse_bucket(raw: str) -> str:
    if raw.lower().startswith("s3://") or "/" in raw:
        raise Invalid("a bucket name only (no s3:// and no key: put the key in target_file_key)")
    if not _BUCKET.fullmatch(raw):
        raise Invalid("")
    return raw


def parse_object_key(raw: str) -> str:
    if raw == "":
        raise Invalid("")
    if raw.startswith("/"):
        raise Invalid("an object key without a leading / (remove the leading /)")
    if len(raw.encode()) > 1024:
        raise Invalid("")
    return raw


def parse_text(raw: str) -> str:
    return raw


_REGION = re.compile(r"[a-z0-9-]+")


def parse_region(raw: str) -> str:
    if not _REGION.fullmatch(raw):
        raise Invalid("")
    return raw


def parse_endpoint(raw: str) -> str:
    try:
        parts = urlsplit(raw)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # "http://[::1" (unclosed IPv6 bracket), a port that is not a number
        raise Invalid("") from None
    if parts.username is not None or parts.password is not None:
        raise Invalid("a URL without user:password@ (credentials come from the profile or environment)")
    if (
        parts.scheme not in ("http", "https")
        or not hostname
        or (port is not None and port <= 0)
        or parts.query
        or parts.fragment
        or re.search(r"\s", raw)
    ):
        raise Invalid("")
    return raw


_DURATION = re.compile(r"(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})\s*(ms|s|m|h)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(raw: str) -> float:
    """Seconds as a float, from ``60``, ``0.5``, ``500ms``, ``30s``, ``5m`` or ``1h``."""
    try:
        seconds = float(raw)
    except ValueError:
        match = _DURATION.fullmatch(raw)
        if not match:
            raise Invalid("") from None
        seconds = float(match[1]) * _DURATION_UNITS[match[2].lower()]
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise Invalid("")
    return seconds


_COUNT = re.compile(r"\d{1,15}(?:_\d{1,15}){0,5}")


def parse_count(raw: str) -> int:
    if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= MAX_COUNT:
        raise Invalid("")
    return int(raw)


_SIZE = re.compile(r"(\d{1,30}(?:\.\d{1,30})?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)


def parse_whole(raw: str) -> int:
    """A count that may be 0 (``max_failures``)."""
    if not _COUNT.fullmatch(raw) or int(raw) > MAX_COUNT:
        raise Invalid("")
    return int(raw)


def parse_max_concurrent(raw: str) -> MaxConcurrent:
    try:
        return MaxConcurrent.parse(raw)
    except ValueError:
        raise Invalid("") from None


def parse_fleet_prefix(raw: str) -> str:
    try:
        return check_prefix(raw)
    except ValueError:
        raise Invalid("") from None


def parse_size(raw: str) -> int:
    """Bytes from ``10737418240``, ``512MiB``, ``10GiB``, ``1G``, ``64 KB`` (prefixes are binary)."""
    match = _SIZE.fullmatch(raw)
    if not match:
        raise Invalid("")
    number = Decimal(match[1])
    power = "kmgt".index(match[2].lower()) + 1 if match[2] else 0
    size = number * 1024**power
    if size != size.to_integral_value() or size < 1:
        raise Invalid("")
    return int(size)


def parse_bool(raw: str) -> bool:
    try:
        return configparser.RawConfigParser.BOOLEAN_STATES[raw.lower()]
    except KeyError:
        raise Invalid("") from None


def parse_destination(raw: str) -> Path:
    if not raw.startswith("/"):
        raise Invalid("")
    return Path(raw)


ACTIVATIONS = ("copy", "symlink")


def parse_activation(raw: str) -> str:
    """``copy`` (files copied into the destination) or ``symlink`` (SPEC §12)."""
    if raw.lower() not in ACTIVATIONS:
        raise Invalid("")
    return raw.lower()


def parse_time(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)  # documented: a naive time is UTC
        return moment.astimezone(UTC)
    except ValueError:
        raise Invalid("") from None
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is past the last representable UTC time
        raise Invalid("a time that stays within the years 1 to 9999 once converted to UTC") from None


def parse_queue_url(raw: str) -> str:
    """A ``wake_queue_url``, checked as the wake-up listener reads it (:mod:`s3deploy.wake.address`)."""
    try:
        _check_queue_url(raw)
    except ValueError as e:
        raise Invalid(str(e)) from None
    return raw
