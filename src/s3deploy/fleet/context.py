"""What every part of a section's coordination shares: who this host is, where the objects live, how
often to look, and how to get ready before taking part in a rollout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from s3deploy.fleet.owned import OwnedObjects
from s3deploy.fleet.policy import FleetSettings, Timing
from s3deploy.source.conditional import ObjectStore


@dataclass(frozen=True)
class HostContext:
    """One host in one section's fleet (built by the Coordinator, read by rollouts)."""

    settings: FleetSettings
    timing: Timing
    host: str
    store: ObjectStore
    owned: OwnedObjects
    #: The conditional-write check (once per store) and the heartbeat when due.
    prepare: Callable[[], Awaitable[None]]

    def url(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"
