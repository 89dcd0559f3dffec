"""activation = symlink through the real agent against SeaweedFS: readers during many deployments, rollbacks
(automatic and `s3deploy rollback`) that switch back without copying, pruning, the hooks' variables,
configuration errors, entries outside the destination, and migrating from copy to symlink and back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from s3deploy.config import Section
from s3deploy.runtime.agent import Agent
from s3deploy.state.store import Deployment
from tests.agent import cli, hook_script, open_agent, write_config, zip_bytes
from tests.readers import readers as reading

KEY = "app/bundle.zip"
EVENTS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
# every release holds these, each file its tag repeated: a reader that resolved D once must find one tag
FILES = ("index.html", "css/site.css", "js/app/main.js", *(f"lib/m{i:02d}.txt" for i in range(20)))
FILES_TOP = ("index.html", "css", "js", "lib")


@dataclass
class Site:
    """Section "Web" deploying into ``dest`` (``www/html``) with activation = symlink."""

    section: Section
    root: Path
    s3: Any

    @property
    def dest(self) -> Path:
        return self.root / "www" / "html"

    @property
    def releases(self) -> Path:
        return self.root / "www" / ".html.s3deploy-releases"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def trace(self) -> Path:
        return self.root / "trace"

    def put(self, body: bytes) -> None:
        self.s3.put_object(Bucket=self.section.s3_bucket, Key=KEY, Body=body)

    def bundle(self, tag: str, *, fail: str = "", extra_files: str = "", **more: str) -> bytes:
        """Every event's hook traces ``tag event RELEASE_DIR|PREVIOUS_RELEASE_DIR``; ``fail``: that
        event's hook exits 1. ``more``: further bundle entries."""
        hooks = "".join(f"  {e}:\n    - location: scripts/{e}.sh\n" for e in EVENTS)
        spec = f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {self.dest}\n"
        spec += extra_files + "hooks:\n" + hooks
        files: dict[str, Any] = {"appspec.yml": spec}
        for event in EVENTS:
            dirs = (
                "${S3DEPLOY_RELEASE_DIR-}|${S3DEPLOY_PREVIOUS_RELEASE_DIR-}"  # unset with activation = copy
            )
            body = f'echo "{tag} $LIFECYCLE_EVENT {dirs}" >> {self.trace}'
            files[f"scripts/{event}.sh"] = hook_script(body + ("\nexit 1" if event == fail else ""))
        files.update({f"app/{name}": f"{tag}\n" * 100 for name in FILES})
        files.update(more)
        return zip_bytes(files)

    def live(self) -> str:
        return (self.dest / "index.html").read_text().partition("\n")[0]

    def release_names(self) -> set[str]:
        return {p.name for p in self.releases.iterdir() if p.is_dir() and not p.is_symlink()}

    def traced(self) -> list[tuple[str, str, str, str]]:
        """(tag, event, release dir, previous release dir) per hook run, in order."""
        rows = []
        for line in self.trace.read_text().splitlines():
            tag, event, dirs = line.split(" ", 2)
            release, _, previous = dirs.partition("|")
            rows.append((tag, event, release, previous))
        self.trace.write_text("")
        return rows


@pytest.fixture
def site(tmp_path: Path, seaweed: Any, make_bucket: Callable[..., str], s3_client: Any) -> Site:
    (tmp_path / "www").mkdir()
    section = Section(
        name="Web",
        s3_bucket=make_bucket(versioned=True),
        target_file_key=KEY,
        endpoint_url=seaweed.endpoint_url,
        destination=tmp_path / "www" / "html",
        activation="symlink",
    )
    return Site(section, tmp_path, s3_client)


async def deploy(agent: Agent, site: Site, body: bytes, **changes: Any) -> Deployment:
    """Upload ``body`` and have the section (with ``changes``) check once; returns its deployment."""
    site.put(body)
    watcher = await agent.watcher(replace(site.section, **changes))
    done = await watcher.poll_once()
    assert done is not None
    return done


def readers(d: Path) -> contextlib.AbstractContextManager[tuple[list[str], set[str]]]:
    """Three threads reading D while the body runs (tests/readers.py)."""
    return reading(d, FILES, 100)


