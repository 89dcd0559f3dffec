"""wake/listener.py against moto's server: real S3 → SQS, S3 → SNS → SQS and EventBridge → SQS deliveries,
garbage, a missing queue, credentials that do not exist, a stop in the middle of a long poll.

SeaweedFS has no S3 notification API, so these run on moto's ThreadedMotoServer (S3, SNS, SQS and
EventBridge in one process, deliveries made inside the upload's request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from s3deploy.wake import QueueListener, Wake
from s3deploy.wake.listener import MIN_EMPTY_POLL_S
from s3deploy.wake.sqs import WAIT_S
from tests.s3server import sync_client

ACCOUNT = "123456789012"


@dataclass
class Moto:
    """Sync clients on one moto server, for test set-up."""

    url: str
    key: tuple[str, str] = ("test", "test")
    s3: Any = field(init=False)
    sqs: Any = field(init=False)
    sns: Any = field(init=False)
    events: Any = field(init=False)
    iam: Any = field(init=False)

    def __post_init__(self) -> None:
        self.s3 = sync_client(self.url)
        self.sqs, self.sns, self.events, self.iam = (self._client(s) for s in ("sqs", "sns", "events", "iam"))

    def _client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.key[0],
            aws_secret_access_key=self.key[1],
        )

    def queue(self) -> tuple[str, str]:
        """A new queue: its URL and ARN."""
        url = self.sqs.create_queue(QueueName=f"wake-{uuid.uuid4().hex[:12]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return url, arn["QueueArn"]

    def bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def depth(self, queue_url: str) -> int:
        """Messages in the queue, visible or received and not deleted."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attrs[n]) for n in names)

    def send(self, queue_url: str, body: str) -> None:
        self.sqs.send_message(QueueUrl=queue_url, MessageBody=body)


@pytest.fixture
def moto(moto_server: str) -> Moto:
    return Moto(moto_server)


class Wakes:
    """Callbacks that record what was woken, with an event per name to await."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._events: dict[str, asyncio.Event] = {}

    def event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def callback(self, name: str) -> Callable[[], None]:
        def wake() -> None:
            self.calls.append(name)
            self.event(name).set()

        return wake

    async def wait(self, name: str, timeout_s: float = 15) -> None:
        await asyncio.wait_for(self.event(name).wait(), timeout_s)


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
async def running() -> Any:
    """Factory: ``running(listener)`` runs it in a task; stopped (and checked to end) after the test."""
    started: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(listener: QueueListener) -> asyncio.Event:
        stop = asyncio.Event()
        started.append((stop, asyncio.create_task(listener.run(stop))))
        return stop

    yield start
    for stop, task in started:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], Any], timeout_s: float = 15) -> None:
    """Wait for a condition another thread or task makes true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.02)


def wake_logs(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[logging.LogRecord]:
    """What the wake-up package logged at ``level`` or above (moto's server logs to the same root)."""
    return [r for r in caplog.records if r.name.startswith("s3deploy.wake") and r.levelno >= level]


def listener(queue_url: str, wakes: Wakes, *objects: tuple[str, str], **kwargs: Any) -> QueueListener:
    return QueueListener(
        queue_url,
        targets={obj: wakes.callback(f"{obj[0]}/{obj[1]}") for obj in objects},
        on_any=wakes.callback("*"),
        **kwargs,
    )


def notify_queue(moto: Moto, bucket: str, queue_arn: str) -> None:
    moto.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )


async def test_s3_to_sqs_upload_wakes_its_object_and_the_test_event_wakes_nothing(
    moto: Moto, wakes: Wakes, running: Any
) -> None:
    queue_url, queue_arn = moto.queue()
    bucket = moto.bucket()
    key = "releases/my app+v2 é.zip"  # a space, a plus, a slash and UTF-8: S3 encodes them all
    notify_queue(moto, bucket, queue_arn)  # S3 sends its s3:TestEvent now
    running(listener(queue_url, wakes, (bucket, key), (bucket, "other.zip")))
    await asyncio.to_thread(moto.s3.put_object, Bucket=bucket, Key=key, Body=b"bundle")
    await wakes.wait(f"{bucket}/{key}")
    await until(lambda: moto.depth(queue_url) == 0)  # the test event and the upload's event: deleted
    assert wakes.calls == [f"{bucket}/{key}"]  # not the other object, not everything


@pytest.mark.parametrize("raw", [False, True], ids=["envelope", "raw-delivery"])
async def test_s3_to_sns_to_sqs_upload_wakes_its_object(
    moto: Moto, wakes: Wakes, running: Any, raw: bool
) -> None:
    queue_url, queue_arn = moto.queue()
    topic = moto.sns.create_topic(Name=f"deploys-{uuid.uuid4().hex[:8]}")["TopicArn"]
    sub = moto.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)["SubscriptionArn"]
    if raw:
        moto.sns.set_subscription_attributes(
            SubscriptionArn=sub, AttributeName="RawMessageDelivery", AttributeValue="true"
        )
    bucket = moto.bucket()
    moto.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    running(listener(queue_url, wakes, (bucket, "app 1.zip")))
    await asyncio.to_thread(moto.s3.put_object, Bucket=bucket, Key="app 1.zip", Body=b"bundle")
    await wakes.wait(f"{bucket}/app 1.zip")
    await until(lambda: moto.depth(queue_url) == 0)
    assert wakes.calls == [f"{bucket}/app 1.zip"]


