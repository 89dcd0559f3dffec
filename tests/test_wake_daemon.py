"""Push wake-ups through a real daemon process (runtime/wakeups.py, SPEC §13), against moto's server
(S3, SNS and SQS in one process: SeaweedFS has no S3 notifications). Every section polls every 300 s,
so a deployment seen within the test's wait can only come from a wake-up."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from s3deploy.config import Section
from s3deploy.runtime.wakeups import plan_listeners
from tests.agent import DaemonProcess, appspec, cli, db_history, wait_until, write_config, zip_bytes
from tests.s3server import sync_client

#: Far longer than any wait below: only a wake-up can make a section deploy in time.
POLL_S = 300
WAIT_S = 60


@dataclass
class Host:
    """A config.ini of sections on moto's S3, the state directory, and helpers to set up wake-ups."""

    tmp_path: Path
    moto: str
    s3: Any = field(init=False)
    sqs: Any = field(init=False)
    sns: Any = field(init=False)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s3 = sync_client(self.moto)
        self.sqs, self.sns = (
            boto3.client(s, endpoint_url=self.moto, region_name="us-east-1") for s in ("sqs", "sns")
        )

    @property
    def config(self) -> Path:
        return self.tmp_path / "config.ini"

    @property
    def state_dir(self) -> Path:
        return self.tmp_path / "state"

    def queue(self) -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=f"wake-{uuid.uuid4().hex[:12]}")["QueueUrl"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return url, attrs["QueueArn"]

    def section(self, name: str, *, poll_s: float = POLL_S, **keys: Any) -> str:
        """A section with its own bucket and a first bundle (deployed when the daemon starts)."""
        bucket = f"b-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=bucket)
        self.sections[name] = {
            "s3_bucket": bucket,
            "target_file_key": "app.zip",
            "endpoint_url": self.moto,
            "poll_interval": poll_s,
            **keys,
        }
        self.upload(name, "v1")
        self.write()
        return bucket

    def write(self) -> None:
        write_config(self.config, self.sections)

    def upload(self, name: str, tag: str) -> None:
        files = {"appspec.yml": appspec(self.tmp_path / name, {}), "app/index.html": tag}
        self.s3.put_object(Bucket=self.sections[name]["s3_bucket"], Key="app.zip", Body=zip_bytes(files))

    def deployed(self, name: str) -> str | None:
        index = self.tmp_path / name / "index.html"
        return index.read_text() if index.exists() else None

    def wait_deployed(self, name: str, tag: str) -> None:
        def ended() -> bool:  # the file is installed a moment before the deployment is recorded as ended
            latest = db_history(self.state_dir, name)[:1]
            return self.deployed(name) == tag and bool(latest) and latest[0]["status"] != "running"

        wait_until(ended, timeout=WAIT_S)
        assert [d["status"] for d in db_history(self.state_dir, name)][0] == "succeeded"

    def notify(self, bucket: str, **target: str) -> None:
        """S3 event notifications of ``bucket`` to ``QueueArn=...`` or ``TopicArn=...``."""
        kind = "QueueConfigurations" if "QueueArn" in target else "TopicConfigurations"
        self.s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={kind: [{**target, "Events": ["s3:ObjectCreated:*"]}]},
        )


@pytest.fixture
def host(tmp_path: Path, moto_server: str) -> Host:
    return Host(tmp_path, moto_server)


def started(daemons: Callable[..., DaemonProcess], host: Host) -> DaemonProcess:
    daemon = daemons(host.config, host.state_dir, "--all")
    for name in host.sections:
        host.wait_deployed(name, "v1")  # the first poll deploys what is there
    return daemon


@pytest.mark.parametrize("route", ["s3-sqs", "s3-sns-sqs"])
def test_an_upload_starts_deploying_at_once_through_the_queue(
    host: Host, daemons: Callable[..., DaemonProcess], route: str
) -> None:
    queue_url, queue_arn = host.queue()
    bucket = host.section("Web", wake_queue_url=queue_url)
    host.section("Other", wake_queue_url=queue_url)  # on the same queue, not notified: stays put
    if route == "s3-sqs":
        host.notify(bucket, QueueArn=queue_arn)
    else:
        topic = host.sns.create_topic(Name=f"deploys-{uuid.uuid4().hex[:8]}")["TopicArn"]
        host.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        host.notify(bucket, TopicArn=topic)
    daemon = started(daemons, host)
    host.upload("Other", "v2")  # no notification for this bucket: only its 300 s poll would see it
    host.upload("Web", "v2")
    host.wait_deployed("Web", "v2")
    assert "s3://" + bucket + "/app.zip changed: polling it now" in daemon.output()
    assert host.deployed("Other") == "v1"


