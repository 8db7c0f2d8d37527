"""Wakes the subscriptions of accounts that just received a committed message."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from eventlog import Event
from projections import EventTypes


class InboxNotifier:
    """Wakes the subscriptions of accounts that just received a committed message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Only accounts with a subscription (`watching`) have a version: a notifier of a
        # server up for years must not keep one per account that ever got a message.
        self._versions: dict[int, int] = {}
        # Per watched account, how many of its sessions may have ended (see session_ends).
        self._session_ends: dict[int, int] = {}
        self._watchers: dict[int, int] = {}
        self._conditions: dict[int, threading.Condition] = {}
        self._waiters: dict[int, int] = {}
        self._closed = False

    def on_committed(self, events: list[Event]) -> None:
        accounts = {
            int(e.payload["recipient_id"]) for e in events if e.type == EventTypes.MESSAGE_SENT
        }
        # Sessions that ended: their subscriptions notice at once.
        ended = {
            int(e.payload["account_id"])
            for e in events
            if e.type in (EventTypes.ACCOUNT_DELETED, EventTypes.SESSION_CLOSED)
            or (e.type == EventTypes.SESSION_OPENED and e.payload.get("closes"))
        }
        accounts |= ended
        if events and not accounts:
            return
        with self._lock:
            for account_id in accounts:
                if account_id not in self._watchers:
                    continue
                self._versions[account_id] = self._versions.get(account_id, 0) + 1
                if account_id in ended:
                    self._session_ends[account_id] = self._session_ends.get(account_id, 0) + 1
                cond = self._conditions.get(account_id)
                if cond is not None:
                    cond.notify_all()

    def wake_all(self) -> None:
        with self._lock:
            for account_id in self._watchers:
                self._session_ends[account_id] = self._session_ends.get(account_id, 0) + 1
            for account_id, cond in self._conditions.items():
                self._versions[account_id] = self._versions.get(account_id, 0) + 1
                cond.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.wake_all()

    @contextmanager
    def watching(self, account_id: int) -> Iterator[None]:
        """While a subscription of `account_id` lives: its version is kept and moves."""
        with self._lock:
            self._watchers[account_id] = self._watchers.get(account_id, 0) + 1
            self._versions.setdefault(account_id, 0)
        try:
            yield
        finally:
            with self._lock:
                self._watchers[account_id] -= 1
                if not self._watchers[account_id]:
                    del self._watchers[account_id]
                    del self._versions[account_id]
                    self._session_ends.pop(account_id, None)

    def tracked_accounts(self) -> int:
        """How many accounts the notifier holds state for (for tests and metrics)."""
        with self._lock:
            return len(self._versions.keys() | self._conditions.keys())

    def session_ends(self, account_id: int) -> int:
        """Moves whenever a committed event may have ended one of the account's sessions (a
        logout, a login that closed older sessions, the account's deletion), and on
        wake_all (a step-down, shutdown): a subscription re-checks its session only then, not
        once per message."""
        with self._lock:
            return self._session_ends.get(account_id, 0)

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
