"""config.ini loading: the seed format, [DEFAULT] inheritance, every validation, config discovery."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from s3deploy.config import DEFAULT_SECTION, Config, Section, find_config_path, keys, load_config, loader
from s3deploy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.ini"

SEED = """\
[Settings]
s3_bucket = codedeploy-202107
target_file_key = business-services-test.zip
profile_name = 1tiklahost
last_fetch_time = 2023-07-30 19:41:09+0000
installation_in_progress = false
"""


def write(tmp_path: Path, text: str, name: str = "config.ini") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def production(tmp_path: Path, extra: str) -> Path:
    """A valid [Production] section plus ``extra`` lines."""
    return write(tmp_path, f"[Production]\ns3_bucket = bucket\ntarget_file_key = app.zip\n{extra}\n")


def test_seed_loads_with_exactly_its_values(tmp_path: Path) -> None:
    path = write(tmp_path, SEED)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert DEFAULT_SECTION == "Settings"
    assert list(cfg.sections) == ["Settings"]
    assert cfg.path == path
    assert cfg.section("Settings") == Section(
        name="Settings",
        s3_bucket="codedeploy-202107",
        target_file_key="business-services-test.zip",
        profile_name="1tiklahost",
        last_fetch_time=datetime(2023, 7, 30, 19, 41, 9, tzinfo=UTC),
    )
    # defaults of everything the seed does not set
    s = cfg.sections["Settings"]
    assert (s.poll_interval_s, s.deployment_timeout_s, s.keep_revisions) == (60.0, 600.0, 5)
    assert s.keep_history == 1000
    assert (s.auto_rollback, s.ignore_application_stop_failures) == (True, False)
    assert (s.max_files, s.max_unpacked_bytes) == (200_000, 10 * 1024**3)
    assert (s.region, s.endpoint_url, s.destination) == (None, None, None)


def test_example_config_loads_with_three_sections_seed_first(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE)
    assert list(cfg.sections) == ["Settings", "Production", "Staging"]
    seed = load_config(write(tmp_path, SEED))
    assert cfg.sections["Settings"] == seed.sections["Settings"]
    staging = cfg.sections["Staging"]
    assert staging.endpoint_url is not None and staging.endpoint_url.startswith("http")
    assert staging.poll_interval_s == 15.0 and staging.deployment_timeout_s == 900.0
    # every known key is documented in the example
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in [*keys.KEYS, "installation_in_progress"]:
        assert key in text, key


def test_percent_signs_are_plain_text(tmp_path: Path) -> None:
    path = production(tmp_path, "profile_name = 100%%deploy%(x)s")
    section = load_config(path).section("Production")
    assert section.profile_name == "100%%deploy%(x)s"


def test_default_values_are_inherited_and_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [DEFAULT]
        s3_bucket = shared-bucket
        profile_name = deployer
        poll_interval = 5

        [Production]
        target_file_key = prod.zip
        poll_interval = 30

        [Staging]
        target_file_key = staging.zip
        profile_name =
        """,
    )
    cfg = load_config(path)
    assert list(cfg.sections) == ["Production", "Staging"]  # [DEFAULT] is not an environment
    prod, staging = cfg.section("Production"), cfg.section("Staging")
    assert (prod.s3_bucket, prod.profile_name, prod.poll_interval_s) == ("shared-bucket", "deployer", 30.0)
    # an empty value cancels the inherited one: the default credential chain
    assert (staging.s3_bucket, staging.profile_name, staging.poll_interval_s) == ("shared-bucket", None, 5.0)


