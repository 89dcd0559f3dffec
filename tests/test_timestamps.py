"""timestamps.py: S3's timestamps parsed fast, to the same instant botocore's own parser gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.utils import parse_timestamp as botocore_parse

from s3deploy.errors import SourceError
from s3deploy.source.timestamps import parse_timestamp, server_time

WHEN = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2015-10-21T07:28:00.000Z",  # ListObjectsV2 (AWS)
        "2015-10-21T07:28:00Z",
        "2015-10-21T07:28:00+00:00",
        "2015-10-21T09:28:00+02:00",
        "2015-10-21T07:28:00",  # naive: UTC
        "Wed, 21 Oct 2015 07:28:00 GMT",  # Last-Modified, Date (HTTP date)
        "Wed, 21 Oct 2015 07:28:00 +0000",  # RFC 2822 variants some servers send
        "21 Oct 2015 07:28:00 GMT",
    ],
)
def test_every_form_s3_sends_gives_the_same_instant_as_botocore(text: str) -> None:
    got = parse_timestamp(text)
    assert got == WHEN and got.tzinfo is not None
    expected = botocore_parse(text)
    if expected.tzinfo is None:
        expected = expected.replace(tzinfo=UTC)
    assert got == expected


def test_fractions_and_offsets_are_kept() -> None:
    got = parse_timestamp("2026-01-02T03:04:05.678-05:30")
    assert got.utcoffset() == -timedelta(hours=5, minutes=30)
    assert got.astimezone(UTC) == datetime(2026, 1, 2, 8, 34, 5, 678000, tzinfo=UTC)


def test_what_only_botocore_understood_still_parses() -> None:
    assert parse_timestamp("1445412480") == WHEN  # epoch seconds
    assert parse_timestamp("Oct 21 2015 07:28:00 UTC") == WHEN


@pytest.mark.parametrize(
    "text", ["garbage", "", "Wed, 32 Oct 2015 07:28:00 GMT", "2015-13-01T00:00:00Z", "\x1b[2J"]
)
def test_nonsense_is_a_value_error_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="invalid timestamp") as info:
        parse_timestamp(text)
    assert "\x1b" not in str(info.value)


def test_server_time_is_the_date_header_in_utc() -> None:
    resp = {"ResponseMetadata": {"HTTPHeaders": {"date": "Wed, 21 Oct 2015 07:28:00 GMT"}}}
    assert server_time(resp, "PUT s3://b/k") == WHEN
    assert server_time(resp, "x").tzinfo == UTC
    other = {"ResponseMetadata": {"HTTPHeaders": {"date": "Wed, 21 Oct 2015 09:28:00 +0200"}}}
    assert server_time(other, "x") == WHEN and server_time(other, "x").tzinfo == UTC


@pytest.mark.parametrize("headers", [{}, {"date": "soon"}, {"date": "Fri, 31 Dec 9999 23:59:59 -1400"}])
def test_no_valid_date_header_is_a_source_error_never_the_host_clock(headers: dict[str, str]) -> None:
    with pytest.raises(SourceError, match=r"PUT s3://b/k: S3's answer has no valid Date header") as info:
        server_time({"ResponseMetadata": {"HTTPHeaders": headers}}, "PUT s3://b/k")
    assert info.value.code == "MalformedResponse"
