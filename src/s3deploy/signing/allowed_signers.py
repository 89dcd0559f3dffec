"""The OpenSSH allowed_signers file (``ssh-keygen(1)``, ALLOWED SIGNERS), parsed as OpenSSH parses it.

A line is ``PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]``; blank lines and lines starting with ``#``
are ignored. PRINCIPALS is a comma-separated pattern list (``*`` and ``?`` wildcards, ``!`` negates),
optionally in double quotes. OPTIONS (case-insensitive names, values in double quotes as OpenSSH
requires) are ``namespaces="PATTERN-LIST"``, ``valid-after="TIME"`` and ``valid-before="TIME"``, TIME
being ``YYYYMMDD[HHMM[SS]]`` in local time, or UTC with a ``Z`` (or ``UTC``) suffix.

Decisions where s3deploy is stricter than ``ssh-keygen``: every line is checked when the file is loaded
(OpenSSH reads lines lazily and may never look at a broken one), an impossible date (``20240231``) is an
error rather than rolled over, and ``cert-authority`` is refused with a clear message: s3deploy does
not verify certificates, list the signers' keys instead.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from s3deploy.common.text import bounded, printable
from s3deploy.signing.errors import SignersFileError, SigningError
from s3deploy.signing.wire import KEY_TYPES, PublicKey, parse_public_key

#: A signers file larger than this is refused (thousands of keys fit in far less).
MAX_FILE_BYTES = 1024 * 1024
_WHITESPACE = " \t\r\n"
_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
# Names OpenSSH recognises as key types (so a token is a key, not options), beyond the supported ones.
_OTHER_KEY_TYPE = re.compile(
    r"^(ssh-dss|sk-\S+@openssh\.com|ssh-xmss@openssh\.com|\S+-cert-v01@openssh\.com)$"
)


class _LineError(Exception):
    """One line's problem; the loader adds the file and line number."""


@dataclass(frozen=True)
class SignerEntry:
    """One line of the file: who (``principals``, as written), which key, and its limits."""

    path: str
    line: int
    principals: str
    key: PublicKey
    namespaces: str | None = None
    valid_after: int | None = None  # seconds since the epoch
    valid_before: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def match_pattern(value: str, pattern: str) -> bool:
    """OpenSSH's ``match_pattern``: ``*`` matches any run of characters, ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def match_pattern_list(value: str, patterns: str) -> bool:
    """OpenSSH's ``match_pattern_list``: True when a pattern matches and no ``!pattern`` does."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if match_pattern(value, pattern[1:] if negated else pattern):
            if negated:
                return False
            positive = True
    return positive


def parse_time(value: str) -> int:
    """``YYYYMMDD[HHMM[SS]]`` (local time) or with a ``Z``/``UTC`` suffix (UTC) → seconds since the epoch."""
    text, utc = value, False
    if len(text) > 1 and text[-1] in "zZ":
        text, utc = text[:-1], True
    elif len(text) > 3 and text[-3:].upper() == "UTC":
        text, utc = text[:-3], True
    fmt = _TIME_FORMATS.get(len(text))
    if fmt is None or not text.isascii() or not text.isdigit():
        raise _LineError(f'time "{printable(value)}" is not YYYYMMDD[HHMM[SS]][Z]')
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError as e:
        raise _LineError(f'time "{value}" is not a valid date and time ({e})') from e
    if utc:
        return int(parsed.replace(tzinfo=UTC).timestamp())
    # As OpenSSH: mktime() on a struct tm with tm_isdst = 0.
    return int(time.mktime((*parsed.timetuple()[:6], 0, 0, 0)))


def _strdelimw(text: str) -> tuple[str, str | None]:
    """OpenSSH's ``strdelimw``: the first token (a double-quoted one loses its quotes) and the rest
    after the blanks that follow it (None when there is no rest)."""
    stop = next((i for i, c in enumerate(text) if c in _WHITESPACE or c == '"'), None)
    if stop is None:
        return text, None
    if text[stop] == '"':
        text = text[:stop] + text[stop + 1 :]
        close = text.find('"', stop)
        if close < 0:
            raise _LineError("principals: missing end quote")
        return text[:close], text[close + 1 :].lstrip(_WHITESPACE)
    return text[:stop], text[stop + 1 :].lstrip(_WHITESPACE)


