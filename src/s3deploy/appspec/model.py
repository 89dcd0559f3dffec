"""What a parsed appspec is: immutable values the pipeline and the installer read, and the event names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LIFECYCLE_EVENTS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
"""Events whose scripts run on every in-place deployment, in this order (Install sits between
BeforeInstall and AfterInstall and is the agent's own step)."""
TRAFFIC_EVENTS = ("BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic", "AfterAllowTraffic")
"""Load-balancer events: accepted so CodeDeploy appspecs load unchanged; the pipeline skips them."""
RESERVED_EVENTS = ("Start", "DownloadBundle", "Install", "BlockTraffic", "AllowTraffic", "End")
FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")
DEFAULT_TIMEOUT_S = 3600.0
CODEDEPLOY_MAX_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 365 * 24 * 3600.0
"""Longest hook timeout accepted (a year); the deployment timeout bounds every hook anyway."""
SEED_SCRIPT_DIRS = ("", "scripts")


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
    """A ``permissions[].context`` value, applied with chcon (``range`` as the appspec wrote it, valid)."""

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
    """A validated appspec (or the seed-style stand-in when the bundle has none).

    ``warnings`` lists what was accepted although CodeDeploy users may not mean it (keys the agent ignores,
    numbers read as the agent reads them), one ``<file>: <key path>: <message>`` line each.
    """

    version: str = "0.0"
    os: str = "linux"
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    hooks: dict[str, tuple[HookScript, ...]] = field(default_factory=dict)
    file_exists_behavior: str = "DISALLOW"
    source_file: str | None = None
    seed_style_hooks: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class BundleCheck:
    """What ``check_bundle`` found: ``problems`` (not deployable), ``warnings`` (deployable, but look),
    ``notes`` (what the deployment will do that may surprise, e.g. an Install that copies nothing)."""

    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