async def test_eventbridge_rule_to_sqs_upload_wakes_its_object(
    moto: Moto, wakes: Wakes, running: Any
) -> None:
    queue_url, queue_arn = moto.queue()
    bucket = moto.bucket()
    moto.s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    rule = f"deploys-{uuid.uuid4().hex[:8]}"
    pattern = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}},
    }
    moto.events.put_rule(Name=rule, EventPattern=json.dumps(pattern))
    moto.events.put_targets(Rule=rule, Targets=[{"Id": "wake", "Arn": queue_arn}])
    running(listener(queue_url, wakes, (bucket, "a b+c.zip")))
    await asyncio.to_thread(moto.s3.put_object, Bucket=bucket, Key="a b+c.zip", Body=b"bundle")
    await wakes.wait(f"{bucket}/a b+c.zip")
    await until(lambda: moto.depth(queue_url) == 0)
    assert wakes.calls == [f"{bucket}/a b+c.zip"]


async def test_hand_sent_messages_garbage_wakes_everything_once_per_batch_and_all_are_deleted(
    moto: Moto, wakes: Wakes, caplog: pytest.LogCaptureFixture
) -> None:
    queue_url, _ = moto.queue()
    bridge = {"source": "aws.s3", "detail": {"bucket": {"name": "bkt"}, "object": {"key": "eb.zip"}}}
    for body in ("garbage \x1b[31m", "[]", json.dumps({"Records": "x"}), json.dumps(bridge)):
        moto.send(queue_url, body)
    caplog.set_level(logging.WARNING, "s3deploy.wake")
    batches: list[Wake] = []
    async with listener(queue_url, wakes, ("bkt", "eb.zip")) as one:
        while one.received < 4:
            batches.append(await one.poll_once())
    everything = sum(batch.everything for batch in batches)
    assert everything >= 1 and wakes.calls.count("*") == everything  # once per batch, not per message
    # the EventBridge message woke its object, unless it came in a batch that woke everything anyway
    assert set(wakes.calls) <= {"*", "bkt/eb.zip"}
    assert moto.depth(queue_url) == 0
    warnings = [r.getMessage() for r in wake_logs(caplog, logging.WARNING)]
    assert len(warnings) == 1 and "waking every section" in warnings[0]
    assert "\x1b" not in warnings[0]


async def test_an_object_not_watched_here_wakes_nothing_and_is_deleted(moto: Moto, wakes: Wakes) -> None:
    queue_url, _ = moto.queue()
    event = {"Records": [{"s3": {"bucket": {"name": "bkt"}, "object": {"key": "someone-else.zip"}}}]}
    moto.send(queue_url, json.dumps(event))
    async with listener(queue_url, wakes, ("bkt", "mine.zip")) as one:
        wake = await one.poll_once()
    assert wake.objects == {("bkt", "someone-else.zip")}
    assert wakes.calls == [] and moto.depth(queue_url) == 0


async def test_a_failing_callback_loses_no_other_wake_and_does_not_stop_the_loop(
    moto: Moto, wakes: Wakes, running: Any
) -> None:
    queue_url, _ = moto.queue()

    def broken() -> None:
        raise RuntimeError("watcher gone")

    targets = {("bkt", "a"): broken, ("bkt", "b"): wakes.callback("b")}
    running(QueueListener(queue_url, targets=targets, on_any=wakes.callback("*")))
    both = {"Records": [{"s3": {"bucket": {"name": "bkt"}, "object": {"key": k}}} for k in ("a", "b")]}
    moto.send(queue_url, json.dumps(both))
    await wakes.wait("b")
    moto.send(queue_url, "not json")
    await wakes.wait("*")


async def test_missing_queue_is_logged_once_backed_off_and_retried_until_it_exists(
    moto: Moto, wakes: Wakes, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "s3deploy.wake")
    name = f"later-{uuid.uuid4().hex[:8]}"
    queue_url = f"{moto.url}/{ACCOUNT}/{name}"
    one = listener(queue_url, wakes, ("bkt", "k"), retry_base_s=0.05, retry_cap_s=0.2)
    running(one)
    await until(lambda: sum("does not exist" in r.getMessage() for r in wake_logs(caplog)) >= 3)
    said = [r for r in wake_logs(caplog) if "does not exist" in r.getMessage()]
    assert [r.levelno for r in said].count(logging.WARNING) == 1  # once per distinct error, then debug
    assert "polling goes on" in said[0].getMessage() and name in said[0].getMessage()
    moto.sqs.create_queue(QueueName=name)
    moto.send(
        queue_url, json.dumps({"Records": [{"s3": {"bucket": {"name": "bkt"}, "object": {"key": "k"}}}]})
    )
    await wakes.wait("bkt/k")
    await until(lambda: any("receiving again" in r.getMessage() for r in wake_logs(caplog)))


