"""Hostile appspecs: every one is refused with an AppSpecError naming the key (or the line), within the
limits (1 MiB, 20,000 values with aliases expanded, 50 levels), never another exception, never a hang.
The same parser serves a deployment (load_appspec), ``validate`` and ``publish``."""

from __future__ import annotations

import random
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3deploy.appspec import AppSpec, HookScript, inspect_bundle, load_appspec
from s3deploy.appspec.yamlsafe import _LOADERS, parse_yaml
from s3deploy.errors import AppSpecError
from s3deploy.publish import check_path
from tests.agent import cli, hook_script
from tests.test_appspec import HEADER, make_bundle, problems_of

HOOK = HEADER + "hooks:\n  BeforeInstall:\n    - location: scripts/start.sh\n"
RAW_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # a tab is harmless

BILLION_LAUGHS = (
    HEADER
    + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "files: *i\n"
)


def assert_safe_message(message: str) -> None:
    """Shown on a terminal and stored: no raw control character, short."""
    assert not RAW_CONTROL.search(message), repr(message[:300])
    assert len(message) < 1000, message[:300]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            HOOK + "      timeout: " + "9" * 400 + "\n",
            "appspec.yml: hooks.BeforeInstall[0].timeout: expected a number of seconds > 0 "
            "(at most 31536000), got a number of 400 digits",
        ),
        (
            HOOK + "      timeout: 0x" + "f" * 3000 + "\n",
            "appspec.yml: hooks.BeforeInstall[0].timeout: expected a number of seconds > 0 "
            "(at most 31536000), got a number of 3613 digits",
        ),
        (
            HOOK + "      timeout: " + "9" * 5000 + "\n",
            "appspec.yml: invalid YAML at line 6, column 16: cannot read this value: Exceeds the limit "
            "(4300 digits) for integer string conversion: value has 5000 digits",
        ),
        (
            HEADER + 'hooks:\n  BeforeInstall:\n    - location: "scripts/start.sh\\0"\n',
            "appspec.yml: hooks.BeforeInstall[0].location: must not contain control characters "
            '(found \\x00): "scripts/start.sh\\x00"',
        ),
        (
            HOOK + '      runas: "root\\0x"\n',
            "appspec.yml: hooks.BeforeInstall[0].runas: must not contain control characters "
            '(found \\x00): "root\\x00x"',
        ),
        (
            HEADER + 'files:\n  - source: app\n    destination: "/srv/\\0app"\n',
            "appspec.yml: files[0].destination: must not contain control characters (found \\x00)",
        ),
        (
            HEADER + 'permissions:\n  - object: /srv\n    owner: "www\\0data"\n',
            "appspec.yml: permissions[0].owner: must not contain control characters (found \\x00)",
        ),
        (
            HEADER + 'permissions:\n  - object: /srv\n    group: "\\e[2J"\n',
            "appspec.yml: permissions[0].group: must not contain control characters (found \\x1b)",
        ),
        (
            HEADER + 'permissions:\n  - object: /srv\n    acls: ["u:bob\\0:rw"]\n',
            "appspec.yml: permissions[0].acls[0]: must not contain control characters (found \\x00)",
        ),
        (
            HEADER + "files:\n  - source: " + "a" * 5000 + "\n    destination: /srv\n",
            "appspec.yml: files[0].source: longer than 4096 characters (5000)",
        ),
        (HEADER + "files: " + "[" * 60 + "]" * 60 + "\n", "appspec.yml: refused at line 3, column "),
        (
            HEADER + "files: 2023-99-99\n",
            "appspec.yml: invalid YAML at line 3, column 8: cannot read this value: month must be in 1..12",
        ),
        (
            HEADER + "files: &x [*x]\n",
            'appspec.yml: refused at line 3, column 12: alias "*x" is inside its own',
        ),
        (
            HEADER + "x: !!python/object/apply:os.system [id]\n",
            "appspec.yml: invalid YAML at line 3, column 4",
        ),
    ],
)
def test_each_hostile_value_is_its_own_clear_error(tmp_path: Path, body: str, expected: str) -> None:
    """Issue: a 400-digit timeout (OverflowError), a NUL in a location, runas, destination or owner
    (ValueError) and deep nesting (RecursionError) used to escape as other exceptions and strand the
    deployment. Each is now an AppSpecError naming the key (or the line), shown escaped."""
    root = make_bundle(tmp_path, body)
    problems = problems_of(root)
    assert any(p.startswith(expected) for p in problems), problems
    for problem in problems:
        assert_safe_message(problem)
    assert inspect_bundle(root).problems == problems


