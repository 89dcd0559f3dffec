"""The sample bundles of examples/, used as a user would: ``s3deploy validate``, ``s3deploy publish`` to a
real SeaweedFS, ``s3deploy run --once`` (each a real process), then the host is checked (SPEC §7,
issue 13 item 10).

A test deploys a staged copy of an example: the same files, with only the settings a user would edit
changed (the install destination, the journal or the server's port) so that nothing outside the test's
folder is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from s3deploy.devtools.seaweed import SeaweedServer, free_port
from s3deploy.install.cleanup import read_list
from s3deploy.state.layout import StateLayout
from tests.agent import cli, history, pid_alive, status, write_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------------------------------------- helpers
def stage(example: str, to: Path, replacements: Mapping[str, Mapping[str, str]]) -> Path:
    """Copy ``examples/<example>`` to ``to``; in each named file replace each text (which must occur)."""
    shutil.copytree(EXAMPLES / example, to, symlinks=True)
    for name, pairs in replacements.items():
        path = to / name
        text = path.read_text()
        for old, new in pairs.items():
            assert old in text, f"examples/{example}/{name} no longer has {old!r}"
            text = text.replace(old, new)
        path.write_text(text)
    return to


def set_env_file(path: Path, **values: str) -> None:
    """Set NAME=value lines of a hook settings file; each NAME must be there already."""
    text = path.read_text()
    for name, value in values.items():
        text, found = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert found == 1, f"{path} has no {name}= line"
    path.write_text(text)


class Host:
    """A versioned bucket, a config.ini whose one section has no ``destination``, a state dir."""

    def __init__(self, root: Path, seaweed: SeaweedServer, bucket: str, section: str) -> None:
        self.seaweed = seaweed
        self.bucket = bucket
        self.section = section
        self.key = f"{section.lower()}.zip"
        self.config = write_config(
            root / "config.ini",
            {
                section: {
                    "s3_bucket": bucket,
                    "target_file_key": self.key,
                    "endpoint_url": seaweed.endpoint_url,
                }
            },
        )
        self.state_dir = root / "state"

    def publish(self, bundle: Path) -> None:
        proc = cli(
            "publish", str(bundle), "--bucket", self.bucket, "--key", self.key,
            "--endpoint-url", self.seaweed.endpoint_url,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def deploy(self) -> dict[str, Any]:
        """``run --once``: the new revision deploys and succeeds; its history record."""
        proc = cli(
            "run", "-s", self.section, "--once", "-c", str(self.config), "--state-dir", str(self.state_dir)
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        newest = history(self.config, self.state_dir, self.section)[0]
        assert newest["status"] == "succeeded", newest
        assert status(self.config, self.state_dir)[self.section]["current"]["id"] == newest["id"]
        return newest


@pytest.fixture
def make_host(
    tmp_path: Path, seaweed: SeaweedServer, make_bucket: Callable[..., str]
) -> Callable[[str], Host]:
    return lambda section: Host(tmp_path, seaweed, make_bucket(versioned=True), section)


def hook_events(deployment: Mapping[str, Any]) -> list[str]:
    """The events whose hooks printed something, in order, from the deployment's own log file
    (``<time> <event>: <line>``)."""
    events: list[str] = []
    for line in Path(deployment["log_path"]).read_text().splitlines():
        event = line.split(" ", 2)[1].rstrip(":")
        if not events or events[-1] != event:
            events.append(event)
    return events


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


# ---------------------------------------------------------------------------------------------- validate
@pytest.mark.parametrize("example", ["bundle", "static-site", "hooks-only"])
def test_validate_accepts_every_example(example: str) -> None:
    """``s3deploy validate examples/<each>`` exits 0 (warnings allowed); only the hooks-only bundle is
    told that Install copies nothing."""
    proc = cli("validate", str(EXAMPLES / example))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"examples/{example}: OK" in proc.stdout
    installs_nothing = "files: none, so Install copies nothing" in proc.stdout + proc.stderr
    assert installs_nothing == (example == "hooks-only")


# ---------------------------------------------------------------------------------------------- static site
class StaticSite:
    """examples/static-site staged to install into ``docroot`` and serve it with python3's http.server."""

    def __init__(self, root: Path) -> None:
        self.docroot = root / "www" / "html"
        self.bundle = stage(
            "static-site", root / "bundle", {"appspec.yml": {"/var/www/html": str(self.docroot)}}
        )
        self.port = free_port()
        self.pidfile = root / "http.pid"
        set_env_file(
            self.bundle / "scripts" / "site.env",
            DOCROOT=str(self.docroot),
            SERVER="python",
            ADDRESS="127.0.0.1",
            PORT=str(self.port),
            PIDFILE=str(self.pidfile),
            LOGFILE=str(root / "http.log"),
        )

    def server_pid(self) -> int:
        return int(self.pidfile.read_text())

    def page(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as response:
            body: bytes = response.read()
        return body

    def stop(self) -> None:
        """What ApplicationStop does, by the bundle's own script; then make sure the server is gone."""
        pid = self.server_pid() if self.pidfile.exists() else None
        subprocess.run(
            [self.bundle / "scripts" / "stop_server"], capture_output=True, timeout=30, check=False
        )
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[StaticSite]:
    site = StaticSite(tmp_path)
    try:
        yield site
    finally:
        site.stop()


@pytest.mark.skipif(not IS_ROOT, reason="the static site's hooks have runas: root")
@pytest.mark.skipif(shutil.which("curl") is None, reason="the static site's hooks use curl (install it)")
def test_static_site_lands_with_its_modes_and_its_server_restarts_with_each_release(
    static_site: StaticSite, make_host: Callable[[str], Host]
) -> None:
    """examples/static-site, shaped like AWS's SampleApp_Linux: a file source and a folder source go into
    the document root with the modes its ``permissions`` give (the checkout had a 077 umask), nothing else
    of the bundle is installed; its hooks run in order and the server serves each release's page."""
    site, host = static_site, make_host("Site")
    # A checkout made with umask 077: the site would answer 403 under Apache without `permissions`.
    for path in (site.bundle / "index.html", *(site.bundle / "assets").iterdir()):
        path.chmod(0o600)
    (site.bundle / "assets").chmod(0o700)

    host.publish(site.bundle)
    first = host.deploy()
    assert hook_events(first) == ["BeforeInstall", "ApplicationStart", "ValidateService"]
    installed = {str(p.relative_to(site.docroot)): mode(p) for p in site.docroot.rglob("*")}
    assert installed == {
        "index.html": 0o644,
        "assets": 0o755,
        "assets/style.css": 0o644,
        "assets/logo.svg": 0o644,
    }
    assert mode(site.docroot) == 0o755
    assert (site.docroot / "assets" / "logo.svg").read_bytes() == (
        site.bundle / "assets" / "logo.svg"
    ).read_bytes()
    first_pid = site.server_pid()
    assert site.page() == (site.bundle / "index.html").read_bytes()

    # Release 2: ApplicationStop (release 1's script) stops the server, the new one serves the new page.
    index = site.bundle / "index.html"
    index.write_text(index.read_text().replace("Release 1", "Release 2"))
    host.publish(site.bundle)
    second = host.deploy()
    assert hook_events(second) == ["ApplicationStop", "BeforeInstall", "ApplicationStart", "ValidateService"]
    assert not pid_alive(first_pid)
    assert site.server_pid() != first_pid and pid_alive(site.server_pid())
    assert b"Release 2" in site.page()
    assert mode(site.docroot / "index.html") == 0o644


# ---------------------------------------------------------------------------------------------- hooks only
def test_hooks_only_bundle_installs_nothing_and_runs_its_hooks(
    tmp_path: Path, make_host: Callable[[str], Host]
) -> None:
    """examples/hooks-only (``hooks``, no ``files``, like the CodeDeploy agent's own sample bundle) in a
    section with no ``destination``: Install copies nothing, the lifecycle's hooks run in order, the
    load-balancer ones are skipped, and a redeploy runs ApplicationStop from the first release."""
    journal = tmp_path / "journal" / "events.log"
    bundle = stage("hooks-only", tmp_path / "bundle", {})
    set_env_file(bundle / "scripts" / "journal.env", JOURNAL=str(journal))
    host = make_host("Jobs")

    host.publish(bundle)
    first = host.deploy()
    cleanup_list = StateLayout(host.state_dir).cleanup_list("Jobs")
    assert not cleanup_list.exists() or read_list(cleanup_list).files == []

    host.publish(bundle)  # the same content again: a new version of the object, deployed again
    second = host.deploy()
    recorded = [line.split()[1:] for line in journal.read_text().splitlines()]
    lifecycle = ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"]
    assert recorded == [
        *([event, first["id"]] for event in lifecycle),
        *([event, second["id"]] for event in ["ApplicationStop", *lifecycle]),
    ]
    assert hook_events(second) == ["ApplicationStop", *lifecycle]
    assert not cleanup_list.exists() or read_list(cleanup_list).files == []
