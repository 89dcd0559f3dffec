"""appspec.yml parsing and validation: every malformed input names its key; seed-style discovery."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from s3deploy.appspec import (
    LIFECYCLE_EVENTS,
    AppSpec,
    FileMapping,
    HookScript,
    Permission,
    SELinuxContext,
    check_bundle,
    load_appspec,
)
from s3deploy.errors import AppSpecError

HEADER = "version: 0.0\nos: linux\n"


def make_bundle(
    root: Path, appspec: str | None, name: str = "appspec.yml", files: tuple[str, ...] = ()
) -> Path:
    """A bundle folder with ``app/index.html``, ``scripts/start.sh`` plus ``files`` (paths) and an appspec."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in ("app/index.html", "scripts/start.sh", *files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"content of {rel}\n")
    if appspec is not None:
        (root / name).write_text(textwrap.dedent(appspec))
    return root


def problems_of(root: Path) -> list[str]:
    with pytest.raises(AppSpecError) as info:
        load_appspec(root)
    return info.value.problems


def test_full_appspec_parses(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path,
        """\
        version: 0.0
        os: linux
        files:
          - source: app
            destination: /srv/app
          - source: /scripts/start.sh
            destination: /usr/local/bin
        file_exists_behavior: overwrite
        permissions:
          - object: /srv/app
            pattern: "*.html"
            except: [secret.html]
            type: [file]
            owner: www-data
            group: www-data
            mode: 640
            acls: ["u:bob:rw"]
            context: {user: system_u, type: httpd_sys_content_t, range: s0}
        hooks:
          BeforeInstall:
            - location: scripts/start.sh
              timeout: 30
              runas: root
            - location: /scripts/start.sh
          BeforeAllowTraffic:
            - location: scripts/start.sh
          ApplicationStop:
        """,
    )
    spec = load_appspec(root)
    assert spec.files == (FileMapping("app", "/srv/app"), FileMapping("/scripts/start.sh", "/usr/local/bin"))
    assert spec.file_exists_behavior == "OVERWRITE"
    assert spec.permissions == (
        Permission(
            object="/srv/app",
            pattern="*.html",
            except_=("secret.html",),
            type=("file",),
            owner="www-data",
            group="www-data",
            mode=0o640,
            acls=("u:bob:rw",),
            context=SELinuxContext("httpd_sys_content_t", "system_u", "s0"),
        ),
    )
    assert spec.hooks == {
        "BeforeInstall": (
            HookScript("scripts/start.sh", 30.0, "root"),
            HookScript("scripts/start.sh", 3600.0),
        ),
        "BeforeAllowTraffic": (HookScript("scripts/start.sh"),),
    }
    assert spec.scripts_for("ApplicationStop") == ()
    assert spec.source_file == "appspec.yml"
    assert not spec.seed_style_hooks
    assert spec.files[1].source_in(root) == root / "scripts/start.sh"
    assert FileMapping("/", "/x").source_in(root) == root


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("750", 0o750),
        ('"750"', 0o750),
        ('"0750"', 0o750),
        ("0750", 0o750),
        ("0644", 0o644),
        ("4755", 0o4755),
        ('"2775"', 0o2775),
        ("644", 0o644),
    ],
)
def test_mode_is_always_octal(tmp_path: Path, raw: str, expected: int) -> None:
    root = make_bundle(tmp_path, HEADER + f"permissions:\n  - object: /srv/app\n    mode: {raw}\n")
    assert load_appspec(root).permissions[0].mode == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("version: 0.0\n", "appspec.yml: os: required"),
        ("os: linux\n", "appspec.yml: version: required"),
        ("version: 1.0\nos: linux\n", "appspec.yml: version: expected 0.0"),
        ("version: 0.0\nos: windows\n", "appspec.yml: os: windows is not supported"),
        ("version: 0.0\nos: macos\n", "appspec.yml: os: expected linux"),
        (HEADER + "Resources: []\n", "appspec.yml: Resources: unknown key"),
        ("- just\n- a list\n", "appspec.yml: expected a mapping at the top level"),
        ("", "appspec.yml: is empty"),
        (HEADER + "files: app\n", "appspec.yml: files: expected a list"),
        (HEADER + "files:\n  - app\n", "appspec.yml: files[0]: expected a mapping"),
        (HEADER + "files:\n  - destination: /srv\n", "appspec.yml: files[0].source: required"),
        (HEADER + "files:\n  - source: app\n", "appspec.yml: files[0].destination: required"),
        (
            HEADER + "files:\n  - source: app\n    destination: srv\n",
            "files[0].destination: expected an absolute",
        ),
        (HEADER + "files:\n  - source: ../etc\n    destination: /srv\n", 'files[0].source: "../etc" leaves'),
        (
            HEADER + "files:\n  - source: nothere\n    destination: /srv\n",
            'files[0].source: "nothere" is not in',
        ),
        (
            HEADER + "files:\n  - source: app\n    destination: /srv\n    file_exists_behavior: RETAIN\n",
            "files[0].file_exists_behavior: belongs at the top level",
        ),
        (
            HEADER + "files:\n  - source: app\n    destination: /srv\n    mode: 644\n",
            "files[0].mode: unknown key",
        ),
        (
            HEADER + "file_exists_behavior: KEEP\n",
            "appspec.yml: file_exists_behavior: expected one of DISALLOW",
        ),
        (HEADER + "hooks: [a]\n", "appspec.yml: hooks: expected a mapping"),
        (HEADER + "hooks:\n  Install:\n    - location: scripts/start.sh\n", "hooks.Install: is reserved"),
        (HEADER + "hooks:\n  DownloadBundle:\n    - location: s.sh\n", "hooks.DownloadBundle: is reserved"),
        (HEADER + "hooks:\n  AfterInstal:\n    - location: s.sh\n", "hooks.AfterInstal: unknown event"),
        (HEADER + "hooks:\n  AfterInstall: scripts/start.sh\n", "hooks.AfterInstall: expected a list"),
        (HEADER + "hooks:\n  AfterInstall:\n    - timeout: 5\n", "hooks.AfterInstall[0].location: required"),
        (
            HEADER + "hooks:\n  AfterInstall:\n    - location: ../x.sh\n",
            'hooks.AfterInstall[0].location: "../x.sh"',
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      timeout: soon\n",
            'appspec.yml: hooks.BeforeInstall[0].timeout: expected a number of seconds > 0, got "soon"',
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      timeout: 0\n",
            "hooks.BeforeInstall[0].timeout: expected a number of seconds > 0",
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      timeout: -5\n",
            "hooks.BeforeInstall[0].timeout: expected a number",
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      runas: [a]\n",
            "hooks.BeforeInstall[0].runas: expected a string",
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      timout: 5\n",
            "hooks.BeforeInstall[0].timout: unknown key",
        ),
        (HEADER + "permissions:\n  - mode: 644\n", "appspec.yml: permissions[0].object: required"),
        (HEADER + "permissions:\n  - object: srv\n", "permissions[0].object: expected an absolute path"),
        (
            HEADER + "permissions:\n  - object: /srv\n    mode: 789\n",
            "permissions[0].mode: expected an octal mode",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    mode: u+x\n",
            "permissions[0].mode: expected an octal",
        ),
        (HEADER + "permissions:\n  - object: /srv\n    mode: 75\n", "permissions[0].mode: expected an octal"),
        (
            HEADER + "permissions:\n  - object: /srv\n    type: [socket]\n",
            "permissions[0].type: expected file",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    except: 5\n",
            "permissions[0].except: expected a list",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    acls: {a: 1}\n",
            "permissions[0].acls: expected a list",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    acls: ['u:bob:rw', 'bob:rw']\n",
            "permissions[0].acls[1]: 'bob:rw' is not an ACL entry; expected [d:]u|g|m|o:[NAME]:PERMS",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    acls: ['u:bob:rwz']\n",
            "permissions[0].acls[0]: 'u:bob:rwz': permissions must be letters from rwx- or one octal digit",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    acls: ['o:bob:r']\n",
            "permissions[0].acls[0]: 'o:bob:r': other entries take no name (o::PERMS)",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    owner: [a]\n",
            "permissions[0].owner: expected a string",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    context: {user: u}\n",
            "permissions[0].context.type: required",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    context: {type: t, role: r}\n",
            "permissions[0].context.role: not supported",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    recursive: true\n",
            "permissions[0].recursive: unknown key",
        ),
    ],
)
def test_malformed_appspec_names_the_key(tmp_path: Path, body: str, expected: str) -> None:
    problems = problems_of(make_bundle(tmp_path, body))
    assert any(expected in p for p in problems), problems


