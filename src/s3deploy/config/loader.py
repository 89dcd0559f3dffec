"""Find and read config.ini: every configparser and OS failure, and every bad key or value, becomes one
``ConfigError`` listing each problem by file, section and key (so an operator fixes the file in one pass).
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from s3deploy.common.text import bounded, printable
from s3deploy.config.keys import IGNORED_KEYS, KEYS, parse_value, place, problem
from s3deploy.config.model import DEFAULT_SECTION, Config, Section
from s3deploy.config.values import Invalid
from s3deploy.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_VAR = "S3DEPLOY_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/s3deploy/config.ini")

# configparser's own [DEFAULT] handling hides which keys a section set itself; we need that to report a
# bad inherited value once under [DEFAULT], so [DEFAULT] is read as a plain section and merged here.
_INI_DEFAULTS = "DEFAULT"
_NO_DEFAULT_SECTION = "\x00s3deploy: no implicit default section"


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
        where = place(path, _INI_DEFAULTS)
        for key, raw in parser.items(_INI_DEFAULTS):
            if not _check_key(key, where, problems) or key in IGNORED_KEYS:
                continue
            if raw.strip() == "":
                continue  # not set: the built-in default applies
            try:
                defaults[key] = parse_value(key, raw)
            except Invalid as e:
                failed_defaults.add(key)
                problems.append(problem(f"{where} {key}", str(e), raw))

    names = [name for name in parser.sections() if name != _INI_DEFAULTS]
    if not names:
        problems.append(
            f"{printable(path)}: no sections; add one per environment, e.g. [{DEFAULT_SECTION}] "
            "with s3_bucket and target_file_key"
        )
    sections: dict[str, Section] = {}
    for name in names:
        section = _load_section(path, parser, name, defaults, failed_defaults, problems)
        if section is not None:
            sections[name] = section
    _check_activated_overlaps(path, sections, problems)

    if problems:
        raise ConfigError("\n".join(problems))
    logger.debug("loaded %s: sections %s", printable(path), ", ".join(sections))
    return Config(path=path, sections=sections)


# --- reading ---------------------------------------------------------------------------------------


def _must_exist(path: Path, how: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{printable(path)}: config file {how} does not exist")
    return path


def _read_ini(path: Path) -> configparser.RawConfigParser:
    """Parse the file, turning every configparser/OS failure into a ConfigError naming file and line."""
    shown = printable(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except FileNotFoundError as e:
        raise ConfigError(f"{shown}: config file not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = printable(getattr(e, "strerror", None) or e)
        raise ConfigError(f"{shown}: cannot read config file: {reason}") from e

    parser = configparser.RawConfigParser(default_section=_NO_DEFAULT_SECTION, strict=True)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            f"{shown} line {e.lineno}: expected a section header like [{DEFAULT_SECTION}] before any key, "
            f'got "{bounded(e.line.strip())}"'
        ) from e
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"{shown} line {e.lineno}: section [{printable(e.section)}] appears twice") from e
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            f"{shown} line {e.lineno} [{printable(e.section)}] {printable(e.option)}: "
            "key appears twice in this section"
        ) from e
    except configparser.ParsingError as e:
        lines = [
            f'{shown} line {lineno}: expected "key = value" or [section], got "{bounded(_unrepr(line))}"'
            for lineno, line in e.errors
        ]
        raise ConfigError("\n".join(lines)) from e
    except configparser.Error as e:
        raise ConfigError(f"{shown}: not a valid INI file: {bounded(e)}") from e
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
    where = place(path, name)
    before = len(problems)
    if not _SECTION_NAME.fullmatch(name):
        problems.append(
            f'{where}: expected a section name of letters, digits, ".", "_", "-" or spaces, starting with '
            "a letter or digit, at most 100 characters (it names folders and lock files), "
            f'got "{bounded(name)}"'
        )
    values = dict(defaults)
    failed = set(failed_defaults)
    for key, raw in parser.items(name):
        if not _check_key(key, where, problems) or key in IGNORED_KEYS:
            continue
        failed.discard(key)
        values.pop(key, None)
        if raw.strip() == "" and not KEYS[key].required:
            continue  # not set: cancels an inherited value, the built-in default applies
        try:
            values[key] = parse_value(key, raw)
        except Invalid as e:
            failed.add(key)
            problems.append(problem(f"{where} {key}", str(e), raw))
    for key, spec in KEYS.items():
        if spec.required and key not in values and key not in failed:
            problems.append(f"{where} {key}: missing; expected {spec.what} (required)")
    signers = values.get("trusted_signers")
    if isinstance(signers, Path):
        problems += _signers_problems(where, signers)
    _check_activation(where, values, failed, problems)
    own = {key for key, _ in parser.items(name)} - set(parser.defaults())
    _check_fleet_keys(where, own, values, failed, problems)
    if len(problems) > before:
        return None
    changes: dict[str, Any] = {KEYS[key].field: value for key, value in values.items()}
    return dataclasses.replace(Section(name=name, s3_bucket="", target_file_key=""), **changes)


def _signers_problems(where: str, path: Path) -> list[str]:
    """Every problem of the ``trusted_signers`` file, by file and line: found at load time (and by
    ``validate``, and a SIGHUP keeps the old config) rather than by a section's first deployment."""
    from s3deploy.signing.allowed_signers import check_signers_file  # no cryptography: parsing only

    return [
        f"{where} trusted_signers: expected a readable OpenSSH allowed_signers file; {printable(problem)}"
        for problem in check_signers_file(path)
    ]


