"""The storage watch: when the database last made progress on what waits on it."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from replica.storage.watch import StorageWatch, stalled_reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lost_connection() -> sa.exc.OperationalError:
    class Lost(Exception):
        errno = 2013  # lost connection to the server during query

    return sa.exc.OperationalError("SELECT 1", {}, Lost("lost"))


def test_nothing_waits_nothing_stalls() -> None:
    clock = Clock()
    watch = StorageWatch(0, clock=clock)
    assert watch.busy_since() is None
    with watch.operation():
        clock.now += 0.5
        assert watch.busy_since() == 100.0
    assert watch.busy_since() is None and watch.stalled_for() == 0.0


def test_a_stuck_operation_stays_stuck_whatever_else_the_database_answers() -> None:
    """A stopped disk: the commit waits while a SELECT 1 is answered from memory. Progress is
    the oldest operation ending, not any."""
    clock = Clock()
    watch = StorageWatch(0, clock=clock)
    stuck = watch.begin()
    for _ in range(5):
        clock.now += 1.0
        with watch.operation():
            assert watch.busy_since() == 100.0

    assert watch.busy_since() == 100.0 and watch.stalled_for() == 5.0
    watch.end(stuck, answered=True)
    assert watch.busy_since() is None


def test_a_failing_database_counts_as_waiting_until_something_succeeds() -> None:
    clock = Clock()
    watch = StorageWatch(0, clock=clock)
    with pytest.raises(sa.exc.OperationalError), watch.operation():
        raise lost_connection()
    clock.now += 3.0
    assert watch.busy_since() == 100.0, "nothing under way, yet nothing succeeded since"
    with pytest.raises(sa.exc.ProgrammingError), watch.operation():
        raise sa.exc.ProgrammingError("SELECT", {}, Exception("no such table"))
    assert watch.busy_since() == 100.0, "an error of the database's is no progress either"
    with pytest.raises(LookupError), watch.operation():
        raise LookupError("the caller's own")
    assert watch.busy_since() is None, "the database did what it was asked"


def test_a_slow_database_is_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = StorageWatch(4, slow_after=0.2, clock=clock)
    durations: list[float] = []
    watch.on_duration = durations.append
    caplog.set_level(logging.WARNING)
    for _ in range(10):
        with watch.operation():
            clock.now += 0.3
    slow_lines = [r for r in caplog.records if "the database is slow" in r.getMessage()]
    assert len(slow_lines) == 1 and "replica 4" in slow_lines[0].getMessage()
    assert watch.slow_operations == 10 and len(durations) == 10
    clock.now += 60
    with watch.operation():
        clock.now += 0.3
    slow_lines = [r for r in caplog.records if "the database is slow" in r.getMessage()]
    assert len(slow_lines) == 2 and "10 operation(s)" in slow_lines[1].getMessage()


def test_the_stalled_reason_says_since_when() -> None:
    reason = stalled_reason(12.5, wall_clock=lambda: 3600.0 * 5 + 12.5)
    assert reason.startswith("database stalled since ") and "12.5s without progress" in reason
