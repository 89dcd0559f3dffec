"""A bundle's appspec: find it, load it for a deployment, or check the whole bundle for ``validate``."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from s3deploy.appspec.fields import Findings, show
from s3deploy.appspec.model import AppSpec, BundleCheck
from s3deploy.appspec.parse import parse_document, seed_hooks
from s3deploy.appspec.yamlsafe import read_yaml
from s3deploy.bundle.extract import APPSPEC_NAMES
from s3deploy.errors import AppSpecError

logger = logging.getLogger(__name__)


def find_appspec(bundle_root: Path) -> Path | None:
    """The bundle's appspec file: appspec.yml, else appspec.yaml, else None."""
    for name in APPSPEC_NAMES:
        if (bundle_root / name).is_file():
            return bundle_root / name
    return None


def load_appspec(bundle_root: Path) -> AppSpec:
    """Read and validate the appspec of the bundle unpacked at ``bundle_root``; log each warning.

    Raises AppSpecError whose ``problems`` lists every problem found. A missing hook script is not a
    problem here (the hook runner fails that event); ``check_bundle`` reports it.
    """
    spec, findings = _load(bundle_root)
    if findings.problems:
        problems = findings.problems
        raise AppSpecError(f"{spec.source_file}: {len(problems)} problem(s): {problems[0]}", problems)
    for warning in spec.warnings:
        logger.warning("%s", warning)
    return spec


def check_bundle(bundle_root: Path) -> list[str]:
    """Every problem of the bundle at ``bundle_root``; empty when deployable (see ``inspect_bundle``)."""
    return inspect_bundle(bundle_root).problems


def inspect_bundle(bundle_root: Path) -> BundleCheck:
    """Every problem, warning and note of the bundle at ``bundle_root`` (for ``s3deploy validate``).

    Scripts are checked even when other keys have problems, so one run lists everything to fix.
    """
    try:
        spec, findings = _load(bundle_root)
    except AppSpecError as e:  # unreadable, too large or not YAML: nothing more to check
        return BundleCheck(list(e.problems))
    for event, scripts in spec.hooks.items():
        for i, script in enumerate(scripts):
            key = f"hooks.{event}[{i}].location" if not spec.seed_style_hooks else script.location
            problem = _script_problem(bundle_root, script.location)
            if problem:
                findings.problem(key, problem)
    notes = []
    if spec.source_file is not None and not spec.files and not findings.problems:
        notes.append(
            f"{spec.source_file}: files: none, so Install copies nothing and the hooks run on their own; "
            "in a section with a destination, the whole bundle is installed there instead"
        )
    return BundleCheck(findings.problems, findings.warnings, notes)


def _script_problem(bundle_root: Path, location: str) -> str | None:
    target = bundle_root / location.lstrip("/")
    shown = show(location)
    try:
        if not os.path.lexists(target):
            return f"script {shown} is not in the bundle"
        if not target.resolve().is_relative_to(bundle_root.resolve()):
            return f"script {shown} points outside the bundle"
    except (OSError, RuntimeError):  # a symlink loop
        return f"script {shown} cannot be resolved (a symlink loop?)"
    return None if target.is_file() else f"{shown} is not a regular file"


def _load(bundle_root: Path) -> tuple[AppSpec, Findings]:
    """The appspec (valid parts only) and what was found; raises AppSpecError if it cannot be read."""
    path = find_appspec(bundle_root)
    if path is None:
        logger.debug("no appspec in %s: seed-style bundle", bundle_root)
        return AppSpec(hooks=seed_hooks(bundle_root), seed_style_hooks=True), Findings("bundle")
    findings = Findings(path.name)
    spec = parse_document(read_yaml(path, path.name), bundle_root, findings)
    return dataclasses.replace(spec, source_file=path.name, warnings=tuple(findings.warnings)), findings
