"""An appspec document (the YAML values) → an ``AppSpec``, recording every problem and warning found.

Keys the CodeDeploy agent ignores (an unknown top-level key, ``overwrite:`` in a ``files`` entry, ``sudo:``
in a hook ...) are warnings: the agent deploys such an appspec, so s3deploy does too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from s3deploy.appspec import fields
from s3deploy.appspec.fields import Findings, kind, name_of, show, unknown_keys
from s3deploy.appspec.model import (
    FILE_EXISTS_BEHAVIORS,
    LIFECYCLE_EVENTS,
    RESERVED_EVENTS,
    SEED_SCRIPT_DIRS,
    TRAFFIC_EVENTS,
    AppSpec,
    FileMapping,
    HookScript,
    Permission,
)
from s3deploy.appspec.selinux import parse_context

_TOP_KEYS = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
_FILE_KEYS = ("source", "destination")
_HOOK_KEYS = ("location", "timeout", "runas")
_PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context")
_FILE_KEYS_IGNORED = {
    "overwrite": "ignored, as CodeDeploy ignores it; to replace files already there, set "
    "file_exists_behavior: OVERWRITE at the top level",
    "file_exists_behavior": "ignored here, as CodeDeploy ignores it: it belongs at the top level",
}
_HOOK_KEYS_IGNORED = {"sudo": "ignored: hooks run as root already (or as their runas user)"}
_T = TypeVar("_T")


def parse_document(doc: Any, bundle_root: Path, findings: Findings) -> AppSpec:
    """The appspec ``doc`` describes (its valid parts), every problem and warning added to ``findings``."""
    if doc is None:
        findings.problem("", "is empty; expected a mapping with version: 0.0 and os: linux")
        return AppSpec()
    if not isinstance(doc, dict):
        findings.problem("", f"expected a mapping at the top level, got {kind(doc)}")
        return AppSpec()
    unknown_keys(doc, "", _TOP_KEYS, findings)
    _check_version_os(doc, findings)
    behavior = doc.get("file_exists_behavior", "DISALLOW")
    if not isinstance(behavior, str) or behavior.upper() not in FILE_EXISTS_BEHAVIORS:
        findings.problem(
            "file_exists_behavior",
            f"expected one of {', '.join(FILE_EXISTS_BEHAVIORS)}, got {kind(behavior)}",
        )
        behavior = "DISALLOW"
    raw_hooks = doc.get("hooks")
    seed = not raw_hooks
    return AppSpec(
        files=_parse_list(
            doc.get("files"), "files", findings, lambda v, k: _file(v, k, bundle_root, findings)
        ),
        permissions=_parse_list(
            doc.get("permissions"), "permissions", findings, lambda v, k: _permission(v, k, findings)
        ),
        hooks=seed_hooks(bundle_root) if seed else _hooks(raw_hooks, bundle_root, findings),
        file_exists_behavior=behavior.upper(),
        source_file=findings.source_file,
        seed_style_hooks=seed,
    )


def seed_hooks(bundle_root: Path) -> dict[str, tuple[HookScript, ...]]:
    """The ``<Event>.sh`` scripts at the bundle root or in ``scripts/`` (SPEC §7, seed-style bundles)."""
    hooks: dict[str, tuple[HookScript, ...]] = {}
    for event in LIFECYCLE_EVENTS:
        for folder in SEED_SCRIPT_DIRS:
            location = str(PurePosixPath(folder, f"{event}.sh"))
            if (bundle_root / location).is_file():
                hooks[event] = (HookScript(location),)
                break
    return hooks


def _check_version_os(doc: dict[Any, Any], findings: Findings) -> None:
    version = doc.get("version")
    if version is None:
        findings.problem("version", "required; expected 0.0")
    elif not _is_zero_version(version):
        findings.problem(
            "version", f"expected 0.0 (the only AppSpec version for EC2/on-premises), got {kind(version)}"
        )
    os_name = doc.get("os")
    if os_name is None:
        findings.problem("os", "required; expected linux")
    elif isinstance(os_name, str) and os_name.lower() == "windows":
        findings.problem("os", "windows is not supported; s3deploy deploys to linux hosts only (os: linux)")
    elif os_name != "linux":
        findings.problem("os", f"expected linux, got {kind(os_name)}")


def _is_zero_version(version: Any) -> bool:
    """``0.0`` as YAML reads it (a float), quoted (``"0.0"``, SPEC §7), or ``0`` (the agent: 0.0 == 0)."""
    if isinstance(version, bool):
        return False
    if isinstance(version, int | float):
        return version == 0
    return isinstance(version, str) and version.strip() in ("0.0", "0")


def _parse_list(
    value: Any, key: str, findings: Findings, parse_one: Callable[[dict[Any, Any], str], _T | None]
) -> tuple[_T, ...]:
    """Parse a YAML list of mappings with ``parse_one(item, key_path)``, skipping bad items."""
    if value is None:
        return ()
    if not isinstance(value, list):
        findings.problem(key, f"expected a list of mappings, got {kind(value)}")
        return ()
    parsed: list[_T] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, dict):
            findings.problem(item_key, f"expected a mapping, got {kind(item)}")
            continue
        result = parse_one(item, item_key)
        if result is not None:
            parsed.append(result)
    return tuple(parsed)


def _file(item: dict[Any, Any], key: str, bundle_root: Path, findings: Findings) -> FileMapping | None:
    unknown_keys(item, key, _FILE_KEYS, findings, _FILE_KEYS_IGNORED)
    source = fields.field(item, "source", key, findings, required=True)
    destination = fields.field(item, "destination", key, findings, required=True)
    if destination is not None and not destination.startswith("/"):
        findings.problem(f"{key}.destination", f"expected an absolute path, got {show(destination)}")
        destination = None
    if source is not None and not _inside_bundle(source, f"{key}.source", bundle_root, findings):
        source = None
    elif source is not None and not os.path.lexists(FileMapping(source, "/").source_in(bundle_root)):
        findings.problem(f"{key}.source", f"{show(source)} is not in the bundle")
        source = None
    if source is None or destination is None:
        return None
    return FileMapping(source, destination)


def _inside_bundle(relpath: str, key: str, bundle_root: Path, findings: Findings) -> bool:
    """True when ``relpath`` stays inside the bundle, lexically and (if it exists) after symlinks."""
    parts = PurePosixPath(relpath.lstrip("/")).parts
    if ".." in parts:
        findings.problem(key, f'{show(relpath)} leaves the bundle (".." is not allowed)')
        return False
    target = bundle_root.joinpath(*parts)
    try:
        escapes = os.path.lexists(target) and not target.resolve().is_relative_to(bundle_root.resolve())
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        escapes = True
    if escapes:
        findings.problem(key, f"{show(relpath)} points outside the bundle through a symlink")
        return False
    return True


def _hooks(value: Any, bundle_root: Path, findings: Findings) -> dict[str, tuple[HookScript, ...]]:
    if not isinstance(value, dict):
        findings.problem("hooks", f"expected a mapping of event name to a list of scripts, got {kind(value)}")
        return {}
    hooks: dict[str, tuple[HookScript, ...]] = {}
    for event, scripts in value.items():
        key = f"hooks.{name_of(event)}"
        if event in RESERVED_EVENTS:
            findings.problem(key, "is reserved: the agent runs this step itself and it cannot have scripts")
        elif event not in LIFECYCLE_EVENTS + TRAFFIC_EVENTS:
            findings.problem(
                key, f"unknown event; expected one of {', '.join(LIFECYCLE_EVENTS + TRAFFIC_EVENTS)}"
            )
        else:
            parsed = _parse_list(scripts, key, findings, lambda v, k: _script(v, k, bundle_root, findings))
            if parsed:
                hooks[str(event)] = parsed
    return hooks


def _script(item: dict[Any, Any], key: str, bundle_root: Path, findings: Findings) -> HookScript | None:
    unknown_keys(item, key, _HOOK_KEYS, findings, _HOOK_KEYS_IGNORED)
    location = fields.field(item, "location", key, findings, required=True)
    if location is not None and not _inside_bundle(location, f"{key}.location", bundle_root, findings):
        location = None
    timeout_s = fields.timeout(item.get("timeout"), f"{key}.timeout", findings)
    runas = fields.field(item, "runas", key, findings)
    if location is None or timeout_s is None:
        return None
    return HookScript(location.lstrip("/"), timeout_s, runas)


def _permission(item: dict[Any, Any], key: str, findings: Findings) -> Permission | None:
    unknown_keys(item, key, _PERMISSION_KEYS, findings)
    before = len(findings.problems)
    obj = fields.field(item, "object", key, findings, required=True)
    if obj is not None and not obj.startswith("/"):
        findings.problem(f"{key}.object", f"expected an absolute path, got {show(obj)}")
    types = fields.texts(item.get("type"), f"{key}.type", findings) or ("file", "directory")
    for t in types:
        if t not in ("file", "directory"):
            findings.problem(f"{key}.type", f"expected file and/or directory, got {show(t)}")
    perm = Permission(
        object=obj or "/",
        pattern=fields.field(item, "pattern", key, findings) or "**",
        except_=fields.texts(item.get("except"), f"{key}.except", findings),
        type=types,
        owner=fields.field(item, "owner", key, findings),
        group=fields.field(item, "group", key, findings),
        mode=fields.parse_mode(item.get("mode"), f"{key}.mode", findings),
        acls=fields.acls(item.get("acls"), f"{key}.acls", findings),
        context=parse_context(item.get("context"), f"{key}.context", findings),
    )
    return perm if len(findings.problems) == before else None
