"""Applying events to the projection tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar, assert_never

import sqlalchemy as sa

from eventlog import Event, encode_payload, read_events
from eventlog.statements import Pipeline, insert_rows, run_compiled
from projections import undo
from projections.events import (
    AccountDeleted,
    AccountRegistered,
    ChatEvent,
    ClusterForced,
    EpochStarted,
    MalformedEvent,
    MemberAdded,
    MemberPromoted,
    MemberRemoved,
    MembershipEvent,
    MessagesAcked,
    MessageSent,
    SessionClosed,
    SessionOpened,
    decode,
)
from projections.schema import (
    PROJECTION_TABLES,
    accounts,
    membership_changes,
    messages,
    projection_position,
    sessions,
)

POSITION_NAME: Final = "chat"


class EventTypes:
    """The log's `type` column for each event class (projections/events.py)."""

    ACCOUNT_REGISTERED: Final = AccountRegistered.TYPE
    SESSION_OPENED: Final = SessionOpened.TYPE
    SESSION_CLOSED: Final = SessionClosed.TYPE
    MESSAGE_SENT: Final = MessageSent.TYPE
    MESSAGES_ACKED: Final = MessagesAcked.TYPE
    ACCOUNT_DELETED: Final = AccountDeleted.TYPE
    EPOCH_STARTED: Final = EpochStarted.TYPE
    MEMBER_ADDED: Final = MemberAdded.TYPE
    MEMBER_PROMOTED: Final = MemberPromoted.TYPE
    MEMBER_REMOVED: Final = MemberRemoved.TYPE
    CLUSTER_FORCED: Final = ClusterForced.TYPE


def statements_for(event: Event) -> list[sa.Executable]:
    """The changes one event makes, as SQL statements. Pure: depends on the event alone, so
    every replica that applies the same log makes the same changes."""
    return _statements(event, decode(event))


def _statements(event: Event, e: ChatEvent) -> list[sa.Executable]:
    match e:
        case AccountRegistered():
            return [accounts.insert().values(**account_row(event, e))]
        case SessionOpened():
            opened = sessions.insert().values(**session_row(event, e))
            # The oldest sessions a login ends when the account is at its cap of open sessions.
            if not e.closes:
                return [opened]
            return [
                sessions.delete()
                .where(sessions.c.account_id == e.account_id)
                .where(sessions.c.session_id.in_(e.closes)),
                opened,
            ]
        case SessionClosed():
            return [sessions.delete().where(sessions.c.session_id == e.session_id)]
        case MessageSent():
            return [messages.insert().values(**message_row(event, e))]
        case MessagesAcked():
            if not e.message_ids:
                return []
            return [
                messages.update()
                .where(messages.c.recipient_id == e.account_id)
                .where(messages.c.message_id.in_(e.message_ids))
                .where(messages.c.delivered == sa.false())
                .values(delivered=True)
            ]
        case AccountDeleted():
            # Its inbox goes with it; what it sent stays with the recipients (see README).
            return [
                sessions.delete().where(sessions.c.account_id == e.account_id),
                messages.delete().where(messages.c.recipient_id == e.account_id),
                accounts.delete().where(accounts.c.account_id == e.account_id),
            ]
        case EpochStarted():
            return []
        case MemberAdded() | MemberPromoted() | MemberRemoved() | ClusterForced():
            return [membership_changes.insert().values(**membership_row(event, e))]
        case _:
            assert_never(e)


def account_row(event: Event, e: AccountRegistered | None = None) -> dict[str, Any]:
    """The accounts row an account_registered event inserts (its id: the event's seq)."""
    e = e or _as(event, AccountRegistered)
    return {
        "account_id": event.seq,
        "username": e.username,
        "password_hash": e.password_hash,
        "created_at": event.created_at,
    }


def session_row(event: Event, e: SessionOpened | None = None) -> dict[str, Any]:
    """The sessions row a session_opened event inserts."""
    e = e or _as(event, SessionOpened)
    return {"session_id": e.session_id, "account_id": e.account_id, "created_at": event.created_at}


