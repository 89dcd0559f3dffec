"""Issue 9, replayed against the real daemon: the application user and the bundle against Install and the
release folders (items 1, 3, 5, 18) and a few attacks the issue did not list.

The application user is a real local user (useradd) that owns the web root through the appspec's
``permissions``, as common appspecs do; the agent is a real daemon of two sections (tests/attacks.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.agent import APPSPEC_HEADER, appspec, wait_until, zip_bytes
from tests.attacks import User, Victim
from tests.test_install_links import full_snapshot


def owned_spec(dest: Path, user: User, extra: str = "", hooks: str = "") -> str:
    """Files into ``dest``, all of it given to ``user`` (the application user owns the web root)."""
    return (
        f"{APPSPEC_HEADER}files:\n  - source: app\n    destination: {dest}\n"
        f"permissions:\n  - object: {dest}\n    owner: {user.name}\n{extra}{hooks}"
    )


def root_folder(base: Path) -> Path:
    """A root-owned folder outside every destination (a stand-in for /etc/cron.d)."""
    cron = base / "cron.d"
    cron.mkdir(mode=0o755)
    for name in ("a.txt", "b.txt", "job"):
        (cron / name).write_text(f"root's {name}\n")
    return cron


def test_item1_install_never_follows_a_link_the_application_user_planted(
    victim: Victim, app_user: User
) -> None:
    """Issue 9 item 1: "That user replaces an installed folder with a symlink to a root-owned folder (say
    /etc/cron.d); the next deployment, as root, deletes files there (cleanup of the previous release goes
    through the link), overwrites and chowns files there (lchown protects only the last path component),
    and chmods the target folder 0777 (os.chmod follows links) ... Same for ACLs and SELinux contexts."
    (No SELinux on the test hosts: the context goes through the same descriptor as the ACL.)"""
    dest, cron = victim.dest("Target"), root_folder(victim.base)
    victim.start()
    v1 = {"app/index.html": "1", "app/www/a.txt": "1", "app/www/b.txt": "1"}
    victim.upload("Target", zip_bytes({"appspec.yml": owned_spec(dest, app_user), **v1}))
    assert victim.wait_finished(1)["status"] == "succeeded"
    assert (dest / "www").stat().st_uid == app_user.uid
    app_user.run(f"mv {dest}/www {dest}/www-old && ln -s {cron} {dest}/www")
    before = full_snapshot(cron)

    # v2 overwrites www/a.txt, adds www/c.txt, drops www/b.txt, chmods 0777 and sets an ACL.
    spec = owned_spec(dest, app_user, f"    mode: 777\n    acls: ['u:{app_user.name}:rwx']\n")
    v2 = {"app/index.html": "2", "app/www/a.txt": "2", "app/www/c.txt": "2"}
    victim.upload("Target", zip_bytes({"appspec.yml": spec, **v2}))
    victim.wait_revisions(2)  # and the rollback to v1 (refused too: the link is still there)
    failed = victim.last_revision()
    assert failed["failed_event"] == "Install"
    assert f"{dest}/www is a symbolic link inside a destination" in failed["error"]
    assert full_snapshot(cron) == before, "root followed the application user's link"
    victim.bystander_deploys()
    victim.assert_clean_output()


def test_item1_a_link_swapped_in_and_out_during_deployments_is_never_followed(
    victim: Victim, app_user: User
) -> None:
    """Issue 9 item 1, raced: "Never traverse a link in a destination that this agent did not create
    itself". The application user swaps its folder for a link to a root folder and back, as fast as it
    can, while revisions that delete, write, chown and chmod there deploy one after the other."""
    dest, cron = victim.dest("Target"), root_folder(victim.base)
    victim.start()
    victim.upload("Target", zip_bytes({"appspec.yml": owned_spec(dest, app_user), "app/www/a.txt": "0"}))
    assert victim.wait_finished(1)["status"] == "succeeded"
    before = full_snapshot(cron)
    swapper = subprocess.Popen(
        ["/bin/sh", "-c", f"cd {dest}; while :; do mv www w; ln -s {cron} www; sleep 0.001; rm -f www; "
         "mv w www; done 2>/dev/null"],
        user=app_user.uid, group=app_user.gid, extra_groups=[], start_new_session=True,
    )  # fmt: skip
    try:
        for n in range(1, 6):
            files = {f"app/www/{name}": str(n) for name in ("a.txt", f"n{n}.txt", "job")}
            spec = owned_spec(dest, app_user, "    mode: 777\n")
            victim.upload("Target", zip_bytes({"appspec.yml": spec, **files}))
            victim.wait_revisions(n + 1)
    finally:
        os.killpg(swapper.pid, 9)
        swapper.wait()
    assert full_snapshot(cron) == before, "root followed the application user's link"
    victim.bystander_deploys()
    victim.assert_clean_output()


def test_item3_no_local_user_can_change_a_script_root_runs_later(victim: Victim, app_user: User) -> None:
    """Issue 9 item 3: "a bundle with a 0777 folder or 0666 file keeps that mode under releases/ ... so
    any local user can replace scripts/stop.sh, which the next deployment runs as root as the previous
    release's ApplicationStop (a rollback runs from there too). Nothing under the state directory may be
    writable by anyone but root ... (the installed files keep the modes the bundle and the appspec give
    them)"."""
    dest, pwned = victim.dest("Target"), victim.base / "pwned"
    spec = appspec(dest, {"ApplicationStop": "scripts/stop.sh"})
    files = {"appspec.yml": spec, "scripts/stop.sh": ("#!/bin/sh\necho stopping\n", 0o777),
             "app/open.txt": ("0666", 0o666), "app/data/x": "x"}  # fmt: skip
    victim.start()
    victim.upload("Target", zip_bytes(files))
    release = Path(victim.wait_finished(1)["release_dir"])
    stop_sh = release / "bundle/scripts/stop.sh"
    attempts = {
        "rewrite stop.sh": f"echo 'touch {pwned}' >> {stop_sh}",
        "replace stop.sh": f"echo 'touch {pwned}' > {stop_sh}.new && mv {stop_sh}.new {stop_sh}",
        "plant a script": f"echo x > {release}/bundle/scripts/planted",
        "list the release": f"ls {release.parent}",
    }
    for what, command in attempts.items():
        assert app_user.run(command, check=False).returncode != 0, f"a local user could {what}"
    for path in [victim.state_dir, *victim.state_dir.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode):
            assert st.st_mode & 0o022 == 0, f"{path} is writable by others ({st.st_mode:o})"
    assert stat.S_IMODE((dest / "open.txt").stat().st_mode) == 0o666  # the bundle's mode, where installed
    victim.upload("Target", zip_bytes({**files, "app/data/x": "y"}))
    assert victim.wait_finished(2)["status"] == "succeeded"
    assert not pwned.exists()
    victim.bystander_deploys()


