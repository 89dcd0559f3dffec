"""Strings from outside (hook output, archive entry names, S3 answers, config values) made safe to show.

Anything a bundle, a hook or a server wrote may hold terminal escape sequences (OSC, CSI), other control
characters, or text that is not valid UTF-8. Shown raw, they can rewrite an operator's terminal or forge
log lines; ``printable`` escapes them visibly instead, and ``bounded`` keeps a message short.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_NO_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text with every control character (ESC, BEL, CR, bidi overrides ...) escaped as
    ``\\xNN``/``\\uNNNN``; tab is kept, newline only with ``keep_newlines``. Bytes are decoded as UTF-8
    with invalid sequences escaped (``\\xNN``)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates from os.fsdecode
    pattern = _CONTROL if keep_newlines else _CONTROL_NO_NEWLINE
    return pattern.sub(_escape, text)


def bounded(value: object, limit: int = 200) -> str:
    """``printable(value)`` cut to about ``limit`` characters, saying how much was left out."""
    text = printable(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