# ---------------------------------------------------------------------------------------------- readers
async def test_readers_never_see_a_missing_file_or_a_mix_of_releases_during_30_deployments(
    site: Site,
) -> None:
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        first = await deploy(agent, site, site.bundle("v0"))
        assert first.status == "succeeded" and site.dest.is_symlink()
        with readers(site.dest) as (problems, seen):
            for i in range(1, 31):
                done = await deploy(agent, site, site.bundle(f"v{i}"))
                assert done.status == "succeeded", done.error
                assert site.live() == f"v{i}"
        assert problems == []
        assert len(seen) > 10  # the readers really read through the deployments
        # keep_revisions (5): the live release and four before it; the state keeps the same ones
        assert os.readlink(site.dest) == f".html.s3deploy-releases/{done.id}"
        kept = {d.id for d in agent.state.history("Web") if d.release_dir}
        assert site.release_names() == kept and len(kept) == 5 and done.id in kept


# ---------------------------------------------------------------------------------------------- rollback
async def test_a_failing_validate_service_switches_back_to_the_previous_folder_without_copying(
    site: Site,
) -> None:
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        v1 = await deploy(agent, site, site.bundle("v1"))
        v1_dir = str(site.releases / v1.id)
        before = os.stat(site.dest / "index.html").st_ino
        # the first deployment: no release before it, no ApplicationStop
        assert site.traced() == [("v1", e, v1_dir, "") for e in EVENTS[1:]]
        with readers(site.dest) as (problems, seen):
            v2 = await deploy(agent, site, site.bundle("v2", fail="ValidateService"))
        assert v2.status == "failed" and v2.failed_event == "ValidateService"
        rollback = agent.state.history("Web")[0]
        assert rollback.rollback_of == v2.id and rollback.restores == v1.id and rollback.status == "succeeded"
        # the very same files: switched back, not copied
        assert os.readlink(site.dest) == f".html.s3deploy-releases/{v1.id}"
        assert os.stat(site.dest / "index.html").st_ino == before and site.live() == "v1"
        assert problems == [] and seen == {"v1", "v2"}
        v2_dir = str(site.releases / v2.id)
        assert site.traced() == [
            ("v1", "ApplicationStop", v2_dir, v1_dir),
            ("v2", "BeforeInstall", v2_dir, v1_dir),
            ("v2", "AfterInstall", v2_dir, v1_dir),
            ("v2", "ApplicationStart", v2_dir, v1_dir),
            ("v2", "ValidateService", v2_dir, v1_dir),
            # the rollback: v2's ApplicationStop stops the broken release, v1's hooks run from its folder
            ("v2", "ApplicationStop", v1_dir, v2_dir),
            ("v1", "BeforeInstall", v1_dir, v2_dir),
            ("v1", "AfterInstall", v1_dir, v2_dir),
            ("v1", "ApplicationStart", v1_dir, v2_dir),
            ("v1", "ValidateService", v1_dir, v2_dir),
        ]


def test_s3deploy_rollback_switches_back_to_the_previous_release(site: Site) -> None:
    sec = site.section
    keys = {
        "s3_bucket": sec.s3_bucket,
        "target_file_key": KEY,
        "endpoint_url": sec.endpoint_url,
        "destination": site.dest,
        "activation": "symlink",
    }
    config = write_config(site.root / "config.ini", {"Web": keys})
    args = ("-c", str(config), "--state-dir", str(site.state_dir))
    for tag in ("v1", "v2"):
        site.put(site.bundle(tag))
        run = cli("run", "-s", "Web", "--once", *args)
        assert run.returncode == 0, run.stderr
    ids = sorted(p.name for p in site.releases.iterdir())
    v1_link = os.readlink(site.dest)
    assert site.live() == "v2"
    with readers(site.dest) as (problems, _):
        back = cli("rollback", "Web", *args)
    assert back.returncode == 0, back.stderr
    assert problems == [] and site.live() == "v1"
    history = json.loads(cli("history", "Web", "--json", *args).stdout)
    v1 = history[-1]["id"]
    assert history[0]["restores"] == v1 and history[0]["status"] == "succeeded"
    assert os.readlink(site.dest) == f".html.s3deploy-releases/{v1}" != v1_link
    assert sorted(p.name for p in site.releases.iterdir()) == ids  # no release folder made for it


# ---------------------------------------------------------------------------------------------- pruning
async def test_pruning_keeps_the_live_release_and_the_last_successful_one(site: Site) -> None:
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        v1 = await deploy(agent, site, site.bundle("v1"), keep_revisions=1)
        # v2 fails after its switch and is not rolled back: it stays live, v1 is the last successful
        v2 = await deploy(
            agent, site, site.bundle("v2", fail="ValidateService"), keep_revisions=1, auto_rollback=False
        )
        assert v2.status == "failed" and site.live() == "v2"
        assert site.release_names() == {v1.id, v2.id}
        assert {d.id for d in agent.state.history("Web") if d.release_dir} == {v1.id}
        # v3 succeeds: it is both; the two before are pruned
        v3 = await deploy(agent, site, site.bundle("v3"), keep_revisions=1)
        assert v3.status == "succeeded" and site.release_names() == {v3.id}


