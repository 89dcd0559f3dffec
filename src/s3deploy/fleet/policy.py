"""The numbers of a rollout: how many slots (``max_concurrent``), how long a lease, how often to look.

Pure functions and values, no I/O: ``config.py`` parses ``max_concurrent`` with :meth:`MaxConcurrent.parse`,
the coordinator takes a :class:`Timing` (tests and benchmarks shorten it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from s3deploy.common.text import printable
from s3deploy.fleet.keys import DEFAULT_PREFIX, SectionKeys
from s3deploy.source.revision import Endpoint

#: Most slots a rollout may have (a number above it is a typo, not a fleet).
MAX_SLOTS = 10_000
_NUMBER = re.compile(r"[1-9][0-9]{0,4}")
_SHARE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,2})?)\s*%")


@dataclass(frozen=True)
class MaxConcurrent:
    """``max_concurrent``: a number of hosts, or a share of the fleet in hundredths of a percent."""

    count: int | None = None
    share_bp: int | None = None  # 2500 = 25 %

    @classmethod
    def parse(cls, value: str) -> MaxConcurrent:
        """``"3"`` or ``"25%"`` (up to two decimals); ValueError saying what is expected otherwise."""
        raw = value.strip()
        if _NUMBER.fullmatch(raw) and int(raw) <= MAX_SLOTS:
            return cls(count=int(raw))
        share = _SHARE.fullmatch(raw)
        if share:
            try:
                bp = int(Decimal(share.group(1)) * 100)
            except InvalidOperation:  # pragma: no cover - the pattern only lets digits through
                bp = 0
            if 0 < bp <= 10_000:
                return cls(share_bp=bp)
        raise ValueError(
            f"expected a number of hosts from 1 to {MAX_SLOTS} or a share of the fleet from 0.01% to 100% "
            f"(like 2 or 25%), got {printable(repr(value))[:60]}"
        )

    @property
    def needs_fleet_size(self) -> bool:
        return self.share_bp is not None

    def slots(self, hosts: int | None) -> int:
        """k for a fleet of ``hosts``: the number itself, or the share rounded down, at least 1.

        Rounded down so that "25%" never lets more than a quarter of the fleet deploy at once. With a
        share and no known size (None), 1: the cautious answer.
        """
        if self.count is not None:
            return self.count
        if hosts is None or self.share_bp is None:
            return 1
        return max(1, min(MAX_SLOTS, hosts * self.share_bp // 10_000))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        bp = self.share_bp or 0
        return f"{bp // 100}%" if bp % 100 == 0 else f"{bp / 100:g}%"


@dataclass(frozen=True)
class Timing:
    """How often a host writes and looks, in seconds. Defaults are the product's; tests shorten them."""

    #: A heartbeat is rewritten this often; a host is in the fleet while its heartbeat is younger than
    #: three of these (by S3's clock).
    heartbeat_s: float = 600.0
    #: A slot's lease is the section's deployment_timeout plus this (SPEC §10: two minutes).
    lease_margin_s: float = 120.0
    #: The wait between two tries for a slot grows with the fleet (see :meth:`wait_s`) within these.
    wait_min_s: float = 1.0
    wait_max_s: float = 30.0
    #: A skipped revision's stop object is looked at again at most this often.
    stop_recheck_s: float = 300.0
    #: A store that failed the conditional-write check is checked again after this long.
    probe_retry_s: float = 600.0

    @property
    def fresh_s(self) -> float:
        """A heartbeat older than this (by S3's clock) no longer counts its host in the fleet."""
        return 3 * self.heartbeat_s

    def lease_s(self, deployment_timeout_s: float) -> float:
        return deployment_timeout_s + self.lease_margin_s

    def renew_s(self, deployment_timeout_s: float) -> float:
        """The holder renews its slot this often: three renewals fit in one lease."""
        return self.lease_s(deployment_timeout_s) / 3

    def wait_s(self, hosts: int | None, waited_s: float = 0.0) -> float:
        """Seconds before the next try for a slot, drawn from 50-100 % of a base that grows with the fleet
        (a fiftieth of a second per host) and with the time this host has waited already (a twentieth of
        it), within [wait_min_s, wait_max_s].

        With many waiting hosts someone looks every fraction of a second anyway, so each can look less
        often; a host that has waited long is behind long deployments, and a twentieth of its wait is a
        small share of the rollout. The LISTs of control/ thus grow with the fleet no faster than the fleet
        divided by wait_max_s, and a freed slot stays free only a small share of a deployment.
        """
        by_fleet = self.wait_max_s / 6 if hosts is None else hosts / 50
        base = max(by_fleet, waited_s / 20)
        return min(self.wait_max_s, max(self.wait_min_s, base)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class FleetSettings:
    """What the coordination of one section needs from its configuration (config.Section, SPEC §10)."""

    section: str
    bucket: str
    key: str
    endpoint: Endpoint
    max_concurrent: MaxConcurrent
    max_failures: int = 0
    prefix: str = DEFAULT_PREFIX
    deployment_timeout_s: float = 600.0

    @property
    def keys(self) -> SectionKeys:
        return SectionKeys(self.prefix, self.key)
