"""Logging set-up: stderr always (journald-friendly), an optional file, text or JSON lines.

Every line logged while a section is watched or deployed carries that section and deployment: the
watcher and the deployer set them with :func:`log_context` (contextvars), and one filter on every
handler copies them onto each record, whichever module logs it. ``asyncio.to_thread`` and tasks copy the
context; work handed to a thread pool by hand must be submitted through ``contextvars.copy_context().run``.

Text lines: ``TIME LEVEL LOGGER [d-XXXXXXXXX ][Section] message``; JSON lines: ``ts``, ``level``,
``logger``, ``msg`` and, when known, ``section``, ``deployment_id`` and ``event``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3deploy.errors import ConfigError

#: The section being watched or deployed by the current task (or thread it started).
section_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("section", default=None)
#: The deployment the current task runs (the DEPLOYMENT_ID its hooks see).
deployment_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("deployment_id", default=None)

_CONTEXT_KEYS = ("section", "deployment_id", "event")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(context)s%(message)s"
_NOISY = ("botocore", "aiobotocore", "aioboto3", "urllib3", "asyncio")


@contextmanager
def log_context(*, section: str | None = None, deployment_id: str | None = None) -> Iterator[None]:
    """Tag every line logged inside the ``with`` (this task, and threads and tasks it starts)."""
    tokens = []
    if section is not None:
        tokens.append((section_var, section_var.set(section)))
    if deployment_id is not None:
        tokens.append((deployment_var, deployment_var.set(deployment_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Puts the current section and deployment on every record (an explicit ``extra`` wins) and the
    text prefix built from them in ``record.context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        section = getattr(record, "section", None) or section_var.get()
        deployment_id = getattr(record, "deployment_id", None) or deployment_var.get()
        record.section = section
        record.deployment_id = deployment_id
        prefix = f"{deployment_id} " if deployment_id else ""
        record.context = prefix + (f"[{section}] " if section else "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the context when present."""

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


def _open_log_file(log_file: Path) -> logging.Handler:
    """A handler appending to ``log_file``; ConfigError (exit 2) naming the path when it cannot."""
    if log_file.is_dir():
        raise ConfigError(f"--log-file {log_file}: is a folder; give the path of a file")
    if not log_file.parent.is_dir():
        raise ConfigError(f"--log-file {log_file}: the folder {log_file.parent} does not exist")
    try:
        return logging.FileHandler(log_file, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--log-file {log_file}: cannot open it for writing: {e.strerror or e}") from e


def setup_logging(level: str = "INFO", fmt: str = "text", log_file: Path | None = None) -> None:
    """Configure the root logger. Safe to call twice (tests, reload): handlers are replaced.

    Raises ConfigError for a bad level, format or log file.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = logging.Formatter(_TEXT_FORMAT)
    else:
        raise ConfigError(f"--log-format: expected text or json, got {fmt!r}")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(_open_log_file(log_file))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    context = ContextFilter()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        root.addHandler(handler)
    root.setLevel(numeric)
    # botocore is chatty at INFO (credential lookups); keep it at WARNING unless debugging.
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
