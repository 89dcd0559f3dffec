"""The content of each coordination object: written as small JSON, read back as hostile input.

Anyone who can write under the prefix can put anything there, so reading is strict: at most
:data:`MAX_BODY_BYTES`, UTF-8, one JSON object without duplicate keys or NaN, every field of the right
type, strings printable (no control characters, escape sequences or bidi overrides) and bounded. A
body that fails any of it raises :class:`~s3deploy.fleet.errors.MalformedObject`; callers then choose
the cautious meaning (a slot that cannot be read is still held, a stop that cannot be read still stops).
Unknown fields are ignored, so a newer agent may add some.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from s3deploy.common.text import bounded, printable
from s3deploy.fleet.errors import MalformedObject
from s3deploy.fleet.keys import check_host_id

#: Coordination objects are a few hundred bytes; anything bigger is refused unread.
MAX_BODY_BYTES = 4096
#: Longest error message a report carries.
MAX_ERROR_CHARS = 500
#: Most fleet members a rollout's size may claim.
MAX_FLEET_HOSTS = 100_000
#: Most failed hosts a stop object names.
MAX_NAMED_FAILED = 20

HostState = Literal["waiting", "deploying", "succeeded", "failed", "rolled_back", "skipped"]
HOST_STATES: tuple[HostState, ...] = ("waiting", "deploying", "succeeded", "failed", "rolled_back", "skipped")
#: Outcomes that count against ``max_failures`` (a rollback means the revision failed on that host).
FAILED_STATES: frozenset[str] = frozenset({"failed", "rolled_back"})


def now_iso() -> str:
    """This host's clock as a report timestamp (ISO 8601 UTC, milliseconds, as ``status`` shows them)."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def encode(record: object) -> bytes:
    """A record dataclass as the compact JSON body s3deploy writes."""
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True).encode()  # type: ignore[call-overload]


# ------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Heartbeat:
    """``hosts/<host>``: this host is in the fleet. Only its LastModified is ever read."""

    host: str
    agent_version: str
    section: str


@dataclass(frozen=True)
class FleetSize:
    """``control/size``: how many hosts were in the fleet when the rollout began (fixes k for it)."""

    hosts: int
    by: str
    revision: str


@dataclass(frozen=True)
class SlotClaim:
    """``control/slot-<i>``: who holds the slot, since when by S3's clock, and a nonce.

    The nonce makes every write of a slot a new ETag: S3's ETag is the MD5 of the body, and a renewal
    with the same body would keep the ETag a waiting host read, letting its takeover win too.
    """

    host: str
    deployment_id: str | None
    since: str
    nonce: str


@dataclass(frozen=True)
class StopOrder:
    """``control/stop``: the rollout is stopped; why, by which host, and the failed hosts it counted."""

    reason: str
    by: str
    failed: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """``reports/<host>``: one host's state in the rollout (written by that host only)."""

    host: str
    state: HostState
    deployment_id: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None


# ------------------------------------------------------------------------------------------- reading
def load(body: bytes, where: str) -> dict[str, Any]:
    """The JSON object in ``body``, strictly (see the module docstring); MalformedObject names ``where``."""
    if len(body) > MAX_BODY_BYTES:
        raise MalformedObject(f"{where}: {len(body)} bytes, more than the {MAX_BODY_BYTES} expected")
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MalformedObject(f"{where}: not the JSON s3deploy writes ({bounded(e, 120)})") from e
    if not isinstance(value, dict):
        raise MalformedObject(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ValueError(f"duplicate field {bounded(repr(name), 40)}")
        found[name] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def text(obj: dict[str, Any], name: str, where: str, *, limit: int = 200, optional: bool = False) -> Any:
    """Field ``name``: a printable string of at most ``limit`` characters (or None when ``optional``)."""
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit or printable(value) != value:
        raise MalformedObject(
            f"{where}: field {name!r}: expected a printable string of at most {limit} characters, "
            f"got {bounded(repr(value), 60)}"
        )
    return value


def host_field(obj: dict[str, Any], name: str, where: str) -> str:
    value: str = text(obj, name, where, limit=128)
    try:
        return check_host_id(value)
    except ValueError as e:
        raise MalformedObject(f"{where}: field {name!r}: {e}") from e


def time_field(obj: dict[str, Any], name: str, where: str, *, optional: bool = False) -> str | None:
    """Field ``name``: an ISO 8601 timestamp with a time zone, returned normalised to UTC."""
    value = text(obj, name, where, limit=40, optional=optional)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as e:
        raise MalformedObject(f"{where}: field {name!r}: not an ISO 8601 timestamp") from e
    if moment.tzinfo is None:
        raise MalformedObject(f"{where}: field {name!r}: the timestamp has no time zone")
    return iso(moment)


def read_size(body: bytes, where: str) -> FleetSize:
    obj = load(body, where)
    hosts = obj.get("hosts")
    if type(hosts) is not int or not 1 <= hosts <= MAX_FLEET_HOSTS:
        raise MalformedObject(
            f"{where}: field 'hosts': expected a whole number from 1 to {MAX_FLEET_HOSTS}, "
            f"got {bounded(repr(hosts), 40)}"
        )
    return FleetSize(hosts, host_field(obj, "by", where), text(obj, "revision", where, limit=40))


def read_slot(body: bytes, where: str) -> SlotClaim:
    obj = load(body, where)
    since = time_field(obj, "since", where)
    return SlotClaim(
        host=host_field(obj, "host", where),
        deployment_id=text(obj, "deployment_id", where, limit=100, optional=True),
        since=cast(str, since),
        nonce=text(obj, "nonce", where, limit=64),
    )


def read_stop(body: bytes, where: str) -> StopOrder:
    obj = load(body, where)
    failed = obj.get("failed")
    if not isinstance(failed, list) or len(failed) > MAX_NAMED_FAILED:
        raise MalformedObject(f"{where}: field 'failed': expected a list of at most {MAX_NAMED_FAILED} hosts")
    hosts = tuple(host_field({"host": h}, "host", f"{where} field 'failed'") for h in failed)
    return StopOrder(
        reason=text(obj, "reason", where, limit=MAX_ERROR_CHARS),
        by=host_field(obj, "by", where),
        failed=hosts,
    )


def read_report(body: bytes, where: str, *, host: str) -> Report:
    """A report; its ``host`` must be the one its key names (a host reports only for itself)."""
    obj = load(body, where)
    named = host_field(obj, "host", where)
    if named != host:
        raise MalformedObject(f"{where}: names host {named!r}, but the key is that of {host!r}")
    state = obj.get("state")
    if state not in HOST_STATES:
        raise MalformedObject(
            f"{where}: field 'state': expected one of {', '.join(HOST_STATES)}, "
            f"got {bounded(repr(state), 40)}"
        )
    return Report(
        host=named,
        state=cast(HostState, state),
        deployment_id=text(obj, "deployment_id", where, limit=100, optional=True),
        started_at=time_field(obj, "started_at", where, optional=True),
        finished_at=time_field(obj, "finished_at", where, optional=True),
        error=text(obj, "error", where, limit=MAX_ERROR_CHARS, optional=True),
    )


def error_text(value: object) -> str:
    """An error message as a report carries it: printable, at most :data:`MAX_ERROR_CHARS` characters."""
    return printable(value)[:MAX_ERROR_CHARS]