# ---------------------------------------------------------------------------------- entries outside D
async def test_entries_outside_the_destination_are_copied_with_their_cleanup_list(site: Site) -> None:
    etc = site.root / "etc"
    extra = f"  - source: conf\n    destination: {etc}\n"
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        v1 = await deploy(
            agent, site, site.bundle("v1", extra_files=extra, **{"conf/app.conf": "v1", "conf/old.conf": "x"})
        )
        assert v1.status == "succeeded", v1.error
        assert (etc / "app.conf").read_text() == "v1" and not (etc / "app.conf").is_symlink()
        assert not etc.is_symlink() and site.dest.is_symlink()
        # the sources of entries outside D stay in the bundle: the rollback copies them again
        v2 = await deploy(
            agent,
            site,
            site.bundle("v2", fail="ApplicationStart", extra_files=extra, **{"conf/app.conf": "v2"}),
        )
        assert v2.status == "failed"
        assert (etc / "app.conf").read_text() == "v1" and (etc / "old.conf").exists() and site.live() == "v1"
        v3 = await deploy(agent, site, site.bundle("v3", extra_files=extra, **{"conf/app.conf": "v3"}))
        assert v3.status == "succeeded"
        assert (etc / "app.conf").read_text() == "v3" and not (etc / "old.conf").exists()
        listed = json.loads(agent.layout.cleanup_list("Web").read_text())
        assert listed["files"] == [str(etc / "app.conf")]  # nothing of D


async def test_permissions_are_applied_inside_the_release_before_the_switch(site: Site) -> None:
    perms = (
        f"permissions:\n  - object: {site.dest}\n    owner: nobody\n    mode: 750\n    type: [directory]\n"
    )
    perms += f"  - object: {site.dest}/css\n    mode: 600\n    type: [file]\n"
    # AfterInstall sees the permissions through D: they were applied before the switch
    check = f'stat -c "%U %a" {site.dest}/. {site.dest}/css/site.css > {site.root}/seen'
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        files: dict[str, Any] = {
            "appspec.yml": f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {site.dest}\n"
            + perms
            + "hooks:\n  AfterInstall:\n    - location: check.sh\n",
            "check.sh": hook_script(check),
            "app/index.html": "v1\n",
            "app/css/site.css": "body {}\n",
        }
        done = await deploy(agent, site, zip_bytes(files))
        assert done.status == "succeeded", done.error
    assert (site.root / "seen").read_text().split("\n")[:2] == ["nobody 750", "root 600"]
    assert os.lstat(site.dest).st_uid == 0  # the link stays root's


# ---------------------------------------------------------------------------------------------- migrating
async def test_copy_to_symlink_and_back_as_docs_activation_md_says(site: Site) -> None:
    copy = replace(site.section, activation="copy")
    async with open_agent(site.state_dir, copy, exclusive=True) as agent:
        v1 = await deploy(agent, site, site.bundle("v1"), activation="copy")
    assert v1.status == "succeeded" and not site.dest.is_symlink()
    (site.dest / "upload.txt").write_text("written by the application")
    folder = os.stat(site.dest).st_ino

    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        # copy → symlink: the first switch moves the folder aside; its failure puts the folder back
        site.traced()
        v2 = await deploy(agent, site, site.bundle("v2", fail="ValidateService"))
        assert v2.status == "failed"
        rows = site.traced()
        aside = rows[2][3]  # AfterInstall's S3DEPLOY_PREVIOUS_RELEASE_DIR: D's folder, moved aside
        assert Path(aside).parent == site.releases and Path(aside).name.startswith("replaced-")
        assert rows[-1][:3] == ("v1", "ValidateService", str(site.dest))  # the rollback: D is v1's folder
        assert not site.dest.is_symlink() and os.stat(site.dest).st_ino == folder
        assert (
            (site.dest / "upload.txt").exists()
            and site.live() == "v1"
            and "replaced-" not in str(os.listdir(site.releases))
        )
        # and the section's bookkeeping is back too: v1's files are its own again
        listed = json.loads(agent.layout.cleanup_list("Web").read_text())
        assert str(site.dest / "index.html") in listed["files"] and listed["roots"] == [str(site.dest)]

        v3 = await deploy(agent, site, site.bundle("v3", **{"app/only-v3.txt": "x"}))
        assert v3.status == "succeeded" and site.dest.is_symlink() and site.live() == "v3"
        (replaced,) = [p for p in site.releases.iterdir() if p.name.startswith("replaced-")]
        assert os.stat(replaced).st_ino == folder and (replaced / "upload.txt").exists()  # nothing deleted
        listed = json.loads(agent.layout.cleanup_list("Web").read_text())
        assert listed == {"version": 2, "files": [], "dirs": [], "roots": []}  # D is no longer copied into

    async with open_agent(site.state_dir, copy, exclusive=True) as agent:
        # symlink → copy: the live release becomes D, its files count as installed, the copy replaces them
        release_folder = os.stat(site.releases / v3.id).st_ino
        v4 = await deploy(agent, site, site.bundle("v4", **{"app/only-v4.txt": "x"}), activation="copy")
        assert v4.status == "succeeded", v4.error
        assert not site.dest.is_symlink() and os.stat(site.dest).st_ino == release_folder
        assert site.live() == "v4" and not (site.dest / "only-v3.txt").exists()
        v5 = await deploy(agent, site, site.bundle("v5"), activation="copy")
        assert v5.status == "succeeded" and site.live() == "v5" and not (site.dest / "only-v4.txt").exists()
        # a release whose files activation moved cannot be copied again: said, nothing changed
        back = await agent.rollback("Web", to=v3.id)
        assert back.status == "failed" and back.failed_event == "Install"
        assert back.error is not None and "its files were moved from its bundle" in back.error
        assert site.live() == "v5"


