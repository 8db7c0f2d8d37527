"""The commit point (high watermark) and who is waiting on it.

An event is committed once it is stored on the primary and on every in-sync secondary. Only
then is a client answered or a subscriber shown the message. The executor moves the commit
point (the core's ResetCommit, AdvanceCommit, CommitStalled, StepDown); writers wait on a
future per write, so the waits can be driven by one thread (the protocol model's) as well as
by many."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from eventlog import Event
from replica.errors import Unavailable
from replica.storage.spans import DISABLED, Spans

LOST_ROLE = (
    "the request was not committed: this replica lost its primary role; "
    "retry with the same request_id"
)
NOT_IN_TIME = (
    "the request was not acknowledged by the in-sync replicas in time; "
    "retry with the same request_id"
)


def stalled_message(shortfall: str) -> str:
    return (
        f"{shortfall}: not acknowledged yet; retry with the same request_id once a "
        "secondary has caught up"
    )


def refusal_message(shortfall: str) -> str:
    return f"{shortfall}; writes are refused until a secondary catches up"


class CommitTracker:
    def __init__(self, committed_seq: int = 0, *, spans: Spans = DISABLED) -> None:
        self._spans = spans
        self._lock = threading.Lock()
        self._committed_seq = committed_seq
        self._pending: deque[Event] = deque()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._shortfall: str | None = None  # why the commit point cannot move now
        # Which tenure the commit point belongs to: reset() starts one, abandon() ends
        # it. A wait belongs to the tenure it wrote (or found its event) in; once that tenure
        # ends, a seq reaching the commit point is no longer its event's commit (after a
        # truncation another event holds that seq), so it fails instead.
        self._tenure = 0
        self._tenure_live = False
        # The waits of the live tenure, by seq: (seq, tie-breaker, future).
        self._waits: list[tuple[int, int, Future[None]]] = []
        self._order = itertools.count()

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    @property
    def tenure(self) -> int:
        """The current tenure's number (see wait_for)."""
        return self._tenure

    def waiting(self) -> int:
        """How many waits are parked (not yet answered)."""
        with self._lock:
            return len(self._waits)

    def add_listener(self, listener: Callable[[list[Event]], None]) -> None:
        """Called (outside the lock) with the events that just became committed."""
        self._listeners.append(listener)

    def appended(self, events: Iterable[Event]) -> None:
        with self._lock:
            self._pending.extend(events)

    def admit(self) -> None:
        """Raises Unavailable while too few replicas are in sync to commit anything: a write
        is refused before anything is written."""
        shortfall = self._shortfall
        if shortfall is not None:
            raise Unavailable(refusal_message(shortfall))

    def advance(self, seq: int) -> None:
        newly: list[Event] = []
        answered: list[Future[None]] = []
        with self._lock:
            if seq <= self._committed_seq:
                return
            self._committed_seq = seq
            while self._pending and self._pending[0].seq <= seq:
                newly.append(self._pending.popleft())
            while self._waits and self._waits[0][0] <= seq:
                answered.append(heapq.heappop(self._waits)[2])
        for future in answered:
            future.set_result(None)
        self._spans.mark("committed", seq)
        for listener in self._listeners:
            listener(newly)

    def abandon(self) -> None:
        """The tenure ends (the replica stepped down): its uncommitted events will never
        be committed here; their waits fail instead of being acknowledged."""
        with self._lock:
            self._pending.clear()
            self._tenure += 1
            self._tenure_live = False
            failed = self._take_waits()
        _fail(failed, LOST_ROLE)

    def set_stalled(self, shortfall: str | None) -> None:
        """While set, writes are refused (admit) and waits fail at once with Unavailable
        instead of waiting out their timeout (their events stay in the log: a retry with the
        same request_id returns the first result once they commit)."""
        with self._lock:
            self._shortfall = shortfall
            failed = self._take_waits() if shortfall is not None else []
        if shortfall is not None:
            _fail(failed, stalled_message(shortfall))

    def reset(self, committed_seq: int) -> None:
        """A tenure begins with its commit point at `committed_seq`."""
        with self._lock:
            self._committed_seq = committed_seq
            self._pending.clear()
            self._shortfall = None
            self._tenure += 1
            self._tenure_live = True
            failed = self._take_waits()
        _fail(failed, LOST_ROLE)

    def wait_for(self, seq: int, tenure: int) -> Future[None]:
        """A future that succeeds once `seq` is committed in tenure `tenure` (read from
        `tenure` before the write or the look-up that produced `seq`), and fails with
        Unavailable if that tenure ends first or commits stall: a commit after the tenure ended
        does not count -- after a truncation another event may hold the seq."""
        future: Future[None] = Future()
        with self._lock:
            if tenure != self._tenure or not self._tenure_live:
                failure: str | None = LOST_ROLE
            elif self._committed_seq >= seq:
                failure = None
            elif self._shortfall is not None:
                failure = stalled_message(self._shortfall)
            else:
                heapq.heappush(self._waits, (seq, next(self._order), future))
                return future
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(Unavailable(failure))
        return future

    def wait_committed(self, seq: int, timeout: float, tenure: int) -> None:
        """Block until `seq` is committed in tenure `tenure` (see wait_for); Unavailable if it is
        not within `timeout`."""
        try:
            self.wait_for(seq, tenure).result(timeout)
        except FutureTimeout:
            raise Unavailable(NOT_IN_TIME) from None

    def _take_waits(self) -> list[Future[None]]:
        waits = [entry[2] for entry in self._waits]
        self._waits.clear()
        return waits


def _fail(futures: list[Future[None]], message: str) -> None:
    for future in futures:
        future.set_exception(Unavailable(message))
