"""Accounts by name and sessions by id, held in memory for the writer's decides, so that a
send reads nothing from the database to learn who sends and who receives.

Only the writer uses it, under its lock, and it is exact: an entry is what the writer's own
transaction would read. Entries come from those reads; what an event removes (a session
closed or ended by a login at the cap, an account deleted with its sessions) is evicted the
moment the event is applied in the batch, before any later decide runs; what a batch read is
kept only once the batch committed (a rolled-back batch may have read its own uncommitted
registrations). The writer clears it whenever it cannot answer for it: a new tenure, a failed
batch (the commit may be in doubt), anything written by another path (replication)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import assert_never

import sqlalchemy as sa

from eventlog import Event
from projections import queries as q
from projections.events import (
    AccountDeleted,
    AccountRegistered,
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

DEFAULT_CAPACITY = 100_000  # entries of each kind; the least recently used go first


class Directory:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._accounts: OrderedDict[str, q.Account] = OrderedDict()
        self._sessions: OrderedDict[str, q.Account] = OrderedDict()
        # Read in the open batch; kept at committed(), dropped at abandoned().
        self._new_accounts: dict[str, q.Account] = {}
        self._new_sessions: dict[str, q.Account] = {}

    def __len__(self) -> int:
        return len(self._accounts) + len(self._sessions)

    def account(self, conn: sa.Connection, username: str) -> q.Account | None:
        return self._look_up(self._accounts, self._new_accounts, username, q.find_account, conn)

    def session_account(self, conn: sa.Connection, session_id: str) -> q.Account | None:
        return self._look_up(
            self._sessions, self._new_sessions, session_id, q.find_session_account, conn
        )

    @staticmethod
    def _look_up(
        kept: OrderedDict[str, q.Account],
        new: dict[str, q.Account],
        key: str,
        read: Callable[[sa.Connection, str], q.Account | None],
        conn: sa.Connection,
    ) -> q.Account | None:
        found = kept.get(key)
        if found is not None:
            kept.move_to_end(key)
            return found
        found = new.get(key)
        if found is None:
            found = read(conn, key)
            if found is not None:
                new[key] = found
        return found

    def applied(self, event: Event) -> None:
        """An event of the open batch was applied: forget what it removed."""
        e = decode(event)
        match e:
            case SessionClosed():
                self._forget_session(e.session_id)
            case SessionOpened():
                for closed in e.closes:
                    self._forget_session(closed)
            case AccountDeleted():
                for table in (self._accounts, self._new_accounts):
                    for name in [n for n, a in table.items() if a.account_id == e.account_id]:
                        del table[name]
                for sessions in (self._sessions, self._new_sessions):
                    for sid in [s for s, a in sessions.items() if a.account_id == e.account_id]:
                        del sessions[sid]
            case AccountRegistered() | MessageSent() | MessagesAcked() | EpochStarted():
                pass  # (it removes nothing the directory holds)
            case MemberAdded() | MemberPromoted() | MemberRemoved() | ClusterForced():
                pass  # (nor does a membership change)
            case _:
                assert_never(e)

    def committed(self) -> None:
        """The open batch committed: what it read holds."""
        self._keep(self._accounts, self._new_accounts)
        self._keep(self._sessions, self._new_sessions)

    def abandoned(self) -> None:
        """The open batch rolled back (or its commit is in doubt): drop what it read."""
        self._new_accounts.clear()
        self._new_sessions.clear()

    def clear(self) -> None:
        self._accounts.clear()
        self._sessions.clear()
        self.abandoned()

    def _forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._new_sessions.pop(session_id, None)

    def _keep(self, kept: OrderedDict[str, q.Account], new: dict[str, q.Account]) -> None:
        kept.update(new)
        new.clear()
        while len(kept) > self._capacity:
            kept.popitem(last=False)