def test_only_a_default_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\ns3_bucket = b\ntarget_file_key = k\n")
    assert f"{path}: no sections" in config_error(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert "no sections" in config_error(path)


def test_bad_default_value_is_reported_once_under_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [DEFAULT]
        s3_bucket = not/a/bucket
        [A]
        target_file_key = a.zip
        [B]
        target_file_key = b.zip
        """,
    )
    message = config_error(path)
    assert message.splitlines() == [message.splitlines()[0]]  # one problem, not one per section
    assert f"{path} [DEFAULT] s3_bucket:" in message
    assert "missing" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("s3_bucket", "my bucket"),
        ("s3_bucket", "s3://bucket/app.zip"),
        ("s3_bucket", "a" * 256),
        ("target_file_key", "/app.zip"),
        ("region", "EU-West-1"),
        ("region", "eu_west_1"),
        ("endpoint_url", "localhost:9000"),
        ("endpoint_url", "ftp://host"),
        ("endpoint_url", "http://"),
        ("endpoint_url", "http://host:99999"),
        ("endpoint_url", "http://user:secret@host:9000"),
        ("endpoint_url", "http://host/?x=1"),
        ("poll_interval", "fast"),
        ("poll_interval", "0"),
        ("poll_interval", "-5"),
        ("poll_interval", "nan"),
        ("poll_interval", "inf"),
        ("poll_interval", "5 minutes"),
        ("deployment_timeout", "0"),
        ("deployment_timeout", "ten"),
        ("destination", "srv/app"),
        ("destination", "~/app"),
        ("keep_revisions", "0"),
        ("keep_revisions", "2.5"),
        ("keep_revisions", "-1"),
        ("keep_history", "0"),
        ("keep_history", "all"),
        ("max_files", "0"),
        ("max_files", "many"),
        ("max_unpacked_bytes", "0"),
        ("max_unpacked_bytes", "10XB"),
        ("max_unpacked_bytes", "1.5"),
        ("max_unpacked_bytes", "-1G"),
        ("auto_rollback", "maybe"),
        ("ignore_application_stop_failures", "2"),
        ("last_fetch_time", "yesterday"),
        ("last_fetch_time", "30/07/2023 19:41"),
    ],
)
def test_bad_value_names_file_section_key_and_value(tmp_path: Path, key: str, value: str) -> None:
    body = {"s3_bucket": "bucket", "target_file_key": "app.zip", key: value}
    path = write(tmp_path, "[Production]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()))
    message = config_error(path)
    assert message.startswith(f"{path} [Production] {key}: expected ")
    assert f'got "{value}"' in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("s3_bucket", "Legacy_Bucket.v2", "s3_bucket", "Legacy_Bucket.v2"),
        ("target_file_key", "builds/app v1 #2.zip", "target_file_key", "builds/app v1 #2.zip"),
        ("region", "eu-west-1", "region", "eu-west-1"),
        ("endpoint_url", "http://127.0.0.1:8333", "endpoint_url", "http://127.0.0.1:8333"),
        ("endpoint_url", "https://s3.example.test/prefix", "endpoint_url", "https://s3.example.test/prefix"),
        ("poll_interval", "0.1", "poll_interval_s", 0.1),
        ("poll_interval", "500ms", "poll_interval_s", 0.5),
        ("poll_interval", "30s", "poll_interval_s", 30.0),
        ("poll_interval", "5m", "poll_interval_s", 300.0),
        ("deployment_timeout", "1h", "deployment_timeout_s", 3600.0),
        ("deployment_timeout", "90", "deployment_timeout_s", 90.0),
        ("destination", "/srv/app/", "destination", Path("/srv/app")),
        ("keep_revisions", "1", "keep_revisions", 1),
        ("keep_history", "50", "keep_history", 50),
        ("max_files", "200_000", "max_files", 200_000),
        ("max_unpacked_bytes", "1024", "max_unpacked_bytes", 1024),
        ("max_unpacked_bytes", "512MiB", "max_unpacked_bytes", 512 * 1024**2),
        ("max_unpacked_bytes", "10GiB", "max_unpacked_bytes", 10 * 1024**3),
        ("max_unpacked_bytes", "1G", "max_unpacked_bytes", 1024**3),
        ("max_unpacked_bytes", "64 kb", "max_unpacked_bytes", 64 * 1024),
        ("max_unpacked_bytes", "1.5T", "max_unpacked_bytes", 3 * 1024**4 // 2),
        ("auto_rollback", "no", "auto_rollback", False),
        ("auto_rollback", "OFF", "auto_rollback", False),
        ("ignore_application_stop_failures", "1", "ignore_application_stop_failures", True),
        ("ignore_application_stop_failures", "Yes", "ignore_application_stop_failures", True),
        (
            "last_fetch_time",
            "2023-07-30T19:41:09Z",
            "last_fetch_time",
            datetime(2023, 7, 30, 19, 41, 9, tzinfo=UTC),
        ),
        (
            "last_fetch_time",
            "2023-07-30T21:41:09+02:00",
            "last_fetch_time",
            datetime(2023, 7, 30, 19, 41, 9, tzinfo=UTC),
        ),
        (
            "last_fetch_time",
            "2023-07-30 19:41:09",
            "last_fetch_time",
            datetime(2023, 7, 30, 19, 41, 9, tzinfo=UTC),
        ),
        ("installation_in_progress", "who knows", None, None),
    ],
)
def test_good_values_parse(tmp_path: Path, key: str, value: str, field: str | None, expected: object) -> None:
    body = {"s3_bucket": "bucket", "target_file_key": "app.zip", key: value}
    path = write(tmp_path, "[Production]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()))
    section = load_config(path).section("Production")
    if field is not None:
        assert getattr(section, field) == expected
        if isinstance(expected, datetime):
            assert section.last_fetch_time is not None and section.last_fetch_time.utcoffset() is not None
            assert section.last_fetch_time.tzinfo == UTC


def test_empty_optional_value_means_default(tmp_path: Path) -> None:
    keys = ["profile_name", "region", "endpoint_url", "poll_interval", "destination", "max_unpacked_bytes"]
    path = production(tmp_path, "\n".join(f"{k} =" for k in keys))
    section = load_config(path).section("Production")
    assert section.profile_name is None and section.region is None and section.destination is None
    assert section.poll_interval_s == 60.0 and section.max_unpacked_bytes == 10 * 1024**3


@pytest.mark.parametrize("key", ["s3_bucket", "target_file_key"])
def test_required_key_missing_or_empty(tmp_path: Path, key: str) -> None:
    other = "target_file_key = app.zip" if key == "s3_bucket" else "s3_bucket = bucket"
    missing = write(tmp_path, f"[Production]\n{other}\n")
    assert (
        config_error(missing)
        == f"{missing} [Production] {key}: missing; expected {keys.KEYS[key].what} (required)"
    )
    empty = write(tmp_path, f"[Production]\n{other}\n{key} =\n", name="empty.ini")
    assert config_error(empty).startswith(f"{empty} [Production] {key}: expected ")
    assert config_error(empty).endswith('got ""')


def test_leading_slash_key_says_how_to_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "[Production]\ns3_bucket = b\ntarget_file_key = /app.zip\n")
    assert "remove the leading /" in config_error(path)


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = production(tmp_path, "poll_intervall = 5\nzzz = 1")
    lines = config_error(path).splitlines()
    assert lines[0] == f'{path} [Production] poll_intervall: unknown key; did you mean "poll_interval"?'
    assert lines[1].startswith(f"{path} [Production] zzz: unknown key; expected one of: s3_bucket,")


def test_unknown_key_in_default_is_reported_under_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nprofile = p\n" + SEED)
    assert config_error(path) == f'{path} [DEFAULT] profile: unknown key; did you mean "profile_name"?'


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [Production]
        s3_bucket = bad bucket
        poll_interval = soon
        keep_revision = 3
        [Staging]
        s3_bucket = ok-bucket
        target_file_key = s.zip
        auto_rollback = perhaps
        [Good]
        s3_bucket = ok-bucket
        target_file_key = g.zip
        """,
    )
    lines = config_error(path).splitlines()
    key_what = keys.KEYS["target_file_key"].what
    assert lines == [
        f'{path} [Production] s3_bucket: expected {keys.KEYS["s3_bucket"].what}, got "bad bucket"',
        f'{path} [Production] poll_interval: expected {keys.SECONDS}, got "soon"',
        f'{path} [Production] keep_revision: unknown key; did you mean "keep_revisions"?',
        f"{path} [Production] target_file_key: missing; expected {key_what} (required)",
        f'{path} [Staging] auto_rollback: expected {keys.BOOL}, got "perhaps"',
    ]


