"""The benchmarks' inputs, built in a temporary folder: a big random object, a 20k-file tree, bundles."""

from __future__ import annotations

import os
import random
from pathlib import Path

from s3deploy.bundle.pack import make_zip

WORDS = b"deploy bundle release hook script static asset index module config service worker".split()


def big_file(path: Path, size: int) -> Path:
    """``size`` random bytes (incompressible, as a real archive is), written in 8 MiB blocks."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def file_tree(root: Path, n_entries: int, seed: int = 6) -> Path:
    """About ``n_entries`` entries: 100 files per folder, 1 in 8 executable, 1 in 100 a symlink.

    Sizes 100 B to 16 KiB of word soup (it compresses like source code does).
    """
    rng = random.Random(seed)
    made = 0
    folder_no = 0
    while made < n_entries:
        folder = root / f"pkg{folder_no // 20:03d}" / f"mod{folder_no:04d}"
        folder.mkdir(parents=True)
        made += 1 if folder_no % 20 else 2
        for i in range(100):
            if made >= n_entries:
                break
            path = folder / f"file{i:03d}.txt"
            if i % 100 == 99:
                path = folder / f"link{i:03d}"
                path.symlink_to(f"file{i - 1:03d}.txt")
            else:
                size = rng.randint(100, 16384)
                words = [rng.choice(WORDS) for _ in range(size // 6)]
                path.write_bytes(b" ".join(words)[:size])
                path.chmod(0o755 if i % 8 == 0 else 0o644)
            made += 1
        folder_no += 1
    return root


def hook(body: str) -> str:
    return f"#!/bin/sh\nset -eu\n{body}\n"


def bundle_dir(root: Path, destination: Path, app_entries: int, hook_body: str) -> Path:
    """A CodeDeploy bundle: ``app/`` (a file tree, or one page) installed to ``destination``, and four
    hooks running ``hook_body``."""
    app = root / "app"
    if app_entries > 1:
        file_tree(app, app_entries)
    else:
        app.mkdir(parents=True)
        (app / "index.html").write_text("<h1>hello</h1>\n")
    events = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
    (root / "scripts").mkdir()
    for event in events:
        script = root / "scripts" / f"{event}.sh"
        script.write_text(hook(hook_body))
        script.chmod(0o755)
    spec = "version: 0.0\nos: linux\n"
    spec += f"files:\n  - source: app\n    destination: {destination}\n"
    spec += "hooks:\n"
    for event in events:
        spec += f"  {event}:\n    - location: scripts/{event}.sh\n      timeout: 300\n"
    (root / "appspec.yml").write_text(spec)
    return root


def zipped(src: Path, out: Path) -> Path:
    make_zip(src, out)
    return out
