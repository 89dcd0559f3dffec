"""What a loaded config.ini is: a ``Config`` of ``Section`` values (frozen), and command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from s3deploy.common.text import printable
from s3deploy.config.keys import FIELD_TO_KEY, KEYS, parse_value, problem
from s3deploy.config.values import Invalid
from s3deploy.errors import ConfigError
from s3deploy.fleet.keys import DEFAULT_PREFIX
from s3deploy.fleet.policy import MaxConcurrent

DEFAULT_SECTION = "Settings"
"""The section used when no section is named (the seed's only section)."""


@dataclass(frozen=True)
class Section:
    """One environment: where its bundle lives and how it is deployed on this host."""

    name: str
    s3_bucket: str
    target_file_key: str
    profile_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    poll_interval_s: float = 60.0
    deployment_timeout_s: float = 600.0
    destination: Path | None = None
    keep_revisions: int = 5
    keep_history: int = 1000
    auto_rollback: bool = True
    ignore_application_stop_failures: bool = False
    max_files: int = 200_000
    max_unpacked_bytes: int = 10 * 1024**3
    last_fetch_time: datetime | None = None
    #: Signed bundles (SPEC §11): only revisions signed by a key of this allowed_signers file deploy.
    trusted_signers: Path | None = None
    #: "copy" or "symlink" (SPEC §12: releases beside ``destination``, switched by a link).
    activation: str = "copy"
    #: Fleet rollouts (SPEC §10): set means the section is coordinated with the other hosts.
    max_concurrent: MaxConcurrent | None = None
    max_failures: int = 0
    fleet_prefix: str = DEFAULT_PREFIX
    #: SQS queue of S3 event notifications that wake this section (SPEC §13; docs/wakeups.md).
    wake_queue_url: str | None = None

    def with_overrides(self, **overrides: object) -> Section:
        """Return a copy with command-line overrides applied, each validated like its config.ini value.

        Values may be typed (``poll_interval_s=5.0``) or strings as a user typed them (``"5m"``).
        ``None`` means "not given" and leaves the value alone; ``""`` means "not set", as in the file.
        An unknown field name is a programming error (TypeError); a bad value is a ConfigError.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}  # Any: each value comes from its key's parser, typed per field
        problems: list[str] = []
        for field_name, value in overrides.items():
            if value is None:
                continue
            key = FIELD_TO_KEY.get(field_name)
            if key is None:
                raise TypeError(f"Section.with_overrides: no overridable field {field_name!r}")
            text = _to_text(value)
            if text.strip() == "" and not KEYS[key].required:
                changes[field_name] = defaults[field_name]  # not set: the built-in default
                continue
            try:
                changes[field_name] = parse_value(key, text)
            except Invalid as e:
                problems.append(problem(f"[{printable(self.name)}] {key} (override)", str(e), text))
        if problems:
            raise ConfigError("\n".join(problems))
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Config:
    """A loaded config.ini: its path (as given) and its sections in file order."""

    path: Path
    sections: dict[str, Section]

    def section(self, name: str) -> Section:
        """The section called ``name``; ConfigError naming the sections there are when it is missing."""
        try:
            return self.sections[name]
        except KeyError:
            names = ", ".join(self.sections) or "(none)"
            where = printable(self.path)
            raise ConfigError(f"{where}: no section [{printable(name)}]; sections: {names}") from None


def _to_text(value: object) -> str:
    """An override value as config.ini would spell it, so one parser validates both."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a number of {value.bit_length()} bits"  # str() refuses ints past 4300 digits
    return str(value)
