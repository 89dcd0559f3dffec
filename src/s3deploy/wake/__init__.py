"""Push wake-ups (SPEC §13): S3 event notifications read from an SQS queue make watchers poll now.

* :func:`parse_message`: one message body → the objects it names, or "everything" (pure);
* :class:`QueueListener`: one long-poll loop per queue, calling the callbacks of the objects named;
* :func:`parse_queue_url`: checks a ``wake_queue_url`` value (ValueError saying what is expected).

Set-up (bucket notifications, queue policy, SNS fan-out for a fleet, EventBridge): docs/wakeups.md.
"""

from s3deploy.wake.address import QueueAddress, parse_queue_url
from s3deploy.wake.listener import Callback, QueueListener
from s3deploy.wake.message import Wake, parse_message
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
