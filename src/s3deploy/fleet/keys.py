"""Where the coordination objects of a section live in its bucket: the one module that builds their keys.

```
P K/hosts/<host>                         heartbeat (written by <host>)
P K/rollouts/R/control/size              the fleet size of this rollout (created once, If-None-Match: *)
P K/rollouts/R/control/slot-<i>          a slot, 0 <= i < max_concurrent (created If-None-Match: *,
                                         renewed, taken over and freed If-Match)
P K/rollouts/R/control/stop              the rollout is stopped (created If-None-Match: *)
P K/rollouts/R/reports/<host>            <host>'s report (written by <host> only)
P K/rollouts/R/failed/<host>             <host> failed R (written by <host>; counted by one LIST)
P .probe/<host>-<random>                 the conditional-write check
```

``P`` is ``fleet_prefix``, ``K`` the bundle's key percent-encoded as one component, ``R`` the first 20 hex
digits of the SHA-256 of the revision's identity. Host ids are checked here, so a key never holds ``/``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from s3deploy.common.text import printable

_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SLOT = re.compile(r"slot-(0|[1-9][0-9]{0,5})")
#: A percent-encoded key longer than this is shortened with a hash (S3 keys end at 1,024 bytes).
_MAX_COMPONENT = 200
DEFAULT_PREFIX = ".s3deploy/"


def check_host_id(value: str) -> str:
    """``value`` if it is a valid host id (1-128 of ``A-Z a-z 0-9 . _ -``, starting with a letter or
    digit), else ValueError saying what is expected. Host ids become one component of object keys."""
    if not _HOST_ID.fullmatch(value):
        raise ValueError(
            f"expected a host id of 1 to 128 letters, digits, '.', '_' or '-' starting with a letter "
            f"or digit, got {printable(repr(value))[:80]}"
        )
    return value


def check_prefix(value: str) -> str:
    """``value`` if it is a valid ``fleet_prefix`` (printable, no leading ``/``, ending in ``/``, at most
    256 characters), else ValueError saying what is expected."""
    if (
        not value.endswith("/")
        or value.startswith("/")
        or len(value) > 256
        or printable(value) != value
        or "//" in value
    ):
        raise ValueError(
            f"expected a key prefix ending in '/' (like {DEFAULT_PREFIX!r}), without a leading '/', "
            f"'//' or control characters, at most 256 characters; got {printable(repr(value))[:80]}"
        )
    return value


def revision_id(identity: str) -> str:
    """``R``: the first 20 hex digits of the SHA-256 of a revision's identity (VersionId or ETag@time)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def key_component(key: str) -> str:
    """``K``: the bundle's key as one key component, percent-encoded; shortened with a hash when long."""
    name = quote(key, safe="")
    if len(name) > _MAX_COMPONENT:
        name = name[:100] + "-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return name


@dataclass(frozen=True)
class SectionKeys:
    """The keys of one section's coordination objects (one bundle key under one prefix)."""

    prefix: str
    bundle_key: str

    @property
    def root(self) -> str:
        return f"{self.prefix}{key_component(self.bundle_key)}/"

    @property
    def hosts(self) -> str:
        """The prefix of the heartbeats."""
        return f"{self.root}hosts/"

    def heartbeat(self, host: str) -> str:
        return f"{self.hosts}{check_host_id(host)}"

    def rollout(self, identity: str) -> RolloutKeys:
        return RolloutKeys(f"{self.root}rollouts/{revision_id(identity)}/")

    def probe(self, host: str) -> str:
        """A fresh key for one conditional-write check (never used twice)."""
        return f"{self.prefix}.probe/{check_host_id(host)}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class RolloutKeys:
    """The keys of one revision's rollout."""

    root: str

    @property
    def control(self) -> str:
        """The prefix of size, stop and the slots: one LIST reads them all."""
        return f"{self.root}control/"

    @property
    def size(self) -> str:
        return f"{self.control}size"

    @property
    def stop(self) -> str:
        return f"{self.control}stop"

    def slot(self, index: int) -> str:
        return f"{self.control}slot-{index}"

    def slot_index(self, key: str) -> int | None:
        """The index of a slot key listed under :attr:`control`, None for any other key."""
        match = _SLOT.fullmatch(key.removeprefix(self.control)) if key.startswith(self.control) else None
        return int(match.group(1)) if match else None

    @property
    def reports(self) -> str:
        return f"{self.root}reports/"

    def report(self, host: str) -> str:
        return f"{self.reports}{check_host_id(host)}"

    @property
    def failed(self) -> str:
        return f"{self.root}failed/"

    def failure(self, host: str) -> str:
        return f"{self.failed}{check_host_id(host)}"


def host_in(prefix: str, key: str) -> str | None:
    """The host id a listed key names under ``prefix`` (``.../hosts/<host>``), None if it is not one."""
    if not key.startswith(prefix):
        return None
    name = key[len(prefix) :]
    return name if _HOST_ID.fullmatch(name) else None