def _check_activation(where: str, values: dict[str, object], failed: set[str], problems: list[str]) -> None:
    """``activation = symlink`` needs a ``destination`` below / (the folder it makes a link)."""
    if values.get("activation") != "symlink" or "destination" in failed:
        return
    destination = values.get("destination")
    if destination is None:
        problems.append(
            f"{where} activation: symlink needs destination (the folder that becomes a link to the live "
            "release), e.g. destination = /var/www/html; set it, or use activation = copy"
        )
    elif os.path.normpath(str(destination)) in ("/", "//"):
        problems.append(
            f"{where} activation: symlink needs a destination below /, not / itself (its releases live in "
            "a folder beside it); use a folder such as /srv/app, or activation = copy"
        )


def _check_fleet_keys(
    where: str, own: set[str], values: dict[str, object], failed: set[str], problems: list[str]
) -> None:
    """``max_failures`` and ``fleet_prefix`` written in a section without ``max_concurrent`` would be
    ignored (the section is not coordinated): the operator meant a fleet rollout, so say so. From
    [DEFAULT] they are only defaults for the coordinated sections."""
    if "max_concurrent" in values or "max_concurrent" in failed:
        return
    for key in sorted(own & {"max_failures", "fleet_prefix"} - failed):
        problems.append(
            f"{where} {key}: expected max_concurrent too: {key} only applies to a coordinated section; "
            "set max_concurrent (like 1 or 25%) for a fleet rollout, or remove the key"
        )


def _check_activated_overlaps(path: Path, sections: dict[str, Section], problems: list[str]) -> None:
    """A section with ``activation = symlink`` owns its destination alone: another section installing into
    it, around it or inside it would write into (or prune) its releases through the link."""
    for a in sections.values():
        if a.activation != "symlink" or a.destination is None:
            continue
        d = Path(os.path.normpath(a.destination))
        for b in sections.values():
            e = None if b.destination is None else Path(os.path.normpath(b.destination))
            if b is a or e is None or not (e.is_relative_to(d) or d.is_relative_to(e)):
                continue
            problems.append(
                f"{place(path, a.name)} activation: symlink makes {d} a link to a release folder, and "
                f"section [{printable(b.name)}] deploys into {e}, which overlaps it; give them folders "
                "apart, or use activation = copy"
            )


def _check_key(key: str, where: str, problems: list[str]) -> bool:
    """True for a known key; otherwise record an 'unknown key' problem with the closest known key."""
    if key in KEYS or key in IGNORED_KEYS:
        return True
    message = f"{where} {bounded(key)}: unknown key"
    close = difflib.get_close_matches(key, [*KEYS, *IGNORED_KEYS], n=1)
    if close:
        message += f'; did you mean "{close[0]}"?'
    else:
        message += f"; expected one of: {', '.join(KEYS)}"
    problems.append(message)
    return False
