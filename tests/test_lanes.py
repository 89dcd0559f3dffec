"""common/lanes.py: real threads; order per key, context per lane, the first error stops everything."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator

import pytest

from s3deploy.common import lanes as lanes_module
from s3deploy.common.lanes import run_lanes

SECTION: contextvars.ContextVar[str] = contextvars.ContextVar("SECTION", default="-")


def test_every_item_once_same_key_same_lane_in_order() -> None:
    seen: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def work(item: tuple[int, int]) -> None:
        with lock:
            seen.append((threading.current_thread().name, item[0], item[1]))

    items = [(n % 7, n) for n in range(5000)]
    run_lanes(work, items, lanes=4, key=lambda item: item[0], name="t")
    assert sorted((key, n) for _, key, n in seen) == sorted(items)
    assert len({name for name, _, _ in seen}) > 1 and all(name.startswith("t-") for name, _, _ in seen)
    for key in range(7):
        mine = [(name, n) for name, k, n in seen if k == key]
        assert len({name for name, _ in mine}) == 1  # one lane per key
        assert [n for _, n in mine] == sorted(n for _, n in mine)  # in dealing order


def test_lanes_run_in_a_copy_of_the_callers_context() -> None:
    SECTION.set("Production")
    found: set[str] = set()
    run_lanes(lambda _: found.add(SECTION.get()), range(500), lanes=3)
    assert found == {"Production"}


def test_the_first_error_stops_the_others_and_is_raised() -> None:
    done: list[int] = []
    started = threading.Event()

    def work(n: int) -> None:
        if n == 40:
            raise ValueError("item 40 is bad")
        started.set()
        done.append(n)

    with pytest.raises(ValueError, match="item 40 is bad"):
        run_lanes(work, range(100_000), lanes=4)
    assert started.is_set()
    assert len(done) < 50_000  # stopped early, not after every item
    assert not [t for t in threading.enumerate() if t.name.startswith("lane-")]


def test_an_error_of_the_items_iterator_stops_the_lanes_and_is_raised() -> None:
    def items() -> Iterator[int]:
        yield from range(1000)
        raise OSError("listing failed")

    count = 0
    lock = threading.Lock()

    def work(_: int) -> None:
        nonlocal count
        with lock:
            count += 1

    with pytest.raises(OSError, match="listing failed"):
        run_lanes(work, items(), lanes=2)
    assert count <= 1000
    assert not [t for t in threading.enumerate() if t.name.startswith("lane-")]


def test_memory_stays_bounded_whatever_the_number_of_items() -> None:
    """The dealer waits for slow lanes: never more than lanes x QUEUE_BATCHES x BATCH items dealt ahead."""
    produced = consumed = 0
    most_ahead = 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        nonlocal produced, most_ahead
        for n in range(20_000):
            with lock:
                produced += 1
                most_ahead = max(most_ahead, produced - consumed)
            yield n

    def work(_: int) -> None:
        nonlocal consumed
        with lock:
            consumed += 1

    run_lanes(work, items(), lanes=2)
    assert consumed == 20_000
    limit = 2 * (lanes_module.QUEUE_BATCHES + 2) * lanes_module.BATCH
    assert most_ahead <= limit


def test_one_lane_runs_in_the_callers_thread() -> None:
    names: set[str] = set()
    run_lanes(lambda _: names.add(threading.current_thread().name), range(10), lanes=1)
    assert names == {threading.current_thread().name}
