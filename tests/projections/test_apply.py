"""Projections: the statements each event causes, exactly-once apply, and rebuild."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventlog
from eventlog import Event
from projections import (
    Applier,
    EventTypes,
    MemberAdded,
    MemberPromoted,
    MemberRecord,
    MemberRemoved,
    MembershipEvent,
    PositionMoved,
    accounts,
    apply_events,
    encode,
    last_applied_seq,
    messages,
    projection_position,
    rebuild,
    reset_projections,
    sessions,
    statements_for,
)
from tests.conftest import DatabaseFactory
from testsupport.databases import iter_table_rows

T0 = dt.datetime(2030, 5, 6, 7, 8, 9, 250000)

ALICE, BOB, NEW_BOB = 2, 3, 12  # account ids are the seqs that registered them


def ev(seq: int, type_: str, request_id: str | None = None, **payload: Any) -> Event:
    return Event(seq, 1, type_, payload, request_id, T0 + dt.timedelta(milliseconds=seq))


def message(seq: int, sender: tuple[int, str], recipient: tuple[int, str], body: str) -> Event:
    return ev(
        seq,
        EventTypes.MESSAGE_SENT,
        sender_id=sender[0],
        sender=sender[1],
        recipient_id=recipient[0],
        recipient=recipient[1],
        body=body,
    )


def member_record(index: int, voter: bool) -> MemberRecord:
    """Replica `index`'s entry (a peer address of its own for every other index)."""
    peer = f"h{index}:50061" if index % 2 else None
    return MemberRecord(index=index, address=f"h{index}:50051", peer_address=peer, voter=voter)


def membership_event(
    seq: int, kind: str, index: int, voters: Mapping[int, bool], removed: set[int]
) -> Event:
    """The membership event of `kind` about replica `index` that leaves the cluster with
    `voters` (index -> votes) and `removed`."""
    common: dict[str, Any] = {
        "index": index,
        "members": tuple(member_record(i, v) for i, v in sorted(voters.items())),
        "removed": tuple(sorted(removed)),
    }
    e: MembershipEvent
    if kind == "added":
        added = member_record(index, False)
        e = MemberAdded(address=added.address, peer_address=added.peer_address, **common)
    elif kind == "promoted":
        e = MemberPromoted(**common)
    else:
        e = MemberRemoved(**common)
    type_, payload = encode(e)
    return ev(seq, type_, **payload)


def history() -> list[Event]:
    """A log with every event type."""
    alice, bob = (ALICE, "alice"), (BOB, "bob")
    return [
        ev(1, EventTypes.EPOCH_STARTED, replica_index=0),
        ev(2, EventTypes.ACCOUNT_REGISTERED, "r2", username="alice", password_hash="h-a"),
        ev(3, EventTypes.ACCOUNT_REGISTERED, "r3", username="bob", password_hash="h-b"),
        ev(4, EventTypes.SESSION_OPENED, "r4", session_id="s-a", account_id=ALICE),
        ev(5, EventTypes.SESSION_OPENED, "r5", session_id="s-b", account_id=BOB),
        message(6, alice, bob, "hi bob"),
        message(7, bob, alice, "hi alice"),
        message(8, alice, bob, "still there?"),
        ev(9, EventTypes.MESSAGES_ACKED, "r9", account_id=BOB, message_ids=[6]),
        ev(10, EventTypes.SESSION_CLOSED, "r10", session_id="s-a", account_id=ALICE),
        ev(11, EventTypes.ACCOUNT_DELETED, "r11", account_id=BOB, username="bob"),
        ev(12, EventTypes.ACCOUNT_REGISTERED, "r12", username="bob", password_hash="h-b2"),
    ]


