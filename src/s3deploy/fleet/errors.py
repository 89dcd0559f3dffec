"""The exceptions of fleet coordination. Each message names the section's bucket and key (or the store)."""

from __future__ import annotations

from s3deploy.errors import S3DeployError


class FleetError(S3DeployError):
    """Coordinating a section's rollout through its bucket failed or refused to go on."""


class ConditionalWritesUnsupported(FleetError):
    """The store accepted a write that its condition (``If-None-Match: *`` or ``If-Match``) forbids.

    Slots would no longer have one owner each, so a coordinated section refuses to deploy.
    """


class RolloutStopped(FleetError):
    """The rollout of this revision is stopped (a ``stop`` object exists): this host did not deploy it.

    ``reason`` is the stop object's reason (printable, bounded), ``by`` the host that stopped it.
    """

    def __init__(self, message: str, *, reason: str, by: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.by = by


class WaitAborted(FleetError):
    """The stop event was set while this host waited for a slot: it holds none and did not deploy."""


class SlotLost(FleetError):
    """This host's slot may have passed to another host (its lease could not be renewed in time)."""


class MalformedObject(FleetError):
    """A coordination object's content is not what s3deploy writes (bad JSON, a wrong field, too big).

    Objects in the bucket are hostile input: a malformed one only ever delays or stops a rollout.
    """
