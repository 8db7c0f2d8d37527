"""The commit point (high watermark) and who is waiting on it.

An event is committed once it is stored on the primary and on every in-sync secondary. Only
then is a client answered or a subscriber shown the message."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from eventlog import Event
from replica.errors import Unavailable
from replica.spans import DISABLED, Spans


class CommitTracker:
    def __init__(self, committed_seq: int = 0, *, spans: Spans = DISABLED) -> None:
        self._spans = spans
        self._cond = threading.Condition()
        self._committed_seq = committed_seq
        self._pending: deque[Event] = deque()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._stalled: str | None = None  # why the commit point cannot move now
        self._stalled_version = 0
        # Which primary term the commit point belongs to: reset() starts one, abandon() ends
        # it. A waiter belongs to the term it wrote (or found its event) in; once that term
        # ends, a seq reaching the commit point is no longer its event's commit (after a
        # truncation another event holds that seq), so it fails instead.
        self._term = 0
        self._term_live = False

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    @property
    def term(self) -> int:
        """The current primary term's number (see wait_committed)."""
        return self._term

    def add_listener(self, listener: Callable[[list[Event]], None]) -> None:
        """Called (outside the lock) with the events that just became committed."""
        self._listeners.append(listener)

    def appended(self, events: Iterable[Event]) -> None:
        with self._cond:
            self._pending.extend(events)

    def advance(self, seq: int) -> None:
        newly: list[Event] = []
        with self._cond:
            if seq <= self._committed_seq:
                return
            self._committed_seq = seq
            while self._pending and self._pending[0].seq <= seq:
                newly.append(self._pending.popleft())
            self._cond.notify_all()
        self._spans.mark("committed", seq)
        for listener in self._listeners:
            listener(newly)

    def abandon(self) -> None:
        """The primary term ends (the replica stepped down): its uncommitted events will never
        be committed here; their waiters wake with an error instead of an acknowledgement."""
        with self._cond:
            self._pending.clear()
            self._term += 1
            self._term_live = False
            self._cond.notify_all()

    def set_stalled(self, reason: str | None, version: int | None = None) -> None:
        """While set, waiters get Unavailable(reason) at once instead of waiting out their
        timeout (their events stay in the log: a retry with the same request_id returns the
        first result once they commit). `version`: the protocol core's (CommitStalled); an
        older one than the last is ignored."""
        with self._cond:
            if version is not None:
                if version <= self._stalled_version:
                    return
                self._stalled_version = version
            if reason != self._stalled:
                self._stalled = reason
                self._cond.notify_all()

    def reset(self, committed_seq: int) -> None:
        """A primary term begins with its commit point at `committed_seq`."""
        with self._cond:
            self._committed_seq = committed_seq
            self._pending.clear()
            self._stalled = None
            self._term += 1
            self._term_live = True
            self._cond.notify_all()

    def wait_committed(self, seq: int, timeout: float, term: int) -> None:
        """Until `seq` is committed in primary term `term` (read from `term` before the
        write or the look-up that produced `seq`): a commit after that term ended does not
        count -- after a truncation another event may hold the seq."""

        def ours() -> bool:
            return term == self._term and self._term_live

        with self._cond:
            self._cond.wait_for(
                lambda: not ours() or self._committed_seq >= seq or self._stalled is not None,
                timeout,
            )
            if not ours():
                raise Unavailable(
                    "the request was not committed: this replica lost its primary role; "
                    "retry with the same request_id"
                )
            if self._committed_seq >= seq:
                return
            if self._stalled is not None:
                raise Unavailable(self._stalled)
            raise Unavailable(
                "the request was not acknowledged by the in-sync replicas in time; "
                "retry with the same request_id"
            )
