"""Stopping an Install that runs in a thread: a flag checked between files."""

from __future__ import annotations

import threading

from s3deploy.errors import InstallError


class InstallCancelled(InstallError):
    """Install stopped because the deployment was cancelled (deployment_timeout, shutdown)."""


def checkpoint(cancel: threading.Event | None) -> None:
    """Raise InstallCancelled when ``cancel`` is set: called before each file and folder is changed, so
    Install stops within one file's copy and the cleanup list still covers everything it put on disk."""
    if cancel is not None and cancel.is_set():
        raise InstallCancelled(
            "Install stopped: the deployment was cancelled (deployment_timeout or shutdown); "
            "the files copied so far are in the cleanup list and the next Install removes them"
        )
