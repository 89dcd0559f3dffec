"""wake/message.py and wake/address.py: what a queue message wakes, and which queue URLs are accepted.

The bodies below are the shapes moto's server produces (checked in tests/test_wake_listener.py against
the real S3 → SQS, S3 → SNS → SQS and EventBridge → SQS deliveries) and hostile variations of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from s3deploy.wake import QueueAddress, Wake, parse_message, parse_queue_url
from s3deploy.wake.message import MAX_BODY_BYTES, MAX_RECORDS


def s3_event(*objects: tuple[str, str]) -> dict[str, Any]:
    """An S3 notification naming ``objects`` (bucket, already-encoded key)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": b, "arn": f"arn:aws:s3:::{b}"}, "object": {"key": k, "size": 1}},
            }
            for b, k in objects
        ]
    }


def sns(message: Any, kind: str = "Notification") -> dict[str, Any]:
    """The SNS envelope an SQS subscription without raw delivery receives."""
    return {
        "Type": kind,
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:deploys",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2026-01-01T00:00:00.000Z",
    }


def eventbridge(bucket: str, key: str) -> dict[str, Any]:
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
    }


TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-01-01T00:00:00Z", "Bucket": "b"}


def test_s3_record_names_its_object_with_the_key_decoded_as_a_form_value() -> None:
    wake = parse_message(json.dumps(s3_event(("bkt", "a+b%2Fc%2Bd%26%C3%A9.zip"), ("bkt", "x/y+z.zip"))))
    assert wake.objects == {("bkt", "a b/c+d&é.zip"), ("bkt", "x/y z.zip")}
    assert not wake.everything and not wake.empty


def test_s3_test_event_wakes_nothing_directly_or_through_sns() -> None:
    assert parse_message(json.dumps(TEST_EVENT)).empty
    assert parse_message(json.dumps(sns(TEST_EVENT))).empty
    assert "test event" in parse_message(json.dumps(TEST_EVENT)).why


def test_sns_envelope_is_opened_and_subscription_confirmations_wake_nothing() -> None:
    wake = parse_message(json.dumps(sns(s3_event(("bkt", "app.zip")))))
    assert wake.objects == {("bkt", "app.zip")} and wake.why.startswith("SNS")
    confirm = sns("{}", kind="SubscriptionConfirmation") | {"SubscribeURL": "https://sns.example/?Token=t"}
    assert parse_message(json.dumps(confirm)).empty
    assert "SubscribeURL https://sns.example/?Token=t" in parse_message(json.dumps(confirm)).why
    assert parse_message(json.dumps(sns("{}", kind="UnsubscribeConfirmation"))).empty


def test_eventbridge_event_wakes_the_key_as_written_and_decoded() -> None:
    assert parse_message(json.dumps(eventbridge("bkt", "a b/c+d.zip"))).objects == {
        ("bkt", "a b/c+d.zip"),
        ("bkt", "a b/c d.zip"),
    }
    assert parse_message(json.dumps(eventbridge("bkt", "plain.zip"))).objects == {("bkt", "plain.zip")}
    # "%zz" is no encoding: only the key as written
    assert parse_message(json.dumps(eventbridge("bkt", "100%zz"))).objects == {("bkt", "100%zz")}
    # EventBridge → SNS → SQS
    assert parse_message(json.dumps(sns(eventbridge("bkt", "k")))).objects == {("bkt", "k")}


