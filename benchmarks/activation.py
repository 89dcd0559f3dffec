"""B5-SYMLINK: B5's 20k-file bundle deployed end to end with ``activation = symlink``, beside the same
bundle with ``activation = copy`` and B5's shell baseline (``aws s3 cp && unzip && cp -a``), interleaved.

With symlink the unpacked tree becomes the release (its folders are renamed beside the destination, no
second copy of every file), so the target is tighter than B5's: at most 0.3x the baseline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.bench import Bench, _config, _interleaved
from benchmarks.endtoend import _deploy_case, shell_pipeline
from benchmarks.harness import Row, median, probe, ratio_row, run_json, timed

TARGET = 0.3


def b5_symlink(b: Bench, n_entries: int = 20_000) -> list[Row]:
    _, www, url = _deploy_case(b, "B5S", n_entries, "true")
    bucket, key = url[5:].split("/", 1)
    keys = {"s3_bucket": bucket, "target_file_key": key, "endpoint_url": b.endpoint, "destination": www}
    # one file per mode: a symlink section owns its destination alone (config.ini refuses an overlap)
    configs = {
        mode: _config(b.work / f"B5S-{mode}.ini", {mode: {**keys, "activation": mode.lower()}})
        for mode in ("Symlink", "Copy")
    }
    releases = www.parent / f".{www.name}.s3deploy-releases"

    def ours(section: str) -> float:
        # Each run starts from nothing, as B5's does: no link, no releases beside it, a fresh state.
        if www.is_symlink():
            www.unlink()
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(releases, ignore_errors=True)
        state = b.fresh(f"B5S-{section}-state")
        res = run_json(probe("deploy", str(configs[section]), str(state), section), b.env)
        if not res["ok"]:
            raise RuntimeError(f"B5S {section}: the deployment failed: {res.get('error')}")
        if (section == "Symlink") != www.is_symlink():
            raise RuntimeError(f"B5S {section}: {www} is not what activation = {section.lower()} makes")
        return float(res["seconds"])

    shell_www = b.work / "B5S-shell-www"
    pipeline, note = shell_pipeline(b, url, "b5s", shell_www)

    def shell() -> float:
        shutil.rmtree(shell_www, ignore_errors=True)
        return timed([pipeline], b.env, shell=True)

    res = _interleaved(
        b.reps, {"symlink": lambda: ours("Symlink"), "copy": lambda: ours("Copy"), "shell": shell}
    )
    copy_s = median(res["copy"])
    note += (
        f"; ours: one poll (HEAD → pinned GET → unpack → stage by renames → switch → 4 hooks → state); "
        f"activation = copy on the same bundle: {copy_s:.2f} s ({copy_s / median(res['shell']):.2f}×)"
    )
    row = ratio_row(
        f"B5-SYMLINK end to end, {n_entries // 1000}k-file bundle, activation = symlink",
        res["symlink"],
        res["shell"],
        TARGET,
        note=note,
    )
    row.samples["copy"] = res["copy"]
    for path in (shell_www, b.work / "b5s-shell", Path(releases)):
        shutil.rmtree(path, ignore_errors=True)
    return [row]
