"""config.ini → frozen dataclasses, with every problem reported by file, section and key.

Every section of config.ini is an environment (a deployment group); ``[DEFAULT]`` values are inherited
by every section, as configparser does. Interpolation is off, so a ``%`` in a value is just a ``%``.
The loader collects all problems in the file and raises one :class:`ConfigError` listing them, one
per line, so an operator fixes the file in one pass.

Decisions where the product spec is silent (documented here and in examples/config.ini):

- An empty value (``profile_name =``) means "not set": the key's default applies, and in a section
  it also cancels a value inherited from ``[DEFAULT]``. For a required key it is an error.
- ``s3_bucket`` accepts ``[A-Za-z0-9._-]{1,255}``: wider than AWS's 3-63 lowercase rule because legacy
  buckets and S3-compatible stores allow uppercase and underscores; spaces and slashes are refused.
- ``poll_interval`` and ``deployment_timeout`` are seconds, optionally with a unit: ``500ms``, ``30s``,
  ``5m``, ``1h``.
- ``max_unpacked_bytes`` is a whole number of bytes, or a number with K/M/G/T, optionally followed by
  ``B`` or ``iB``; the prefixes are binary (``1G`` = ``1GiB`` = 1073741824) whatever the spelling.
- ``last_fetch_time`` is the seed's ``2023-07-30 19:41:09+0000`` or ISO 8601; a time without an offset
  is UTC. It is stored as an aware UTC datetime.
- ``installation_in_progress`` is legacy: read and ignored (per-section locks replace it).
- Section names become folder and lock-file names, so they are letters, digits, ``.``, ``_``, ``-``
  and spaces, starting with a letter or digit, at most 100 characters.
- Inline comments are not supported (a ``#`` inside a value is part of it, as configparser does);
  a failing value that looks like it has one gets a hint.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from s3deploy.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_SECTION = "Settings"
"""The section used when no section is named (the seed's only section)."""

ENV_VAR = "S3DEPLOY_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/s3deploy/config.ini")

# configparser's own [DEFAULT] handling hides which keys a section set itself; we need that to report a
# bad inherited value once under [DEFAULT], so [DEFAULT] is read as a plain section and merged here.
_INI_DEFAULTS = "DEFAULT"
_NO_DEFAULT_SECTION = "\x00s3deploy: no implicit default section"


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

    def with_overrides(self, **overrides: object) -> Section:
        """Return a copy with command-line overrides applied, each validated like its config.ini value.

        Values may be typed (``poll_interval_s=5.0``) or strings as a user typed them (``"5m"``).
        ``None`` means "not given" and leaves the value alone; ``""`` means "not set", as in the file.
        An unknown field name is a programming error (TypeError); a bad value is a ConfigError.
        """
        changes: dict[str, Any] = {}  # Any: each value comes from its key's parser, typed per field
        problems: list[str] = []
        for field_name, value in overrides.items():
            if value is None:
                continue
            key = _FIELD_TO_KEY.get(field_name)
            if key is None:
                raise TypeError(f"Section.with_overrides: no overridable field {field_name!r}")
            text = _to_text(value)
            try:
                changes[field_name] = _parse_value(key, text)
            except _Invalid as e:
                problems.append(_problem(f"[{self.name}] {key} (override)", str(e), text))
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
            raise ConfigError(f"{self.path}: no section [{name}]; sections: {names}") from None


def find_config_path(explicit: str | Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Where config.ini is: ``--config``, else ``$S3DEPLOY_CONFIG``, else ./config.ini, else /etc.

    A path the operator named (flag or variable) must exist: falling back to another file would deploy
    with settings they did not choose. Only the two conventional places are searched.
    """
    environ = os.environ if env is None else env
    if explicit is not None and str(explicit) != "":
        return _must_exist(Path(explicit), "given with --config")
    from_env = environ.get(ENV_VAR, "")
    if from_env:
        return _must_exist(Path(from_env), f"from ${ENV_VAR}")
    candidates = [Path("config.ini"), SYSTEM_CONFIG_PATH]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"no config file found; looked at --config (not given), ${ENV_VAR} (not set), {looked}")


def load_config(path: str | Path) -> Config:
    """Read and validate config.ini; raise one ConfigError listing every problem in the file."""
    path = Path(path)
    parser = _read_ini(path)
    problems: list[str] = []

    defaults: dict[str, object] = {}
    failed_defaults: set[str] = set()
    if parser.has_section(_INI_DEFAULTS):
        where = f"{path} [{_INI_DEFAULTS}]"
        for key, raw in parser.items(_INI_DEFAULTS):
            if not _check_key(key, where, problems) or key in _IGNORED_KEYS:
                continue
            if raw.strip() == "":
                continue  # not set: the built-in default applies
            try:
                defaults[key] = _parse_value(key, raw)
            except _Invalid as e:
                failed_defaults.add(key)
                problems.append(_problem(f"{where} {key}", str(e), raw))

    names = [name for name in parser.sections() if name != _INI_DEFAULTS]
    if not names:
        problems.append(
            f"{path}: no sections; add one per environment, e.g. [{DEFAULT_SECTION}] "
            "with s3_bucket and target_file_key"
        )
    sections: dict[str, Section] = {}
    for name in names:
        section = _load_section(path, parser, name, defaults, failed_defaults, problems)
        if section is not None:
            sections[name] = section

    if problems:
        raise ConfigError("\n".join(problems))
    logger.debug("loaded %s: sections %s", path, ", ".join(sections))
    return Config(path=path, sections=sections)


# --- reading ---------------------------------------------------------------------------------------


def _must_exist(path: Path, how: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{path}: config file {how} does not exist")
    return path


def _read_ini(path: Path) -> configparser.RawConfigParser:
    """Parse the file, turning every configparser/OS failure into a ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e

    parser = configparser.RawConfigParser(default_section=_NO_DEFAULT_SECTION, strict=True)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            f"{path} line {e.lineno}: expected a section header like [{DEFAULT_SECTION}] before any key, "
            f'got "{e.line.strip()}"'
        ) from e
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"{path} line {e.lineno}: section [{e.section}] appears twice") from e
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            f"{path} line {e.lineno} [{e.section}] {e.option}: key appears twice in this section"
        ) from e
    except configparser.ParsingError as e:
        lines = [
            f'{path} line {lineno}: expected "key = value" or [section], got "{_unrepr(line)}"'
            for lineno, line in e.errors
        ]
        raise ConfigError("\n".join(lines)) from e
    except configparser.Error as e:
        raise ConfigError(f"{path}: not a valid INI file: {e}") from e
    return parser


