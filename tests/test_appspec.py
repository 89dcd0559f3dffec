"""appspec.yml parsing and validation: every malformed input names its key; what CodeDeploy's agent accepts
is accepted (with a warning where it ignores or reads loosely); seed-style discovery.

Hostile appspecs (limits, fuzzing) are in test_appspec_hostile.py."""

from __future__ import annotations

import logging
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
    inspect_bundle,
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
    assert spec.hooks.get("ApplicationStop", ()) == ()
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
            "appspec.yml: hooks.BeforeInstall[0].timeout: expected a number of seconds > 0 "
            '(at most 31536000), got "soon"',
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
    ],
)
def test_malformed_appspec_names_the_key(tmp_path: Path, body: str, expected: str) -> None:
    problems = problems_of(make_bundle(tmp_path, body))
    assert any(expected in p for p in problems), problems


def test_bad_yaml_reports_line_and_column(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, HEADER + "hooks:\n  BeforeInstall: location: a.sh\n")
    (problem,) = problems_of(root)
    # libyaml says "... not allowed in this context", PyYAML alone "... not allowed here"
    assert problem.startswith(
        "appspec.yml: invalid YAML at line 4, column 26: mapping values are not allowed"
    )


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
    assert load_appspec(root).hooks.get("AfterInstall", ()) == (HookScript("a.sh"),)
    (root / "appspec.yml").write_text(HEADER + "hooks:\n  AfterInstall:\n    - location: b.sh\n")
    spec = load_appspec(root)
    assert spec.source_file == "appspec.yml"
    assert spec.hooks.get("AfterInstall", ()) == (HookScript("b.sh"),)


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
    assert spec.hooks.get("AfterInstall", ())[0].timeout_s == 3600
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
    assert load_appspec(root).hooks.get("ApplicationStart", ()) == (HookScript("scripts/missing.sh"),)
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
    assert load_appspec(root).hooks.get("ApplicationStart", ())[0].timeout_s == 7200.0


# --------------------------------------------------------------------------- CodeDeploy compatibility
def test_version_quoted_and_lower_case_file_exists_behavior_are_accepted(tmp_path: Path) -> None:
    """SPEC §7 (deliberate differences): a quoted ``version: "0.0"`` and a lower-case
    ``file_exists_behavior`` are accepted. The agent compares ``[0.0].include?(version)``, so it refuses
    the string "0.0" (and takes ``0``, as 0.0 == 0 in Ruby)."""
    for version in ('"0.0"', "'0.0'", "0.0", "0"):
        root = make_bundle(tmp_path / version.strip("'\""), f"version: {version}\nos: linux\n")
        assert load_appspec(root).version == "0.0"
    for spelled, meant in (("retain", "RETAIN"), ("Overwrite", "OVERWRITE"), ("disallow", "DISALLOW")):
        root = make_bundle(tmp_path / spelled, HEADER + f"file_exists_behavior: {spelled}\n")
        assert load_appspec(root).file_exists_behavior == meant


@pytest.mark.parametrize(
    ("body", "warning"),
    [
        (
            HEADER + "Resources: []\n",
            "appspec.yml: Resources: unknown key, ignored (as CodeDeploy ignores it); "
            "expected one of version,",
        ),
        (
            HEADER + "file_exist_behavior: RETAIN\n",
            "appspec.yml: file_exist_behavior: unknown key, ignored (as CodeDeploy ignores it); did you mean "
            '"file_exists_behavior"?',
        ),
        (
            HEADER + "files:\n  - source: app\n    destination: /srv\n    overwrite: true\n",
            "appspec.yml: files[0].overwrite: ignored, as CodeDeploy ignores it; to replace files already "
            "there, set file_exists_behavior: OVERWRITE at the top level",
        ),
        (
            HEADER + "files:\n  - source: app\n    destination: /srv\n    file_exists_behavior: RETAIN\n",
            "appspec.yml: files[0].file_exists_behavior: ignored here, as CodeDeploy ignores it: "
            "it belongs at the top level",
        ),
        (
            HEADER + "files:\n  - source: app\n    destination: /srv\n    mode: 644\n",
            "appspec.yml: files[0].mode: unknown key, ignored",
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      sudo: true\n",
            "appspec.yml: hooks.BeforeInstall[0].sudo: ignored: hooks run as root already",
        ),
        (
            HEADER + "hooks:\n  BeforeInstall:\n    - location: s.sh\n      timout: 5\n",
            "appspec.yml: hooks.BeforeInstall[0].timout: unknown key, ignored (as CodeDeploy ignores "
            'it); did you mean "timeout"?',
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    recursive: true\n",
            "appspec.yml: permissions[0].recursive: unknown key, ignored",
        ),
        (
            HEADER + "permissions:\n  - object: /srv\n    context: {type: t, role: r}\n",
            "appspec.yml: permissions[0].context.role: unknown key, ignored",
        ),
    ],
)
def test_keys_codedeploy_ignores_are_warnings_not_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str, warning: str
) -> None:
    """The agent reads only the keys it knows and ignores the rest (application_specification.rb):

        files << FileInfo.new(mapping['source'], mapping['destination'])
        ScriptInfo.new(script['location'].to_s.strip, {:runas => ..., :sudo => script['sudo'],
                                                       :timeout => script['timeout']})
        @user = context['name'] ... @type = context['type'] ... @range = ...

    and ``sudo`` only prefixes the command with ``sudo`` (linux_util.rb ``prepare_script_command``), a no-op
    for an agent running as root. So these load, with a warning that the deployment logs and ``validate``
    lists (exit 0)."""
    root = make_bundle(tmp_path, body)
    with caplog.at_level(logging.WARNING, logger="s3deploy.appspec"):
        spec = load_appspec(root)
    assert len(spec.warnings) == 1 and spec.warnings[0].startswith(warning), spec.warnings
    assert [r.getMessage() for r in caplog.records] == list(spec.warnings)
    check = inspect_bundle(root)
    assert check.warnings == list(spec.warnings)
    assert not [p for p in check.problems if "scripts" not in p and "s.sh" not in p], check.problems


