"""The commit point (high watermark) and who is waiting on it.

An event is committed once it is stored on the primary and on every in-sync secondary. Only
then is a client answered or a subscriber shown the message."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from eventlog import Event
from projections import EventTypes
from replica.errors import Unavailable


class CommitTracker:
    def __init__(self, committed_seq: int = 0) -> None:
        self._cond = threading.Condition()
        self._committed_seq = committed_seq
        self._pending: deque[Event] = deque()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._failed_from: int | None = None
        self._stalled: str | None = None  # why the commit point cannot move now

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

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
        for listener in self._listeners:
            listener(newly)

    def abandon(self) -> None:
        """Uncommitted events will never be committed here (the replica stepped down): wake
        their waiters with an error instead of an acknowledgement."""
        with self._cond:
            if self._pending:
                self._failed_from = self._pending[0].seq
            self._pending.clear()
            self._cond.notify_all()

    def set_stalled(self, reason: str | None) -> None:
        """While set, waiters get Unavailable(reason) at once instead of waiting out their
        timeout (their events stay in the log: a retry with the same request_id returns the
        first result once they commit)."""
        with self._cond:
            if reason != self._stalled:
                self._stalled = reason
                self._cond.notify_all()

    def reset(self, committed_seq: int) -> None:
        with self._cond:
            self._committed_seq = committed_seq
            self._pending.clear()
            self._failed_from = None
            self._stalled = None
            self._cond.notify_all()

    def wait_committed(self, seq: int, timeout: float) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    self._committed_seq >= seq
                    or (self._failed_from is not None and seq >= self._failed_from)
                    or self._stalled is not None
                ),
                timeout,
            )
            if self._committed_seq >= seq:
                return
            if self._stalled is not None:
                raise Unavailable(self._stalled)
            if ok:
                raise Unavailable(
                    "the request was not committed: this replica lost its primary role; "
                    "retry with the same request_id"
                )
            raise Unavailable(
                "the request was not acknowledged by the in-sync replicas in time; "
                "retry with the same request_id"
            )


class InboxNotifier:
    """Wakes the subscriptions of accounts that just received a committed message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[int, int] = {}
        self._conditions: dict[int, threading.Condition] = {}
        self._waiters: dict[int, int] = {}
        self._closed = False

    def on_committed(self, events: list[Event]) -> None:
        accounts = {
            int(e.payload["recipient_id"]) for e in events if e.type == EventTypes.MESSAGE_SENT
        }
        # Sessions that ended: their subscriptions notice at once.
        accounts |= {
            int(e.payload["account_id"])
            for e in events
            if e.type in (EventTypes.ACCOUNT_DELETED, EventTypes.SESSION_CLOSED)
            or (e.type == EventTypes.SESSION_OPENED and e.payload.get("closes"))
        }
        if events and not accounts:
            return
        with self._lock:
            for account_id in accounts:
                self._versions[account_id] = self._versions.get(account_id, 0) + 1
                cond = self._conditions.get(account_id)
                if cond is not None:
                    cond.notify_all()

    def wake_all(self) -> None:
        with self._lock:
            for account_id, cond in self._conditions.items():
                self._versions[account_id] = self._versions.get(account_id, 0) + 1
                cond.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.wake_all()

    def version(self, account_id: int) -> int:
        with self._lock:
            return self._versions.get(account_id, 0)

    def wait(self, account_id: int, seen_version: int, timeout: float) -> int:
        """Block until the account's version moves past `seen_version` or `timeout` passes;
        returns the current version."""
        with self._lock:
            cond = self._conditions.get(account_id)
            if cond is None:
                cond = self._conditions[account_id] = threading.Condition(self._lock)
            self._waiters[account_id] = self._waiters.get(account_id, 0) + 1
            try:
                cond.wait_for(
                    lambda: self._closed or self._versions.get(account_id, 0) != seen_version,
                    timeout,
                )
                return self._versions.get(account_id, 0)
            finally:
                self._waiters[account_id] -= 1
                if self._waiters[account_id] == 0:
                    del self._waiters[account_id]
                    del self._conditions[account_id]
