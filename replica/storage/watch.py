"""What this replica knows of its own database without asking it: whether it is making
progress (`StorageWatch`), and where its log ends (`KnownLog`).

A database can fail slow -- a stuck disk, a frozen server, a proxy that holds every byte --
and then every call to it waits, however short its own timeout. The protocol must still see
time pass (a primary whose writes make no progress hands over: ins.Tick's
`storage_busy_since`), and peers and clients must still get an answer (from memory, or
UNAVAILABLE with the reason). So every operation on the database runs inside
`StorageWatch.operation()`, and every write that moves the log's end tells `KnownLog`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from eventlog import Position

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SLOW_LOG_EVERY = 60.0  # a slow database is logged at most this often


class StorageWatch:
    """Whether the database makes progress. `busy_since` is when the oldest operation still
    under way began -- or, if earlier, when the first of the operations that failed since
    the database last succeeded began (a server gone, a table missing, a full disk): so it
    stays put while one operation is stuck (a disk that stopped, a frozen server), whatever
    else the database still answers from memory, and while every operation fails. None while
    nothing waits and the last operation succeeded. An operation slower than `slow_after`
    seconds is counted, and logged at most once a minute."""

    def __init__(
        self,
        index: int,
        *,
        slow_after: float = 0.2,
        clock: Clock = time.monotonic,
    ) -> None:
        self._index = index
        self._slow_after = slow_after
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}  # operation -> when it began
        self._next = 0
        self._failing_since: float | None = None
        self._slow = 0
        self._slow_unlogged = 0
        self._slowest = 0.0
        self._slow_logged_at = float("-inf")
        self.on_duration: Callable[[float], None] = lambda seconds: None  # (metrics)

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """One operation on the database (a transaction, a read). It made progress if it
        succeeded -- or failed for a reason of the caller's own (a command refused, a
        position moved); any error of the database is no progress."""
        token = self.begin()
        succeeded = True
        try:
            yield
        except sa.exc.DBAPIError:
            succeeded = False
            raise
        finally:
            self.end(token, succeeded)

    def begin(self) -> int:
        """An operation begins (its token, for `end`); `operation()` is the usual way."""
        with self._lock:
            self._next += 1
            self._running[self._next] = self._clock()
            return self._next

    def end(self, token: int, answered: bool) -> None:
        """The operation ends: `answered` if the database did what was asked."""
        with self._lock:
            now = self._clock()
            began = self._running.pop(token)
            if answered:
                self._failing_since = None
            elif self._failing_since is None:
                self._failing_since = began
            took = now - began
            slow = answered and took > self._slow_after
            if slow:
                self._slow += 1
                self._slow_unlogged += 1
                self._slowest = max(self._slowest, took)
            report = slow and now - self._slow_logged_at >= SLOW_LOG_EVERY
            if report:
                count, slowest = self._slow_unlogged, self._slowest
                self._slow_unlogged, self._slowest = 0, 0.0
                self._slow_logged_at = now
        self.on_duration(took)
        if report:
            log.warning(
                "replica %d: the database is slow: %d operation(s) took longer than %.0f ms "
                "(the slowest %.0f ms) since the last such line (at most one a minute)",
                self._index,
                count,
                self._slow_after * 1000,
                slowest * 1000,
            )

    def running(self) -> int:
        """How many operations are under way."""
        with self._lock:
            return len(self._running)

    def busy_since(self) -> float | None:
        with self._lock:
            oldest = min(self._running.values(), default=None)
            failing = self._failing_since
        if oldest is None or (failing is not None and failing < oldest):
            return failing
        return oldest

    def stalled_for(self) -> float:
        """How long the database has made no progress on what waits on it (0 if nothing does)."""
        since = self.busy_since()
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def slow_operations(self) -> int:
        """Operations slower than `slow_after`, so far."""
        with self._lock:
            return self._slow


def stalled_reason(stalled_for: float, wall_clock: Callable[[], float] = time.time) -> str:
    """What a stalled replica answers: since when (wall-clock time), and for how long."""
    since = time.strftime("%H:%M:%S", time.localtime(wall_clock() - stalled_for))
    return f"database stalled since {since} ({stalled_for:.1f}s without progress)"


class KnownLog:
    """Where this replica's log ends and how far its projections are applied, as of the last
    commit that moved them -- kept by whoever commits (under the writer's lock), so that a
    probe or a status is answered without a query. Set at start-up from the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = Position(0, 0)
        self._applied = 0

    def set(self, last: Position, applied: int) -> None:
        with self._lock:
            self._last, self._applied = last, applied

    def get(self) -> tuple[Position, int]:
        with self._lock:
            return self._last, self._applied