@pytest.mark.parametrize(
    ("raw", "mode", "read_as"),
    [
        ("12", 0o012, "012"),
        ('"12"', 0o012, "012"),
        ("7", 0o007, "007"),
        ("0", 0, "000"),
        ("75", 0o075, "075"),
    ],
)
def test_short_modes_are_padded_as_the_agent_pads_them(
    tmp_path: Path, raw: str, mode: int, read_as: str
) -> None:
    """mode_info.rb: ``mode = mode.to_s; while mode.length < 3 do mode = "0" + mode; end`` — so ``mode: 12``
    means 012. Accepted the same way, with a warning (the author probably meant something else)."""
    root = make_bundle(tmp_path, HEADER + f"permissions:\n  - object: /srv/app\n    mode: {raw}\n")
    spec = load_appspec(root)
    assert spec.permissions[0].mode == mode
    assert spec.warnings == (
        f"appspec.yml: permissions[0].mode: {raw.strip(chr(34))} read as {read_as}, as the CodeDeploy agent "
        f'pads it; write "{read_as}"',
    )


@pytest.mark.parametrize(
    ("raw", "seconds"), [("30s", 30.0), ('"90 seconds"', 90.0), ("5m", 5.0), ('" 12abc"', 12.0)]
)
def test_timeouts_that_start_with_a_number_are_read_as_the_agent_reads_them(
    tmp_path: Path, raw: str, seconds: float
) -> None:
    """script_info.rb: ``@timeout = opts[:timeout] || 3600; @timeout = @timeout.to_i`` — Ruby's ``to_i``
    reads the whole number a string starts with ("30s" → 30, "5m" → 5). Accepted the same way, with a
    warning; text that does not start with a number stays an error (the agent: 0, refused)."""
    root = make_bundle(
        tmp_path, HEADER + f"hooks:\n  AfterInstall:\n    - location: s.sh\n      timeout: {raw}\n"
    )
    spec = load_appspec(root)
    assert spec.hooks["AfterInstall"] == (HookScript("s.sh", seconds),)
    (warning,) = spec.warnings
    assert warning.startswith("appspec.yml: hooks.AfterInstall[0].timeout: ")
    assert f"read as {seconds:.0f} seconds, as the CodeDeploy agent reads it" in warning
    for refused in ("soon", "0s", "-5s", "s30"):
        bad = make_bundle(
            tmp_path / refused,
            HEADER + f"hooks:\n  AfterInstall:\n    - location: s.sh\n      timeout: {refused}\n",
        )
        assert problems_of(bad)[0].startswith("appspec.yml: hooks.AfterInstall[0].timeout: expected a number")


def test_selinux_context_takes_name_as_the_agent_does_and_user_as_the_docs_show(tmp_path: Path) -> None:
    """context_info.rb: ``@user = context['name']`` (the agent reads ``name``; AWS's docs show ``user``).
    Both are accepted; when both are there and differ, ``name`` wins, as for the agent, with a warning."""
    for key in ("name", "user"):
        root = make_bundle(
            tmp_path / key,
            HEADER + f"permissions:\n  - object: /srv\n    context: {{{key}: "
            "user_u, type: unconfined_t, range: 's3-s5:c0.c7,c13'}\n",
        )
        spec = load_appspec(root)
        assert spec.permissions[0].context == SELinuxContext("unconfined_t", "user_u", "s3-s5:c0.c7,c13")
        assert spec.warnings == ()
    both = make_bundle(
        tmp_path / "both",
        HEADER + "permissions:\n  - object: /srv\n    context: {name: a_u, user: b_u, type: t}\n",
    )
    spec = load_appspec(both)
    assert spec.permissions[0].context == SELinuxContext("t", "a_u")
    assert spec.warnings == (
        'appspec.yml: permissions[0].context.user: ignored: name "a_u" is the SELinux user '
        "(the agent reads name only)",
    )
    low_high = make_bundle(
        tmp_path / "lh",
        HEADER + "permissions:\n  - object: /srv\n    context:\n"
        "      type: t\n      range: {low: s0, high: 's0:c0.c1023'}\n",
    )
    assert load_appspec(low_high).permissions[0].context == SELinuxContext("t", None, "s0-s0:c0.c1023")


