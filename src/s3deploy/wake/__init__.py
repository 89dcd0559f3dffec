"""Push wake-ups (SPEC §13): S3 event notifications read from an SQS queue make watchers poll now.

* :func:`parse_message`: one message body → the objects it names, or "everything" (pure);
* :class:`QueueListener`: one long-poll loop per queue, calling the callbacks of the objects named;
* :func:`parse_queue_url`: checks a ``wake_queue_url`` value (ValueError saying what is expected).

Set-up (bucket notifications, queue policy, SNS fan-out for a fleet, EventBridge): docs/wakeups.md.

The listener (and the SQS client stack behind it) is imported on first use, so that checking a
``wake_queue_url`` while loading config.ini costs no aioboto3 import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s3deploy.wake.address import QueueAddress, parse_queue_url
from s3deploy.wake.message import Wake, parse_message

if TYPE_CHECKING:
    from s3deploy.wake.listener import Callback, QueueListener
    from s3deploy.wake.sqs import QueueError

__all__ = [
    "Callback",
    "QueueAddress",
    "QueueError",
    "QueueListener",
    "Wake",
    "parse_message",
    "parse_queue_url",
]

_LAZY = {"Callback": "listener", "QueueListener": "listener", "QueueError": "sqs"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
