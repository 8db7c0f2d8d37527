"""Wakes the subscriptions of accounts that just received a committed message, and hands them
the message itself when it can prove nothing is missing (a push without an inbox query)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import assert_never

from eventlog import Event
from projections.apply import message_row
from projections.events import (
    AccountDeleted,
    AccountRegistered,
    ChatEvent,
    ClusterForced,
    EpochStarted,
    MemberAdded,
    MemberPromoted,
    MemberRemoved,
    MessagesAcked,
    MessageSent,
    SessionClosed,
    SessionOpened,
    decode,
)
from projections.queries import StoredMessage

# Committed messages held per watched account for its subscriptions (see live_after). A
# subscription further behind than this reads its inbox, as it always could.
LIVE_MESSAGES = 64
LIVE_BYTES = 256 * 1024


@dataclass
class _Live:
    """One watched account's committed, undelivered messages after seq `covered_from` (None:
    the notifier covers nothing yet)."""

    covered_from: int | None
    messages: deque[StoredMessage] = field(default_factory=deque)
    body_chars: int = 0


class InboxNotifier:
    """Wakes the subscriptions of accounts that just received a committed message.

    It also keeps, per watched account, the undelivered messages of the committed events it
    was given, so that a woken subscription can push them without querying the inbox. The
    rule that keeps this exact: the notifier knows through which seq (`_through`) it has been
    given every committed event, one contiguous run (a gap, a step-down or a full buffer
    narrows what it covers); per account, `_live[a].covered_from` is the seq after which
    every undelivered message of a committed event up to `_through` is in `_live[a]`. A
    subscription that has seen its inbox through seq K asks `live_after(a, K, committed)`:
    the answer is the messages after K when covered_from <= K and _through has reached the
    commit point, and None (query the inbox) otherwise."""

    def __init__(self, *, live_messages: int = LIVE_MESSAGES, live_bytes: int = LIVE_BYTES) -> None:
        self._live_cap = live_messages
        self._live_bytes_cap = live_bytes
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
        self._through: int | None = None  # every committed event up to it was given here
        self._live: dict[int, _Live] = {}

    def on_committed(self, events: list[Event]) -> None:
        typed = [(event, decode(event)) for event in events]
        if events:
            with self._lock:
                self._keep_live(typed)
        accounts = {e.recipient_id for _, e in typed if isinstance(e, MessageSent)}
        # Sessions that ended: their subscriptions notice at once.
        ended = {
            e.account_id
            for _, e in typed
            if isinstance(e, AccountDeleted | SessionClosed)
            or (isinstance(e, SessionOpened) and e.closes)
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

    def _keep_live(self, events: list[tuple[Event, ChatEvent]]) -> None:
        """(Under the lock.) Follow the committed events into the live buffers."""
        first = events[0][0].seq
        if self._through is None or first != self._through + 1:
            # A gap (or the first events): cover only what comes from here on.
            for account_id in self._watchers:
                self._live[account_id] = _Live(first - 1)
        self._through = events[-1][0].seq
        if not self._watchers:
            return
        for event, e in events:
            match e:
                case MessageSent():
                    live = self._live.get(e.recipient_id)
                    if live is None:
                        continue  # not watched
                    row = message_row(event, e)
                    live.messages.append(
                        StoredMessage(
                            row["message_id"],
                            row["sender"],
                            row["recipient"],
                            row["body"],
                            row["sent_at"],
                            False,
                        )
                    )
                    live.body_chars += len(e.body)
                    while (
                        len(live.messages) > self._live_cap
                        or live.body_chars > self._live_bytes_cap
                    ):
                        dropped = live.messages.popleft()
                        live.body_chars -= len(dropped.body)
                        live.covered_from = dropped.message_id
                case MessagesAcked():
                    live = self._live.get(e.account_id)
                    if live is not None and live.messages:
                        acked = set(e.message_ids)
                        kept = [m for m in live.messages if m.message_id not in acked]
                        if len(kept) != len(live.messages):
                            live.messages = deque(kept)
                            live.body_chars = sum(len(m.body) for m in kept)
                case AccountDeleted():
                    if e.account_id in self._live:  # its inbox is gone with it
                        self._live[e.account_id] = _Live(event.seq)
                case AccountRegistered() | SessionOpened() | SessionClosed() | EpochStarted():
                    pass
                case MemberAdded() | MemberPromoted() | MemberRemoved() | ClusterForced():
                    pass  # (no client hears of membership)
                case _:
                    assert_never(e)

    def live_after(
        self, account_id: int, seen_through: int, committed_seq: int
    ) -> tuple[list[StoredMessage], int] | None:
        """The account's undelivered committed messages after seq `seen_through`, and the seq
        the answer covers -- or None when the notifier cannot cover all of them (the
        caller reads the inbox instead). `committed_seq`: the commit point, read before."""
        with self._lock:
            live = self._live.get(account_id)
            through = self._through
            if live is None or live.covered_from is None or through is None:
                return None
            if live.covered_from > seen_through or through < committed_seq:
                return None  # (the latter: committed events not given here yet)
            return [m for m in live.messages if m.message_id > seen_through], through

    def wake_all(self) -> None:
        with self._lock:
            self._through = None  # (a step-down, a new tenure): cover nothing until told
            for account_id in self._watchers:
                self._live[account_id] = _Live(None)
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
            if account_id not in self._live:
                self._live[account_id] = _Live(self._through)
        try:
            yield
        finally:
            with self._lock:
                self._watchers[account_id] -= 1
                if not self._watchers[account_id]:
                    del self._watchers[account_id]
                    del self._versions[account_id]
                    self._session_ends.pop(account_id, None)
                    del self._live[account_id]

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
