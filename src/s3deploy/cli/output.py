"""Human output for the CLI: rich tables and progress bars on a terminal, plain stable text elsewhere.

rich is imported only when something is shown on a terminal: the daemon never needs it (B3: memory).
Everything shown comes through ``printable`` (control characters and escape sequences escaped), and
rich gets it as Text, never as markup: a hook's output such as ``copied to [/var/www]`` shows as written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from s3deploy.common.text import printable

if TYPE_CHECKING:
    from rich.console import Console

    from s3deploy.source.s3 import ProgressCallback

#: Transfers at least this big get a progress bar (when stdout is a terminal).
PROGRESS_MIN_BYTES = 4 * 2**20

ProgressFactory = Callable[[str, int], "ProgressCallback | None"]


#: Variables with which rich treats a pipe as a terminal (colours in CI logs).
_FORCE_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


@cache
def console(*, stderr: bool = False) -> Console:
    """The rich console of stdout (or stderr), created on first use."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def on_terminal(*, stderr: bool = False) -> bool:
    """Whether rich would draw for a terminal; a pipe answers without loading rich."""
    stream = sys.stderr if stderr else sys.stdout
    if not stream.isatty() and not any(os.environ.get(name) for name in _FORCE_TERMINAL):
        return False
    return console(stderr=stderr).is_terminal


def print_error(message: str) -> None:
    """``error: message`` on stderr, in red on a terminal."""
    text = printable(message, keep_newlines=True)
    if on_terminal(stderr=True):
        from rich.text import Text

        console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", text), highlight=False)
    else:
        print(f"error: {text}", file=sys.stderr)


def say(message: str) -> None:
    """A line of output for people (escaped: it quotes names, errors and hook output)."""
    print(printable(message, keep_newlines=True))


def one_line(value: Any) -> str:
    """A table cell: whitespace folded, control characters escaped, "-" when empty."""
    return printable(" ".join(str(value).split())) if value not in (None, "") else "-"


def ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def iso_ts(value: str | None) -> str:
    return ts(datetime.fromisoformat(value)) if value else "-"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; else plain text: a header, one line per row, columns padded with two
    spaces (every column but the last is a single word, "-" when empty), so scripts can split lines."""
    cells = [[one_line(v) for v in row] for row in rows]
    if on_terminal():
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(printable(title)))
        for col in columns:
            table.add_column(col.lower())
        for row in cells:
            table.add_row(*(Text(cell) for cell in row))
        console().print(table, highlight=False)
        return
    header = [c.upper().replace(" ", "_") for c in columns]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(columns) - 1)]
    for row in [header, *cells]:
        print("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]).rstrip())


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressFactory | None]:
    """A factory of progress callbacks for transfers over PROGRESS_MIN_BYTES, when ``enabled`` and stdout
    is a terminal."""
    if not enabled or not on_terminal():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(),
    )

    def factory(what: str, total: int) -> ProgressCallback | None:
        if total < PROGRESS_MIN_BYTES:
            return None
        if not bars.live.is_started:
            bars.start()
        task = bars.add_task(what, total=total)
        return lambda nbytes: bars.advance(task, nbytes)

    try:
        yield factory
    finally:
        bars.stop()
