"""Release folders only root can change; installed files keep the bundle's modes (issue 9 item 3)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer
from s3deploy.errors import BundleError
from s3deploy.install.release_modes import read_release_modes, restrict_release
from tests.agent import cli, history, write_config

SHARED_WRITE = 0o022


def tar_bytes(entries: dict[str, tuple[str | None, int]]) -> bytes:
    """A tar of ``entries``: path -> (content, or None for a folder; mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, (content, mode) in entries.items():
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_700_000_000
            if content is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                data = content.encode()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def writable_by_others(tree: Path) -> list[str]:
    return [str(p) for p in [tree, *tree.rglob("*")] if not p.is_symlink() and mode(p) & SHARED_WRITE]


def test_release_tree_is_root_only_and_installed_files_keep_the_bundles_modes_rollback_included(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str], s3_client: Any
) -> None:
    """A bundle with a 0777 folder and 0666 files (the hook script too): under the state directory none
    is writable by group or other; installed, the files are 0666 again, from a fresh release and from a
    rollback from disk. The folder Install creates gets mkdir's mode (0755), as with the agent."""
    bucket = make_bucket(versioned=True)
    dest, state_dir = tmp_path / "www", tmp_path / "state"
    section = {"s3_bucket": bucket, "target_file_key": "b.tar", "endpoint_url": seaweed.endpoint_url}
    config = write_config(tmp_path / "config.ini", {"Production": section})
    appspec = (
        "version: 0.0\nos: linux\n"
        f"files:\n  - source: app\n    destination: {dest}\n"
        "hooks:\n  ValidateService:\n    - location: scripts/check.sh\n"
    )

    def bundle(check_exit: int) -> bytes:
        return tar_bytes(
            {
                "appspec.yml": (appspec, 0o644),
                "scripts": (None, 0o777),
                "scripts/check.sh": (f"#!/bin/sh\nexit {check_exit}\n", 0o777),
                "app": (None, 0o755),
                "app/uploads": (None, 0o777),
                "app/uploads/shared.txt": ("shared", 0o666),
                "app/index.html": ("hi", 0o644),
            }
        )

    args = ("run", "-s", "Production", "--once", "-c", str(config), "--state-dir", str(state_dir))
    s3_client.put_object(Bucket=bucket, Key="b.tar", Body=bundle(0))
    assert cli(*args).returncode == 0
    first = history(config, state_dir, "Production")[0]
    release = state_dir / "releases" / "Production" / first["id"]
    assert writable_by_others(release) == []
    assert (
        mode(release / "bundle/scripts/check.sh") == 0o755 and mode(release / "bundle/app/uploads") == 0o755
    )
    assert mode(release / "modes.json") == 0o600
    recorded = json.loads((release / "modes.json").read_text())["modes"]
    assert recorded == {
        "scripts": 0o777,
        "scripts/check.sh": 0o777,
        "app/uploads": 0o777,
        "app/uploads/shared.txt": 0o666,
    }
    assert mode(dest / "uploads/shared.txt") == 0o666 and mode(dest / "index.html") == 0o644
    assert mode(dest / "uploads") == 0o755  # a folder Install creates: mkdir's mode

    (dest / "uploads/shared.txt").chmod(0o600)
    s3_client.put_object(Bucket=bucket, Key="b.tar", Body=bundle(1))  # ValidateService fails: rollback
    assert cli(*args).returncode == 1
    rollback = history(config, state_dir, "Production")[0]
    assert rollback["status"] == "succeeded" and rollback["restores"] == first["id"]
    assert mode(dest / "uploads/shared.txt") == 0o666  # the rollback read the release's modes file
    assert writable_by_others(state_dir / "releases") == []


def test_restrict_release_records_hard_links_once_and_refuses_an_entry_someone_else_wrote(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "release" / "bundle"
    (bundle / "d").mkdir(parents=True)
    (bundle / "d" / "a").write_text("a")
    (bundle / "d" / "a").chmod(0o666)
    os.link(bundle / "d" / "a", bundle / "b")  # one inode, two names: both had 0666
    (bundle / "link").symlink_to("/etc")
    bundle.chmod(0o777)
    assert restrict_release(bundle) == 3
    assert writable_by_others(bundle) == []
    assert read_release_modes(bundle) == {bundle: 0o777, bundle / "d/a": 0o666, bundle / "b": 0o666}
    assert mode(Path("/etc")) & SHARED_WRITE == 0 and Path("/etc").lstat().st_uid == 0  # not followed

    if os.geteuid() == 0:
        planted = bundle / "d" / "planted"
        planted.write_text("x")
        os.chown(planted, 65534, 65534)
        with pytest.raises(BundleError, match=r"release entry 'd/planted' is owned by uid 65534"):
            restrict_release(bundle)
