"""Rolling the projections back before a truncation: whatever the log, the way it was applied
and the seq it is cut at, the projections end exactly as applying the log up to that seq makes
them -- and, with undo information at hand, without a rebuild."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventlog
from eventlog import Event
from projections import (
    Applier,
    EventTypes,
    RolledBack,
    apply_events,
    last_applied_seq,
    rebuild,
    roll_back,
    undo,
)
from projections.schema import projection_undo
from tests.conftest import DatabaseFactory
from tests.inprocess import reset_database
from tests.projections.test_apply import ev, history, message, tables, valid_logs

_ENGINES: dict[DatabaseFactory, tuple[sa.Engine, sa.Engine]] = {}


def logged(engine: sa.Engine, log: list[Event]) -> None:
    reset_database(engine)
    with engine.begin() as conn:
        eventlog.append_events(conn, log)


def apply_as_the_writer(engine: sa.Engine, log: list[Event]) -> None:
    """One transaction per event, only sends held back (the primary's path)."""
    for e in log:
        with engine.begin() as conn:
            applier = Applier(conn)
            applier.add(e)
            applier.finish()


def apply_in_batches(engine: sa.Engine, log: list[Event], cuts: list[int]) -> None:
    """Everything held back, batch by batch (a secondary's, a replay)."""
    for start, end in zip([0, *cuts], [*cuts, len(log)], strict=True):
        if start < end:
            with engine.begin() as conn:
                apply_events(conn, log[start:end])


def expected_at(
    engine: sa.Engine, log: list[Event], seq: int
) -> dict[str, list[tuple[object, ...]]]:
    logged(engine, log)
    with engine.begin() as conn:
        rebuild(conn, batch_size=3, until=seq)
    return tables(engine)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(log=valid_logs(), data=st.data())
def test_rolling_back_ends_where_applying_the_shorter_log_does(
    databases: DatabaseFactory, log: list[Event], data: st.DataObject
) -> None:
    if databases not in _ENGINES:
        _ENGINES[databases] = (databases.engine(), databases.engine())
    live, reference = _ENGINES[databases]
    logged(live, log)
    if data.draw(st.booleans(), label="as the writer"):
        apply_as_the_writer(live, log)
    else:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(log)), max_size=4), label="cuts"))
        apply_in_batches(live, log, cuts)
    # Two truncations in a row, the second below the first (a replica deposed twice).
    first = data.draw(st.integers(0, len(log)), label="first cut")
    second = data.draw(st.integers(0, first), label="second cut")
    position = len(log)
    for seq in (first, second):
        with live.begin() as conn:
            outcome = roll_back(conn, seq)
            assert last_applied_seq(conn) == seq
        assert outcome is (RolledBack.NOTHING if seq == position else RolledBack.UNDONE)
        position = seq
        assert tables(live) == expected_at(reference, log, seq)
    # And what is applied after it (the new primary's events) lands as on any replica.
    with live.begin() as conn:
        assert apply_events(conn, log[second:]) == len(log)
    assert tables(live) == expected_at(reference, log, len(log))


def test_a_roll_back_costs_the_tail_not_the_log(engine: sa.Engine) -> None:
    """Only the tail's events are read: the rest of the log could be anything."""
    log = history()
    logged(engine, log)
    apply_in_batches(engine, log, [])
    with engine.begin() as conn:
        # Events below the cut are not read again: garbling them changes nothing.
        conn.execute(eventlog.events.update().where(eventlog.events.c.seq <= 9).values(payload="{"))
        assert roll_back(conn, 9) is RolledBack.UNDONE
    rows = tables(engine)
    # Bob's account, sessions and inbox (deleted at 11) are back; the second "bob" (12) is gone.
    assert [r[1] for r in rows["accounts"]] == ["alice", "bob"]
    assert [r[0] for r in rows["sessions"]] == ["s-a", "s-b"]  # s-a closed at 10
    assert [(r[0], r[7]) for r in rows["messages"]] == [(6, True), (7, False), (8, False)]


def test_an_ack_that_changed_fewer_rows_than_it_names_rebuilds(
    databases: DatabaseFactory,
) -> None:
    alice = (2, "alice")
    log = [
        ev(1, EventTypes.EPOCH_STARTED, replica_index=0),
        ev(2, EventTypes.ACCOUNT_REGISTERED, username="alice", password_hash="h"),
        message(3, alice, alice, "note to self"),
        ev(4, EventTypes.MESSAGES_ACKED, account_id=2, message_ids=[3]),
        ev(5, EventTypes.MESSAGES_ACKED, account_id=2, message_ids=[3]),  # already delivered
    ]
    live, reference = databases.engine(), databases.engine()
    logged(live, log)
    apply_as_the_writer(live, log)
    with live.begin() as conn:
        # Undoing 5 from its payload would make 3 undelivered, which at 4 it was not.
        assert roll_back(conn, 4) is RolledBack.REBUILT
    assert tables(live) == expected_at(reference, log, 4)


@pytest.mark.parametrize("cut, outcome", [(3, RolledBack.REBUILT), (8, RolledBack.UNDONE)])
def test_below_the_horizon_it_rebuilds(
    databases: DatabaseFactory,
    monkeypatch: pytest.MonkeyPatch,
    cut: int,
    outcome: RolledBack,
) -> None:
    monkeypatch.setattr(undo, "UNDO_WINDOW", 4)
    log = history()
    live, reference = databases.engine(), databases.engine()
    logged(live, log)
    apply_as_the_writer(live, log)
    with live.connect() as conn:
        assert undo.horizon(conn) == 12 - 4  # pruned when the position passed 12
        kept = conn.execute(sa.select(projection_undo.c.seq)).scalars().all()
    assert kept == [10, 11]  # the logout and the deletion; 4, 5 (logins) never needed any
    with live.begin() as conn:
        assert roll_back(conn, cut) is outcome
    assert tables(live) == expected_at(reference, log, cut)