def rows(conn: sa.Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    key = list(table.primary_key.columns)
    return [tuple(r) for r in conn.execute(sa.select(table).order_by(*key))]


def tables(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return dict(iter_table_rows(conn))


def apply_live(engine: sa.Engine, log: list[Event]) -> None:
    """As the writer does: append and apply each event in its own transaction."""
    for e in log:
        with engine.begin() as conn:
            eventlog.append_events(conn, [e])
            apply_events(conn, [e])


def apply_one(engine: sa.Engine, e: Event) -> None:
    with engine.begin() as conn:
        for statement in statements_for(e):
            conn.execute(statement)


# -- statements_for ------------------------------------------------------------------------


def compiled(statements: list[sa.Executable]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for s in statements:
        c = s.compile()  # type: ignore[attr-defined]
        out.append((str(c), dict(c.params)))
    return out


@pytest.mark.parametrize("e", history(), ids=lambda e: f"{e.seq}-{e.type}")
def test_statements_for_is_pure(e: Event) -> None:
    # Same event, same statements: nothing but the event goes into them (no clock, no state).
    assert compiled(statements_for(e)) == compiled(statements_for(e))


def test_statements_for_account_registered() -> None:
    e = history()[1]
    [(sql, params)] = compiled(statements_for(e))
    assert sql.startswith("INSERT INTO accounts")
    assert params == {
        "account_id": 2,
        "username": "alice",
        "password_hash": "h-a",
        "created_at": e.created_at,
    }


def test_statements_for_session_opened_and_closed() -> None:
    opened, closed = history()[3], history()[9]
    [(sql, params)] = compiled(statements_for(opened))
    assert sql.startswith("INSERT INTO sessions")
    assert params == {"session_id": "s-a", "account_id": ALICE, "created_at": opened.created_at}
    [(sql, params)] = compiled(statements_for(closed))
    assert sql.startswith("DELETE FROM sessions")
    assert list(params.values()) == ["s-a"]


def test_statements_for_message_sent() -> None:
    e = history()[5]
    [(sql, params)] = compiled(statements_for(e))
    assert sql.startswith("INSERT INTO messages")
    assert params == {
        "message_id": 6,
        "sender_id": ALICE,
        "sender": "alice",
        "recipient_id": BOB,
        "recipient": "bob",
        "body": "hi bob",
        "sent_at": e.created_at,
        "delivered": False,
    }


def test_statements_for_messages_acked() -> None:
    [(sql, params)] = compiled(statements_for(history()[8]))
    assert sql.startswith("UPDATE messages SET delivered")
    assert ALICE not in params.values()
    assert BOB in params.values()
    # An ack of nothing changes nothing.
    assert statements_for(ev(20, EventTypes.MESSAGES_ACKED, account_id=BOB, message_ids=[])) == []


def test_statements_for_account_deleted_removes_sessions_inbox_and_account() -> None:
    statements = compiled(statements_for(history()[10]))
    assert [sql.split(" WHERE")[0] for sql, _ in statements] == [
        "DELETE FROM sessions",
        "DELETE FROM messages",
        "DELETE FROM accounts",
    ]
    assert "recipient_id" in statements[1][0]  # its inbox, not what it sent
    assert all(list(params.values()) == [BOB] for _, params in statements)


def test_statements_for_epoch_started_changes_nothing() -> None:
    assert statements_for(history()[0]) == []


def test_statements_for_unknown_type_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"seq 9 has an unknown type 'surprise'"):
        statements_for(ev(9, "surprise"))


# -- the statements' effects ---------------------------------------------------------------


def test_effects_of_each_event_type(engine: sa.Engine) -> None:
    log = history()
    for e in log[:8]:
        apply_one(engine, e)
    with engine.connect() as conn:
        assert [r[:3] for r in rows(conn, accounts)] == [(2, "alice", "h-a"), (3, "bob", "h-b")]
        assert [r[:2] for r in rows(conn, sessions)] == [("s-a", ALICE), ("s-b", BOB)]
        assert [(r[0], r[3], bool(r[7])) for r in rows(conn, messages)] == [
            (6, BOB, False),
            (7, ALICE, False),
            (8, BOB, False),
        ]

    apply_one(engine, log[8])  # bob acks 6
    with engine.connect() as conn:
        assert [(r[0], bool(r[7])) for r in rows(conn, messages)] == [
            (6, True),
            (7, False),
            (8, False),
        ]

    apply_one(engine, log[9])  # alice logs out
    with engine.connect() as conn:
        assert [r[0] for r in rows(conn, sessions)] == ["s-b"]

    apply_one(engine, log[10])  # bob's account is deleted
    with engine.connect() as conn:
        assert [r[1] for r in rows(conn, accounts)] == ["alice"]
        assert rows(conn, sessions) == []
        # bob's inbox went with him; what he sent stays in alice's inbox.
        assert [(r[0], r[2], r[4]) for r in rows(conn, messages)] == [(7, "bob", "alice")]

    apply_one(engine, log[11])  # the name is registered again: a new account
    with engine.connect() as conn:
        assert [r[:2] for r in rows(conn, accounts)] == [(2, "alice"), (12, "bob")]


def test_ack_only_marks_the_acking_accounts_own_messages(engine: sa.Engine) -> None:
    for e in history()[:8]:
        apply_one(engine, e)
    # Alice "acks" 6 and 8, which are bob's, and 7, which is hers.
    apply_one(engine, ev(9, EventTypes.MESSAGES_ACKED, account_id=ALICE, message_ids=[6, 7, 8]))
    with engine.connect() as conn:
        assert [(r[0], bool(r[7])) for r in rows(conn, messages)] == [
            (6, False),
            (7, True),
            (8, False),
        ]


# -- apply_events --------------------------------------------------------------------------


def test_apply_events_records_the_position(engine: sa.Engine) -> None:
    log = history()
    with engine.begin() as conn:
        assert last_applied_seq(conn) == 0
        assert apply_events(conn, log[:4]) == 4
        assert last_applied_seq(conn) == 4
    with engine.begin() as conn:
        assert apply_events(conn, log[4:]) == 12
    with engine.connect() as conn:
        assert last_applied_seq(conn) == 12
        assert rows(conn, projection_position) == [("chat", 12)]


def test_apply_events_is_exactly_once(engine: sa.Engine) -> None:
    log = history()
    with engine.begin() as conn:
        apply_events(conn, log[:9])
    before = tables(engine)
    with engine.begin() as conn:
        assert apply_events(conn, log[:9]) == 9  # the same batch again: a no-op
        assert apply_events(conn, log[3:5]) == 9  # an already applied middle part
        assert apply_events(conn, []) == 9
    assert tables(engine) == before
    # An overlapping batch applies only what is new.
    with engine.begin() as conn:
        assert apply_events(conn, log[7:11]) == 11
    with engine.connect() as conn:
        assert [r[1] for r in rows(conn, accounts)] == ["alice"]
        assert last_applied_seq(conn) == 11


@pytest.mark.parametrize(
    "batch", [[3], [2, 4], [6, 7]], ids=["gap-first", "gap-inside", "far-ahead"]
)
def test_apply_events_refuses_a_gap(engine: sa.Engine, batch: list[int]) -> None:
    log = history()
    with engine.begin() as conn:
        apply_events(conn, log[:1])
    before = tables(engine)
    with pytest.raises(ValueError, match="cannot apply seq"), engine.begin() as conn:
        apply_events(conn, [log[s - 1] for s in batch])
    assert tables(engine) == before


def test_rolled_back_apply_leaves_position_and_rows_unchanged(engine: sa.Engine) -> None:
    log = history()
    with engine.begin() as conn:
        apply_events(conn, log[:3])
    before = tables(engine)
    conn = engine.connect()
    try:
        transaction = conn.begin()
        assert apply_events(conn, log[3:9]) == 9
        # Inside the transaction, rows and position moved together...
        assert last_applied_seq(conn) == 9
        assert len(rows(conn, messages)) == 3
        transaction.rollback()
        # ...and they roll back together.
        assert last_applied_seq(conn) == 3
    finally:
        conn.close()
    assert tables(engine) == before
    # The rolled back events can then be applied for real, once.
    with engine.begin() as conn:
        assert apply_events(conn, log[3:9]) == 9
    with engine.connect() as conn:
        assert len(rows(conn, messages)) == 3


def test_position_row_is_created_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        apply_events(conn, history()[:1])
    with engine.begin() as conn:
        apply_events(conn, history()[1:2])
    with engine.connect() as conn:
        assert rows(conn, projection_position) == [("chat", 2)]


# -- rebuild -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_rebuild_in_place_equals_live(engine: sa.Engine, batch_size: int) -> None:
    apply_live(engine, history())
    live = tables(engine)
    assert live["projection_position"] == [("chat", 12)]
    with engine.begin() as conn:
        assert rebuild(conn, batch_size=batch_size) == 12
    assert tables(engine) == live


def test_rebuild_into_another_database_equals_live(
    engine: sa.Engine, databases: DatabaseFactory
) -> None:
    apply_live(engine, history())
    copy = databases.engine()
    with engine.connect() as src, copy.begin() as dst:
        eventlog.append_events(dst, eventlog.read_events(src, 0))
        rebuild(dst)
    assert tables(copy) == tables(engine)


def test_rebuild_discards_rows_no_event_explains(engine: sa.Engine) -> None:
    apply_live(engine, history()[:3])
    with engine.begin() as conn:
        conn.execute(
            accounts.insert().values(
                account_id=99, username="intruder", password_hash="x", created_at=T0
            )
        )
    with engine.begin() as conn:
        rebuild(conn)
    with engine.connect() as conn:
        assert [r[1] for r in rows(conn, accounts)] == ["alice", "bob"]


def test_rebuild_of_an_empty_log(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert rebuild(conn) == 0
    assert tables(engine) == {
        "accounts": [],
        "sessions": [],
        "messages": [],
        "membership_changes": [],
        "projection_position": [],
    }


def test_applier_holds_messages_back_until_a_read_or_another_event(
    databases: DatabaseFactory,
) -> None:
    """The writer applies a whole batch of commands through one Applier: message rows wait
    (one INSERT for a run of sends), yet whatever reads or changes messages sees them, and the
    end state equals applying event by event."""
    log = history()
    engine = databases.engine()
    with engine.begin() as conn:
        applier = Applier(conn)
        for e in log[:7]:  # two registrations, two sessions, two messages
            applier.add(e)
        assert rows(conn, messages) == [], "message rows were not held back"
        assert applier.position == 7
        assert last_applied_seq(conn) == 0, "the position is written once, by finish()"
        applier.flush_messages()  # what the writer does before a decide that reads inboxes
        assert [r[0] for r in rows(conn, messages)] == [6, 7]
        applier.add(log[7])  # held back again...
        applier.add(log[8])  # ...until an ack, which must find message 6 and leave 8 alone
        delivered = {r[0]: r[-1] for r in rows(conn, messages)}
        assert delivered[6] and not delivered[8]
        for e in log[9:]:  # the account deletion removes bob's inbox, message 8 included
            applier.add(e)
        assert applier.finish() == 12
        assert last_applied_seq(conn) == 12
    one_by_one = databases.engine()
    for e in log:
        with one_by_one.begin() as conn:
            apply_events(conn, [e])
    assert tables(engine) == tables(one_by_one)


# -- batched apply against one event at a time ------------------------------------------------


@st.composite
def valid_logs(draw: st.DrawFn) -> list[Event]:
    """A log a primary could have written: registrations, logins (ending the account's
    oldest sessions now and then), logouts, sends, acks and deletions of live accounts, and
    now and then a membership change (replicas added, promoted, removed)."""
    log: list[Event] = [ev(1, EventTypes.EPOCH_STARTED, replica_index=0)]
    cluster = {0: True, 1: True, 2: True}  # index -> voter: the config's replicas at first
    removed: set[int] = set()
    live: dict[int, str] = {}
    sessions_of: dict[int, list[str]] = {}
    inbox: dict[int, list[int]] = {}
    names = iter(f"user{i}" for i in range(1000))
    for _ in range(draw(st.integers(1, 40))):
        seq = len(log) + 1
        kinds = ["register"] + ["login", "send", "send", "delete"] * bool(live)
        kinds += ["logout"] * any(sessions_of.values()) + ["ack"] * any(inbox.values())
        kinds += ["membership"]
        kind = draw(st.sampled_from(kinds))
        if kind == "register":
            name = next(names)
            log.append(ev(seq, EventTypes.ACCOUNT_REGISTERED, username=name, password_hash="h"))
            live[seq], sessions_of[seq], inbox[seq] = name, [], []
        elif kind == "login":
            account = draw(st.sampled_from(sorted(live)))
            open_ids = sessions_of[account]
            closes = open_ids[: draw(st.integers(0, len(open_ids)))]
            payload: dict[str, Any] = {"session_id": f"s{seq}", "account_id": account}
            if closes:
                payload["closes"] = closes
            log.append(ev(seq, EventTypes.SESSION_OPENED, username=live[account], **payload))
            sessions_of[account] = [s for s in open_ids if s not in closes] + [f"s{seq}"]
        elif kind == "logout":
            account = draw(st.sampled_from(sorted(a for a, s in sessions_of.items() if s)))
            session = draw(st.sampled_from(sessions_of[account]))
            sessions_of[account].remove(session)
            log.append(ev(seq, EventTypes.SESSION_CLOSED, session_id=session, account_id=account))
        elif kind == "send":
            sender = draw(st.sampled_from(sorted(live)))
            recipient = draw(st.sampled_from(sorted(live)))
            log.append(message(seq, (sender, live[sender]), (recipient, live[recipient]), "hi"))
            inbox[recipient].append(seq)
        elif kind == "ack":
            account = draw(st.sampled_from(sorted(a for a, m in inbox.items() if m)))
            acked = draw(st.lists(st.sampled_from(inbox[account]), min_size=1, unique=True))
            inbox[account] = [m for m in inbox[account] if m not in acked]
            log.append(
                ev(seq, EventTypes.MESSAGES_ACKED, account_id=account, message_ids=sorted(acked))
            )
        elif kind == "membership":
            learners = sorted(i for i, voter in cluster.items() if not voter)
            # (a cluster keeps a voter: the last one is never removed)
            removable = sorted(i for i in cluster if not cluster[i] or sum(cluster.values()) > 1)
            changes = ["added"] + ["promoted"] * bool(learners) + ["removed"] * bool(removable)
            change = draw(st.sampled_from(changes))
            if change == "added":
                index = max(cluster.keys() | removed) + 1
                cluster[index] = False
            elif change == "promoted":
                index = draw(st.sampled_from(learners))
                cluster[index] = True
            else:
                index = draw(st.sampled_from(removable))
                del cluster[index]
                removed.add(index)
            log.append(membership_event(seq, change, index, cluster, removed))
        else:
            account = draw(st.sampled_from(sorted(live)))
            name = live.pop(account)
            del sessions_of[account], inbox[account]
            log.append(ev(seq, EventTypes.ACCOUNT_DELETED, account_id=account, username=name))
    return log


_ENGINES: dict[DatabaseFactory, tuple[sa.Engine, sa.Engine, sa.Engine]] = {}


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=valid_logs(), data=st.data())
def test_batched_apply_ends_where_one_event_at_a_time_does(
    databases: DatabaseFactory, log: list[Event], data: st.DataObject
) -> None:
    if databases not in _ENGINES:  # one set per test, emptied for each example
        _ENGINES[databases] = (databases.engine(), databases.engine(), databases.engine())
    one_by_one, batched, live = _ENGINES[databases]
    for engine in _ENGINES[databases]:
        with engine.begin() as conn:
            reset_projections(conn)
    for e in log:
        apply_one(one_by_one, e)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(log) - 1)), max_size=4)))
    with batched.begin() as conn:
        for start, end in zip([0, *cuts], [*cuts, len(log)], strict=True):
            if start >= end:
                continue
            apply_events(conn, log[start:end])  # a secondary's batches, a replay
    with live.begin() as conn:
        applier = Applier(conn)  # the writer's: only sends held back
        for e in log:
            applier.add(e)
        applier.finish()
    expected = tables(one_by_one)
    expected.pop("projection_position")
    for engine in (batched, live):
        got = tables(engine)
        assert got.pop("projection_position") == [("chat", len(log))]
        assert got == expected


def test_an_applier_told_a_wrong_position_cannot_commit(engine: sa.Engine) -> None:
    """The writer keeps the position in memory; if it were wrong (another path applied events
    meanwhile), the position's compare-and-set refuses the batch."""
    with engine.begin() as conn:
        apply_events(conn, [ev(1, EventTypes.EPOCH_STARTED, replica_index=0)])
        apply_events(conn, [ev(2, EventTypes.ACCOUNT_REGISTERED, username="a", password_hash="h")])
    with pytest.raises(PositionMoved), engine.begin() as conn:
        applier = Applier(conn, position=1)  # stale: the projections are at 2
        applier.add(ev(2, EventTypes.SESSION_OPENED, session_id="s", account_id=2, username="a"))
        applier.finish()
    with engine.connect() as conn:
        assert last_applied_seq(conn) == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(sessions)).scalar_one() == 0