def test_bad_yaml_reports_line_and_column(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, HEADER + "hooks:\n  BeforeInstall: location: a.sh\n")
    (problem,) = problems_of(root)
    assert problem == "appspec.yml: invalid YAML at line 4, column 26: mapping values are not allowed here"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path,
        "version: 2\nos: linux\nfiles:\n  - source: app\nhooks:\n  BeforeInstall:\n"
        "    - location: s.sh\n      timeout: soon\n",
    )
    problems = problems_of(root)
    assert len(problems) == 3, problems
    assert [p.split(":")[1].strip() for p in problems] == [
        "version",
        "files[0].destination",
        "hooks.BeforeInstall[0].timeout",
    ]


def test_yaml_spelling_and_yml_preferred(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path, HEADER + "hooks:\n  AfterInstall:\n    - location: a.sh\n", name="appspec.yaml"
    )
    assert load_appspec(root).source_file == "appspec.yaml"
    assert load_appspec(root).scripts_for("AfterInstall") == (HookScript("a.sh"),)
    (root / "appspec.yml").write_text(HEADER + "hooks:\n  AfterInstall:\n    - location: b.sh\n")
    spec = load_appspec(root)
    assert spec.source_file == "appspec.yml"
    assert spec.scripts_for("AfterInstall") == (HookScript("b.sh"),)