def message_row(event: Event, e: MessageSent | None = None) -> dict[str, Any]:
    """The messages row a message_sent event inserts."""
    e = e or _as(event, MessageSent)
    return {
        "message_id": event.seq,
        "sender_id": e.sender_id,
        "sender": e.sender,
        "recipient_id": e.recipient_id,
        "recipient": e.recipient,
        "body": e.body,
        "sent_at": event.created_at,
        "delivered": False,
    }


def membership_row(event: Event, e: MembershipEvent) -> dict[str, Any]:
    """The membership_changes row a membership event inserts (keyed by the event's seq)."""
    return {
        "seq": event.seq,
        "kind": e.KIND,
        "replica_index": e.index,
        "membership": encode_payload(e.membership()),
    }


_E = TypeVar("_E", AccountRegistered, SessionOpened, MessageSent)


def _as(event: Event, cls: type[_E]) -> _E:
    e = decode(event)
    if not isinstance(e, cls):
        raise MalformedEvent(f"the event at seq {event.seq} is a {event.type}, not a {cls.TYPE}")
    return e


def last_applied_seq(conn: sa.Connection) -> int:
    value = conn.execute(
        sa.select(projection_position.c.last_applied_seq).where(
            projection_position.c.name == POSITION_NAME
        )
    ).scalar()
    return 0 if value is None else int(value)


class PositionMoved(Exception):
    """The projections are not at the position the applier started from: someone else
    applied events meanwhile, or the caller's idea of the position was wrong. Nothing the
    applier wrote may be committed."""


def _set_last_applied_seq(
    conn: sa.Connection, previous: int, seq: int, pipeline: Pipeline | None = None
) -> None:
    """Move the position from `previous` to `seq` -- compare and set, so that an applier
    given a position it did not read (the writer keeps it in memory) cannot commit on top of
    another. Through `pipeline`, the check happens at its flush."""
    if (
        previous == 0
        and conn.execute(
            sa.select(projection_position.c.name).where(projection_position.c.name == POSITION_NAME)
        ).first()
        is None
    ):
        conn.execute(projection_position.insert().values(name=POSITION_NAME, last_applied_seq=seq))
        return
    params = {"position_name": POSITION_NAME, "previous": previous, "seq": seq}

    def moved() -> Exception:
        return PositionMoved(
            f"the projections are not at seq {previous}: cannot move them to {seq}"
        )

    key = "projections.move_position"
    if pipeline is not None:
        pipeline.update(key, _move_position, params, expect=1, mismatch=moved)
    elif run_compiled(conn, key, _move_position, params).rowcount != 1:
        raise moved()


def _move_position() -> sa.ClauseElement:
    return (
        projection_position.update()
        .where(
            projection_position.c.name == sa.bindparam("position_name"),
            projection_position.c.last_applied_seq == sa.bindparam("previous"),
        )
        .values(last_applied_seq=sa.bindparam("seq"))
    )