def plain_spec(dest: Path, behavior: str = "DISALLOW") -> str:
    files = f"files:\n  - source: app\n    destination: {dest}\n"
    return f"{APPSPEC_HEADER}{files}file_exists_behavior: {behavior}\n"


def test_item18_the_plan_sees_the_cleanup_and_the_other_sections_before_anything_changes(
    victim: Victim,
) -> None:
    """Issue 9 item 18: "a v1 folder that becomes a file in v2 (holding a foreign file) removes v1's files
    before the plan fails (the plan check missed it); a file section B took over with OVERWRITE is
    deleted by section A's next deployment. Plan both before anything changes." Here A is Target and B
    is Bystander, both deploying into Target's destination."""
    dest = victim.dest("Target")
    victim.start()
    v1 = {"app/x/a.txt": "1", "app/x/deep/b.txt": "1", "app/index.html": "1", "app/shared.conf": "A"}
    victim.upload("Target", zip_bytes({"appspec.yml": plain_spec(dest), **v1}))
    assert victim.wait_finished(1)["status"] == "succeeded"
    (dest / "x/deep/foreign.txt").write_text("the operator's")
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    victim.upload("Target", zip_bytes({"appspec.yml": plain_spec(dest), "app/x": "a file now"}))
    victim.wait_revisions(2)
    failed = victim.last_revision()
    assert failed["failed_event"] == "Install" and "foreign.txt" in failed["error"], failed["error"]
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before  # v1 still whole

    # B takes shared.conf over with OVERWRITE; A's next release (without it) must leave it to B.
    victim.upload(
        "Bystander", zip_bytes({"appspec.yml": plain_spec(dest, "OVERWRITE"), "app/shared.conf": "B"})
    )
    wait_until(lambda: (dest / "shared.conf").read_text() == "B", timeout=60)
    (dest / "x/deep/foreign.txt").unlink()
    victim.upload("Target", zip_bytes({"appspec.yml": plain_spec(dest), "app/index.html": "3"}))
    wait_until(lambda: (dest / "index.html").read_text() == "3", timeout=60)
    assert (dest / "shared.conf").read_text() == "B", "A deleted the file B took over"
    victim.bystander_deploys()
    assert not (dest / "shared.conf").exists()  # B's next release, without it, removed it
    victim.assert_clean_output()


def test_new_a_hook_that_opens_its_release_to_others_cannot_let_them_change_what_root_runs_later(
    victim: Victim, app_user: User
) -> None:
    """Not in issue 9 (found replaying item 3): a hook runs as root in its release and may open it again
    (``chmod -R a+w .``, common in "fix permissions" scripts); a local user then rewrites scripts/stop.sh,
    which the next deployment ran as root as the previous release's ApplicationStop. Such a release is
    not used again: its ApplicationStop is skipped, saying why."""
    dest, pwned = victim.dest("Target"), victim.base / "pwned"
    spec = appspec(dest, {"ApplicationStop": "scripts/stop.sh", "AfterInstall": "scripts/build.sh"})
    build = "mkdir -p cache && chmod -R a+w . && echo built"
    files = {"appspec.yml": spec, "scripts/stop.sh": "#!/bin/sh\necho stopping\n",
             "scripts/build.sh": f"#!/bin/sh\n{build}\n", "app/x": "1"}  # fmt: skip
    victim.start()
    victim.upload("Target", zip_bytes(files))
    first = victim.wait_finished(1)
    assert first["status"] == "succeeded", first["error"]
    stop_sh = Path(first["release_dir"]) / "bundle/scripts/stop.sh"
    app_user.run(f"echo 'touch {pwned}' >> {stop_sh}")  # the hook left it open: the attack works
    victim.upload("Target", zip_bytes({**files, "app/x": "2"}))
    assert victim.wait_finished(2)["status"] == "succeeded"
    assert not pwned.exists(), "root ran the script a local user rewrote"
    out = victim.daemon.output() if victim.daemon else ""
    assert f"release of {first['id']} cannot be used: release entry " in out and "writable by others" in out
    victim.bystander_deploys()
