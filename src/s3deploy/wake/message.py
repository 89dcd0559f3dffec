"""What one queue message asks to wake: a pure function from the message body to a :class:`Wake`.

Three shapes reach the queue (SPEC §13):

* S3 event notifications sent straight to SQS (or through SNS with raw message delivery):
  ``{"Records": [{"s3": {"bucket": {"name": B}, "object": {"key": K}}}, ...]}``, the key URL-encoded
  as a form value (``+`` for a space, ``%2B`` for a plus), which is how S3 documents it;
* the SNS envelope (``"Type": "Notification"``) whose ``Message`` string holds one of the other shapes;
* EventBridge events: ``{"source": "aws.s3", "detail": {"bucket": {"name": B}, "object": {"key": K}}}``.
  EventBridge's documentation does not say whether its keys are encoded, so both readings are woken: the
  key as written and the key decoded (a spare wake costs one HEAD).

The first message of a new S3 notification configuration is an ``s3:TestEvent``: it wakes nothing, and
neither does an SNS subscription (un)confirmation. Anything else that cannot be read as one of the shapes
wakes every section on the queue: a wake is only a hint, the watcher still reads the object.
Sizes are bounded before anything is parsed, so a hostile queue writer costs little.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from s3deploy.common.text import bounded

#: The largest body read (SQS's classic limit; an S3 notification is a few KiB). Bigger: wake everything.
MAX_BODY_BYTES = 256 * 1024
#: Most records one message may name (S3 sends one per message). More: wake everything.
MAX_RECORDS = 100
#: S3's limits on names: a bucket name is at most 63 characters (255 for older us-east-1 buckets and
#: S3-compatible stores), a key at most 1024 UTF-8 bytes. Longer ones are not S3's: wake everything.
MAX_BUCKET_CHARS = 255
MAX_KEY_BYTES = 1024
#: An encoded key is at most three characters ("%xx") per byte of the key.
_MAX_ENCODED_KEY_CHARS = 3 * MAX_KEY_BYTES

_IGNORED_SNS_TYPES = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


@dataclass(frozen=True)
class Wake:
    """What one message (or a batch of them) asks to wake.

    ``objects`` holds the (bucket, key) pairs named; ``everything`` says to wake every section on the
    queue (an unparsable message). ``why`` says in a few words what the message was, for the logs.
    """

    objects: frozenset[tuple[str, str]] = frozenset()
    everything: bool = False
    why: str = ""

    @property
    def empty(self) -> bool:
        """True when nothing is to be woken (a test event, a confirmation, an empty batch)."""
        return not self.objects and not self.everything

    def __or__(self, other: Wake) -> Wake:
        """The wake of two messages together (``why`` is the first non-empty one's)."""
        return Wake(self.objects | other.objects, self.everything or other.everything, self.why or other.why)


class _Unreadable(Exception):
    """The body is not one of the known shapes; the message says why (shown in logs, bounded)."""


def parse_message(body: str | bytes) -> Wake:
    """Read one SQS message body. Never raises: a body that is not understood wakes everything."""
    size = len(body) if isinstance(body, bytes) else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        return Wake(everything=True, why=f"unparsable: body of {size} bytes, more than {MAX_BODY_BYTES}")
    try:
        return _parse_document(_load(body), envelope_allowed=True)
    except _Unreadable as e:
        return Wake(everything=True, why=f"unparsable: {e}")


def _load(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
        raise _Unreadable(f"not JSON ({bounded(e, 80)})") from None


def _parse_document(doc: Any, *, envelope_allowed: bool) -> Wake:
    if not isinstance(doc, Mapping):
        raise _Unreadable(f"a JSON {type(doc).__name__}, not an object")
    if "Records" in doc:
        return _s3_records(doc["Records"])
    if doc.get("Event") == "s3:TestEvent":
        return Wake(why=f"S3 test event for bucket {bounded(doc.get('Bucket'), 80)}")
    if "detail" in doc and "source" in doc:
        return _eventbridge(doc)
    sns_type = doc.get("Type")
    if isinstance(sns_type, str) and "TopicArn" in doc:
        if sns_type in _IGNORED_SNS_TYPES:
            # Never followed (a message is not trusted); shown so an operator can confirm by hand.
            url = f" (SubscribeURL {bounded(doc['SubscribeURL'], 400)})" if "SubscribeURL" in doc else ""
            return Wake(why=f"SNS {bounded(sns_type, 40)} from {bounded(doc.get('TopicArn'), 120)}{url}")
        if sns_type == "Notification" and envelope_allowed:
            inner = doc.get("Message")
            if not isinstance(inner, str):
                raise _Unreadable("SNS notification without a Message string")
            wake = _parse_document(_load(inner), envelope_allowed=False)
            return Wake(wake.objects, wake.everything, f"SNS: {wake.why}")
    raise _Unreadable("neither S3 records, an SNS notification nor an EventBridge event")


def _s3_records(records: Any) -> Wake:
    if not isinstance(records, list) or not records:
        raise _Unreadable("Records is not a non-empty list")
    if len(records) > MAX_RECORDS:
        raise _Unreadable(f"{len(records)} records, more than {MAX_RECORDS}")
    objects = set()
    for record in records:
        s3 = _field(record, "s3")
        bucket = _bucket(_field(_field(s3, "bucket"), "name"))
        objects.add((bucket, _decoded_key(_field(_field(s3, "object"), "key"))))
    return Wake(frozenset(objects), why=f"S3 event ({len(records)} record(s))")


def _eventbridge(doc: Mapping[str, Any]) -> Wake:
    detail = doc["detail"]
    bucket = _bucket(_field(_field(detail, "bucket"), "name"))
    key = _field(_field(detail, "object"), "key")
    if not isinstance(key, str) or not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _Unreadable("EventBridge object key is not a string of 1 to 1024 bytes")
    readings = {(bucket, key)}
    try:
        readings.add((bucket, _decoded_key(key)))
    except _Unreadable:
        pass  # not a valid encoding: the key as written is the only reading
    return Wake(frozenset(readings), why=f"EventBridge {bounded(doc.get('detail-type'), 40)}")


def _field(parent: Any, name: str) -> Any:
    if not isinstance(parent, Mapping) or name not in parent:
        raise _Unreadable(f"no {name!r} field where an S3 event has one")
    return parent[name]


def _bucket(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_BUCKET_CHARS:
        raise _Unreadable("bucket name is not a string of 1 to 255 characters")
    return value


def _decoded_key(value: Any) -> str:
    """A key as S3 event notifications encode it (a form value: ``+`` is a space), decoded."""
    if not isinstance(value, str) or not value or len(value) > _MAX_ENCODED_KEY_CHARS:
        raise _Unreadable("object key is not a string of 1 to 3072 characters")
    try:
        key = unquote_plus(value, errors="strict")
    except UnicodeDecodeError:
        raise _Unreadable("object key is not percent-encoded UTF-8") from None
    if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _Unreadable("decoded object key is not 1 to 1024 bytes")
    return key
