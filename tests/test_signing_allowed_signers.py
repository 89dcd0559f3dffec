"""The allowed_signers file parsed as OpenSSH parses it; every problem named by file and line."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest

from s3deploy.signing import SignersFileError, check_signers_file, load_signers
from s3deploy.signing.allowed_signers import match_pattern_list, parse_time
from tests.signing_keys import (
    SshKey,
    signers_file,
    ssh_keys_fixture,  # noqa: F401 - fixtures
)


def test_comments_blank_lines_quotes_and_options(ssh_keys: dict[str, SshKey], tmp_path: Path) -> None:
    ed, rsa, ec = ssh_keys["ed25519"], ssh_keys["rsa"], ssh_keys["ecdsa384"]
    path = tmp_path / "allowed_signers"
    path.write_text(
        "# deployers\n"
        "\n"
        "   \t\n"
        f"  ci@example.com,ops@example.com {ed.public.read_text().strip()}\r\n"  # comment kept, CRLF
        f'"release bot" Namespaces="s3deploy,git",VALID-AFTER="20240101",valid-before="20300101Z" '
        f"{rsa.line}\n"
        f'*@example.com valid-before="203001011230" {ec.line} trailing comment\n'
        "    # indented comment\n"
    )
    assert check_signers_file(path) == []
    entries = load_signers(path).entries
    assert [(e.line, e.principals) for e in entries] == [
        (4, "ci@example.com,ops@example.com"),
        (5, "release bot"),
        (6, "*@example.com"),
    ]
    assert entries[1].namespaces == "s3deploy,git"
    assert entries[1].valid_before == calendar.timegm((2030, 1, 1, 0, 0, 0))
    assert entries[1].valid_after == parse_time("20240101")
    assert entries[2].valid_before == parse_time("203001011230")
    assert entries[0].key.fingerprint == ed.fingerprint


BAD_LINES = [
    ("ci@example.com", "expected PRINCIPALS [OPTIONS] KEYTYPE BASE64"),
    ("ci@example.com ssh-ed25519", "missing key"),
    ("ci@example.com ssh-ed25519 AAAA!!!", "not valid base64"),
    ("ci@example.com ssh-dss AAAAB3NzaC1kc3M=", "key type 'ssh-dss' is not supported"),
    (
        "ci@example.com sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",
        "security-key (FIDO)",
    ),
    ("ci@example.com namespaces=s3deploy {key}", 'missing start quote (write namespaces="...")'),
    ('ci@example.com namespaces="s3deploy {key}', "missing end quote"),
    ('ci@example.com namespaces="a",namespaces="b" {key}', 'multiple "namespaces" options'),
    ('ci@example.com valid-after="2024" {key}', "is not YYYYMMDD[HHMM[SS]][Z]"),
    ('ci@example.com valid-after="20240231" {key}', "is not a valid date"),
    ('ci@example.com valid-after="20250101",valid-before="20240101" {key}', "is not after"),
    ('ci@example.com valid-after="20250101"x {key}', 'unexpected "x"'),
    ("ci@example.com cert-authority {key}", "cert-authority is not supported"),
    ("ci@example.com no-touch-required {key}", 'unsupported option "no-touch-required"'),
    ("ci@example.com ssh-rsa {b64}", "key type ssh-rsa does not match the key, which is ssh-ed25519"),
    ('"ci@example.com {key}', "missing end quote"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES, ids=[p for _, p in BAD_LINES])
def test_bad_line_named_by_file_and_line(
    ssh_keys: dict[str, SshKey], tmp_path: Path, line: str, problem: str
) -> None:
    key = ssh_keys["ed25519"]
    text = line.format(key=key.line, b64=key.line.split()[1])
    path = signers_file(tmp_path / "signers", ["# first", f"ok@example.com {key.line}", text])
    problems = check_signers_file(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:3: ")
    assert problem in problems[0]
    with pytest.raises(SignersFileError) as info:
        load_signers(path)
    assert str(info.value).startswith(f"signature: trusted_signers: {path}:3: ")


def test_every_problem_listed_and_unusable_files(tmp_path: Path) -> None:
    path = signers_file(tmp_path / "signers", ["a", "b ssh-ed25519", "# fine"])
    problems = check_signers_file(path)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:1", f"{path}:2"]
    with pytest.raises(SignersFileError, match=r"and 1 more problem") as info:
        load_signers(path)
    assert info.value.problems == problems

    assert "no signer keys" in check_signers_file(signers_file(tmp_path / "empty", ["# nobody"]))[0]
    assert "cannot read the signers file" in check_signers_file(tmp_path / "missing")[0]
    binary = tmp_path / "binary"
    binary.write_bytes(b"ci \xff\xfe ssh-ed25519 AAAA\n")
    assert "not UTF-8" in check_signers_file(binary)[0]
    big = tmp_path / "big"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    assert "larger than" in check_signers_file(big)[0]


def test_pattern_lists_as_openssh() -> None:
    assert match_pattern_list("ci@example.com", "*@example.com")
    assert match_pattern_list("ci@example.com", "x,c?@example.com")
    assert not match_pattern_list("ci@example.com", "c?@example.co")
    assert not match_pattern_list("ci@example.com", "!ci@*,*")
    assert not match_pattern_list("ci@example.com", "!bob@*")  # a negation alone never accepts
    assert match_pattern_list("a.b+c", "a.b+c")  # no regex meaning
    assert not match_pattern_list("CI@example.com", "ci@example.com")  # case-sensitive


def test_times_local_and_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_time("20240102Z") == calendar.timegm((2024, 1, 2, 0, 0, 0))
    assert parse_time("202401021530utc") == calendar.timegm((2024, 1, 2, 15, 30, 0))
    assert parse_time("20240102153045Z") == calendar.timegm((2024, 1, 2, 15, 30, 45))
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no DST
    time.tzset()
    try:
        assert parse_time("20240102") == calendar.timegm((2024, 1, 1, 15, 0, 0))
    finally:
        monkeypatch.undo()
        time.tzset()
