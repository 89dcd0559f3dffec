"""``permissions[].context``: an SELinux user (``name``, or ``user``), type and MLS range, checked as the
CodeDeploy agent checks them (``context_info.rb``, ``range_info.rb``) so that a bad range is refused by
``validate`` and before Install copies anything, not found by chcon after the files landed.

Range grammar (the agent's): ``s<N>[-s<N>][:c<N>[.c<N>](,c<N>[.c<N>])*]``; the high sensitivity is not
below the low one; categories are c0-c1023, a category range is in order, and no category appears twice.
"""

from __future__ import annotations

import re
from typing import Any

from s3deploy.appspec.fields import Findings, field, kind, name_of, show, text, unknown_keys
from s3deploy.appspec.model import SELinuxContext

_KEYS = ("name", "user", "type", "range")
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_CATEGORY = 1023


class RangeError(ValueError):
    """The range is not one the agent accepts; the message says which part."""


def parse_context(value: Any, key: str, findings: Findings) -> SELinuxContext | None:
    """The context of a permissions entry; None (after a problem) when it is not valid."""
    if value is None:
        return None
    if not isinstance(value, dict):
        findings.problem(key, f"expected a mapping with type (and optional name, range), got {kind(value)}")
        return None
    unknown_keys(value, key, _KEYS, findings)
    before = len(findings.problems)
    ctx_type = _label(value, "type", key, findings, required=True)
    user = _label(value, "name", key, findings)
    also = _label(value, "user", key, findings)
    if user is None:
        user = also
    elif also is not None and also != user:
        findings.warn(
            f"{key}.user", f'ignored: name "{user}" is the SELinux user (the agent reads name only)'
        )
    ctx_range = None if value.get("range") is None else _range(value["range"], f"{key}.range", findings)
    if ctx_type is None or len(findings.problems) > before:
        return None
    return SELinuxContext(ctx_type, user, ctx_range)


def _label(
    item: dict[Any, Any], name: str, key: str, findings: Findings, *, required: bool = False
) -> str | None:
    label = field(item, name, key, findings, required=required)
    if label is not None and not _LABEL.fullmatch(label):
        findings.problem(
            f"{key}.{name}", f"expected an SELinux name (letters, digits, _ . -), got {show(label)}"
        )
        return None
    return label


def _range(value: Any, key: str, findings: Findings) -> str | None:
    """The range text, or its ``{low, high}`` form joined as ``low-high``; each checked with check_range."""
    if not isinstance(value, dict):
        range_text = text(value, key, findings)
        return range_text if range_text is not None and _checked(range_text, key, findings) else None
    unknown_keys(value, key, ("low", "high"), findings)  # {low: s0, high: s0:c0.c1023}
    low = field(value, "low", key, findings, required=True)
    levels = [
        (end, level) for end, level in (("low", low), ("high", field(value, "high", key, findings))) if level
    ]
    for end, level in levels:
        if "-" in level:
            findings.problem(f"{key}.{end}", f"expected one level like s0 or s0:c1.c5, got {show(level)}")
            return None
        if not _checked(level, f"{key}.{end}", findings):
            return None
    return "-".join(level for _, level in levels) if low is not None else None


def _checked(text: str, key: str, findings: Findings) -> bool:
    try:
        check_range(text)
    except RangeError as e:
        findings.problem(
            key, f"{e} in {show(text)}; expected s<N>[-s<N>][:c<N>[.c<N>],...] (the agent's form)"
        )
        return False
    return True


def check_range(text: str) -> None:
    """Raise RangeError unless ``text`` is an MLS range the CodeDeploy agent accepts."""
    sensitivities, categories = _two_parts(text, ":")
    low_text, high_text = _two_parts(sensitivities, "-")
    low = _number(low_text, "s", "sensitivity")
    if high_text is not None and _number(high_text, "s", "sensitivity") < low:
        raise RangeError(f'high sensitivity "{name_of(high_text)}" is below the low one')
    if categories is None:
        return
    seen: set[int] = set()
    parts = categories.split(",")
    while parts and parts[-1] == "":  # Ruby's split drops trailing empty fields: "c0," is c0
        parts.pop()
    for part in parts:
        if not part:
            raise RangeError("a category is empty (a leading or doubled comma)")
        first_text, last_text = _two_parts(part, ".")
        first = _number(first_text, "c", "category")
        last = first if last_text is None else _number(last_text, "c", "category")
        if last < first:
            raise RangeError(f'category range "{name_of(part)}" is not in order')
        if seen.intersection(range(first, last + 1)):
            raise RangeError(f'category "{name_of(part)}" appears twice')
        seen.update(range(first, last + 1))


def _two_parts(text: str, sep: str) -> tuple[str, str | None]:
    """``a<sep>b`` (both non-empty) or ``a`` alone, as the agent's ``ensure_parts`` splits."""
    head, found, tail = text.partition(sep)
    if not head or (found and not tail):
        raise RangeError(f'part "{name_of(text)}" is incomplete')
    return head, tail if found else None


def _number(text: str, prefix: str, what: str) -> int:
    digits = text[1:]
    if (
        not text.startswith(prefix)
        or not digits
        or not (digits.isascii() and digits.isdigit())
        or len(digits) > 9
    ):
        raise RangeError(f'{what} "{name_of(text)}" is not {prefix} followed by a number')
    number = int(digits)
    if prefix == "c" and number > MAX_CATEGORY:
        raise RangeError(f'category "{name_of(text)}" is above c{MAX_CATEGORY}')
    return number
