"""The human `history` table's rows: what an operator reads without --json."""

from __future__ import annotations

from datetime import UTC, datetime

from s3deploy.cli.report import HISTORY_COLUMNS, history_row
from s3deploy.state.model import Deployment, SignedBy

START = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def deployment(**changes: object) -> Deployment:
    base: dict[str, object] = {
        "id": "d-1", "section": "Web", "bucket": "b", "key": "k", "etag": '"e"', "version_id": "v1",
        "identity": "v1", "status": "succeeded", "started_at": START, "finished_at": START,
        "failed_event": None, "error": None, "rollback_of": None, "restores": None, "release_dir": None,
        "log_path": None, "output_tail": "", "forced": False,
    }  # fmt: skip
    return Deployment(**{**base, **changes})  # type: ignore[arg-type]


def note(d: Deployment) -> str:
    return str(history_row(d)[HISTORY_COLUMNS.index("note")])


def test_a_signed_deployment_names_its_signer_key_and_serial() -> None:
    signer = SignedBy("release@example.com", "SHA256:abc", 7)
    assert note(deployment(signed_by=signer)) == "signed by release@example.com (SHA256:abc, serial 7)"
    failed = deployment(signed_by=signer, status="failed", error="AfterInstall exited 1")
    assert note(failed) == "signed by release@example.com (SHA256:abc, serial 7); AfterInstall exited 1"


def test_an_unsigned_deployment_shows_only_its_error_or_rollback() -> None:
    assert note(deployment()) == ""
    assert note(deployment(restores="d-0", rollback_of="d-2")) == "rollback of d-2, restores d-0"
