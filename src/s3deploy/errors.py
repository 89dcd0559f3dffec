"""The exceptions s3deploy raises. Library code raises these; only the CLI prints and exits.

Every message says what failed, where (file, section, key, bucket/key, archive entry, hook script)
and, where it can, what is expected.
"""

from __future__ import annotations

from s3deploy.common.text import bounded


class S3DeployError(Exception):
    """Base of every error s3deploy raises on purpose."""


class ConfigError(S3DeployError):
    """config.ini (or a command-line override) is invalid. The CLI exits 2."""


class SourceError(S3DeployError):
    """Talking to S3 failed: network, 5xx, throttling, access denied, missing bucket or key.

    ``retryable`` is False for errors that will not go away by themselves soon
    (bad request, precondition failed because the object changed) but the watcher
    retries everything with backoff anyway; the flag only tunes logging.
    """

    def __init__(self, message: str, *, code: str = "", retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class RevisionChanged(SourceError):
    """The object changed between the HEAD and the GET (If-Match / VersionId no longer matches)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="PreconditionFailed", retryable=True)


class BundleError(S3DeployError):
    """A downloaded bundle is corrupt, too large, or holds an unsafe entry (named in the message)."""


class AppSpecError(S3DeployError):
    """appspec.yml is missing or invalid. ``problems`` lists every problem found, one line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class InstallError(S3DeployError):
    """The Install step failed (a DISALLOW conflict, a copy error, a permission that cannot be applied)."""


class HookFailed(S3DeployError):
    """A lifecycle hook script exited non-zero, was missing, or ran past its timeout."""

    def __init__(
        self, message: str, *, event: str, script: str, exit_code: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.event = event
        self.script = script
        self.exit_code = exit_code
        self.timed_out = timed_out


class LockBusy(S3DeployError):
    """Another s3deploy process holds a lock this one needs. The CLI exits 3."""


class Interrupted(S3DeployError):
    """A one-shot command was stopped by a signal; its deployment was stopped and recorded. Exit 1."""


def describe(error: BaseException) -> str:
    """An error as stored and shown: ours as they are, any other with its type and a bounded message (a
    bug or an unforeseen input must still say what happened, briefly, and never as a traceback)."""
    if isinstance(error, S3DeployError):
        return str(error)
    return f"{type(error).__name__}: {bounded(error, 500)}"
