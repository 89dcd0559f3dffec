"""A lean botocore session for the S3 clients: a smaller model in memory, cheap and guarded parsing.

Three changes to a stock aiobotocore session, all through botocore's own extension points:

* the service model is loaded with its API documentation emptied (``_LeanJSONFileLoader``): the docs are
  ~80% of S3's 1.2 MB model and only feed docstrings; parsed, they cost the idle daemon several MiB;
* timestamps are parsed by :func:`~s3deploy.source.timestamps.parse_timestamp` (the parsers'
  ``timestamp_parser``) instead of dateutil, which dominated the CPU of parsing a ListObjectsV2 page;
* every response parser is wrapped so that an answer that does not parse (an invalid ``Last-Modified``,
  a non-numeric ``Content-Length``, broken XML) raises :class:`~s3deploy.source.failures.MalformedResponse`,
  which the callers translate into a SourceError naming the object, instead of a bare ValueError.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiobotocore.parsers import AioResponseParserFactory
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.loaders import JSONFileLoader, create_loader

from s3deploy.common.text import bounded
from s3deploy.source.failures import MalformedResponse
from s3deploy.source.timestamps import parse_timestamp


class _GuardedParser:
    """A response parser whose failures become MalformedResponse (the answer came from the network)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def parse(self, response: Any, shape: Any) -> Any:
        try:
            return await self._inner.parse(response, shape)
        except Exception as e:  # any failure to parse is S3's malformed answer, never our crash
            raise MalformedResponse(detail=f"{type(e).__name__}: {bounded(e, 200)}") from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ParserFactory(AioResponseParserFactory):  # type: ignore[misc]  # botocore is untyped
    def create_parser(self, protocol_name: str) -> Any:
        return _GuardedParser(super().create_parser(protocol_name))


class _LeanJSONFileLoader(JSONFileLoader):  # type: ignore[misc]
    """botocore's model loader with the API documentation emptied. Plain dicts instead of OrderedDict."""

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            payload = fp.read().decode("utf-8")
        return json.loads(payload, object_pairs_hook=_without_docs)


def _without_docs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Emptied, not dropped: some botocore code indexes ["documentation"].
    return {k: "" if k in _DOC_KEYS else v for k, v in pairs}


_DOC_KEYS = frozenset({"documentation", "documentationUrl"})


def lean_session(profile_name: str | None) -> AioSession:
    """A botocore session with the lean model loader and the fast, guarded response parsers.

    Raises botocore's ProfileNotFound for an unknown profile.
    """
    session = AioSession(profile=profile_name)
    loader = create_loader(session.get_config_variable("data_path"))
    loader.file_loader = _LeanJSONFileLoader()
    session.register_component("data_loader", loader)
    factory = _ParserFactory()
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    session.register_component("response_parser_factory", factory)
    return session


#: The most a HEAD, a LIST page, the headers of a GET or a small write may take, botocore's retries
#: included: its read_timeout catches a silent server, not one that trickles its answer byte by byte.
REQUEST_TIMEOUT_S = 120.0


def client_config(path_style: bool) -> Config:
    """The settings of every S3 client: retries, timeouts, pool size, who verifies checksums."""
    return Config(
        # botocore counts "max_attempts" as retries; total_max_attempts=3 is three tries in all.
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        # Per socket read: a silent server fails a request after this. A server trickling bytes does
        # not: the download guards its pace itself (transfer.STALL_WINDOW_S).
        read_timeout=30,
        max_pool_connections=32,
        s3={"addressing_style": "path"} if path_style else None,
        # download() verifies checksums itself, against the revision it was pinned to.
        response_checksum_validation="when_required",
    )