async def test_access_denied_to_the_profile_is_logged_once_and_recovers_when_granted(
    moto: Moto,
    wakes: Wakes,
    running: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """moto checks IAM policies once asked to: the listener signs as the section's profile, whose user may
    only send at first."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    queue_url, _ = moto.queue()
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 4)  # the next 4 requests: no IAM yet
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    moto.iam.create_user(UserName="admin")
    moto.iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(allow_all))
    admin_key = moto.iam.create_access_key(UserName="admin")["AccessKey"]
    admin = Moto(moto.url, key=(admin_key["AccessKeyId"], admin_key["SecretAccessKey"]))

    def allow(*actions: str) -> None:
        statement = {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        admin.iam.put_user_policy(UserName="deployer", PolicyName="wake", PolicyDocument=policy)

    admin.iam.create_user(UserName="deployer")
    allow("sqs:SendMessage")
    key = admin.iam.create_access_key(UserName="deployer")["AccessKey"]
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[deployer]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    caplog.set_level(logging.DEBUG, "s3deploy.wake")

    running(
        listener(queue_url, wakes, ("bkt", "k"), profile_name="deployer", retry_base_s=0.05, retry_cap_s=0.2)
    )
    await until(lambda: sum("AccessDenied" in r.getMessage() for r in wake_logs(caplog)) >= 3)
    denied = [r for r in wake_logs(caplog) if "AccessDenied" in r.getMessage()]
    assert [r.levelno for r in denied].count(logging.WARNING) == 1
    assert "sqs:ReceiveMessage and sqs:DeleteMessage" in denied[0].getMessage()
    # AWS authorizes DeleteMessageBatch as sqs:DeleteMessage; moto checks the API's own name.
    allow("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:DeleteMessageBatch")
    admin.send(
        queue_url, json.dumps({"Records": [{"s3": {"bucket": {"name": "bkt"}, "object": {"key": "k"}}}]})
    )
    await wakes.wait("bkt/k")
    await until(lambda: admin.depth(queue_url) == 0)  # deleted with the deployer's credentials


async def test_unreachable_endpoint_and_unknown_profile_back_off_until_stop(
    wakes: Wakes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "s3deploy.wake")
    cases = [
        listener("http://127.0.0.1:9/000000000000/q", wakes, retry_base_s=0.05, retry_cap_s=0.1),
        listener(
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            wakes,
            profile_name="nobody",
            retry_base_s=0.05,
            retry_cap_s=0.1,
        ),
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one.run(stop)) for one in cases]
    await until(lambda: len(wake_logs(caplog, logging.WARNING)) >= 2, timeout_s=30)
    assert not any(t.done() for t in tasks)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    text = "\n".join(r.getMessage() for r in wake_logs(caplog))
    assert "cannot connect to http://127.0.0.1:9" in text
    assert "AWS profile 'nobody' not found" in text
    assert wakes.calls == []


async def test_stop_ends_a_long_poll_at_once(wakes: Wakes) -> None:
    """A server that takes the ReceiveMessage and holds it, as SQS does for up to 20 s with no message."""
    arrived = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await reader.read()  # until the client hangs up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(listener(f"http://127.0.0.1:{port}/{ACCOUNT}/q", wakes).run(stop))
        await asyncio.wait_for(arrived.wait(), 15)
        assert not task.done()
        stop.set()
        # The request would be held for the whole read timeout (WAIT_S + margin); stop must not wait.
        await asyncio.wait_for(task, WAIT_S / 4)
        assert wakes.calls == []
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_does_not_hold_long_polls_is_asked_at_most_once_a_second(
    wakes: Wakes, caplog: pytest.LogCaptureFixture
) -> None:
    """An SQS-compatible server ignoring WaitTimeSeconds answers "no message" at once (a fake one: moto and
    SQS both hold the poll). Without a floor, the listener would ask it as fast as it answers."""
    arrivals: list[float] = []

    async def answer_empty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                arrivals.append(time.monotonic())
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
        writer.close()

    caplog.set_level(logging.WARNING, "s3deploy.wake")
    server = await asyncio.start_server(answer_empty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(listener(f"http://127.0.0.1:{port}/{ACCOUNT}/q", wakes).run(stop))
    try:
        await until(lambda: len(arrivals) >= 4)
        said = [r.getMessage() for r in wake_logs(caplog)]
        assert len(said) == 1 and "does not hold long polls" in said[0], said
        # Each receive starts at least MIN_EMPTY_POLL_S after the one before; an arrival may lag its
        # start (a loaded machine), so only the span of several is bounded: 3 s, less a lag.
        assert arrivals[3] - arrivals[0] >= 1.5 * MIN_EMPTY_POLL_S, arrivals
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        server.close()
        await server.wait_closed()