def test_inline_comment_gets_a_hint(tmp_path: Path) -> None:
    path = production(tmp_path, "poll_interval = 30  # seconds")
    assert "comments must be on their own line" in config_error(path)


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", " padded", "x" * 101])
def test_unsafe_section_names_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"[{name}]\ns3_bucket = b\ntarget_file_key = k\n")
    assert config_error(path).startswith(f"{path} [{name}]: expected a section name")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SEED + "[Settings]\ns3_bucket = x\n", "line 7: section [Settings] appears twice"),
        (SEED + "s3_bucket = other\n", "line 7 [Settings] s3_bucket: key appears twice"),
        (
            "s3_bucket = b\n" + SEED,
            'line 1: expected a section header like [Settings] before any key, got "s3_bucket = b"',
        ),
        (SEED + "just some words\n", 'line 7: expected "key = value" or [section], got "just some words"'),
    ],
)
def test_ini_syntax_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(str(path))
    assert expected in message


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    assert config_error(missing) == f"{missing}: config file not found"
    assert config_error(tmp_path).startswith(f"{tmp_path}: cannot read config file")
    binary = tmp_path / "binary.ini"
    binary.write_bytes(b"[Settings]\ns3_bucket = \xff\xfe\n")
    assert config_error(binary).startswith(f"{binary}: not a UTF-8 text file")


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.ini"
    path.write_bytes(b"\xef\xbb\xbf" + SEED.encode())
    assert list(load_config(path).sections) == ["Settings"]


