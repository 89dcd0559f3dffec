"""Issue 9, replayed against the real daemon: what a bundle carries against the daemon's memory, CPU,
terminal and logs (items 4, 14, 19).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.agent import APPSPEC_HEADER, appspec, cli, hook_script, zip_bytes
from tests.attacks import Victim
from tests.test_appspec_hostile import BILLION_LAUGHS

ESC = "\x1b"
OSC = "\x1b]0;pwned\x07"  # a terminal title change
MARKUP = "[bold red]x[/]"


def test_item4_an_appspec_cannot_exhaust_memory_or_freeze_the_daemon(victim: Victim) -> None:
    """Issue 9 item 4: "a 600-byte "billion laughs" appspec (YAML aliases) makes validation expand ~4×10⁷
    items while holding the GIL; another section deployed 36 s late, then MemoryError. A plain 3 MB
    appspec costs 42 s of CPU and 676 MB. Cap the appspec's size, refuse or bound aliases ... validate
    and publish too." Bystander deploys right after each (tests/test_appspec_hostile.py: validate and
    publish through the command line)."""
    big = (
        APPSPEC_HEADER
        + "files:\n"
        + "".join(f"  - source: app\n    destination: /srv/app{i:07d}\n" for i in range(70_000))
    )
    victim.start()
    attacks = [("billion laughs", BILLION_LAUGHS, "billion laughs"), ("3 MB", big, "larger than 1048576")]
    for n, (what, spec, words) in enumerate(attacks, start=1):
        victim.upload("Target", zip_bytes({"appspec.yml": spec, "app/x": "x"}))
        victim.bystander_deploys()
        row = victim.wait_finished(n)
        assert row["failed_event"] == "DownloadBundle" and words in row["error"], (what, row["error"])
    victim.assert_clean_output()


def test_item14_escape_sequences_and_markup_from_a_bundle_never_reach_a_terminal_or_a_log_raw(
    victim: Victim,
) -> None:
    """Issue 9 item 14: "Terminal escape sequences (OSC/CSI) from hook output and archive entry names
    reach status/history and the logs raw; config errors echo control characters raw. Show them
    escaped." (tests/test_cli.py shows the same on a terminal.)"""
    victim.start()
    victim.upload("Target", zip_bytes({"appspec.yml": APPSPEC_HEADER, f"../{OSC}{MARKUP}": "x"}))
    refused = victim.wait_finished(1)
    hook = hook_script(f"printf '{OSC}\\033[2J{MARKUP}\\n'; exit 1")
    spec = appspec(None, {"BeforeInstall": "h.sh"})
    victim.upload("Target", zip_bytes({"appspec.yml": spec, "h.sh": hook}))
    failed = victim.wait_finished(2)
    assert "\\x1b]0;pwned\\x07" in refused["error"] and "\\x1b[2J" in failed["error"], failed["error"]
    args = ("-c", str(victim.config), "--state-dir", str(victim.state_dir))
    shown = [cli("status", *args).stdout, cli("history", "Target", *args).stdout]
    shown.append(json.dumps(victim.status()))
    shown += [victim.daemon.output() if victim.daemon else "", Path(failed["log_path"]).read_text()]
    for text in shown:
        assert ESC not in text and "\x07" not in text
    assert MARKUP in shown[1]  # shown as written, not applied
    victim.config.write_text(victim.config.read_text() + f"\n[Bad{OSC}]\ns3_bucket = b{ESC}[31m\n")
    proc = cli("list", "-c", str(victim.config))
    assert proc.returncode == 2 and "\\x1b]0;pwned" in proc.stderr and ESC not in proc.stderr, proc.stderr
    victim.bystander_deploys()


def test_item19_a_flood_of_hook_output_is_capped_and_a_hoisted_link_cannot_leave_the_bundle(
    victim: Victim,
) -> None:
    """Issue 9 item 19: "the per-deployment log has no size cap (cap it, keep the tail, say how much was
    dropped) ... a hoisted bundle keeps a link top/up -> .. that after hoisting points outside the bundle
    root"."""
    flood = hook_script("yes 'a line of output, again and again' | head -c 40000000\necho the last line")
    spec = appspec(victim.dest("Target"), {"BeforeInstall": "flood.sh"})
    victim.start()
    victim.upload("Target", zip_bytes({"appspec.yml": spec, "flood.sh": flood, "app/x": "x"}))
    row = victim.wait_finished(1, timeout=120)
    assert row["status"] == "succeeded", row["error"]
    log = Path(row["log_path"])
    assert log.stat().st_size <= 16 << 20
    text = log.read_text()
    assert "bytes of earlier output dropped" in text and text.rstrip().endswith("the last line")
    hoisted = zip_bytes({"top/appspec.yml": APPSPEC_HEADER, "top/x": "x"}, links={"top/up": ".."})
    victim.upload("Target", hoisted)
    row = victim.wait_finished(2)
    assert row["failed_event"] == "DownloadBundle" and '"top/up"' in row["error"], row["error"]
    victim.bystander_deploys()
    victim.assert_clean_output()
