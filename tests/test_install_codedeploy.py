"""Install as the CodeDeploy agent does it (issue 13 items 1, 6, 7), each test quoting the agent code it
matches (aws-codedeploy-agent, lib/instance_agent/plugins/codedeploy/)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3deploy.appspec import load_appspec
from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import InstallError
from s3deploy.install.installer import install
from tests.agent import cli, hook_script, status, write_config, zip_bytes
from tests.test_install import make_bundle, snapshot


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def deploy(tmp: Path, files: dict[str, str], spec: str) -> Path:
    bundle = make_bundle(tmp / f"release{len(list(tmp.glob('release*')))}", files, spec)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=tmp / "state" / "prod.list")
    return bundle


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    pattern: '*.conf'\n", r"pattern '\*\.conf' on a file"),
        ("    except: [app.conf]\n", r"except \['app.conf'\] on a file"),
        ("    pattern: '*.conf'\n    type: [file, directory]\n", r"pattern '\*\.conf' on a file"),
    ],
)
def test_pattern_or_except_on_a_file_object_fails_before_anything_is_copied(
    tmp_path: Path, extra: str, message: str
) -> None:
    """installer.rb: ``if i.copying_file?(object) / if permission.type.include?("file") /
    permission.validate_file_permission``; linux_permission_info.rb: ``if !"**".eql?(@pattern) raise
    AppSpecValidationException, "...includes an object (#{@object}) with an invalid pattern..."`` and
    ``if !@except.empty? raise AppSpecValidationException, "...the except parameter..."``. Before, the
    entry was skipped without a word and its mode never applied."""
    dest = tmp_path / "etc"
    spec = (
        f"files:\n  - source: conf/app.conf\n    destination: {dest}\n"
        f"permissions:\n  - object: {dest}/app.conf\n    mode: 600\n{extra}"
    )
    deploy(
        tmp_path,
        {"conf/app.conf": "v1", "conf/x": ""},
        f"files:\n  - source: conf/x\n    destination: {dest}\n",
    )
    before = snapshot(dest)
    with pytest.raises(InstallError, match=f"permissions\\[0\\] \\(object {dest}/app.conf\\): {message}"):
        deploy(tmp_path, {"conf/app.conf": "v2"}, spec)
    assert snapshot(dest) == before  # the previous release's file is still there, nothing copied


def test_a_pattern_on_a_file_object_with_type_directory_only_is_not_an_error(tmp_path: Path) -> None:
    """installer.rb checks the pattern only ``if permission.type.include?("file")``; such an entry
    matches nothing (``elsif (i.making_directory?(object) || File.directory?(object))`` is false)."""
    dest = tmp_path / "etc"
    spec = (
        f"files:\n  - source: conf/app.conf\n    destination: {dest}\n"
        f"permissions:\n  - object: {dest}/app.conf\n    pattern: '*'\n    type: [directory]\n    mode: 700\n"
    )
    deploy(tmp_path, {"conf/app.conf": "v1"}, spec)
    assert mode(dest / "app.conf") == 0o644


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_folders_install_creates_get_mkdirs_mode_not_the_bundle_folders(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    """install_instruction.rb MakeDirectoryCommand: ``FileUtils.mkdir(@directory)`` (0777 less the umask:
    0755 as root usually); files are ``FileUtils.copy(@source, @destination, :preserve => true)`` (their
    mode kept). A developer's 0700 or 0775 checkout folder does not leak to the host; a folder that
    already exists keeps its mode."""
    dest = tmp_path / "srv"
    dest.mkdir(mode=0o750)
    bundle = make_bundle(tmp_path / "release", {"app/private/a": "a", "app/shared/b": "b", "app/c": "c"})
    (bundle / "app/private").chmod(0o700)
    (bundle / "app/shared").chmod(0o775)
    (bundle / "app/private/a").chmod(0o640)
    (bundle / "appspec.yml").write_text(
        f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {dest}/app\n"
    )
    umask(0o022)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=tmp_path / "l.list")
    assert {p: mode(dest / p) for p in ("", "app", "app/private", "app/shared")} == {
        "": 0o750,  # existed: untouched
        "app": 0o755,
        "app/private": 0o755,
        "app/shared": 0o755,
    }
    assert mode(dest / "app/private/a") == 0o640
    (bundle / "app/new").mkdir(mode=0o777)
    umask(0o027)
    install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=tmp_path / "l.list")
    assert mode(dest / "app/new") == 0o750  # the umask decides, as for mkdir
    assert mode(dest / "app") == 0o755  # there already (the first install's): kept


def test_a_question_mark_in_a_pattern_or_an_exception_is_a_literal_character(tmp_path: Path) -> None:
    """linux_permission_info.rb matches_simple_glob: only ``if option[0].eql?("*")`` is special; every
    other character must equal the name's (``elsif option[0].eql?(char)``): ``?`` and ``[`` too."""
    dest = tmp_path / "srv"
    spec = (
        f"files:\n  - source: app\n    destination: {dest}\n"
        f"permissions:\n  - object: {dest}\n    pattern: 'file?.txt'\n    mode: 600\n"
        f"  - object: {dest}\n    pattern: 'log*'\n    except: ['log[1]', '*?']\n    mode: 700\n"
    )
    names = ["file?.txt", "file1.txt", "log[1]", "log1", "log2", "logs?"]
    deploy(tmp_path, {f"app/{name}": "" for name in names}, spec)
    assert {name: mode(dest / name) for name in names} == {
        "file?.txt": 0o600,
        "file1.txt": 0o644,  # fnmatch would have matched it
        "log[1]": 0o644,  # excepted literally
        "log1": 0o700,  # fnmatch's [1] would have excepted it
        "log2": 0o700,
        "logs?": 0o644,  # '*?' ends with a literal '?'
    }


def test_hooks_only_appspec_with_no_destination_installs_nothing_and_runs_its_hooks(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """The agent's sample bundles: ``@files = parse_files(yaml_hash['files'] || [])`` and installer.rb
    ``application_specification.files.each``: no files, nothing installed, and the hooks run."""
    bucket = make_bucket()
    trace, state_dir = tmp_path / "trace", tmp_path / "state"
    config = write_config(
        tmp_path / "config.ini",
        {"Hooks": {"s3_bucket": bucket, "target_file_key": "b.zip", "endpoint_url": seaweed.endpoint_url}},
    )
    spec = "version: 0.0\nos: linux\nhooks:\n" + "".join(
        f"  {event}:\n    - location: scripts/trace.sh\n" for event in ("BeforeInstall", "AfterInstall")
    )
    body = {"appspec.yml": spec, "scripts/trace.sh": hook_script(f'echo "$LIFECYCLE_EVENT" >> {trace}')}
    s3_client.put_object(Bucket=bucket, Key="b.zip", Body=zip_bytes(body))
    proc = cli("run", "-s", "Hooks", "--once", "-c", str(config), "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    assert status(config, state_dir)["Hooks"]["last"]["status"] == "succeeded"
    assert trace.read_text().split() == ["BeforeInstall", "AfterInstall"]
    assert "nothing to install" in proc.stderr
