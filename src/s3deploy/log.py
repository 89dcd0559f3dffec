"""Logging set-up: stderr always (journald-friendly), an optional file, text or JSON lines.

Every line about a section carries it: use :func:`section_logger`, which prefixes text lines with
``[section]`` and adds ``section`` (and ``event``/``deployment_id`` when known) to JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_CONTEXT_KEYS = ("section", "event", "deployment_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the section context when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class SectionAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the section (and event) and passes them as ``extra`` for JSON output."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        prefix = f"[{extra['section']}]"
        if extra.get("event"):
            prefix += f" {extra['event']}:"
        return f"{prefix} {msg}", kwargs


def section_logger(logger: logging.Logger, section: str, **context: str) -> SectionAdapter:
    """A logger whose every line names ``section`` (and ``event``/``deployment_id`` if given)."""
    return SectionAdapter(logger, {"section": section, **context})


def setup_logging(level: str = "INFO", fmt: str = "text", log_file: Path | None = None) -> None:
    """Configure the root logger. Safe to call twice (tests, reload): handlers are replaced."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    else:
        raise ValueError(f"--log-format: expected text or json, got {fmt!r}")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(numeric)
    # botocore is chatty at INFO (credential lookups); keep it at WARNING unless debugging.
    for noisy in ("botocore", "aiobotocore", "aioboto3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
