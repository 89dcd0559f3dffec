"""The SQS client of a listener, and its errors translated into :class:`QueueError`.

Clients come from the same lean botocore session as the S3 clients (:mod:`s3deploy.source.s3`): one
way to build a session, with the section's profile; the endpoint and signing region come from the
queue URL (:mod:`s3deploy.wake.address`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions as bce
from botocore.config import Config

from s3deploy.common.text import bounded
from s3deploy.errors import S3DeployError
from s3deploy.source.session import lean_session
from s3deploy.wake.address import QueueAddress

#: ReceiveMessage's longest wait (SQS's maximum): one request per 20 s per queue while idle.
WAIT_S = 20
#: A socket read waits this much longer than the long poll before giving up on a silent server.
READ_MARGIN_S = 10


class QueueError(S3DeployError):
    """Receiving from or deleting on a wake-up queue failed. ``op`` and ``code`` (the SQS error code, or
    a name for the kind of failure) tell distinct errors apart."""

    def __init__(self, message: str, *, op: str, code: str) -> None:
        super().__init__(message)
        self.op = op
        self.code = code


def _config() -> Config:
    return Config(
        # botocore counts "max_attempts" as retries; total_max_attempts=3 is three tries in all.
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=WAIT_S + READ_MARGIN_S,
        max_pool_connections=2,
    )


@contextlib.asynccontextmanager
async def sqs_client(
    address: QueueAddress, profile_name: str | None, region: str | None
) -> AsyncIterator[Any]:
    """An aioboto3 SQS client on the queue URL's host, signing as ``profile_name`` for the right region.

    Raises QueueError for an unknown profile.
    """
    try:
        session = aioboto3.Session(botocore_session=lean_session(profile_name), profile_name=profile_name)
    except bce.ProfileNotFound as e:
        raise QueueError(
            f"queue {bounded(address.url)}: AWS profile {profile_name!r} not found in the AWS config files "
            "(~/.aws/config, ~/.aws/credentials or AWS_CONFIG_FILE); check profile_name",
            op="opening a client",
            code="ProfileNotFound",
        ) from e
    signing_region = address.signing_region(region or session.region_name)
    async with session.client(
        "sqs", region_name=signing_region, endpoint_url=address.endpoint_url, config=_config()
    ) as client:
        yield client


# SQS error code (JSON or query protocol) -> what it means and what to do
_HINTS: dict[str, str] = {
    "QueueDoesNotExist": (
        "the queue does not exist; check wake_queue_url (account, region and name) or create the queue"
    ),
    "AccessDenied": (
        "access denied; the credentials need sqs:ReceiveMessage and sqs:DeleteMessage on this queue"
    ),
    "InvalidClientTokenId": "the access key id is not known to this endpoint; check the credentials",
    "SignatureDoesNotMatch": "the secret key does not match the access key id; check the credentials",
    "ExpiredToken": "the credentials have expired; refresh them (aws sso login, instance role)",
    "KmsAccessDenied": (
        "the queue is encrypted with a KMS key these credentials may not use (kms:Decrypt is needed)"
    ),
    "RequestThrottled": "throttled by SQS; retrying with backoff",
}
_ALIASES = {
    "403": "AccessDenied",  # an error body botocore could not read: only the status is left
    "AWS.SimpleQueueService.NonExistentQueue": "QueueDoesNotExist",
    "AccessDeniedException": "AccessDenied",
    "UnrecognizedClientException": "InvalidClientTokenId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "ExpiredTokenException": "ExpiredToken",
    "KMS.AccessDeniedException": "KmsAccessDenied",
    "KmsAccessDenied": "KmsAccessDenied",
    "ThrottlingException": "RequestThrottled",
}


def translate_error(exc: BaseException, op: str, address: QueueAddress) -> QueueError:
    """Turn a botocore/aiohttp (or any) exception into a QueueError naming the queue and a hint."""
    where = f"{op} on queue {bounded(address.url)}"
    if isinstance(exc, QueueError):
        return exc
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        raw = str(err.get("QueryErrorCode") or err.get("Code") or status)
        code = _ALIASES.get(raw, _ALIASES.get(str(err.get("Code")), raw))
        hint = _HINTS.get(code) or (
            "server error; retrying with backoff" if status >= 500 else bounded(err.get("Message"), 200)
        )
        return QueueError(f"{where} failed: {bounded(code, 80)}: {hint}", op=op, code=code)
    if isinstance(exc, bce.EndpointConnectionError):
        return QueueError(
            f"{where} failed: cannot connect to {bounded(address.endpoint_url)}; "
            "check the URL and the network",
            op=op,
            code="EndpointConnectionError",
        )
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError | TimeoutError):
        return QueueError(f"{where} failed: timed out", op=op, code="Timeout")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError):
        return QueueError(
            f"{where} failed: no AWS credentials found (profile_name / env / instance role)",
            op=op,
            code="NoCredentials",
        )
    if isinstance(exc, bce.HTTPClientError | aiohttp.ClientError):
        return QueueError(
            f"{where} failed: connection lost ({bounded(exc, 200)})", op=op, code="ConnectionLost"
        )
    # Anything else (an answer that does not parse, a bug): still only a failed wake-up, never fatal.
    name = type(exc).__name__
    return QueueError(f"{where} failed: {name}: {bounded(exc, 200)}", op=op, code=name)
