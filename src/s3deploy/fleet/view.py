"""``fleet status``: the rollout of one revision as the bucket shows it, read-only.

Three LISTs (``control/``, ``hosts/``, ``reports/``) and one small GET per report and per slot, at most
:data:`~s3deploy.fleet.slots.READ_CONCURRENCY` at once. Nothing is written, so any machine with the
config and read access can run it. Every string shown comes from a strictly parsed object (printable,
bounded); a report that cannot be read shows its host as ``pending`` with the reason as its error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from s3deploy.errors import SourceError
from s3deploy.fleet.context import HostContext
from s3deploy.fleet.errors import MalformedObject
from s3deploy.fleet.keys import host_in
from s3deploy.fleet.records import (
    MAX_BODY_BYTES,
    MAX_FLEET_HOSTS,
    Report,
    SlotClaim,
    StopOrder,
    iso,
    read_report,
)
from s3deploy.fleet.rollout import Rollout
from s3deploy.fleet.slots import gather_limited
from s3deploy.source.revision import Revision


@dataclass(frozen=True)
class HostRow:
    """One host of the rollout: ``pending`` (in the fleet, no report yet) or its report's state."""

    host: str
    state: str
    deployment_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    alive: bool = True  # its heartbeat is fresh (by S3's clock)


@dataclass(frozen=True)
class SlotRow:
    """One slot object: who holds it (None when its content is unreadable) and since when."""

    slot: int
    host: str | None
    since: str
    stale: bool  # its lease ran out: the next waiting host takes it over


@dataclass(frozen=True)
class FleetView:
    """What ``fleet status`` shows for one section and revision."""

    section: str
    revision: Revision
    stopped: bool
    stop: StopOrder | None
    max_concurrent: int
    fleet_size: int | None
    hosts: tuple[HostRow, ...]
    slots: tuple[SlotRow, ...]
    server_time: datetime

    def to_json(self) -> dict[str, Any]:
        """Exactly the JSON of SPEC §10 (``fleet status --json``)."""
        return {
            "section": self.section,
            "revision": {
                "key": self.revision.key,
                "etag": self.revision.etag,
                "version_id": self.revision.version_id,
            },
            "stopped": self.stopped,
            "max_concurrent": self.max_concurrent,
            "hosts": [
                {
                    "host": h.host,
                    "state": h.state,
                    "deployment_id": h.deployment_id,
                    "started_at": h.started_at,
                    "finished_at": h.finished_at,
                    "error": h.error,
                }
                for h in self.hosts
            ],
            "slots": [{"slot": s.slot, "host": s.host, "since": s.since} for s in self.slots],
        }


async def read_view(ctx: HostContext, rollout: Rollout) -> FleetView:
    """Read the rollout's objects into a FleetView (SourceError when S3 fails)."""
    control = await rollout.table.look()
    stop = await rollout.stop_order() if control.stop else None
    size = await rollout.fleet_size(control, create=False)
    k = ctx.settings.max_concurrent.slots(size)
    alive = await _fresh_hosts(ctx)
    reports = await _reports(ctx, rollout)
    rows = dict.fromkeys(sorted(alive | reports.keys()))
    hosts = tuple(_row(host, reports.get(host), host in alive) for host in rows)
    indices = sorted(control.slots)
    claims = await gather_limited([functools.partial(_claim, rollout, i) for i in indices])
    slots = []
    for index, claim in zip(indices, claims, strict=True):
        if claim is None:
            continue  # freed between the LIST and the GET
        listed = control.slots[index]
        stale = control.is_stale(listed, rollout.lease_s)
        if isinstance(claim, SlotClaim):
            slots.append(SlotRow(index, claim.host, claim.since, stale))
        else:
            slots.append(SlotRow(index, None, iso(listed.last_modified), stale))
    return FleetView(
        section=ctx.settings.section,
        revision=rollout.revision,
        stopped=control.stop,
        stop=stop,
        max_concurrent=k,
        fleet_size=size,
        hosts=hosts,
        slots=tuple(slots),
        server_time=control.server_time,
    )


async def _claim(rollout: Rollout, index: int) -> SlotClaim | str | None:
    try:
        return await rollout.table.claim_of(index)
    except MalformedObject as e:
        return str(e)


def _row(host: str, report: Report | str | None, alive: bool) -> HostRow:
    if report is None:
        return HostRow(host, "pending", alive=alive)
    if isinstance(report, str):
        return HostRow(host, "pending", error=report, alive=alive)
    return HostRow(
        host,
        report.state,
        report.deployment_id,
        report.started_at,
        report.finished_at,
        report.error,
        alive=alive,
    )


async def _fresh_hosts(ctx: HostContext) -> set[str]:
    prefix = ctx.settings.keys.hosts
    store = ctx.store
    listing = await store.pool.listing(store.endpoint, store.bucket, prefix, max_objects=MAX_FLEET_HOSTS)
    fresh = ctx.timing.fresh_s
    return {
        host
        for key, rev in listing.objects.items()
        if (host := host_in(prefix, key)) is not None
        and (listing.server_time - rev.last_modified).total_seconds() < fresh
    }


async def _reports(ctx: HostContext, rollout: Rollout) -> dict[str, Report | str]:
    """Every host's report, or why it cannot be read (a string)."""
    prefix = rollout.keys.reports
    store = ctx.store
    listing = await store.pool.listing(store.endpoint, store.bucket, prefix, max_objects=MAX_FLEET_HOSTS)
    hosts = sorted(h for h in (host_in(prefix, key) for key in listing.objects) if h is not None)

    async def one(host: str) -> Report | str | None:
        key = rollout.keys.report(host)
        try:
            found = await store.get(key, max_bytes=MAX_BODY_BYTES)
            if found is None:
                return None
            return read_report(found.body, ctx.url(key), host=host)
        except MalformedObject as e:
            return f"unreadable report: {e}"
        except SourceError as e:
            if e.code != "TooLarge":
                raise
            return f"unreadable report: more than {MAX_BODY_BYTES} bytes"

    found = await gather_limited([functools.partial(one, h) for h in hosts])
    return {host: report for host, report in zip(hosts, found, strict=True) if report is not None}
