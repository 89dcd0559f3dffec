"""S3's timestamps, parsed fast and strictly enough: ``LastModified`` of a listing and S3's own clock.

:func:`parse_timestamp` is the ``timestamp_parser`` of every S3 client (see
:mod:`s3deploy.source.session`): a ListObjectsV2 page carries one timestamp per key, and botocore's
default (dateutil) dominated the CPU of parsing it. :func:`server_time` reads the ``Date`` header of a
response: the clock that coordination objects are judged by, never this host's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from s3deploy.common.text import bounded
from s3deploy.errors import SourceError

_MONTHS = {m: n for n, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), start=1)}


def parse_timestamp(text: str) -> datetime:
    """An aware datetime from an S3 timestamp: ISO 8601 (XML bodies) or an HTTP date (headers).

    The two forms S3 sends take a fast path; anything else goes to botocore's own parser, so nothing it
    accepted is refused. A naive result is UTC. Raises ValueError naming the value when nothing parses.
    """
    try:
        if len(text) == 29 and text[3:5] == ", " and text.endswith(" GMT"):
            return _http_date(text)  # "Wed, 21 Oct 2015 07:28:00 GMT"
        value = datetime.fromisoformat(text)  # "2015-10-21T07:28:00.000Z"
    except (ValueError, KeyError, TypeError):
        value = _slow_path(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _http_date(text: str) -> datetime:
    day, month, year, hms = text[5:-4].split(" ")
    hour, minute, second = hms.split(":")
    return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC)


def _slow_path(text: Any) -> datetime:
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        pass
    from botocore.utils import parse_timestamp as botocore_parse_timestamp

    try:
        value = botocore_parse_timestamp(text)
    except Exception as e:  # dateutil raises ValueError, OverflowError, RuntimeError, ...
        raise ValueError(
            f"invalid timestamp {bounded(repr(text), 80)} (expected ISO 8601 or an HTTP date)"
        ) from e
    if not isinstance(value, datetime):
        raise ValueError(f"invalid timestamp {bounded(repr(text), 80)}")
    return value


def server_time(response: Mapping[str, Any], where: str) -> datetime:
    """S3's clock: the ``Date`` header of a parsed response (or of a ClientError's ``response``), UTC.

    Raises SourceError naming ``where`` when the header is missing or invalid: S3's clock is what leases
    are judged by, and this host's clock never stands in for it.
    """
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    raw = headers.get("date")
    try:
        if not isinstance(raw, str):
            raise ValueError("no Date header")
        return parse_timestamp(raw).astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise SourceError(
            f"{where}: S3's answer has no valid Date header ({bounded(e, 120)}); "
            "its clock is needed to judge leases",
            code="MalformedResponse",
        ) from e
