"""The keys of a config.ini section: which field each sets, how its value is parsed, what is expected.

``KEYS`` is the one table: the loader, ``Section.with_overrides`` and the messages all read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from s3deploy.common.text import bounded, printable
from s3deploy.config import values
from s3deploy.config.values import Invalid


@dataclass(frozen=True)
class Key:
    """One known key: the ``Section`` field it sets, its parser and the "expected ..." text."""

    field: str
    parse: Callable[[str], object]
    what: str
    required: bool = False


BOOL = "true or false (also yes/no, on/off, 1/0)"
SECONDS = "a number of seconds > 0, at most a year (e.g. 60, 0.5, 30s, 5m, 1h)"
COUNT = f"a whole number from 1 to {values.MAX_COUNT}"
KEYS: dict[str, Key] = {
    "s3_bucket": Key(
        "s3_bucket",
        values.parse_bucket,
        "a bucket name of letters, digits, '.', '_' and '-' (1-255 characters)",
        True,
    ),
    "target_file_key": Key(
        "target_file_key",
        values.parse_object_key,
        "the object key of the bundle (1-1024 bytes, no control characters)",
        True,
    ),
    "profile_name": Key("profile_name", values.parse_text, "an AWS profile name"),
    "region": Key(
        "region", values.parse_region, "an AWS region of lowercase letters, digits and '-' (eu-west-1)"
    ),
    "endpoint_url": Key(
        "endpoint_url",
        values.parse_endpoint,
        "an http:// or https:// URL: host, optional :port and /path (http://127.0.0.1:8333)",
    ),
    "poll_interval": Key("poll_interval_s", values.parse_duration, SECONDS),
    "deployment_timeout": Key("deployment_timeout_s", values.parse_duration, SECONDS),
    "destination": Key("destination", values.parse_destination, "an absolute path (e.g. /srv/app)"),
    "keep_revisions": Key("keep_revisions", values.parse_count, COUNT),
    "keep_history": Key("keep_history", values.parse_count, COUNT),
    "auto_rollback": Key("auto_rollback", values.parse_bool, BOOL),
    "ignore_application_stop_failures": Key("ignore_application_stop_failures", values.parse_bool, BOOL),
    "max_files": Key("max_files", values.parse_count, COUNT),
    "max_unpacked_bytes": Key(
        "max_unpacked_bytes",
        values.parse_size,
        "a whole number of bytes >= 1, or a size like 512MiB, 10GiB, 1G",
    ),
    "trusted_signers": Key(
        "trusted_signers",
        values.parse_destination,
        "an absolute path to an OpenSSH allowed_signers file (e.g. /etc/s3deploy/allowed_signers)",
    ),
    "activation": Key(
        "activation",
        values.parse_activation,
        "copy (files copied into the destination) or symlink (each release in its own folder, the "
        "destination a link switched in one step; needs destination)",
    ),
    "last_fetch_time": Key(
        "last_fetch_time",
        values.parse_time,
        "a time like 2023-07-30 19:41:09+0000 or ISO 8601 (2023-07-30T19:41:09Z)",
    ),
    # Fleet rollouts (SPEC §10): a section with max_concurrent is coordinated with the other hosts.
    "max_concurrent": Key(
        "max_concurrent",
        values.parse_max_concurrent,
        "a number of hosts from 1 to 10000 or a share of the fleet from 0.01% to 100% (like 2 or 25%)",
    ),
    "max_failures": Key("max_failures", values.parse_whole, f"a whole number from 0 to {values.MAX_COUNT}"),
    "fleet_prefix": Key(
        "fleet_prefix",
        values.parse_fleet_prefix,
        "a key prefix ending in '/' (like .s3deploy/), without a leading '/', '//' or control characters, "
        "at most 256 characters",
    ),
    "wake_queue_url": Key(
        "wake_queue_url",
        values.parse_queue_url,
        "an SQS queue URL like https://sqs.eu-west-1.amazonaws.com/123456789012/deploy-wakeups",
    ),
}
IGNORED_KEYS = frozenset({"installation_in_progress"})
"""Legacy keys that are read and ignored (per-section locks replaced ``installation_in_progress``)."""
FIELD_TO_KEY = {spec.field: key for key, spec in KEYS.items()}


def parse_value(key: str, raw: str) -> object:
    """Parse one raw (non-empty) value of ``key``; ``Invalid`` with the full "expected ..." text."""
    spec = KEYS[key]
    raw = raw.strip()
    if values.has_control(raw):
        raise Invalid(f"{spec.what}, without control characters")
    try:
        return spec.parse(raw)
    except Invalid as e:
        raise Invalid(spec.what if str(e) == "" else str(e)) from None


def problem(where: str, expected: str, raw: str) -> str:
    """``<where>: expected <expected>, got "<raw>"``, the value shown escaped and cut if long."""
    message = f'{where}: expected {expected}, got "{bounded(raw, 300)}"'
    if re.search(r"\s[#;]", raw):
        message += " (comments must be on their own line, not after a value)"
    return message


def place(path: object, section: str) -> str:
    """``<path> [<section>]`` with control characters in either shown escaped."""
    return f"{printable(path)} [{printable(section)}]"
