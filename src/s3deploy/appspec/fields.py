"""Parsers of single appspec values (strings, paths, names, modes, timeouts, ACLs) and the ``Findings`` they
report to.

Each parser takes whatever YAML produced (any type, any size: the appspec is hostile) and returns the value
or ``None`` after recording a problem; none raises. Messages show user text escaped and cut
(``common.text.bounded``), never an unbounded ``repr``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from s3deploy.appspec.model import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S
from s3deploy.appspec.yamlsafe import RawInt
from s3deploy.common.text import bounded
from s3deploy.install import acl

MAX_TEXT = 4096
"""Longest string value (PATH_MAX): paths, names, patterns."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MODE_RE = re.compile(r"0?[0-7]{3,4}")
_SHORT_MODE_RE = re.compile(r"[0-7]{1,2}")
_LEADING_INT = re.compile(r"\s*\+?([0-9]{1,15}(?:_[0-9]{1,15})*)")


class Findings:
    """What parsing found, as ``<file>: <key path>: <message>`` lines: ``problems`` refuse the appspec,
    ``warnings`` accept it (CodeDeploy's agent would accept it too)."""

    def __init__(self, source_file: str) -> None:
        self.source_file = source_file
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(self._line(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(self._line(key, message))

    def _line(self, key: str, message: str) -> str:
        return f"{self.source_file}: {key}: {message}" if key else f"{self.source_file}: {message}"


def name_of(key: object) -> str:
    """A mapping key as it may appear in a key path (escaped, cut)."""
    return bounded(key, 60)


def show(value: Any) -> str:
    """A scalar for a message, quoted, escaped and cut (a 5000-digit int included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of {_digits(value)} digits"  # str() refuses ints past 4300 digits
    return f'"{bounded(value.raw if isinstance(value, RawInt) else value, 80)}"'


def _digits(value: int) -> str:
    if value.bit_length() > 20_000:
        return "more than 6000"
    digits = int(math.log10(abs(value))) + 1
    return str(digits - 1 if 10 ** (digits - 1) > abs(value) else digits)


def kind(value: Any) -> str:
    """What ``value`` is, for an "expected X, got Y" message; containers are never printed."""
    if value is None:
        return "nothing"
    if isinstance(value, list | tuple | set):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} keys"
    return f"a {type(value).__name__} ({show(value)})"


def got(value: Any) -> str:
    """``value`` after "got" in a message: a scalar quoted as written, a container described."""
    return kind(value) if value is None or isinstance(value, list | tuple | set | dict) else show(value)


def unknown_keys(
    item: dict[Any, Any],
    key: str,
    allowed: tuple[str, ...],
    findings: Findings,
    explained: Mapping[str, str] | None = None,
) -> None:
    """Warn about each key of ``item`` not in ``allowed``: CodeDeploy's agent ignores them, so do we.
    ``explained`` gives the warning of well-known ones (``overwrite:`` in a files entry ...)."""
    for name in item:
        if name in allowed:
            continue
        where = f"{key}.{name_of(name)}" if key else name_of(name)
        if explained and name in explained:
            findings.warn(where, explained[name])
            continue
        spelled = name if isinstance(name, str) else ""
        close = difflib.get_close_matches(spelled[:100], allowed, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"expected one of {', '.join(allowed)}"
        findings.warn(where, f"unknown key, ignored (as CodeDeploy ignores it); {hint}")


def text(value: Any, key: str, findings: Findings, *, required: bool = False) -> str | None:
    """A string (or a number, as YAML reads ``runas: 1000``), stripped, without control characters."""
    if value is None:
        if required:
            findings.problem(key, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        findings.problem(key, f"expected a string, got {kind(value)}")
        return None
    if isinstance(value, int) and value.bit_length() > 64:
        findings.problem(key, f"expected a string, got {show(value)}")
        return None
    result = str(value).strip()
    if not result:
        findings.problem(key, "must not be empty")
        return None
    if len(result) > MAX_TEXT:
        findings.problem(key, f"longer than {MAX_TEXT} characters ({len(result)}): {show(result)}")
        return None
    bad = _CONTROL.search(result)
    if bad:
        code = ord(bad.group())
        found = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        findings.problem(key, f"must not contain control characters (found {found}): {show(result)}")
        return None
    return result


def field(
    item: dict[Any, Any], name: str, key: str, findings: Findings, *, required: bool = False
) -> str | None:
    """``text`` of ``item[name]``, its key path ``<key>.<name>``."""
    return text(item.get(name), f"{key}.{name}", findings, required=required)


def texts(value: Any, key: str, findings: Findings) -> tuple[str, ...]:
    """A string or a list of strings (``except: [a, b]``, ``type: file``); empty when absent or bad."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        findings.problem(key, f"expected a list of strings, got {kind(value)}")
        return ()
    parsed: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            findings.problem(f"{key}[{i}]", f"expected a string, got {kind(item)}")
        elif (one := text(item, f"{key}[{i}]", findings)) is not None:
            parsed.append(one)
    return tuple(parsed) if len(parsed) == len(items) else ()


def parse_mode(value: Any, key: str = "mode", findings: Findings | None = None) -> int | None:
    """A chmod-style octal mode: ``750``, ``"750"``, ``"0750"``, ``4755`` (setuid) all read as octal.

    One or two digits are padded as the CodeDeploy agent pads them (``12`` means ``012``), with a warning.
    """
    if value is None:
        return None
    mode_text = ""
    if isinstance(value, RawInt):
        mode_text = value.raw
    elif isinstance(value, str):
        mode_text = value
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 100_000:
        mode_text = str(value)
    if _SHORT_MODE_RE.fullmatch(mode_text):
        padded = mode_text.zfill(3)
        if findings is not None:
            findings.warn(
                key, f'{mode_text} read as {padded}, as the CodeDeploy agent pads it; write "{padded}"'
            )
        return int(padded, 8)
    if not _MODE_RE.fullmatch(mode_text):
        if findings is not None:
            findings.problem(
                key, f'expected an octal mode of 3 or 4 digits 0-7 (like 644 or "0755"), got {got(value)}'
            )
        return None
    return int(mode_text, 8)


def timeout(value: Any, key: str, findings: Findings) -> float | None:
    """Seconds > 0 and at most MAX_TIMEOUT_S. Text that starts with a whole number (``30s``) is read as the
    CodeDeploy agent reads it (Ruby's ``to_i``: that number), with a warning."""
    if value is None:
        return DEFAULT_TIMEOUT_S
    seconds = math.nan
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value) if value.bit_length() < 64 else math.inf
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and len(value) <= 100:
        try:
            seconds = float(value)
        except ValueError:
            leading = _LEADING_INT.match(value)
            if leading and 0 < int(leading[1]) <= MAX_TIMEOUT_S:
                seconds = float(int(leading[1]))
                findings.warn(
                    key,
                    f"{show(value)} read as {seconds:.0f} seconds, as the CodeDeploy agent reads it (the "
                    f"number it starts with); write timeout: {seconds:.0f}",
                )
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        limit = f"{MAX_TIMEOUT_S:.0f}"
        findings.problem(key, f"expected a number of seconds > 0 (at most {limit}), got {got(value)}")
        return None
    return seconds


def acls(value: Any, key: str, findings: Findings) -> tuple[str, ...]:
    """ACL entries, each checked for syntax only (users and groups are looked up by the host installing)."""
    entries = texts(value, key, findings)
    for i, entry in enumerate(entries):
        try:
            acl.parse(entry)
        except ValueError as e:  # acl.AclError
            findings.problem(f"{key}[{i}]", bounded(e, 300))
    return entries
