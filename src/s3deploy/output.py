"""Human output for the CLI: rich tables and progress bars on a terminal, plain stable text elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from s3deploy.s3 import ProgressCallback

#: Transfers at least this big get a progress bar (when stdout is a terminal).
PROGRESS_MIN_BYTES = 4 * 2**20

ProgressFactory = Callable[[str, int], ProgressCallback | None]


def one_line(value: Any) -> str:
    """A table cell: whitespace folded, "-" when empty."""
    return " ".join(str(value).split()) if value not in (None, "") else "-"


def ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def iso_ts(value: str | None) -> str:
    return ts(datetime.fromisoformat(value)) if value else "-"


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; else plain text: a header, one line per row, columns padded with two
    spaces (every column but the last is a single word, "-" when empty), so scripts can split lines."""
    cells = [[one_line(v) for v in row] for row in rows]
    if console.is_terminal:
        table = Table(title=title)
        for col in columns:
            table.add_column(col.lower())
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    header = [c.upper().replace(" ", "_") for c in columns]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(columns) - 1)]
    for row in [header, *cells]:
        print("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]).rstrip())


@contextmanager
def progress_bars(console: Console, enabled: bool) -> Iterator[ProgressFactory | None]:
    """A factory of progress callbacks for transfers over PROGRESS_MIN_BYTES, when ``enabled``."""
    if not enabled:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
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