def test_garbage_on_the_queue_wakes_every_section_on_it(
    host: Host, daemons: Callable[..., DaemonProcess]
) -> None:
    queue_url, _ = host.queue()
    host.section("A", wake_queue_url=queue_url)
    host.section("B", wake_queue_url=queue_url)
    daemon = started(daemons, host)
    host.upload("A", "v2")
    host.upload("B", "v2")
    for body in ("garbage \x1b[31m", json.dumps({"Records": "not a list"})):
        host.sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    host.wait_deployed("A", "v2")
    host.wait_deployed("B", "v2")
    assert "waking every section on this queue" in daemon.output()
    wait_until(lambda: _depth(host, queue_url) == 0, timeout=WAIT_S)  # handled messages are deleted


def test_a_missing_queue_does_not_stop_polling(host: Host, daemons: Callable[..., DaemonProcess]) -> None:
    missing = f"{host.moto}/123456789012/no-such-queue"
    host.section("Web", poll_s=0.5, wake_queue_url=missing)
    daemon = started(daemons, host)
    host.upload("Web", "v2")
    host.wait_deployed("Web", "v2")
    wait_until(lambda: "QueueDoesNotExist" in daemon.output(), timeout=WAIT_S)
    assert "polling goes on" in daemon.output()


def test_sigusr1_makes_every_watcher_poll_at_once(host: Host, daemons: Callable[..., DaemonProcess]) -> None:
    host.section("A")
    host.section("B")
    daemon = started(daemons, host)
    host.upload("A", "v2")
    host.upload("B", "v2")
    daemon.signal(signal.SIGUSR1)
    host.wait_deployed("A", "v2")
    host.wait_deployed("B", "v2")
    assert "SIGUSR1 received: waking every watcher" in daemon.output()


def test_sighup_adds_and_removes_listeners(host: Host, daemons: Callable[..., DaemonProcess]) -> None:
    queue_url, queue_arn = host.queue()
    bucket = host.section("Web")
    host.notify(bucket, QueueArn=queue_arn)
    daemon = started(daemons, host)
    assert "listening at" not in daemon.output()

    host.sections["Web"]["wake_queue_url"] = queue_url
    host.write()
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "listening at" in daemon.output(), timeout=WAIT_S)
    host.upload("Web", "v2")
    host.wait_deployed("Web", "v2")

    del host.sections["Web"]["wake_queue_url"]
    host.write()
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "stopped listening" in daemon.output(), timeout=WAIT_S)


def _depth(host: Host, queue_url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = host.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attrs[n]) for n in names)


@pytest.mark.parametrize(
    "url", ["ftp://sqs.eu-west-1.amazonaws.com/1/q", "https://user:pw@sqs.eu-west-1.amazonaws.com/1/q",
            "https://sqs.eu-west-1.amazonaws.com/", "https://sqs.eu-west-1.amazonaws.com/1/q?x=1"],
)  # fmt: skip
def test_a_bad_wake_queue_url_is_a_configuration_error(tmp_path: Path, url: str) -> None:
    config = write_config(
        tmp_path / "config.ini",
        {"Web": {"s3_bucket": "b", "target_file_key": "k.zip", "wake_queue_url": url}},
    )
    proc = cli("run", "--all", "-c", str(config), "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert f"{config} [Web] wake_queue_url: expected an SQS queue URL like https://" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_listener_per_queue_and_credentials_each_waking_every_section_on_that_queue() -> None:
    q1, q2 = "https://sqs.eu-west-1.amazonaws.com/1/q1", "http://127.0.0.1:9324/1/q2"
    sections = [
        Section(name="A", s3_bucket="b", target_file_key="a.zip", wake_queue_url=q1),
        Section(name="B", s3_bucket="b", target_file_key="a.zip", wake_queue_url=q1),  # same object
        Section(name="C", s3_bucket="b", target_file_key="c.zip", wake_queue_url=q1, profile_name="ops"),
        Section(name="D", s3_bucket="b", target_file_key="d.zip", wake_queue_url=q2, region="eu-west-3"),
        Section(name="E", s3_bucket="b", target_file_key="e.zip"),  # no queue: no listener
    ]
    plans = {(p.address.url, p.profile_name, p.region): p for p in plan_listeners(sections)}
    assert set(plans) == {(q1, None, None), (q1, "ops", None), (q2, None, "eu-west-3")}
    for key in [(q1, None, None), (q1, "ops", None)]:  # whichever receives a message wakes A, B and C
        assert dict(plans[key].targets) == {("b", "a.zip"): ("A", "B"), ("b", "c.zip"): ("C",)}
        assert plans[key].everyone == ("A", "B", "C")
    assert plans[(q2, None, "eu-west-3")].everyone == ("D",)
    assert plans[(q2, None, "eu-west-3")].address.signing_region("eu-west-3") == "eu-west-3"