def _dequote(opts: str, name: str) -> tuple[str, str]:
    """OpenSSH's ``opt_dequote``: a double-quoted value (``\\"`` escapes a quote) and what follows."""
    if not opts.startswith('"'):
        raise _LineError(f'option {name}: missing start quote (write {name}="...")')
    out: list[str] = []
    i = 1
    while i < len(opts) and opts[i] != '"':
        if opts[i] == "\\" and opts[i + 1 : i + 2] == '"':
            i += 1
        out.append(opts[i])
        i += 1
    if i >= len(opts):
        raise _LineError(f"option {name}: missing end quote")
    return "".join(out), opts[i + 1 :]


def _parse_options(opts: str) -> tuple[str | None, int | None, int | None]:
    """OpenSSH's ``sshsigopt_parse``: comma-separated options up to the first blank →
    (namespaces, valid-after, valid-before)."""
    found: dict[str, str | int] = {}
    while opts and opts[0] not in " \t":
        if opts[0] == ",":  # an empty option (",," or a leading comma): OpenSSH skips it
            opts = opts[1:]
            if not opts:
                raise _LineError("unexpected end of options")
            continue
        lower = opts.lower()
        if lower.startswith("cert-authority"):
            raise _LineError(
                "cert-authority is not supported: s3deploy does not verify certificates; "
                "list each signer's key"
            )
        name = next(
            (n for n in ("namespaces", "valid-after", "valid-before") if lower.startswith(n + "=")), None
        )
        if name is None:
            raise _LineError(
                f'unsupported option "{bounded(opts.split(",")[0], 60)}" '
                "(namespaces=, valid-after=, valid-before=)"
            )
        if name in found:
            raise _LineError(f'multiple "{name}" options')
        value, opts = _dequote(opts[len(name) + 1 :], name)
        found[name] = value if name == "namespaces" else parse_time(value)
        if name != "namespaces" and found[name] == 0:
            raise _LineError(f'invalid "{name}" time')
        if not opts or opts[0] in " \t":
            break
        if opts[0] != ",":
            raise _LineError(f'unexpected "{bounded(opts, 40)}" after option {name}')
        opts = opts[1:]
        if not opts:
            raise _LineError("unexpected end of options")
    namespaces, after, before = found.get("namespaces"), found.get("valid-after"), found.get("valid-before")
    if isinstance(after, int) and isinstance(before, int) and before <= after:
        raise _LineError('"valid-before" time is not after "valid-after"')
    return (
        namespaces if isinstance(namespaces, str) else None,
        after if isinstance(after, int) else None,
        before if isinstance(before, int) else None,
    )


def _is_key_type(token: str) -> bool:
    return token in KEY_TYPES or _OTHER_KEY_TYPE.match(token) is not None


def _skip_options(text: str) -> tuple[str, str]:
    """OpenSSH's ``sshkey_advance_past_options``: the options (up to a blank outside quotes), the rest."""
    quoted, i = False, 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise _LineError("options: missing end quote")
    return text[:i], text[i:].lstrip(" \t")


def _parse_key(text: str) -> PublicKey:
    fields = text.split(None, 2)
    if len(fields) < 2:
        raise _LineError("missing key: expected KEYTYPE BASE64 after the principals and options")
    key_type, encoded = fields[0], fields[1]
    if not _is_key_type(key_type):
        raise _LineError(f'unknown key type "{bounded(key_type, 60)}"')
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _LineError(f"{key_type} key is not valid base64") from e
    try:
        key = parse_public_key(blob, f"{key_type} key")
    except SigningError as e:
        raise _LineError(e.detail) from e
    if key.key_type != key_type:
        raise _LineError(f"key type {key_type} does not match the key, which is {key.key_type}")
    return key


