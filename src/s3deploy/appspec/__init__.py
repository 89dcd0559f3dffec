"""Parse and validate a bundle's appspec.yml (CodeDeploy AppSpec ``version: 0.0``, ``os: linux``).

``load_appspec`` turns the file into an immutable ``AppSpec`` value and reports every problem at once, each
naming the file and the key path (``appspec.yml: hooks.BeforeInstall[0].timeout: ...``); what CodeDeploy's
agent would accept but ignore or read loosely is accepted with a warning (``AppSpec.warnings``, logged).

Modules: ``model`` (the values), ``yamlsafe`` (YAML with size, alias, depth and duplicate-key limits),
``fields`` (one value: string, path, mode, timeout, ACL), ``selinux`` (context and MLS range), ``parse``
(the document), ``load`` (find, load, check a bundle).

Where this parser is kinder than CodeDeploy's agent, on purpose:
- ``mode: 0644`` unquoted is read as written (octal 644); YAML 1.1 alone would turn it into decimal 420.
- ``version: "0.0"`` quoted and lower-case ``file_exists_behavior`` values are accepted.
- a hook ``timeout`` above CodeDeploy's 3600 s cap is accepted (the deployment timeout still bounds it).
- a leading ``/`` on ``source``/``location`` means the bundle root, as CodeDeploy's path join does.
- SELinux ``context`` takes ``user:`` (what AWS's docs show) as well as ``name:`` (what the agent reads),
  and ``range`` in the ``{low, high}`` form too.

Where it is stricter, on purpose (the appspec comes from the bundle, so it is hostile):
- at most 1 MiB, 20,000 values with aliases expanded, 50 levels of nesting; a key twice in one mapping
  is refused (YAML would keep the last silently).
- no control characters in any string; paths and names at most 4096 characters; hook timeouts at most a
  year; ``files`` destinations and ``permissions`` objects are absolute paths.
- scripts under ``Install`` or ``DownloadBundle`` (which never run) are refused, as are unknown events.

Bundles without an appspec, or whose appspec has no ``hooks``, are "seed-style" (SPEC §7): the hooks are
``<Event>.sh`` scripts found at the bundle root or in ``scripts/``.
"""

from s3deploy.appspec.fields import parse_mode
from s3deploy.appspec.load import check_bundle, find_appspec, inspect_bundle, load_appspec
from s3deploy.appspec.model import (
    CODEDEPLOY_MAX_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    FILE_EXISTS_BEHAVIORS,
    LIFECYCLE_EVENTS,
    RESERVED_EVENTS,
    SEED_SCRIPT_DIRS,
    TRAFFIC_EVENTS,
    AppSpec,
    BundleCheck,
    FileMapping,
    HookScript,
    Permission,
    SELinuxContext,
)
from s3deploy.bundle.extract import APPSPEC_NAMES

__all__ = [
    "APPSPEC_NAMES",
    "CODEDEPLOY_MAX_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "FILE_EXISTS_BEHAVIORS",
    "LIFECYCLE_EVENTS",
    "RESERVED_EVENTS",
    "SEED_SCRIPT_DIRS",
    "TRAFFIC_EVENTS",
    "AppSpec",
    "BundleCheck",
    "FileMapping",
    "HookScript",
    "Permission",
    "SELinuxContext",
    "check_bundle",
    "find_appspec",
    "inspect_bundle",
    "load_appspec",
    "parse_mode",
]
