"""What may be deleted: release folders beyond keep_revisions, deployment records beyond keep_history.

Pure decisions over one section's deployments (newest first); the store reads the rows and applies the
result. What a running deployment, the installed release, detection or a reference still needs is
always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from s3deploy.state.model import Deployment


def _exists(folder: str) -> bool:
    return Path(folder).exists()


def releases_to_prune(
    newest_first: Sequence[Deployment], keep: int, *, exists: Callable[[str], bool] = _exists
) -> list[Deployment]:
    """Deployments whose release_dir should be deleted, newest first.

    Keeps the ``keep`` newest release folders that exist (counting the current one), and always the
    folders of the current deployment, of any running one, and of the deployments they restore. A
    folder shared by several deployments is kept if any of them keeps it. Recorded folders that no
    longer exist are listed so the caller clears them.
    """
    current = next((d for d in newest_first if d.status == "succeeded"), None)
    protected = [d for d in newest_first if d.status == "running"] + ([current] if current else [])
    protected_ids = {d.id for d in protected} | {d.restores for d in protected if d.restores}
    with_dir = [d for d in newest_first if d.release_dir is not None]
    kept = {d.release_dir for d in with_dir if d.id in protected_ids}
    for d in with_dir:
        if len(kept) >= keep:
            break
        if d.release_dir not in kept and exists(str(d.release_dir)):
            kept.add(d.release_dir)
    return [d for d in with_dir if d.release_dir not in kept]


def records_to_trim(newest_first: Sequence[Deployment], keep: int) -> list[Deployment]:
    """Deployment records beyond the ``keep`` newest that nothing needs any more, newest first.

    Kept whatever ``keep`` says: the current deployment, running ones, the newest attempt of a revision
    from S3 (detection compares with it), those whose release folder is still recorded, and every
    deployment a kept one is a rollback of or restores (so no reference dangles).
    """
    if len(newest_first) <= keep:
        return []
    kept = {d.id for d in newest_first[:keep]}
    kept |= {d.id for d in newest_first if d.release_dir or d.status == "running"}
    current = next((d for d in newest_first if d.status == "succeeded"), None)
    attempt = next((d for d in newest_first if d.rollback_of is None and d.restores is None), None)
    kept |= {d.id for d in (current, attempt) if d is not None}
    by_id = {d.id: d for d in newest_first}
    todo = list(kept)
    while todo:
        row = by_id.get(todo.pop())
        for ref in (row.rollback_of, row.restores) if row else ():
            if ref and ref not in kept:
                kept.add(ref)
                todo.append(ref)
    return [d for d in newest_first if d.id not in kept]