class Applier:
    """Applies events in seq order in the caller's transaction, with far fewer statements
    than one event at a time -- and the same end state (property-tested against
    statements_for): sends are pure inserts, held back and written as one multi-row INSERT.
    With `hold_all` (a secondary's batches, start-up replay, rebuilds: nothing reads between
    events), so are registrations and logins, one INSERT per table; a session that ends while
    its insert is still held back is dropped from it, and the other session ends go in as one
    DELETE of each kind. What is held back is written before any other event's statements run
    (an ack, a deletion), at flush() -- which the writer calls before a decide that reads what
    is held -- and by finish(), which also writes the position once. Events at or below the
    position are skipped (already applied: exactly-once).

    Every event that removes rows records them first (projections/undo.py), in the same
    transaction, so that projections.roll_back can take a truncated tail back."""

    def __init__(
        self, conn: sa.Connection, position: int | None = None, *, hold_all: bool = False
    ) -> None:
        self._conn = conn
        self._hold_all = hold_all
        self._start = last_applied_seq(conn) if position is None else position
        self.position = self._start
        self._accounts: list[dict[str, Any]] = []
        self._sessions: dict[str, dict[str, Any]] = {}  # session id -> row, in order
        self._messages: list[dict[str, Any]] = []
        self._closed: dict[str, int] = {}  # written session id -> seq of the event ending it
        self._closed_of: list[dict[str, Any]] = []  # (account, session, seq) a login ended
        self._undo = undo.UndoRecords()

    def add(self, event: Event) -> None:
        if event.seq <= self.position:
            return
        if event.seq != self.position + 1:
            raise ValueError(f"cannot apply seq {event.seq}: projections are at {self.position}")
        e = decode(event)
        match e:
            case MessageSent():
                self._messages.append(message_row(event, e))
            case EpochStarted():
                pass
            case MemberAdded() | MemberPromoted() | MemberRemoved() | ClusterForced():
                # Rare, and in a table of its own that nothing held back touches: at once.
                for statement in _statements(event, e):
                    self._conn.execute(statement)
            case _ if not self._hold_all:
                self.flush()
                self._apply_now(event, e)
            case AccountRegistered():
                self._accounts.append(account_row(event, e))
            case SessionOpened():
                for closed in e.closes:
                    self._end_session(event.seq, closed, e.account_id)
                self._sessions[e.session_id] = session_row(event, e)
            case SessionClosed():
                self._end_session(event.seq, e.session_id, None)
            case MessagesAcked() | AccountDeleted():
                self.flush()
                self._apply_now(event, e)
            case _:
                assert_never(e)
        self.position = event.seq

    def _apply_now(self, event: Event, e: ChatEvent) -> None:
        """Run the event's statements now, recording first what they remove."""
        conn = self._conn
        match e:
            case MessagesAcked():
                # Exact to take back only if every named message was undelivered until now.
                for statement in _statements(event, e):
                    if conn.execute(statement).rowcount != len(set(e.message_ids)):
                        self._undo.inexact(event.seq)
                return
            case SessionClosed():
                self._undo.removed(
                    event.seq,
                    sessions,
                    undo.select_rows(conn, sessions, sessions.c.session_id == e.session_id),
                )
            case SessionOpened() if e.closes:
                self._undo.removed(
                    event.seq,
                    sessions,
                    undo.select_rows(
                        conn,
                        sessions,
                        sessions.c.account_id == e.account_id,
                        sessions.c.session_id.in_(e.closes),
                    ),
                )
            case AccountDeleted():
                for table, column in (
                    (accounts, accounts.c.account_id),
                    (sessions, sessions.c.account_id),
                    (messages, messages.c.recipient_id),
                ):
                    self._undo.removed(
                        event.seq, table, undo.select_rows(conn, table, column == e.account_id)
                    )
            case _:
                pass
        for statement in _statements(event, e):
            conn.execute(statement)

    def _end_session(self, seq: int, session_id: str, account_id: int | None) -> None:
        held = self._sessions.get(session_id)
        if held is not None and account_id in (None, held["account_id"]):
            del self._sessions[session_id]  # never written: nothing to delete
            self._undo.removed(seq, sessions, [held])
        elif held is None and account_id is None:
            self._closed[session_id] = seq
        elif held is None:
            self._closed_of.append(
                {"closed_account": account_id, "closed_session": session_id, "seq": seq}
            )

    def flush(self, pipeline: Pipeline | None = None) -> None:
        """Write what is held back so far (before anything reads the projections). The
        session ends held back name only sessions written before: a held-back insert of one
        that ends is dropped instead, and session ids are never reused. With `pipeline` the
        held-back inserts go through it (finish() only: nothing reads after them)."""
        conn = self._conn
        if self._closed or self._closed_of:
            ending = {**self._closed, **{c["closed_session"]: c["seq"] for c in self._closed_of}}
            owners = {c["closed_session"]: c["closed_account"] for c in self._closed_of}
            ids = sorted(ending)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for row in undo.select_rows(conn, sessions, sessions.c.session_id.in_(chunk)):
                    session_id = row["session_id"]
                    if owners.get(session_id, row["account_id"]) == row["account_id"]:
                        self._undo.removed(ending[session_id], sessions, [row])
        if self._closed:
            ids = list(self._closed)
            for start in range(0, len(ids), 500):
                conn.execute(
                    sessions.delete().where(sessions.c.session_id.in_(ids[start : start + 500]))
                )
            self._closed = {}
        if self._closed_of:
            conn.execute(
                sessions.delete()
                .where(sessions.c.account_id == sa.bindparam("closed_account"))
                .where(sessions.c.session_id == sa.bindparam("closed_session")),
                [
                    {"closed_account": c["closed_account"], "closed_session": c["closed_session"]}
                    for c in self._closed_of
                ],
            )
            self._closed_of = []
        for table, held in (
            (accounts, self._accounts),
            (sessions, list(self._sessions.values())),
            (messages, self._messages),
        ):
            if held and pipeline is not None:
                pipeline.insert_rows(table, held)
            elif held:
                insert_rows(conn, table, held)
        self._accounts, self._sessions, self._messages = [], {}, []
        self._undo.write(conn)

    flush_messages = flush  # what the writer calls before a decide that reads the inboxes

    def finish(self, pipeline: Pipeline | None = None) -> int:
        """Write what is held back and the new position; the new last applied seq. With
        `pipeline`, those writes travel through it (the caller flushes it before commit)."""
        self.flush(pipeline)
        if self.position != self._start:
            _set_last_applied_seq(self._conn, self._start, self.position, pipeline)
            if self.position // undo.UNDO_WINDOW != self._start // undo.UNDO_WINDOW:
                undo.prune(self._conn, self.position)
            self._start = self.position
        return self.position


