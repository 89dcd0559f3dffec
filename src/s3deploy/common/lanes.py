"""Work spread over a few threads ("lanes"): the one runner for file-heavy steps (unpack, install).

Creating many small files is bound by the filesystem's per-file latency (inode, journal), which a few
threads overlap. ``run_lanes`` deals items from the caller's thread to ``lanes`` worker threads through
small bounded queues, so a million items never sit in memory at once. Items with the same key go to the
same lane in the order they were dealt. Each lane runs in its own copy of the caller's context
(``contextvars``), so log lines written from a lane keep the section and deployment id. The first error,
raised by a lane or by the items iterator, stops every lane and is raised again in the caller.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Items handed to a lane at once (fewer queue operations per item).
BATCH = 32
#: Batches waiting per lane: bounds memory whatever the number of items.
QUEUE_BATCHES = 8


class _Lanes(Generic[T]):
    def __init__(self, work: Callable[[T], None], count: int) -> None:
        self.work = work
        self.queues: list[queue.Queue[list[T] | None]] = [queue.Queue(QUEUE_BATCHES) for _ in range(count)]
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.stop.set()

    def lane(self, q: queue.Queue[list[T] | None]) -> None:
        # After a failure (here or elsewhere) the lane keeps taking batches, unprocessed, until its end
        # marker, so the dealer can never block on a full queue.
        while (batch := q.get()) is not None:
            for item in batch:
                if self.stop.is_set():
                    break
                try:
                    self.work(item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
                    self.fail(e)
                    break


def run_lanes(
    work: Callable[[T], None],
    items: Iterable[T],
    *,
    lanes: int,
    key: Callable[[T], Hashable] | None = None,
    name: str = "lane",
) -> None:
    """Call ``work(item)`` for every item over ``lanes`` threads named ``{name}-N``; return when all are done.

    ``key(item)`` picks the lane (same key, same lane, dealing order kept); without it items are dealt
    round-robin. With ``lanes <= 1`` everything runs in the caller's thread. The first exception stops
    the remaining work and is raised here once every lane has ended.
    """
    if lanes <= 1:
        for item in items:
            work(item)
        return
    state = _Lanes(work, lanes)
    threads = [
        threading.Thread(
            target=contextvars.copy_context().run, args=(state.lane, q), name=f"{name}-{n}", daemon=True
        )
        for n, q in enumerate(state.queues)
    ]
    for thread in threads:
        thread.start()
    pending: list[list[T]] = [[] for _ in range(lanes)]
    try:
        for dealt, item in enumerate(items):
            if state.stop.is_set():
                break
            n = dealt % lanes if key is None else hash(key(item)) % lanes
            pending[n].append(item)
            if len(pending[n]) >= BATCH:
                state.queues[n].put(pending[n])
                pending[n] = []
    except BaseException as e:  # noqa: BLE001 - raised below, after the lanes have ended
        state.fail(e)
    finally:
        for n, q in enumerate(state.queues):
            if pending[n] and not state.stop.is_set():
                q.put(pending[n])
            q.put(None)
        for thread in threads:
            thread.join()
    if state.error is not None:
        raise state.error