def test_missing_section_names_the_ones_there_are(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE)
    with pytest.raises(ConfigError) as info:
        cfg.section("Prod")
    assert str(info.value) == f"{EXAMPLE}: no section [Prod]; sections: Settings, Production, Staging"


# --- find_config_path --------------------------------------------------------------------------------


@pytest.fixture
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the /etc fallback at a file that does not exist (yet) and run in an empty folder."""
    system = tmp_path / "etc" / "config.ini"
    monkeypatch.setattr(loader, "SYSTEM_CONFIG_PATH", system)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return system


def test_find_config_path_order(tmp_path: Path, no_system_config: Path) -> None:
    flag = write(tmp_path, SEED, "flag.ini")
    from_env = write(tmp_path, SEED, "env.ini")
    env = {"S3DEPLOY_CONFIG": str(from_env)}

    with pytest.raises(ConfigError) as info:
        find_config_path(None, env={})
    assert str(no_system_config) in str(info.value) and "config.ini" in str(info.value)
    assert "S3DEPLOY_CONFIG" in str(info.value)

    no_system_config.parent.mkdir()
    no_system_config.write_text(SEED)
    assert find_config_path(None, env={}) == no_system_config

    Path("config.ini").write_text(SEED)
    assert find_config_path(None, env={}) == Path("config.ini")  # relative, as the operator sees it
    assert find_config_path(None, env={"S3DEPLOY_CONFIG": ""}) == Path("config.ini")

    assert find_config_path(None, env=env) == from_env
    assert find_config_path(str(flag), env=env) == flag
    assert find_config_path(flag, env=env) == flag


def test_find_config_path_uses_the_process_environment(
    tmp_path: Path, no_system_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write(tmp_path, SEED, "env.ini")
    monkeypatch.setenv("S3DEPLOY_CONFIG", str(from_env))
    assert find_config_path(None) == from_env


def test_named_config_that_does_not_exist_is_an_error_not_a_fallback(
    tmp_path: Path, no_system_config: Path
) -> None:
    Path("config.ini").write_text(SEED)  # would be found by the search, but must not be used
    with pytest.raises(ConfigError, match="flag.ini: config file given with --config does not exist"):
        find_config_path(tmp_path / "flag.ini", env={})
    with pytest.raises(ConfigError, match=r"env.ini: config file from \$S3DEPLOY_CONFIG does not exist"):
        find_config_path(None, env={"S3DEPLOY_CONFIG": str(tmp_path / "env.ini")})


# --- with_overrides ----------------------------------------------------------------------------------


def test_with_overrides_applies_and_validates() -> None:
    base = load_config(EXAMPLE).section("Production")
    changed = base.with_overrides(
        s3_bucket="other-bucket",
        target_file_key="other.zip",
        profile_name=None,  # not given: keeps the configured profile
        poll_interval_s="5m",
        keep_revisions=2,
        max_unpacked_bytes="1GiB",
        auto_rollback=False,
        destination=Path("/opt/app"),
        last_fetch_time=datetime(2024, 1, 1, 12, 0),
    )
    assert (changed.s3_bucket, changed.target_file_key) == ("other-bucket", "other.zip")
    assert changed.profile_name == base.profile_name
    assert (changed.poll_interval_s, changed.keep_revisions, changed.max_unpacked_bytes) == (
        300.0,
        2,
        1024**3,
    )
    assert changed.auto_rollback is False and changed.destination == Path("/opt/app")
    assert changed.last_fetch_time == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert base.s3_bucket == "acme-deploy-bundles"  # the original is untouched
    assert base.with_overrides(profile_name="").profile_name is None  # "" = not set, as in the file
    assert base.with_overrides(poll_interval_s=0.25).poll_interval_s == 0.25


def test_with_overrides_rejects_bad_values_with_all_problems() -> None:
    base = load_config(EXAMPLE).section("Production")
    with pytest.raises(ConfigError) as info:
        base.with_overrides(
            s3_bucket="a/b", target_file_key="/x.zip", poll_interval_s=-1.0, keep_revisions=True
        )
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[Production] s3_bucket (override)",
        "[Production] target_file_key (override)",
        "[Production] poll_interval (override)",
        "[Production] keep_revisions (override)",
    ]
    assert 'got "a/b"' in lines[0] and "remove the leading /" in lines[1]
    with pytest.raises(ConfigError, match=r"\[Production\] s3_bucket \(override\): expected"):
        base.with_overrides(s3_bucket="")
    with pytest.raises(TypeError, match="no overridable field 'bucket'"):
        base.with_overrides(bucket="x")


# --- hostile values ----------------------------------------------------------------------------------

HOSTILE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;title\x07",
    "bell\x07",
    "del\x7f",
    "tab\tinside",
    "\u202eevil",
    "9" * 5000,
    "-" + "9" * 5000,
    "9" * 5000 + "s",
    "1" * 31 + "s",
    "1e999",
    "-1e999",
    "1e308h",
    "nan",
    "-0",
    "0x10",
    "1_",
    "_1",
    "1__0",
    "１２３",
    "http://[::1",
    "http://[",
    "http://]",
    "http://h:-1",
    "http://h:99999999999999999999",
    "http://h:0",
    "http://\x1bh",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "2023-02-30",
    "%(x)s",
    "[x]",
    "\\",
    "'",
    '"',
    "s3://",
    "/" * 5000,
    "a" * 100_000,
    "1" * 4000 + "T",
    "0." + "0" * 4000 + "1G",
]


def assert_escaped(message: str) -> None:
    """A message shows no raw control character: each line is safe to print on a terminal."""
    for line in message.splitlines():
        assert not any(ord(c) < 32 and c != "\t" or 0x7F <= ord(c) <= 0x9F for c in line), repr(line)
        assert "\u202e" not in line


@pytest.mark.parametrize("key", [*keys.KEYS, "installation_in_progress"])
def test_every_key_turns_hostile_values_into_config_errors(tmp_path: Path, key: str) -> None:
    """Whatever a value holds, loading gives a Config or a ConfigError (never ValueError, OverflowError
    ...), and the error shows the value with control characters escaped."""
    for i, value in enumerate(HOSTILE):
        body = {"s3_bucket": "bucket", "target_file_key": "app.zip", key: value}
        text = "[Production]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())
        path = write(tmp_path, text, f"{i}.ini")
        try:
            load_config(path)
        except ConfigError as e:
            assert_escaped(str(e))
            assert str(e).startswith(f"{path} [Production] {key}: expected "), str(e)[:300]


@pytest.mark.parametrize("field", list(keys.FIELD_TO_KEY))
def test_every_override_turns_hostile_values_into_config_errors(field: str) -> None:
    """Command-line overrides go through the same parsers: lone surrogates (bytes of argv that are not
    UTF-8) and every hostile string give a Section or a ConfigError."""
    base = load_config(EXAMPLE).section("Production")
    for value in [*HOSTILE, "\udcff", "a\ud800b", 10**5000, -(10**5000), float("inf"), float("nan")]:
        try:
            base.with_overrides(**{field: value})
        except ConfigError as e:
            assert_escaped(str(e))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("endpoint_url", "http://[::1", "an http:// or https:// URL"),
        ("last_fetch_time", "9999-12-31T23:59:59-14:00", "a time that stays within the years 1 to 9999"),
        ("keep_history", "9" * 5000, "a whole number from 1 to 1000000000"),
        ("keep_revisions", "1000000001", "a whole number from 1 to 1000000000"),
        ("deployment_timeout", "400d", "a number of seconds > 0, at most a year"),
        ("poll_interval", "100000000h", "a number of seconds > 0, at most a year"),
        ("profile_name", "ops\x1b[2Jdeploy", "an AWS profile name, without control characters"),
    ],
)
def test_values_that_used_to_crash_the_reload_are_config_errors(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    """Issue: SIGHUP with ``endpoint_url = http://[::1`` (ValueError) or ``last_fetch_time =
    9999-12-31T23:59:59-14:00`` (OverflowError) killed the daemon; each is now a ConfigError naming the
    key and escaping what was written."""
    message = config_error(production(tmp_path, f"{key} = {value}"))
    assert message.startswith(f"{tmp_path / 'config.ini'} [Production] {key}: expected {expected}")
    assert_escaped(message)


def test_control_characters_in_names_and_lines_are_shown_escaped(tmp_path: Path) -> None:
    path = write(tmp_path, "[Prod\x1b[31m]\ns3_bucket = b\ntarget_file_key = k\nkey\x07 = 1\n")
    message = config_error(path)
    assert_escaped(message)
    assert "[Prod\\x1b[31m]" in message and "key\\x07: unknown key" in message
    bad_line = write(tmp_path, SEED + "\x1b]0;pwned\x07\n", "line.ini")
    message = config_error(bad_line)
    assert_escaped(message)
    assert 'got "\\x1b]0;pwned\\x07"' in message


@pytest.mark.parametrize("key_line", ["max_failures = 2", "fleet_prefix = rollouts/"])
def test_fleet_keys_without_max_concurrent_are_an_error_not_silently_ignored(
    tmp_path: Path, key_line: str
) -> None:
    message = config_error(production(tmp_path, key_line))
    key = key_line.split(" ")[0]
    assert f"[Production] {key}: expected max_concurrent too: {key} only applies to a coordinated" in message
    assert "set max_concurrent" in message
    load_config(production(tmp_path, f"{key_line}\nmax_concurrent = 25%"))  # coordinated: fine


def test_fleet_keys_in_default_are_defaults_for_the_coordinated_sections_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [DEFAULT]
        max_failures = 2
        [Fleet]
        s3_bucket = b
        target_file_key = a.zip
        max_concurrent = 2
        [Single]
        s3_bucket = b
        target_file_key = c.zip
        """,
    )
    cfg = load_config(path)
    assert cfg.sections["Fleet"].max_failures == 2
    assert cfg.sections["Single"].max_concurrent is None