def apply_pipeline(conn: sa.Connection, batch: Sequence[Event]) -> Pipeline | None:
    """A pipeline for the writes that close a batch's apply (the held-back inserts and the
    position's update, Applier.finish) and, if the caller wishes, the log's INSERT: nothing
    reads them before the commit, and every statement an event runs at once (an ack, a
    deletion) ran before them, with what was held back before it written first -- so on MySQL
    they travel in one round trip, whatever the batch holds. None for an empty batch."""
    return Pipeline(conn) if batch else None


def apply_events(
    conn: sa.Connection,
    batch: Sequence[Event],
    *,
    position: int | None = None,
    pipeline: Pipeline | None = None,
) -> int:
    """Apply events that continue the projections' position, in the caller's transaction.
    Events at or below the position are skipped (already applied: exactly-once). A caller
    that knows the position passes it (saving a query; PositionMoved if it was wrong).
    Returns the new last applied seq."""
    applier = Applier(conn, position, hold_all=True)
    for event in batch:
        applier.add(event)
    return applier.finish(pipeline)


def reset_projections(conn: sa.Connection) -> None:
    """Empty every projection table and the position (before a rebuild)."""
    for table in (*PROJECTION_TABLES, projection_position):
        conn.execute(table.delete())
    undo.reset(conn)


def catch_up(conn: sa.Connection, batch_size: int = 1000, *, until: int | None = None) -> int:
    """Apply every logged event the projections have not seen yet (up to seq `until`, if
    given), in the caller's transaction; the new last applied seq."""
    position = last_applied_seq(conn)
    while until is None or position < until:
        limit = batch_size if until is None else min(batch_size, until - position)
        batch = read_events(conn, position, limit)
        if not batch:
            break
        position = apply_events(conn, batch)
    return position


def rebuild(conn: sa.Connection, batch_size: int = 1000, *, until: int | None = None) -> int:
    """Rebuild all projections from the log (up to seq `until`, if given), in the caller's
    transaction."""
    reset_projections(conn)
    return catch_up(conn, batch_size, until=until)