def test_seed_style_without_appspec_finds_root_then_scripts(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path, None, files=("ApplicationStop.sh", "scripts/ApplicationStop.sh", "scripts/AfterInstall.sh")
    )
    spec = load_appspec(root)
    assert spec == AppSpec(
        hooks={
            "ApplicationStop": (HookScript("ApplicationStop.sh"),),
            "AfterInstall": (HookScript("scripts/AfterInstall.sh"),),
        },
        seed_style_hooks=True,
    )
    assert spec.files == () and spec.source_file is None
    assert spec.scripts_for("AfterInstall")[0].timeout_s == 3600
    assert check_bundle(root) == []


def test_seed_style_hooks_when_appspec_has_no_hooks(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path,
        HEADER + "files:\n  - source: app\n    destination: /srv/app\n",
        files=tuple(f"scripts/{event}.sh" for event in LIFECYCLE_EVENTS),
    )
    spec = load_appspec(root)
    assert spec.seed_style_hooks
    assert list(spec.hooks) == list(LIFECYCLE_EVENTS)
    assert spec.files == (FileMapping("app", "/srv/app"),)


def test_missing_script_fails_check_bundle_not_load(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, HEADER + "hooks:\n  ApplicationStart:\n    - location: scripts/missing.sh\n")
    assert load_appspec(root).scripts_for("ApplicationStart") == (HookScript("scripts/missing.sh"),)
    assert check_bundle(root) == [
        'appspec.yml: hooks.ApplicationStart[0].location: script "scripts/missing.sh" is not in the bundle'
    ]


def test_symlink_escapes_are_reported(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.sh").write_text("#!/bin/sh\n")
    root = make_bundle(
        tmp_path / "bundle",
        HEADER + "files:\n  - source: etc\n    destination: /srv\n"
        "hooks:\n  ApplicationStart:\n    - location: scripts/evil.sh\n",
    )
    os.symlink(outside / "evil.sh", root / "scripts/evil.sh")
    os.symlink(outside, root / "etc")
    problems = check_bundle(root)
    assert any("files[0].source" in p and "outside the bundle" in p for p in problems), problems
    assert any("hooks.ApplicationStart[0].location" in p and "outside the bundle" in p for p in problems)


def test_check_bundle_accepts_a_valid_bundle(tmp_path: Path) -> None:
    root = make_bundle(
        tmp_path,
        HEADER + "files:\n  - source: /\n    destination: /srv\nhooks:\n  ApplicationStart:\n"
        "    - location: scripts/start.sh\n      timeout: 7200\n",
    )
    assert check_bundle(root) == []
    assert load_appspec(root).scripts_for("ApplicationStart")[0].timeout_s == 7200.0