def _parse_line(line: str, path: str, number: int) -> SignerEntry | None:
    """One line → a SignerEntry, None for blank and comment lines; raises _LineError."""
    text = line.lstrip(" \t")
    if not text.strip(_WHITESPACE) or text.startswith("#"):
        return None
    principals, rest = _strdelimw(text.rstrip("\r\n"))
    if not rest:
        raise _LineError("expected PRINCIPALS [OPTIONS] KEYTYPE BASE64")
    if not principals:
        raise _LineError("empty principals")
    namespaces, after, before = None, None, None
    if not _is_key_type(rest.split(None, 1)[0]):
        opts, rest = _skip_options(rest)
        namespaces, after, before = _parse_options(opts)
    key = _parse_key(rest)
    return SignerEntry(path, number, principals, key, namespaces, after, before)


def parse_signers(text: str, path: str) -> tuple[list[SignerEntry], list[str]]:
    """Every entry of an allowed_signers text and every problem (``PATH:LINE: what``)."""
    entries: list[SignerEntry] = []
    problems: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            entry = _parse_line(line, path, number)
        except _LineError as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        if entry is not None:
            entries.append(entry)
    if not entries and not problems:
        problems.append(f"{path}: no signer keys (lines of PRINCIPALS [OPTIONS] KEYTYPE BASE64)")
    return entries, problems


def _read(path: Path) -> tuple[list[SignerEntry], list[str]]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return [], [f"{path}: cannot read the signers file: {e.strerror or e}"]
    if len(data) > MAX_FILE_BYTES:
        return [], [f"{path}: larger than {MAX_FILE_BYTES} bytes; is this an allowed_signers file?"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [f"{path}: not UTF-8 text (byte {e.start})"]
    return parse_signers(text, str(path))


def check_signers_file(path: Path) -> list[str]:
    """Every problem of an allowed_signers file, one ``PATH:LINE: what`` each; empty when it is usable."""
    return _read(path)[1]


@dataclass(frozen=True)
class AllowedSigners:
    """A loaded allowed_signers file: the keys that may sign, in file order."""

    path: str
    entries: tuple[SignerEntry, ...]

    def find(
        self, key: PublicKey, *, namespace: str, now: float, principal: str | None = None
    ) -> SignerEntry:
        """The first entry that accepts a signature by ``key`` in ``namespace`` at ``now`` (as
        ``ssh-keygen -Y verify`` picks it; with ``principal``, as ``-I principal`` does). Raises
        SigningError naming why no entry does: ``unknown key``, ``principal``, ``namespace``, ``expired``
        or ``not yet valid``."""
        with_key = [e for e in self.entries if e.key == key]
        candidates = [e for e in with_key if principal is None or match_pattern_list(principal, e.principals)]
        refusals: list[SigningError] = []
        for entry in candidates:
            refusal = _refusal(entry, namespace, int(now))
            if refusal is None:
                return entry
            refusals.append(refusal)
        if refusals:
            raise refusals[0]
        if with_key:
            raise SigningError(
                "principal",
                f"key {key.fingerprint} is listed in {self.path} but not for "
                f'principal "{printable(principal)}" (lines {_lines(with_key)})',
            )
        raise SigningError("unknown key", f"{key.key_type} key {key.fingerprint} is not in {self.path}")


def _lines(entries: list[SignerEntry]) -> str:
    return ", ".join(str(e.line) for e in entries)


def _refusal(entry: SignerEntry, namespace: str, now: int) -> SigningError | None:
    if entry.namespaces is not None and not match_pattern_list(namespace, entry.namespaces):
        return SigningError(
            "namespace",
            f"{entry.where} allows key {entry.key.fingerprint} only for namespaces "
            f'"{printable(entry.namespaces)}", not "{printable(namespace)}"',
        )
    if entry.valid_after is not None and now < entry.valid_after:
        return SigningError(
            "not yet valid",
            f"{entry.where}: key {entry.key.fingerprint} is valid only after {_utc(entry.valid_after)}",
        )
    if entry.valid_before is not None and now > entry.valid_before:
        return SigningError(
            "expired",
            f"{entry.where}: key {entry.key.fingerprint} was valid only before {_utc(entry.valid_before)}",
        )
    return None


def _utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def load_signers(path: Path) -> AllowedSigners:
    """Load an allowed_signers file; raises SignersFileError listing every problem."""
    entries, problems = _read(path)
    if problems:
        raise SignersFileError(problems)
    return AllowedSigners(str(path), tuple(entries))