def _unrepr(line: str) -> str:
    """configparser stores bad lines as repr() strings; show the line as the operator wrote it."""
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return line.strip()
    return str(value).strip()


_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,99}")


def _load_section(
    path: Path,
    parser: configparser.RawConfigParser,
    name: str,
    defaults: dict[str, object],
    failed_defaults: set[str],
    problems: list[str],
) -> Section | None:
    """Validate one section's own keys on top of the parsed defaults; None when it has problems."""
    where = f"{path} [{name}]"
    before = len(problems)
    if not _SECTION_NAME.fullmatch(name):
        problems.append(
            f'{where}: expected a section name of letters, digits, ".", "_", "-" or spaces, starting with '
            f'a letter or digit, at most 100 characters (it names folders and lock files), got "{name}"'
        )
    values = dict(defaults)
    failed = set(failed_defaults)
    for key, raw in parser.items(name):
        if not _check_key(key, where, problems) or key in _IGNORED_KEYS:
            continue
        failed.discard(key)
        values.pop(key, None)
        if raw.strip() == "" and not _KEYS[key].required:
            continue  # not set: cancels an inherited value, the built-in default applies
        try:
            values[key] = _parse_value(key, raw)
        except _Invalid as e:
            failed.add(key)
            problems.append(_problem(f"{where} {key}", str(e), raw))
    for key, spec in _KEYS.items():
        if spec.required and key not in values and key not in failed:
            problems.append(f"{where} {key}: missing; expected {spec.what} (required)")
    if len(problems) > before:
        return None
    changes: dict[str, Any] = {_KEYS[key].field: value for key, value in values.items()}
    return dataclasses.replace(Section(name=name, s3_bucket="", target_file_key=""), **changes)


def _check_key(key: str, where: str, problems: list[str]) -> bool:
    """True for a known key; otherwise record an 'unknown key' problem with the closest known key."""
    if key in _KEYS or key in _IGNORED_KEYS:
        return True
    message = f"{where} {key}: unknown key"
    close = difflib.get_close_matches(key, [*_KEYS, *_IGNORED_KEYS], n=1)
    if close:
        message += f'; did you mean "{close[0]}"?'
    else:
        message += f"; expected one of: {', '.join(_KEYS)}"
    problems.append(message)
    return False


class _Invalid(ValueError):
    """A raw value is not acceptable; the message says what is expected."""


def _problem(where: str, expected: str, raw: str) -> str:
    shown = raw.replace("\n", "\\n")
    message = f'{where}: expected {expected}, got "{shown}"'
    if re.search(r"\s[#;]", raw):
        message += " (comments must be on their own line, not after a value)"
    return message