AGENT_RANGES_ACCEPTED = [
    "s5",
    "s3-s5:c0.c7,c13",
    "s0:c0.c1,c15,c7.c9",
    "s0-s0:c0.c1023",
    "s0:c0,",
    "s12:c1023",
]
AGENT_RANGES_REFUSED = {
    "s3-s2:c0": 'high sensitivity "s2" is below the low one',
    "s3-:c0": 'part "s3-" is incomplete',
    ":c0": 'part ":c0" is incomplete',
    "s0:": 'part "s0:" is incomplete',
    "s": 'sensitivity "s" is not s followed by a number',
    "s0-s-1": 'sensitivity "s-1" is not s followed by a number',
    "sd3": 'sensitivity "sd3" is not s followed by a number',
    "d3": 'sensitivity "d3" is not s followed by a number',
    "s0:c2.c1": 'category range "c2.c1" is not in order',
    "s0:c2.": 'part "c2." is incomplete',
    "s0:c": 'category "c" is not c followed by a number',
    "s0:c-1": 'category "c-1" is not c followed by a number',
    "s0:c1024": 'category "c1024" is above c1023',
    "s0:c1,c1": 'category "c1" appears twice',
    "s0:c0.c3,c2": 'category "c2" appears twice',
    "s0:,c1": "a category is empty (a leading or doubled comma)",
    "s0-s1-s2": 'sensitivity "s1-s2" is not s followed by a number',
}


@pytest.mark.parametrize("value", [*AGENT_RANGES_ACCEPTED, *AGENT_RANGES_REFUSED])
def test_selinux_ranges_are_checked_as_the_agent_checks_them(tmp_path: Path, value: str) -> None:
    """range_info.rb, before anything is installed (here, so ``validate`` and a deployment refuse it
    before Install; chcon used to find it after the files had landed):

        parts = ensure_parts(range, ":"); sensitivity_parts = ensure_parts(parts[0], "-")
        if @high_sensitivity < @low_sensitivity -> raise
        getSensitivityNumber: sensitivity.length < 2 || !sensitivity.start_with?('s') || a non-digit -> raise
        get_category_number: ... || level > 1023 -> raise "invalid category"
        get_category_range: if (high < low) -> raise "invalid category range"
        if !temp_categories.sort!.uniq!.nil? -> raise "duplicate categories"

    (the cases are the agent's own test cases, application_specification_test.rb, plus duplicates)."""
    root = make_bundle(
        tmp_path, HEADER + f"permissions:\n  - object: /srv\n    context: {{type: t, range: '{value}'}}\n"
    )
    if value in AGENT_RANGES_ACCEPTED:
        assert load_appspec(root).permissions[0].context == SELinuxContext("t", None, value)
        return
    (problem,) = problems_of(root)
    assert problem == (
        f'appspec.yml: permissions[0].context.range: {AGENT_RANGES_REFUSED[value]} in "{value}"; expected '
        "s<N>[-s<N>][:c<N>[.c<N>],...] (the agent's form)"
    )
    assert inspect_bundle(root).problems == [problem]


def test_validate_of_a_hooks_only_bundle_says_install_copies_nothing(tmp_path: Path) -> None:
    """The agent's Install copies what ``files`` lists and nothing else (installer.rb):

        application_specification.files.each do |fi| ... generate_directory_copy / generate_normal_copy

    so an appspec with hooks and no ``files`` (the agent's own sample bundle) installs nothing and runs its
    hooks. ``validate`` says so (a note: the bundle is fine), and what a section's destination changes."""
    root = make_bundle(tmp_path, HEADER + "hooks:\n  AfterInstall:\n    - location: scripts/start.sh\n")
    check = inspect_bundle(root)
    assert (check.problems, check.warnings) == ([], [])
    assert check.notes == [
        "appspec.yml: files: none, so Install copies nothing and the hooks run on their own; in a section "
        "with a destination, the whole bundle is installed there instead"
    ]
    with_files = make_bundle(tmp_path / "f", HEADER + "files:\n  - source: app\n    destination: /srv\n")
    assert inspect_bundle(with_files).notes == []
