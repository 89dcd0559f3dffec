"""The operator's fleet commands (SPEC §10): ``fleet status``, ``fleet stop``, ``fleet resume``.

Each looks at the section's current revision (one HEAD) and reads or writes its rollout's objects in the
bucket. Nothing here needs the state directory: any machine with the config and access to the bucket
can run them. Library code: it raises S3DeployError (ConfigError for a section that is not coordinated).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from s3deploy.config import Section
from s3deploy.errors import ConfigError
from s3deploy.fleet.coordinator import Coordinator, HostFleet
from s3deploy.fleet.view import FleetView
from s3deploy.fleet_gate import fleet_settings
from s3deploy.source.revision import Endpoint, Revision
from s3deploy.source.s3 import S3Pool

T = TypeVar("T")


async def _with_rollout(
    section: Section, host_id: str, action: Callable[[Coordinator, Revision], Awaitable[T]]
) -> tuple[Revision, T]:
    if section.max_concurrent is None:
        raise ConfigError(
            f"[{section.name}] is not a coordinated section: set max_concurrent in it to roll its revisions "
            "out across hosts (SPEC §10)"
        )
    endpoint = Endpoint(section.profile_name, section.region, section.endpoint_url)
    async with S3Pool() as pool:
        revision = await pool.head(endpoint, section.s3_bucket, section.target_file_key)
        coordinator = HostFleet(pool, host_id).coordinator(fleet_settings(section, endpoint))
        return revision, await action(coordinator, revision)


async def fleet_view(section: Section, host_id: str) -> FleetView:
    """The rollout of the section's current revision as the bucket shows it (reads only)."""
    _, view = await _with_rollout(section, host_id, lambda c, rev: c.view(rev))
    return view


async def fleet_stop(section: Section, host_id: str) -> tuple[Revision, bool]:
    """Stop the rollout of the current revision; False when it was stopped already."""
    return await _with_rollout(section, host_id, lambda c, rev: c.stop(rev))


async def fleet_resume(section: Section, host_id: str) -> tuple[Revision, bool]:
    """Let the rollout of the current revision go on; False when it was not stopped."""
    return await _with_rollout(section, host_id, lambda c, rev: c.resume(rev))