GARBAGE = {
    "not JSON": "hello",
    "not UTF-8 JSON": b"\xff\xfe{}",
    "a JSON list": "[1, 2]",
    "a JSON string": '"Records"',
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "empty Records": json.dumps({"Records": []}),
    "Records not a list": json.dumps({"Records": {"s3": {}}}),
    "record without s3": json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
    "bucket not a string": json.dumps(s3_event((7, "k"))),  # type: ignore[arg-type]
    "empty key": json.dumps(s3_event(("bkt", ""))),
    "key not UTF-8": json.dumps(s3_event(("bkt", "%ff%fe"))),
    "key over 1024 bytes": json.dumps(s3_event(("bkt", "k" * 1025))),
    "encoded key over 3072 chars": json.dumps(s3_event(("bkt", "%41" * 1025))),
    "bucket over 255 chars": json.dumps(s3_event(("b" * 256, "k"))),
    "too many records": json.dumps(s3_event(*[("bkt", f"k{i}") for i in range(MAX_RECORDS + 1)])),
    "one bad record among good": json.dumps(
        {"Records": [*s3_event(("bkt", "k"))["Records"], {"s3": {"bucket": {"name": "bkt"}}}]}
    ),
    "SNS without Message": json.dumps({"Type": "Notification", "TopicArn": "arn:x"}),
    "SNS Message not JSON": json.dumps(sns("not json")),
    "SNS inside SNS": json.dumps(sns(sns(s3_event(("bkt", "k"))))),
    "EventBridge without object": json.dumps({"source": "aws.s3", "detail": {"bucket": {"name": "b"}}}),
    "EventBridge key not a string": json.dumps(
        {"source": "aws.s3", "detail": {"bucket": {"name": "b"}, "object": {"key": ["k"]}}}
    ),
    "an unknown JSON object": json.dumps({"hello": "world"}),
    "body over the limit": json.dumps(s3_event(("bkt", "k"))) + " " * MAX_BODY_BYTES,
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_anything_not_understood_wakes_everything(body: str | bytes) -> None:
    wake = parse_message(body)
    assert wake.everything and wake.why.startswith("unparsable")
    assert len(wake.why) < 400


def test_reasons_shown_in_logs_are_escaped_and_bounded() -> None:
    hostile = {**TEST_EVENT, "Bucket": "\x1b]0;owned\x07" + "x" * 1000}
    why = parse_message(json.dumps(hostile)).why
    assert "\x1b" not in why and "\x07" not in why and len(why) < 200
    why = parse_message(json.dumps(sns("{}", kind="SubscriptionConfirmation") | {"TopicArn": "\x1b[2J"})).why
    assert "\x1b" not in why


def test_wakes_of_a_batch_merge() -> None:
    merged = Wake(frozenset({("b", "1")}), why="one") | Wake(frozenset({("b", "2")})) | Wake()
    assert merged == Wake(frozenset({("b", "1"), ("b", "2")}), why="one")
    assert (merged | Wake(everything=True)).everything
    assert Wake().empty and not Wake(everything=True).empty


@pytest.mark.parametrize(
    ("url", "endpoint", "region"),
    [
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/wake",
            "https://sqs.eu-west-1.amazonaws.com",
            "eu-west-1",
        ),
        (
            "https://eu-west-1.queue.amazonaws.com/123456789012/wake",
            "https://eu-west-1.queue.amazonaws.com",
            "eu-west-1",
        ),
        ("https://queue.amazonaws.com/123456789012/wake", "https://queue.amazonaws.com", "us-east-1"),
        (
            "https://sqs-fips.us-gov-west-1.amazonaws.com/1/q",
            "https://sqs-fips.us-gov-west-1.amazonaws.com",
            "us-gov-west-1",
        ),
        (
            "https://sqs.cn-north-1.amazonaws.com.cn/1/q",
            "https://sqs.cn-north-1.amazonaws.com.cn",
            "cn-north-1",
        ),
        (
            "https://vpce-0abc-def.sqs.ap-southeast-2.vpce.amazonaws.com/1/q",
            "https://vpce-0abc-def.sqs.ap-southeast-2.vpce.amazonaws.com",
            "ap-southeast-2",
        ),
        ("http://127.0.0.1:9324/000000000000/wake", "http://127.0.0.1:9324", None),
        ("http://[::1]:9324/queue/wake", "http://[::1]:9324", None),
    ],
)
def test_queue_url_gives_its_endpoint_and_the_region_an_aws_host_names(
    url: str, endpoint: str, region: str | None
) -> None:
    address = parse_queue_url(url)
    assert address == QueueAddress(url=url, endpoint_url=endpoint, host_region=region)
    assert address.signing_region("xx-other-9") == (region or "xx-other-9")
    assert address.signing_region(None) == (region or "us-east-1")
    assert address.name in ("wake", "q")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqs.eu-west-1.amazonaws.com/1/q",
        "ftp://host/1/q",
        "https:///1/q",
        "https://host",
        "https://host/",
        "https://user:secret@host/1/q",
        "https://host/1/q?Action=ReceiveMessage",
        "https://host/1/q#x",
        "https://host:0/1/q",
        "https://host:http/1/q",
        "http://[::1/1/q",
        "https://host/1/q name",
        "https://host/1/q\x1b[2J",
        "https://host/" + "q" * 3000,
    ],
)
def test_queue_url_refused_says_what_is_expected(url: str) -> None:
    with pytest.raises(ValueError, match="SQS queue URL like https://sqs"):
        parse_queue_url(url)
