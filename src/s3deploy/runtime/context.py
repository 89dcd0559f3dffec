"""What every watcher and deployer of one process shares, as the runtime opened it (runtime/agent.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from s3deploy.state.layout import StateLayout
from s3deploy.state.locks import SectionLocks
from s3deploy.state.store import StateStore

if TYPE_CHECKING:
    from s3deploy.fleet.coordinator import HostFleet
    from s3deploy.fleet.policy import Timing
    from s3deploy.metrics import Observer
    from s3deploy.source.s3 import ProgressCallback, S3Pool

#: How stale another process's state changes may be when an idle watcher decides it has nothing to do.
DATA_VERSION_TTL_S = 1.0


@dataclass
class AgentContext:
    """The state store, the S3 client pool, the locks, and how this process uses them."""

    layout: StateLayout
    state: StateStore
    pool: S3Pool
    locks: SectionLocks
    #: The daemon waits for a section lock held by a one-shot command; one-shot commands do not (exit 3).
    lock_wait: bool = True
    #: One-shot commands on a TTY: (what, total bytes) -> a callback per chunk downloaded, or None.
    progress: Callable[[str, int], ProgressCallback | None] | None = None
    #: Told about polls and deployments (metrics, systemd STATUS).
    observer: Observer | None = None
    #: This host's name in a fleet (``--host-id``); hooks see it as S3DEPLOY_HOST_ID.
    host_id: str = field(default_factory=socket.gethostname)
    #: How often coordinated sections look and write (None: the product's defaults; tests shorten it).
    fleet_timing: Timing | None = None
    _fleet: HostFleet | None = None
    _data_version: int = -1
    _data_version_at: float = float("-inf")

    async def state_token(self) -> tuple[int, int]:
        """Changes when another process or this one changed what deployment decisions read.

        Another process's changes are noticed within DATA_VERSION_TTL_S: one database call per second
        for the whole daemon instead of several per section and poll.
        """
        if time.monotonic() - self._data_version_at >= DATA_VERSION_TTL_S:
            self._data_version_at = time.monotonic()
            self._data_version = await asyncio.to_thread(self.state.data_version)
        return self._data_version, self.state.local_writes

    def host_fleet(self) -> HostFleet:
        """This process in every fleet it takes part in (made on first use: one conditional-write check
        per store and process). FleetError when the host id is not a valid one."""
        if self._fleet is None:
            from s3deploy.fleet.coordinator import HostFleet

            self._fleet = HostFleet(self.pool, self.host_id, timing=self.fleet_timing)
        return self._fleet

    def forget_state_token(self) -> None:
        """Read the data version again at the next ``state_token`` (tests; after a reload)."""
        self._data_version_at = float("-inf")