def test_nesting_deeper_than_the_limit_is_refused_naming_the_line(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, HEADER + "files:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 60)))
    (problem,) = problems_of(root)
    assert problem.startswith("appspec.yml: refused at line ")
    assert problem.endswith(": nested more than 50 levels deep")
    within = make_bundle(tmp_path / "ok", HEADER + "files: " + "[" * 40 + "]" * 40 + "\n")
    assert problems_of(within) == ["appspec.yml: files[0]: expected a mapping, got a list of 1"]


@pytest.mark.timeout(5)  # a hang guard only: the refusal takes milliseconds
def test_billion_laughs_is_refused_without_expanding_it(tmp_path: Path) -> None:
    """Issue: a 600-byte appspec of aliases of aliases made validation expand ~4×10⁷ items (36 s with the
    GIL held, then MemoryError). Aliases may expand to 20,000 values at most: refused while composing,
    in little memory, by load_appspec, ``validate`` and ``publish`` (one parser)."""
    assert len(BILLION_LAUGHS) < 700
    root = make_bundle(tmp_path / "bundle", BILLION_LAUGHS)
    tracemalloc.start()
    try:
        problems = problems_of(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = (
        "appspec.yml: refused at line 7, column 4: more than 20000 values once aliases (*name) are "
        'expanded; refused as a "billion laughs" document would be'
    )
    assert problems == [expected]
    assert peak < 20 * 2**20, peak
    assert check_path(root).problems == [expected]


def test_validate_and_publish_refuse_the_billion_laughs(tmp_path: Path) -> None:
    """``validate`` and ``publish`` share the parser: same refusal, exit 1, nothing uploaded."""
    root = make_bundle(tmp_path / "bundle", BILLION_LAUGHS)
    expected = (
        "appspec.yml: refused at line 7, column 4: more than 20000 values once aliases (*name) are "
        'expanded; refused as a "billion laughs" document would be'
    )
    validate = cli("validate", str(root))
    assert (validate.returncode, validate.stdout.strip()) == (1, expected), validate.stderr
    publish = cli("publish", str(root), "--bucket", "b", "--key", "k", "--dry-run")
    assert publish.returncode == 1 and expected in publish.stderr, publish.stderr


@pytest.mark.timeout(5)  # a hang guard only
def test_an_appspec_over_1_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    """Issue: a plain 3 MB appspec cost 42 s of CPU and 676 MB. At most 1 MiB is read."""
    entries = "".join(f"  - source: app\n    destination: /srv/app{i:07d}\n" for i in range(70_000))
    root = make_bundle(tmp_path, HEADER + "files:\n" + entries)
    assert (root / "appspec.yml").stat().st_size > 3_000_000
    expected = (
        "appspec.yml: larger than 1048576 bytes (1 MiB), the most an appspec may be; an appspec lists "
        "files, permissions and hooks in a few KB"
    )
    assert problems_of(root) == [expected]
    assert inspect_bundle(root).problems == [expected]
    many = make_bundle(tmp_path / "many", HEADER + "files:\n" + "  - {}\n" * 20_000)
    assert problems_of(many) == [
        "appspec.yml: refused at line 19997, column 5: more than 20000 values; an appspec needs a few hundred"
    ]


def test_a_key_twice_in_one_mapping_is_refused_naming_key_and_lines(tmp_path: Path) -> None:
    """Issue: two ``hooks:`` blocks silently kept the last (YAML's rule), so half the hooks never ran."""
    root = make_bundle(
        tmp_path,
        HOOK + "files:\n  - source: app\n    destination: /srv\nhooks:\n  AfterInstall:\n"
        "    - location: scripts/start.sh\n",
    )
    assert problems_of(root) == [
        'appspec.yml: refused at line 9, column 1: key "hooks" appears twice in one mapping '
        "(first at line 3); YAML keeps only the last, so merge them into one"
    ]
    nested = make_bundle(tmp_path / "n", HOOK + "      timeout: 5\n      timeout: 6\n")
    assert problems_of(nested)[0].startswith(
        'appspec.yml: refused at line 7, column 7: key "timeout" appears'
    )


def test_aliases_within_the_limits_still_work(tmp_path: Path) -> None:
    """Anchors and aliases are plain YAML (a list of hooks shared by two events, ``<<`` merges): kept."""
    root = make_bundle(
        tmp_path,
        HEADER + "hooks:\n  AfterInstall: &start\n    - location: scripts/start.sh\n      timeout: 30\n"
        "  ApplicationStart: *start\n"
        "permissions:\n  - &web {object: /srv/app, owner: www-data, mode: 640}\n"
        "  - <<: *web\n    mode: 750\n",
    )
    spec = load_appspec(root)
    assert (
        spec.hooks["AfterInstall"] == spec.hooks["ApplicationStart"] == (HookScript("scripts/start.sh", 30),)
    )
    assert [(p.owner, p.mode) for p in spec.permissions] == [("www-data", 0o640), ("www-data", 0o750)]


@pytest.mark.parametrize("loader", _LOADERS, ids=lambda loader: loader.__name__)
def test_both_yaml_parsers_apply_the_same_limits(loader: Any) -> None:
    """libyaml scans when PyYAML has it; PyYAML's own scanner otherwise: the limits are the composer's."""
    for text, message in [
        (BILLION_LAUGHS, "more than 20000 values once aliases"),
        ("- a\n" * 20_001, "more than 20000 values; an appspec needs a few hundred"),
        ("a: " + "[" * 60 + "]" * 60, "nested more than 50 levels deep"),
        ("a: &x [*x]", "is inside its own anchor"),
        ("a: 1\na: 2", 'key "a" appears twice'),
    ]:
        with pytest.raises(AppSpecError, match=re.escape(message)):
            parse_yaml(text, "appspec.yml", loader)
    assert parse_yaml("a: 0750\nb: [1, x]", "appspec.yml", loader) == {"a": 0o750, "b": [1, "x"]}


# ------------------------------------------------------------------------------------------- fuzzing
SCALARS: list[Any] = [
    "", " ", "\x00", "a\x00b", "\x1b[31mred", "\x07", "\u202eevil", "\ud800", "💥", "-rf", "--reference=/x",
    "9" * 400, 10**400, -(10**30), 0, -1, 1.5, float("inf"), float("nan"), True, None, "~", "null",
    "2023-01-01", "12:30:45", "0o17", "0750", "07", "12", "30s", "5 minutes", "s30", "../../etc", "/",
    "/" * 5000,
    "a" * 5000, "scripts/start.sh", "/srv/app", "app", "s0-s1:c0.c1023", "s0:c1024", "s0:c1,c1", "u:bob:rw",
    "d:g::7", "bob:rw", "rwx", "OVERWRITE", "overwrite", "KEEP", "linux", "windows", "0.0", "0",
    b"\x00\xff", [], {}, ["a", 1], {"a": None},
]  # fmt: skip
KEYS = {
    "": ["version", "os", "files", "permissions", "hooks", "file_exists_behavior", "Resources", 1, None],
    "files": ["source", "destination", "overwrite", "mode", 0],
    "hooks": ["location", "timeout", "runas", "sudo", "x"],
    "permissions": [
        "object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context", "recursive",
    ],
    "context": ["name", "user", "type", "range", "role"],
}  # fmt: skip
EVENTS = [
    "BeforeInstall",
    "AfterInstall",
    "ApplicationStop",
    "Install",
    "AfterInstal",
    "BeforeAllowTraffic",
    7,
]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return rng.choice(SCALARS)
    if roll < 0.8:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS["permissions"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _entry(rng: random.Random, section: str) -> Any:
    if rng.random() < 0.1:
        return _value(rng, 2)
    entry = {rng.choice(KEYS[section]): _value(rng, 3) for _ in range(rng.randint(0, 4))}
    if section == "permissions" and rng.random() < 0.4:
        entry["context"] = {rng.choice(KEYS["context"]): _value(rng, 3) for _ in range(rng.randint(0, 4))}
    return entry


def _document(rng: random.Random) -> Any:
    doc: dict[Any, Any] = {"version": 0.0, "os": "linux"} if rng.random() < 0.8 else {}
    for key in rng.sample(KEYS[""], rng.randint(0, 4)):
        doc[key] = _value(rng, 1)
    if rng.random() < 0.7:
        doc["files"] = [_entry(rng, "files") for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.7:
        doc["permissions"] = [_entry(rng, "permissions") for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.7:
        doc["hooks"] = {
            rng.choice(EVENTS): [_entry(rng, "hooks") for _ in range(rng.randint(0, 2))]
            for _ in range(rng.randint(0, 3))
        }
    return doc


def _mutate(rng: random.Random, text: str) -> str:
    pieces = [":", "-", " ", "\n", "&a ", "*a", "[", "]", "{", "}", '"', "'", "\\", "\t", "!!", "%", "? ",
              "<<: ", "\\0", "\\x1b", "\\ud800", "|", ">", "#", ",", "0x", "9" * 50, "&b [*b]",
              "- "]  # fmt: skip
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(chars) + 1)
        if rng.random() < 0.5 and chars:
            del chars[min(at, len(chars) - 1)]
        else:
            chars[at:at] = rng.choice(pieces)
    return "".join(chars)


def test_fuzzed_appspecs_give_an_appspec_or_an_appspec_error(tmp_path: Path) -> None:
    """Random documents of appspec keys with hostile values, and random edits of valid appspec text: every
    outcome is an AppSpec or an AppSpecError (for load_appspec, and for validate's inspect_bundle), and
    every message is escaped and short. Seeded, so a failure reproduces."""
    root = make_bundle(tmp_path, None, files=("scripts/a.sh",))
    (root / "scripts/start.sh").write_text(hook_script("true"))
    base = (Path(__file__).resolve().parent.parent / "examples" / "bundle" / "appspec.yml").read_text()
    rng = random.Random(20240901)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(600):
        if i % 3 == 0:
            text = _mutate(rng, base)
        else:
            text = yaml.safe_dump(_document(rng), allow_unicode=rng.random() < 0.5)
        (root / "appspec.yml").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            spec = load_appspec(root)
        except AppSpecError as e:
            outcomes["refused"] += 1
            assert e.problems, text
            for problem in e.problems:
                assert_safe_message(problem)
        else:
            outcomes["ok"] += 1
            assert isinstance(spec, AppSpec)
            for warning in spec.warnings:
                assert_safe_message(warning)
        check = inspect_bundle(root)
        for line in check.problems + check.warnings + check.notes:
            assert_safe_message(line)
    assert outcomes["ok"] > 20 and outcomes["refused"] > 200, outcomes
