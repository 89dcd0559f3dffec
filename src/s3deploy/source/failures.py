"""Every botocore/aiohttp error turned into a SourceError that names the request, object and endpoint.

``translated(op, ep, bucket, key)`` wraps a call; ``translate_error`` is the mapping itself: S3 error
codes to a hint and whether waiting helps, connection failures told apart (never connected, reset while
the request was in flight, cut in the middle of the body, timed out), a malformed answer (a timestamp or
number that does not parse, broken XML) named as such.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import aiohttp
import botocore.exceptions as bce

from s3deploy.common.text import bounded
from s3deploy.errors import RevisionChanged, SourceError
from s3deploy.source.revision import Endpoint


class MalformedResponse(bce.BotoCoreError):  # type: ignore[misc]  # botocore is untyped
    """S3 answered, but its answer does not parse (raised by the guarded response parser)."""

    fmt = "malformed response: {detail}"


# S3 error code -> (what it means and what to do, retryable)
HINTS: dict[str, tuple[str, bool]] = {
    "NoSuchBucket": ("the bucket does not exist; check s3_bucket, region and endpoint_url", False),
    "NoSuchKey": ("the object does not exist; check target_file_key or publish a bundle", False),
    "NoSuchVersion": ("that version of the object no longer exists", False),
    "AccessDenied": ("access denied; the credentials need s3:GetObject/s3:ListBucket on it", False),
    "AllAccessDisabled": ("access to the bucket is disabled", False),
    "ExpiredToken": ("the credentials have expired; refresh them (aws sso login, instance role)", False),
    "InvalidAccessKeyId": ("the access key id is not known to this endpoint; check the credentials", False),
    "SignatureDoesNotMatch": (
        "the secret key does not match the access key id; check the credentials",
        False,
    ),
    "PermanentRedirect": ("the bucket is in another region; set region for this section", False),
    "AuthorizationHeaderMalformed": ("wrong region for this bucket; set region for this section", False),
    "SlowDown": ("throttled by S3 (SlowDown); retrying with backoff", True),
    "ServiceUnavailable": ("S3 is unavailable (503); retrying with backoff", True),
    "InternalError": ("S3 internal error (500); retrying with backoff", True),
    "RequestTimeout": ("S3 timed out waiting for the request; retrying", True),
    "InvalidRange": ("the object is shorter than the size its revision declared; retrying", True),
}
_CODE_ALIASES = {
    "404": "NoSuchKey",
    "NotFound": "NoSuchKey",
    "403": "AccessDenied",
    "Forbidden": "AccessDenied",
    "ExpiredTokenException": "ExpiredToken",
    "TokenRefreshRequired": "ExpiredToken",
    "301": "PermanentRedirect",
    "503": "ServiceUnavailable",
    "Throttling": "SlowDown",
    "ThrottlingException": "SlowDown",
    "500": "InternalError",
}

# A HEAD response has no body, so S3 cannot name its error: only the status arrives. Say what it
# usually is instead of a bare "400: Bad Request".
_HEAD_HINTS = {
    "400": (
        "bad request, no detail (a HEAD response has no body); the usual causes are expired "
        "credentials (ExpiredToken) or the wrong region for this bucket"
    ),
    "503": "S3 is unavailable or throttling (SlowDown looks the same on a HEAD); retrying with backoff",
}


def error_code(exc: bce.ClientError) -> tuple[str, int]:
    """The S3 error code of a ClientError (aliases resolved: "404" is NoSuchKey) and its HTTP status."""
    raw = str(exc.response.get("Error", {}).get("Code") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return _CODE_ALIASES.get(raw, raw) or str(status), status


def translate_error(exc: BaseException, op: str, ep: Endpoint, bucket: str, key: str = "") -> SourceError:
    """Turn a botocore/aiohttp exception into a SourceError that names endpoint, bucket, key and a hint."""
    where = f"{op} s3://{bucket}/{key} at {ep.describe()}"
    if isinstance(exc, bce.ClientError):
        return _client_error(exc, op, where)
    if isinstance(exc, MalformedResponse):
        return SourceError(
            f"{where} failed: S3 sent a malformed answer ({bounded(exc.kwargs.get('detail'), 240)}); "
            "is endpoint_url an S3 server? retrying",
            code="MalformedResponse",
        )
    if isinstance(exc, bce.EndpointConnectionError):
        return _connection_error(exc, where, ep)
    if isinstance(exc, bce.IncompleteReadError):
        got, want = exc.kwargs.get("actual_bytes"), exc.kwargs.get("expected_bytes")
        return SourceError(
            f"{where} failed: truncated: got {got} of {want} bytes; retrying", code="Truncated"
        )
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError | TimeoutError):
        return SourceError(f"{where} failed: timed out talking to {ep.describe()}", code="Timeout")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError):
        return SourceError(
            f"{where} failed: no AWS credentials found (profile_name / env / instance role): {exc}",
            code="NoCredentials",
            retryable=False,
        )
    if isinstance(exc, bce.ProfileNotFound):
        return SourceError(
            f"{where} failed: AWS profile {ep.profile_name!r} not found in the AWS config files",
            code="ProfileNotFound",
            retryable=False,
        )
    if isinstance(exc, bce.ParamValidationError | bce.ValidationError | bce.NoRegionError):
        return SourceError(f"{where} failed: invalid request: {exc}", code="InvalidRequest", retryable=False)
    cause = exc.kwargs.get("error") if isinstance(exc, bce.HTTPClientError) else exc
    if isinstance(cause, aiohttp.ClientResponseError):  # aiohttp refused the answer: not valid HTTP
        first_line = (str(cause.message) or str(cause)).splitlines()[0]
        return SourceError(
            f"{where} failed: S3 sent an invalid HTTP answer ({bounded(first_line, 160)}); "
            "is endpoint_url an S3 server? retrying",
            code="MalformedResponse",
        )
    if isinstance(exc, bce.ResponseStreamingError | aiohttp.ClientError | bce.HTTPClientError):
        return SourceError(
            f"{where} failed: connection lost ({bounded(exc, 240)}); retrying", code="ConnectionLost"
        )
    return SourceError(f"{where} failed: {type(exc).__name__}: {bounded(exc, 240)}", code=type(exc).__name__)


def _client_error(exc: bce.ClientError, op: str, where: str) -> SourceError:
    raw = str(exc.response.get("Error", {}).get("Code") or "")
    code, status = error_code(exc)
    if code in ("PreconditionFailed", "412") or status == 412:
        return RevisionChanged(f"{where}: object changed during download; will retry with the new revision")
    hint, retryable = HINTS.get(code, ("", status >= 500 or status in (0, 429)))
    if op == "HEAD" and raw in _HEAD_HINTS:
        hint = _HEAD_HINTS[raw]
    if not hint:
        message = exc.response.get("Error", {}).get("Message")
        hint = (
            "server error; retrying with backoff" if retryable else bounded(message or "request refused", 240)
        )
    label = code if code == raw or not raw else f"{code} ({raw})"
    return SourceError(f"{where} failed: {bounded(label, 80)}: {hint}", code=code, retryable=retryable)


def _connection_error(exc: bce.EndpointConnectionError, where: str, ep: Endpoint) -> SourceError:
    """Never connected (wrong endpoint, nothing listening) is not the same as a connection reset."""
    cause = exc.kwargs.get("error")
    url = exc.kwargs.get("endpoint_url", ep.describe())
    never_connected = cause is None or isinstance(
        cause, aiohttp.ClientConnectorError | socket.gaierror | ConnectionRefusedError
    )
    if never_connected:
        return SourceError(
            f"{where} failed: cannot connect to {url}; check endpoint_url and the network",
            code="EndpointConnectionError",
        )
    return SourceError(
        f"{where} failed: the connection was reset by {ep.describe()} while the request was in flight "
        f"({bounded(cause, 120)}); retrying",
        code="ConnectionLost",
    )


@contextlib.contextmanager
def translated(op: str, ep: Endpoint, bucket: str, key: str = "") -> Iterator[None]:
    """Translate third-party errors raised inside the block; our own errors pass through."""
    try:
        yield
    except SourceError:
        raise
    except (bce.BotoCoreError, bce.ClientError, aiohttp.ClientError, TimeoutError) as e:
        raise translate_error(e, op, ep, bucket, key) from e