def _to_text(value: object) -> str:
    """An override value as config.ini would spell it, so one parser validates both."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# --- values ----------------------------------------------------------------------------------------


def _parse_value(key: str, raw: str) -> object:
    """Parse one raw value of ``key``; an empty optional value means its default."""
    spec = _KEYS[key]
    raw = raw.strip()
    if raw == "" and not spec.required:
        return _FIELD_DEFAULTS[spec.field]
    try:
        return spec.parse(raw)
    except _Invalid as e:
        raise _Invalid(spec.what if str(e) == "" else str(e)) from None


_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


def _parse_bucket(raw: str) -> str:
    if raw.lower().startswith("s3://") or "/" in raw:
        raise _Invalid("a bucket name only (no s3:// and no key: put the key in target_file_key)")
    if not _BUCKET.fullmatch(raw):
        raise _Invalid("")
    return raw


def _parse_object_key(raw: str) -> str:
    if raw == "":
        raise _Invalid("")
    if raw.startswith("/"):
        raise _Invalid("an object key without a leading / (remove the leading /)")
    if len(raw.encode()) > 1024 or any(ord(c) < 32 for c in raw):
        raise _Invalid("")
    return raw


def _parse_text(raw: str) -> str:
    return raw


_REGION = re.compile(r"[a-z0-9-]+")


def _parse_region(raw: str) -> str:
    if not _REGION.fullmatch(raw):
        raise _Invalid("")
    return raw


def _parse_endpoint(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.username is not None or parts.password is not None:
        raise _Invalid("a URL without user:password@ (credentials come from the profile or environment)")
    try:
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.query
        or parts.fragment
        or re.search(r"\s", raw)
    ):
        raise _Invalid("")
    return raw


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_duration(raw: str) -> float:
    """Seconds as a float, from ``60``, ``0.5``, ``500ms``, ``30s``, ``5m`` or ``1h``."""
    try:
        seconds = float(raw)
    except ValueError:
        match = _DURATION.fullmatch(raw)
        if not match:
            raise _Invalid("") from None
        seconds = float(match[1]) * _DURATION_UNITS[match[2].lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Invalid("")
    return seconds


_COUNT = re.compile(r"\d+(?:_\d+)*")


def _parse_count(raw: str) -> int:
    if not _COUNT.fullmatch(raw) or int(raw) < 1:
        raise _Invalid("")
    return int(raw)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)


def _parse_size(raw: str) -> int:
    """Bytes from ``10737418240``, ``512MiB``, ``10GiB``, ``1G``, ``64 KB`` (prefixes are binary)."""
    match = _SIZE.fullmatch(raw)
    if not match:
        raise _Invalid("")
    number = Decimal(match[1])
    power = "kmgt".index(match[2].lower()) + 1 if match[2] else 0
    size = number * 1024**power
    if size != size.to_integral_value() or size < 1:
        raise _Invalid("")
    return int(size)


def _parse_bool(raw: str) -> bool:
    try:
        return configparser.RawConfigParser.BOOLEAN_STATES[raw.lower()]
    except KeyError:
        raise _Invalid("") from None


def _parse_destination(raw: str) -> Path:
    if not raw.startswith("/") or "\x00" in raw:
        raise _Invalid("")
    return Path(raw)


def _parse_time(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _Invalid("") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)  # documented: a naive time is UTC
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class _Key:
    field: str
    parse: Callable[[str], object]
    what: str  # the "expected ..." text
    required: bool = False


_BOOL = "true or false (also yes/no, on/off, 1/0)"
_SECONDS = "a number of seconds > 0 (e.g. 60, 0.5, 30s, 5m, 1h)"
_KEYS: dict[str, _Key] = {
    "s3_bucket": _Key(
        "s3_bucket",
        _parse_bucket,
        "a bucket name of letters, digits, '.', '_' and '-' (1-255 characters)",
        True,
    ),
    "target_file_key": _Key(
        "target_file_key",
        _parse_object_key,
        "the object key of the bundle (1-1024 bytes, no control characters)",
        True,
    ),
    "profile_name": _Key("profile_name", _parse_text, "an AWS profile name"),
    "region": _Key("region", _parse_region, "an AWS region of lowercase letters, digits and '-' (eu-west-1)"),
    "endpoint_url": _Key(
        "endpoint_url",
        _parse_endpoint,
        "an http:// or https:// URL: host, optional :port and /path (http://127.0.0.1:8333)",
    ),
    "poll_interval": _Key("poll_interval_s", _parse_duration, _SECONDS),
    "deployment_timeout": _Key("deployment_timeout_s", _parse_duration, _SECONDS),
    "destination": _Key("destination", _parse_destination, "an absolute path (e.g. /srv/app)"),
    "keep_revisions": _Key("keep_revisions", _parse_count, "a whole number >= 1"),
    "keep_history": _Key("keep_history", _parse_count, "a whole number >= 1"),
    "auto_rollback": _Key("auto_rollback", _parse_bool, _BOOL),
    "ignore_application_stop_failures": _Key("ignore_application_stop_failures", _parse_bool, _BOOL),
    "max_files": _Key("max_files", _parse_count, "a whole number >= 1"),
    "max_unpacked_bytes": _Key(
        "max_unpacked_bytes", _parse_size, "a whole number of bytes >= 1, or a size like 512MiB, 10GiB, 1G"
    ),
    "last_fetch_time": _Key(
        "last_fetch_time",
        _parse_time,
        "a time like 2023-07-30 19:41:09+0000 or ISO 8601 (2023-07-30T19:41:09Z)",
    ),
}
_IGNORED_KEYS = frozenset({"installation_in_progress"})
_FIELD_TO_KEY = {spec.field: key for key, spec in _KEYS.items()}
_FIELD_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in dataclasses.fields(Section) if f.default is not dataclasses.MISSING
}
