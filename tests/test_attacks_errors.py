"""Issue 9, replayed against the real daemon: errors that are not s3deploy's own (item 2), a full disk.

Each attack goes to the section ``Target`` of a running two-section daemon (tests/attacks.py); the
deployment must end failed with its event and a clear error, the revision must not be retried, and the
section ``Bystander`` must go on deploying.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent import APPSPEC_HEADER, appspec, hook_script, wait_until, zip_bytes
from tests.attacks import Victim


def non_utf8_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("../caf\udce9"), io.BytesIO(b""))  # the byte 0xe9: not UTF-8
    return buf.getvalue()


def spec_bundle(spec: str) -> bytes:
    return zip_bytes({"appspec.yml": APPSPEC_HEADER + spec, "s.sh": hook_script("true")})


HOOK = "hooks:\n  BeforeInstall:\n    - location: {location}\n      timeout: {timeout}\n"
#: Item 2's triggers that a bundle carries: (what, archive, event, words the error must hold).
TRIGGERS = [
    ("a zip path 1,500 folders deep",
     zip_bytes({"appspec.yml": APPSPEC_HEADER, "d/" * 1500 + "x": "x"}),
     "DownloadBundle", "folders deep"),
    ("deeply nested YAML", spec_bundle("x: " + "[" * 2000 + "]" * 2000 + "\n"),
     "DownloadBundle", "nesting depth"),
    ("a hook timeout of 400 digits", spec_bundle(HOOK.format(location="s.sh", timeout="9" * 400)),
     "DownloadBundle", "timeout"),
    ("a NUL in a hook location", spec_bundle(HOOK.format(location='"s\\0.sh"', timeout=60)),
     "DownloadBundle", "control characters"),
    ("a NUL in runas", spec_bundle(HOOK.format(location="s.sh", timeout=60) + '      runas: "ro\\0ot"\n'),
     "DownloadBundle", "control characters"),
    ("a NUL in a files destination", spec_bundle('files:\n  - source: s.sh\n    destination: "/tmp/\\0x"\n'),
     "DownloadBundle", "control characters"),
    ("a NUL in a permissions owner",
     spec_bundle('permissions:\n  - object: /tmp/s3deploy-none\n    owner: "ro\\0ot"\n'),
     "DownloadBundle", "control characters"),
    ("a non-UTF-8 tar entry name in the error", non_utf8_tar(), "DownloadBundle", "caf\\udce9"),
]  # fmt: skip


def test_item2_errors_that_are_not_s3deploys_own_fail_the_deployment_and_are_not_retried(
    victim: Victim,
) -> None:
    """Issue 9 item 2: "Any error that is not an S3DeployError strands a deployment: the row stays
    running, there is no rollback, status says deploying forever, and the daemon restarts the watcher and
    redeploys at every poll ... Every deployment ends failed (or rolled back) with the event and a clear
    error, and the failed revision is not retried until the object changes"."""
    victim.start()
    for count, (what, body, event, words) in enumerate(TRIGGERS, start=1):
        victim.upload("Target", body)
        row = victim.wait_finished(count)
        assert len(victim.rows()) == count, f"{what}: deployed more than once"
        assert (row["status"], row["failed_event"]) == ("failed", event), (what, row)
        assert words in row["error"], (what, row["error"])
        assert row["error"].isprintable() or "\n" in row["error"], (what, row["error"])
    time.sleep(1.5)  # five polls: a failed revision is not tried again
    assert len(victim.rows()) == len(TRIGGERS)
    st = victim.status()["Target"]
    assert st["state"] == "failed" and st["last"]["status"] == "failed"
    victim.bystander_deploys()
    victim.assert_clean_output()


@pytest.mark.parametrize("stage", ["download", "hook output"])
def test_item2_a_full_disk_is_transient_and_the_daemon_keeps_serving(
    victim: Victim, small_disk: Callable[[str, Path], Path], stage: str
) -> None:
    """Issue 9 item 2: "disk full during download (ENOSPC), the hook log write failing (the output reader
    dies and the hook blocks on a full pipe until its own timeout) ... Disk full is transient (retried
    with backoff), not a permanent failure"."""
    small_disk("4m", victim.state_dir)
    victim.start()
    if stage == "download":
        hostile = zip_bytes({"appspec.yml": appspec(None, {}), "big.bin": os.urandom(6 << 20)})
        victim.upload("Target", hostile)
        row = victim.wait_finished(2)  # tried again: transient
        assert (row["status"], row["failed_event"]) == ("failed", "DownloadBundle")
        assert "disk full" in row["error"] and "tried again later" in row["error"], row["error"]
    else:
        # The hook fills the disk the logs live on, then writes more than a pipe holds: the agent must
        # keep reading it (else it blocks on a full pipe until its timeout), then frees the space.
        fill = 'cat /dev/zero > "$S3DEPLOY_BUNDLE_DIR/fill" 2>/dev/null || true\n'
        body = fill + "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done\n"
        body += 'rm -f "$S3DEPLOY_BUNDLE_DIR/fill"'
        spec = appspec(None, {"BeforeInstall": "fill.sh"}).replace("timeout: 60", "timeout: 30")
        victim.upload("Target", zip_bytes({"appspec.yml": spec, "fill.sh": hook_script(body)}))
        row = victim.wait_finished(1)
        assert row["status"] == "succeeded", row
        assert "line 19999" in row["output_tail"]
    victim.bystander_deploys()
    victim.upload("Target", zip_bytes({"appspec.yml": appspec(victim.dest("Target"), {}), "app/marker": "t"}))
    wait_until(lambda: (victim.dest("Target") / "marker").exists(), timeout=60)
    victim.assert_clean_output()