async def test_a_release_deployed_by_copy_is_staged_again_by_copying_and_its_bundle_stays_whole(
    site: Site,
) -> None:
    copy = replace(site.section, activation="copy")
    async with open_agent(site.state_dir, copy, exclusive=True) as agent:
        v1 = await deploy(agent, site, site.bundle("v1"), activation="copy")
        v2 = await deploy(agent, site, site.bundle("v2"), activation="copy")
    assert v1.status == v2.status == "succeeded"
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        back = await agent.rollback("Web", to=v1.id)
        assert back.status == "succeeded", back.error
        assert os.readlink(site.dest) == f".html.s3deploy-releases/{v1.id}" and site.live() == "v1"
        bundle = agent.layout.release_dir("Web", v1.id) / "bundle"
        assert sorted(p.name for p in (bundle / "app").iterdir()) == sorted(FILES_TOP)
        # and again: its release folder now exists, the next rollback to it is a switch
        again = await agent.rollback("Web", to=v2.id)
        assert again.status == "succeeded" and site.live() == "v2"
        ino = os.stat(site.releases / v1.id / "index.html").st_ino
        third = await agent.rollback("Web", to=v1.id)
        assert third.status == "succeeded" and os.stat(site.dest / "index.html").st_ino == ino


async def test_a_rollback_to_a_release_whose_folder_is_gone_fails_naming_it(site: Site) -> None:
    async with open_agent(site.state_dir, site.section, exclusive=True) as agent:
        v1 = await deploy(agent, site, site.bundle("v1"))
        await deploy(agent, site, site.bundle("v2"))
        shutil.rmtree(site.releases / v1.id)
        back = await agent.rollback("Web")
    assert back.status == "failed" and back.failed_event == "Install"
    assert back.error is not None
    assert f"release {v1.id} cannot be rebuilt: its files were moved from its bundle" in back.error
    assert site.live() == "v2"


# ---------------------------------------------------------------------------------------------- configuration
def test_activation_errors_in_config_ini_exit_2_naming_file_section_and_key(tmp_path: Path) -> None:
    base = {"s3_bucket": "b", "target_file_key": "k"}
    config = write_config(
        tmp_path / "config.ini",
        {
            "Web": {**base, "activation": "symlink"},
            "Api": {**base, "destination": "/srv/api", "activation": "links"},
            "Shop": {**base, "destination": "/srv/shop", "activation": "symlink"},
            "Static": {**base, "destination": "/srv/shop/static"},
        },
    )
    for command in (["validate"], ["run", "--all", "--once"]):
        proc = cli(*command, "-c", str(config), "--state-dir", str(tmp_path / "state"))
        assert proc.returncode == 2, proc.stderr
        assert f"{config} [Web] activation: symlink needs destination" in proc.stderr
        assert f"{config} [Api] activation: expected copy (" in proc.stderr and 'got "links"' in proc.stderr
        assert (
            f"{config} [Shop] activation: symlink makes /srv/shop a link to a release folder, and section "
            "[Static] deploys into /srv/shop/static, which overlaps it" in proc.stderr
        )
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()
