"""Parse and validate a bundle's appspec.yml (CodeDeploy AppSpec ``version: 0.0``, ``os: linux``).

``load_appspec`` turns the file into an immutable ``AppSpec`` value and reports every problem at once, each
naming the file and the key path (``appspec.yml: hooks.BeforeInstall[0].timeout: ...``).

Where this parser is kinder than CodeDeploy's agent, on purpose:
- ``mode: 0644`` unquoted is read as written (octal 644); YAML 1.1 alone would turn it into decimal 420.
- a hook ``timeout`` above CodeDeploy's 3600 s cap is accepted (the deployment timeout still bounds it).
- a leading ``/`` on ``source``/``location`` means the bundle root, as CodeDeploy's path join does.

Bundles without an appspec, or whose appspec has no ``hooks``, are "seed-style" (SPEC §7): the hooks are
``<Event>.sh`` scripts found at the bundle root or in ``scripts/``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml

from s3deploy.errors import AppSpecError
from s3deploy.install import acl

logger = logging.getLogger(__name__)

LIFECYCLE_EVENTS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
"""Events whose scripts run on every in-place deployment, in this order (Install sits between
BeforeInstall and AfterInstall and is the agent's own step)."""
TRAFFIC_EVENTS = ("BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic", "AfterAllowTraffic")
"""Load-balancer events: accepted so CodeDeploy appspecs load unchanged; the pipeline skips them."""
RESERVED_EVENTS = ("Start", "DownloadBundle", "Install", "BlockTraffic", "AllowTraffic", "End")
APPSPEC_NAMES = ("appspec.yml", "appspec.yaml")
FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")
DEFAULT_TIMEOUT_S = 3600.0
CODEDEPLOY_MAX_TIMEOUT_S = 3600.0
SEED_SCRIPT_DIRS = ("", "scripts")

_TOP_KEYS = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
_FILE_KEYS = ("source", "destination")
_HOOK_KEYS = ("location", "timeout", "runas")
_PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context")
_CONTEXT_KEYS = ("user", "type", "range")
_MODE_RE = re.compile(r"0?[0-7]{3,4}")
_T = TypeVar("_T")


@dataclass(frozen=True)
class FileMapping:
    """One ``files`` entry: copy ``source`` (bundle-relative; "/" = the whole bundle) into ``destination``."""

    source: str
    destination: str

    def source_in(self, bundle_root: Path) -> Path:
        """The source's path inside ``bundle_root`` (a leading "/" is dropped, as CodeDeploy does)."""
        return bundle_root / self.source.lstrip("/") if self.source.strip("/") else bundle_root


@dataclass(frozen=True)
class SELinuxContext:
    """A ``permissions[].context`` value, applied with chcon."""

    type: str
    user: str | None = None
    range: str | None = None


@dataclass(frozen=True)
class Permission:
    """One ``permissions`` entry, applied to what the Install step put under ``object``."""

    object: str
    pattern: str = "**"
    except_: tuple[str, ...] = ()
    type: tuple[str, ...] = ("file", "directory")
    owner: str | None = None
    group: str | None = None
    mode: int | None = None
    acls: tuple[str, ...] = ()
    context: SELinuxContext | None = None


@dataclass(frozen=True)
class HookScript:
    """One script of a lifecycle event; ``location`` is relative to the bundle root."""

    location: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    runas: str | None = None


@dataclass(frozen=True)
class AppSpec:
    """A validated appspec (or the seed-style stand-in when the bundle has none)."""

    version: str = "0.0"
    os: str = "linux"
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    hooks: dict[str, tuple[HookScript, ...]] = field(default_factory=dict)
    file_exists_behavior: str = "DISALLOW"
    source_file: str | None = None
    seed_style_hooks: bool = False

    def scripts_for(self, event: str) -> tuple[HookScript, ...]:
        """The scripts of ``event`` in run order (empty when the event has no hook)."""
        return self.hooks.get(event, ())


class _RawInt(int):
    """An int that remembers its YAML text, so an unquoted ``mode: 0750`` keeps meaning octal 750."""

    raw: str


class _Loader(yaml.SafeLoader):
    """SafeLoader whose leading-zero ints remember how they were written."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    text = str(node.value)
    if len(text) > 1 and text.startswith("0") and text.isdigit():
        raw = _RawInt(value)
        raw.raw = text
        return raw
    return int(value)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Problems:
    """Collects problems as ``<file>: <key path>: <message>`` lines."""

    def __init__(self, source_file: str) -> None:
        self.source_file = source_file
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(
            f"{self.source_file}: {key}: {message}" if key else f"{self.source_file}: {message}"
        )


def find_appspec(bundle_root: Path) -> Path | None:
    """The bundle's appspec file: appspec.yml, else appspec.yaml, else None."""
    for name in APPSPEC_NAMES:
        if (bundle_root / name).is_file():
            return bundle_root / name
    return None


def load_appspec(bundle_root: Path) -> AppSpec:
    """Read and validate the appspec of the bundle unpacked at ``bundle_root``.

    Raises AppSpecError whose ``problems`` lists every problem found. A missing hook script is not a
    problem here (the hook runner fails that event); ``check_bundle`` reports it.
    """
    spec, problems = _load(bundle_root)
    if problems:
        raise AppSpecError(f"{spec.source_file}: {len(problems)} problem(s): {problems[0]}", problems)
    return spec


def check_bundle(bundle_root: Path) -> list[str]:
    """Every problem of the bundle at ``bundle_root`` (for ``s3deploy validate``); empty when deployable.

    Scripts are checked even when other keys have problems, so one run lists everything to fix.
    """
    try:
        spec, lines = _load(bundle_root)
    except AppSpecError as e:  # unreadable or not YAML: nothing more to check
        return list(e.problems)
    problems = _Problems(spec.source_file or "bundle")
    problems.lines = lines
    root = bundle_root.resolve()
    for event, scripts in spec.hooks.items():
        for i, script in enumerate(scripts):
            key = f"hooks.{event}[{i}].location" if not spec.seed_style_hooks else script.location
            target = bundle_root / script.location.lstrip("/")
            if not os.path.lexists(target):
                problems.add(key, f'script "{script.location}" is not in the bundle')
            elif not target.resolve().is_relative_to(root):
                problems.add(key, f'script "{script.location}" points outside the bundle')
            elif not target.is_file():
                problems.add(key, f'"{script.location}" is not a regular file')
    return problems.lines


def _load(bundle_root: Path) -> tuple[AppSpec, list[str]]:
    """The appspec (valid parts only) and every problem found; raises AppSpecError if it cannot be read."""
    path = find_appspec(bundle_root)
    if path is None:
        logger.debug("no appspec in %s: seed-style bundle", bundle_root)
        return AppSpec(hooks=_seed_hooks(bundle_root), seed_style_hooks=True), []
    problems = _Problems(path.name)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(e, "problem", None) or str(e)
        raise AppSpecError(f"{path.name}: invalid YAML{where}: {reason}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise AppSpecError(f"{path.name}: cannot read: {e}") from e
    spec = _parse(doc, bundle_root, problems)
    return replace(spec, source_file=path.name), problems.lines


def _seed_hooks(bundle_root: Path) -> dict[str, tuple[HookScript, ...]]:
    hooks: dict[str, tuple[HookScript, ...]] = {}
    for event in LIFECYCLE_EVENTS:
        for folder in SEED_SCRIPT_DIRS:
            location = str(PurePosixPath(folder, f"{event}.sh"))
            if (bundle_root / location).is_file():
                hooks[event] = (HookScript(location),)
                break
    return hooks


def _parse(doc: Any, bundle_root: Path, problems: _Problems) -> AppSpec:
    if doc is None:
        problems.add("", "is empty; expected a mapping with version: 0.0 and os: linux")
        return AppSpec()
    if not isinstance(doc, dict):
        problems.add("", f"expected a mapping at the top level, got {_kind(doc)}")
        return AppSpec()
    for key in doc:
        if key not in _TOP_KEYS:
            problems.add(str(key), f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
    _check_version_os(doc, problems)
    behavior = doc.get("file_exists_behavior", "DISALLOW")
    if not isinstance(behavior, str) or behavior.upper() not in FILE_EXISTS_BEHAVIORS:
        problems.add(
            "file_exists_behavior", f"expected one of {', '.join(FILE_EXISTS_BEHAVIORS)}, got {behavior!r}"
        )
        behavior = "DISALLOW"
    raw_hooks = doc.get("hooks")
    seed = not raw_hooks
    return AppSpec(
        files=tuple(
            _parse_list(doc.get("files"), "files", problems, lambda v, k: _file(v, k, bundle_root, problems))
        ),
        permissions=tuple(
            _parse_list(
                doc.get("permissions"), "permissions", problems, lambda v, k: _permission(v, k, problems)
            )
        ),
        hooks=_seed_hooks(bundle_root) if seed else _hooks(raw_hooks, bundle_root, problems),
        file_exists_behavior=behavior.upper(),
        source_file=problems.source_file,
        seed_style_hooks=seed,
    )


def _check_version_os(doc: dict[Any, Any], problems: _Problems) -> None:
    version = doc.get("version")
    if version is None:
        problems.add("version", "required; expected 0.0")
    elif isinstance(version, bool) or str(version).strip() not in ("0.0", "0"):
        problems.add(
            "version", f"expected 0.0 (the only AppSpec version for EC2/on-premises), got {version!r}"
        )
    os_name = doc.get("os")
    if os_name is None:
        problems.add("os", "required; expected linux")
    elif str(os_name).lower() == "windows":
        problems.add("os", "windows is not supported; s3deploy deploys to linux hosts only (os: linux)")
    elif os_name != "linux":
        problems.add("os", f"expected linux, got {os_name!r}")


def _parse_list(
    value: Any, key: str, problems: _Problems, parse_one: Callable[[dict[Any, Any], str], _T | None]
) -> list[_T]:
    """Parse a YAML list of mappings with ``parse_one(item, key_path)``, skipping bad items."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(key, f"expected a list of mappings, got {_kind(value)}")
        return []
    parsed: list[_T] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, dict):
            problems.add(item_key, f"expected a mapping, got {_kind(item)}")
            continue
        result = parse_one(item, item_key)
        if result is not None:
            parsed.append(result)
    return parsed


def _unknown_keys(item: dict[Any, Any], key: str, allowed: tuple[str, ...], problems: _Problems) -> None:
    for name in item:
        if name == "file_exists_behavior":
            problems.add(f"{key}.{name}", "belongs at the top level of the appspec, not inside a files entry")
        elif name not in allowed:
            problems.add(f"{key}.{name}", f"unknown key; expected one of {', '.join(allowed)}")


def _file(item: dict[Any, Any], key: str, bundle_root: Path, problems: _Problems) -> FileMapping | None:
    _unknown_keys(item, key, _FILE_KEYS, problems)
    source = _string(item, "source", key, problems, required=True)
    destination = _string(item, "destination", key, problems, required=True)
    if destination is not None and not destination.startswith("/"):
        problems.add(f"{key}.destination", f"expected an absolute path, got {destination!r}")
        destination = None
    if source is not None and not _inside_bundle(source, f"{key}.source", bundle_root, problems):
        source = None
    elif source is not None and not os.path.lexists(FileMapping(source, "/").source_in(bundle_root)):
        problems.add(f"{key}.source", f'"{source}" is not in the bundle')
        source = None
    if source is None or destination is None:
        return None
    return FileMapping(source, destination)


def _inside_bundle(relpath: str, key: str, bundle_root: Path, problems: _Problems) -> bool:
    """True when ``relpath`` stays inside the bundle, lexically and (if it exists) after symlinks."""
    parts = PurePosixPath(relpath.lstrip("/")).parts
    if ".." in parts:
        problems.add(key, f'"{relpath}" leaves the bundle (".." is not allowed)')
        return False
    target = bundle_root.joinpath(*parts)
    if os.path.lexists(target) and not target.resolve().is_relative_to(bundle_root.resolve()):
        problems.add(key, f'"{relpath}" points outside the bundle through a symlink')
        return False
    return True


def _hooks(value: Any, bundle_root: Path, problems: _Problems) -> dict[str, tuple[HookScript, ...]]:
    if not isinstance(value, dict):
        problems.add("hooks", f"expected a mapping of event name to a list of scripts, got {_kind(value)}")
        return {}
    hooks: dict[str, tuple[HookScript, ...]] = {}
    for event, scripts in value.items():
        key = f"hooks.{event}"
        if event in RESERVED_EVENTS:
            problems.add(key, "is reserved: the agent runs this step itself and it cannot have scripts")
        elif event not in LIFECYCLE_EVENTS + TRAFFIC_EVENTS:
            problems.add(
                key, f"unknown event; expected one of {', '.join(LIFECYCLE_EVENTS + TRAFFIC_EVENTS)}"
            )
        else:
            parsed = _parse_list(scripts, key, problems, lambda v, k: _script(v, k, bundle_root, problems))
            if parsed:
                hooks[str(event)] = tuple(parsed)
    return hooks


def _script(item: dict[Any, Any], key: str, bundle_root: Path, problems: _Problems) -> HookScript | None:
    _unknown_keys(item, key, _HOOK_KEYS, problems)
    location = _string(item, "location", key, problems, required=True)
    if location is not None and not _inside_bundle(location, f"{key}.location", bundle_root, problems):
        location = None
    timeout_s = _timeout(item.get("timeout"), f"{key}.timeout", problems)
    runas = _string(item, "runas", key, problems)
    if location is None or timeout_s is None:
        return None
    return HookScript(location.lstrip("/"), timeout_s, runas)


def _timeout(value: Any, key: str, problems: _Problems) -> float | None:
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        problems.add(key, f'expected a number of seconds > 0, got "{value}"')
        return None
    if seconds > CODEDEPLOY_MAX_TIMEOUT_S:
        logger.info(
            "%s: %s s is above CodeDeploy's %d s limit; accepted", key, value, CODEDEPLOY_MAX_TIMEOUT_S
        )
    return seconds


def _permission(item: dict[Any, Any], key: str, problems: _Problems) -> Permission | None:
    _unknown_keys(item, key, _PERMISSION_KEYS, problems)
    obj = _string(item, "object", key, problems, required=True)
    if obj is not None and not obj.startswith("/"):
        problems.add(f"{key}.object", f"expected an absolute path, got {obj!r}")
        obj = None
    types = _strings(item.get("type"), f"{key}.type", problems) or ("file", "directory")
    for t in types:
        if t not in ("file", "directory"):
            problems.add(f"{key}.type", f"expected file and/or directory, got {t!r}")
    before = len(problems.lines)
    perm = Permission(
        object=obj or "/",
        pattern=_string(item, "pattern", key, problems) or "**",
        except_=_strings(item.get("except"), f"{key}.except", problems),
        type=types,
        owner=_string(item, "owner", key, problems),
        group=_string(item, "group", key, problems),
        mode=parse_mode(item.get("mode"), f"{key}.mode", problems),
        acls=_acls(item.get("acls"), f"{key}.acls", problems),
        context=_context(item.get("context"), f"{key}.context", problems),
    )
    return perm if obj is not None and len(problems.lines) == before else None


def parse_mode(value: Any, key: str = "mode", problems: _Problems | None = None) -> int | None:
    """A chmod-style octal mode: ``750``, ``"750"``, ``"0750"``, ``4755`` (setuid) all read as octal."""
    if value is None:
        return None
    text = value.raw if isinstance(value, _RawInt) else str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not _MODE_RE.fullmatch(text):
        if problems is not None:
            problems.add(
                key, f'expected an octal mode of 3 or 4 digits 0-7 (like 644 or "0755"), got {value!r}'
            )
        return None
    return int(text, 8)


def _context(value: Any, key: str, problems: _Problems) -> SELinuxContext | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(key, f"expected a mapping with type (and optional user, range), got {_kind(value)}")
        return None
    for name in value:
        if name not in _CONTEXT_KEYS:
            problems.add(f"{key}.{name}", f"not supported; expected one of {', '.join(_CONTEXT_KEYS)}")
    ctx_type = _string(value, "type", key, problems, required=True)
    user = _string(value, "user", key, problems)
    ctx_range = value.get("range")
    if isinstance(ctx_range, dict):  # CodeDeploy's {low, high} form
        ctx_range = "-".join(str(ctx_range[k]) for k in ("low", "high") if k in ctx_range)
    if ctx_type is None:
        return None
    return SELinuxContext(ctx_type, user, None if ctx_range is None else str(ctx_range))


def _string(
    item: dict[Any, Any], name: str, key: str, problems: _Problems, *, required: bool = False
) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            problems.add(f"{key}.{name}", "required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems.add(f"{key}.{name}", f"expected a string, got {_kind(value)}")
        return None
    text = str(value).strip()
    if not text:
        problems.add(f"{key}.{name}", "must not be empty")
        return None
    return text


def _strings(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        problems.add(key, f"expected a list of strings, got {value!r}")
        return ()
    return tuple(items)


def _acls(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    entries = _strings(value, key, problems)
    for i, text in enumerate(entries):
        try:
            acl.parse(text)  # syntax only: users and groups are looked up on the host that installs
        except acl.AclError as e:
            problems.add(f"{key}[{i}]", str(e))
    return entries


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r})"[:80]
