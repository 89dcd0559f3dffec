"""The one exception of signature checks; its message starts with ``signature:`` and names the check."""

from __future__ import annotations

from s3deploy.errors import S3DeployError


class SigningError(S3DeployError):
    """A signature, manifest or signers file failed a check; nothing of the revision may be used.

    ``check`` names the failed check in a word or two (``format``, ``namespace``, ``unknown key``,
    ``expired``, ``binding``, ``serial``, ``sha256`` ...); the message is ``signature: CHECK: detail``.
    """

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"signature: {check}: {detail}")
        self.check = check
        self.detail = detail


class SignersFileError(SigningError):
    """The allowed_signers file cannot be read or has invalid lines; ``problems`` lists each as
    ``PATH:LINE: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__("trusted_signers", problems[0] + more)
        self.problems = problems
