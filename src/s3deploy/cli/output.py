"""Human output for the CLI: rich tables and progress bars on a terminal, plain stable text elsewhere.

rich is imported only when something is shown on a terminal: the daemon never needs it (B3: memory).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from s3deploy.source.s3 import ProgressCallback

if TYPE_CHECKING:
    from rich.console import Console

#: Transfers at least this big get a progress bar (when stdout is a terminal).
PROGRESS_MIN_BYTES = 4 * 2**20

ProgressFactory = Callable[[str, int], ProgressCallback | None]


@cache
def console(*, stderr: bool = False) -> Console:
    """The rich console of stdout (or stderr), created on first use."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def print_error(message: str) -> None:
    """``error: message`` on stderr, in red on a terminal."""
    err = console(stderr=True)
    if err.is_terminal:
        err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def one_line(value: Any) -> str:
    """A table cell: whitespace folded, "-" when empty."""
    return " ".join(str(value).split()) if value not in (None, "") else "-"


def ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def iso_ts(value: str | None) -> str:
    return ts(datetime.fromisoformat(value)) if value else "-"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; else plain text: a header, one line per row, columns padded with two
    spaces (every column but the last is a single word, "-" when empty), so scripts can split lines."""
    cells = [[one_line(v) for v in row] for row in rows]
    out = console()
    if out.is_terminal:
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col.lower())
        for row in cells:
            table.add_row(*row)
        out.print(table)
        return
    header = [c.upper().replace(" ", "_") for c in columns]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(columns) - 1)]
    for row in [header, *cells]:
        print("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]).rstrip())


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressFactory | None]:
    """A factory of progress callbacks for transfers over PROGRESS_MIN_BYTES, when ``enabled`` and stdout
    is a terminal."""
    if not enabled or not console().is_terminal:
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
