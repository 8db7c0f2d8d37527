"""Taking the projections back to an earlier seq, before a divergent tail of the log is
truncated: each event after it is undone, newest first, from its payload and its undo record
(projections/undo.py) -- in time proportional to the tail. Where undo information is missing
(below the horizon, or an ack that changed fewer rows than it names) the projections are
rebuilt from the log up to that seq instead; either way the result is exactly what applying
the log up to that seq produces (property-tested against rebuild)."""

from __future__ import annotations

from enum import Enum
from typing import Any, assert_never

import sqlalchemy as sa

from eventlog import Event, read_events
from projections import undo
from projections.apply import (
    POSITION_NAME,
    last_applied_seq,
    rebuild,
    reset_projections,
)
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
from projections.schema import (
    accounts,
    membership_changes,
    messages,
    projection_position,
    sessions,
)

_TABLES = {table.name: table for table in (accounts, sessions, messages)}
_READ_BATCH = 5000


class RolledBack(Enum):
    NOTHING = "untouched (nothing applied past the cut)"
    UNDONE = "undone event by event"
    REBUILT = "rebuilt from the log"


def roll_back(conn: sa.Connection, seq: int) -> RolledBack:
    """Make the projections what applying the log up to `seq` makes them, in the caller's
    transaction. Call it while the events after `seq` are still in the log (before
    eventlog.truncate_after), with nothing else writing."""
    position = last_applied_seq(conn)
    if position <= seq:
        return RolledBack.NOTHING
    if seq == 0:
        reset_projections(conn)
        return RolledBack.UNDONE
    records = undo.records_after(conn, seq)
    if undo.horizon(conn) > seq or any(undo.INEXACT in r for r in records.values()):
        rebuild(conn, until=seq)
        return RolledBack.REBUILT
    tail = _read_range(conn, seq, position)
    pending_messages: list[int] = []
    for event in reversed(tail):
        if event.type == MessageSent.TYPE:
            pending_messages.append(event.seq)  # consecutive sends: one DELETE
            continue
        _delete_messages(conn, pending_messages)
        _undo_one(conn, event, records.get(event.seq, {}))
    _delete_messages(conn, pending_messages)
    undo.forget_after(conn, seq)
    conn.execute(
        projection_position.update()
        .where(projection_position.c.name == POSITION_NAME)
        .values(last_applied_seq=seq)
    )
    return RolledBack.UNDONE


def _read_range(conn: sa.Connection, after: int, until: int) -> list[Event]:
    events: list[Event] = []
    while after < until:
        batch = read_events(conn, after, min(_READ_BATCH, until - after))
        if not batch:
            raise ValueError(f"the log ends at seq {after}: projections are at {until}")
        events.extend(batch)
        after = batch[-1].seq
    return events


def _delete_messages(conn: sa.Connection, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        conn.execute(messages.delete().where(messages.c.message_id.in_(ids[start : start + 500])))
    ids.clear()


def _undo_one(conn: sa.Connection, event: Event, record: dict[str, Any]) -> None:
    e = decode(event)
    match e:
        case AccountRegistered():
            conn.execute(accounts.delete().where(accounts.c.account_id == event.seq))
        case SessionOpened():
            conn.execute(sessions.delete().where(sessions.c.session_id == e.session_id))
        case MemberAdded() | MemberPromoted() | MemberRemoved() | ClusterForced():
            conn.execute(membership_changes.delete().where(membership_changes.c.seq == event.seq))
        case MessagesAcked():
            if e.message_ids:
                conn.execute(
                    messages.update()
                    .where(messages.c.recipient_id == e.account_id)
                    .where(messages.c.message_id.in_(e.message_ids))
                    .values(delivered=False)
                )
        case SessionClosed() | AccountDeleted() | EpochStarted() | MessageSent():
            pass  # (what they removed comes back below; sends are deleted by the caller)
        case _:
            assert_never(e)
    # What the event removed goes back (a deleted account before its sessions and inbox).
    for name in ("accounts", "sessions", "messages"):
        rows = record.get(name)
        if rows:
            table = _TABLES[name]
            conn.execute(table.insert(), [undo.decode_row(table, values) for values in rows])
