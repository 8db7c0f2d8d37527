"""The compiled-once statements store exactly what SQLAlchemy Core would, on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from eventlog import events
from eventlog.statements import Pipeline, insert_rows, run_compiled
from projections import messages

T0 = dt.datetime(2030, 1, 2, 3, 4, 5, 123456)


def retype() -> sa.ClauseElement:
    """An UPDATE with two named binds (the shape of the position's compare-and-set)."""
    return (
        events.update()
        .where(events.c.seq == sa.bindparam("at"))
        .values(type=sa.bindparam("new_type"))
    )


def _rows(table: sa.Table, conn: sa.Connection) -> list[tuple[object, ...]]:
    key = next(iter(table.primary_key.columns))
    return [tuple(r) for r in conn.execute(sa.select(table).order_by(key))]


def test_insert_rows_stores_what_core_stores(engine: sa.Engine) -> None:
    rows = [
        {
            "seq": seq,
            "epoch": 2,
            "type": "message_sent",
            "payload": '{"body": "h\\u00e9 \' %s %(x)s"}',
            "request_id": None if seq == 2 else f"r-{seq}",
            "created_at": T0 + dt.timedelta(microseconds=seq),
        }
        for seq in (1, 2, 3)
    ]
    with engine.begin() as conn:
        insert_rows(conn, events, rows[:2])
        insert_rows(conn, events, rows[2:])  # the second call takes the compiled form
        insert_rows(conn, events, [])
    with engine.connect() as conn:
        stored = _rows(events, conn)
    with engine.begin() as conn:
        conn.execute(events.delete())
        conn.execute(events.insert(), rows)
    with engine.connect() as conn:
        assert _rows(events, conn) == stored
    assert [r[0] for r in stored] == [1, 2, 3] and stored[1][4] is None
    assert stored[0][5] == T0 + dt.timedelta(microseconds=1)


def test_insert_rows_with_a_named_paramstyle(engine: sa.Engine) -> None:
    """mysql-connector's own default (pyformat; the replica's engines use format) and
    SQLite's named style (not pyformat: Core does it) store the same rows."""
    style = "pyformat" if engine.dialect.name == "mysql" else "named"
    named = sa.create_engine(engine.url, paramstyle=style)
    row = {
        "seq": 1,
        "epoch": 1,
        "type": "t",
        "payload": '{"a": "%(seq)s"}',
        "request_id": "r",
        "created_at": T0,
    }
    try:
        with named.begin() as conn:
            insert_rows(conn, events, [row, {**row, "seq": 2, "request_id": None}])
        with engine.connect() as conn:
            stored = _rows(events, conn)
    finally:
        named.dispose()
    assert stored == [
        (1, 1, "t", '{"a": "%(seq)s"}', "r", T0),
        (2, 1, "t", '{"a": "%(seq)s"}', None, T0),
    ]


def test_insert_rows_takes_booleans_and_datetimes_through_their_columns(
    engine: sa.Engine,
) -> None:
    row = {
        "message_id": 7,
        "sender_id": 1,
        "sender": "alice",
        "recipient_id": 2,
        "recipient": "bob",
        "body": "hi",
        "sent_at": T0,
        "delivered": False,
    }
    with engine.begin() as conn:
        insert_rows(conn, messages, [row])
    with engine.connect() as conn:
        (stored,) = conn.execute(sa.select(messages)).mappings()
    assert dict(stored) == row


def test_run_compiled_binds_by_name_and_reports_rowcount(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        insert_rows(
            conn,
            events,
            [
                {
                    "seq": 1,
                    "epoch": 1,
                    "type": "a",
                    "payload": "{}",
                    "request_id": None,
                    "created_at": T0,
                }
            ],
        )
        moved = run_compiled(conn, "test.retype", retype, {"new_type": "b", "at": 1})
        missed = run_compiled(conn, "test.retype", retype, {"at": 9, "new_type": "c"})
        assert (moved.rowcount, missed.rowcount) == (1, 0)
        assert conn.execute(sa.select(events.c.type)).scalar_one() == "b"


# What a message body can make of a payload: placeholders, statement ends, quotes, comments.
PAYLOAD = '{"b": "%s %(x)s; DELETE FROM events; \' \\" -- /* ` \\\\ \n"}'


def _event_row(seq: int, request_id: str | None = None) -> dict[str, object]:
    return {
        "seq": seq,
        "epoch": 1,
        "type": "message_sent",
        "payload": PAYLOAD,
        "request_id": request_id,
        "created_at": T0,
    }


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_pipeline_sends_its_writes_together_on_mysql_and_at_once_elsewhere(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        pipeline = Pipeline(conn)
        pipeline.insert_rows(events, [_event_row(1), _event_row(2, "r-2")])
        pipeline.insert_rows(events, [_event_row(3)])
        pipeline.update(
            "test.move", retype, {"at": 2, "new_type": "moved"}, expect=1, mismatch=AssertionError
        )
        held = engine.dialect.name == "mysql"
        assert _count(conn, events) == (0 if held else 3)
        pipeline.flush()
        assert _count(conn, events) == 3
        pipeline.flush()  # nothing held: nothing sent
    with engine.connect() as conn:
        stored = _rows(events, conn)
    assert [(r[0], r[2], r[4]) for r in stored] == [
        (1, "message_sent", None),
        (2, "moved", "r-2"),
        (3, "message_sent", None),
    ]
    assert all(r[3] == PAYLOAD and r[5] == T0 for r in stored)


def test_a_pipeline_checks_row_counts_and_reports_the_servers_refusal(
    engine: sa.Engine,
) -> None:
    class Moved(Exception):
        pass

    with pytest.raises(Moved), engine.begin() as conn:
        pipeline = Pipeline(conn)
        pipeline.insert_rows(events, [_event_row(1)])
        pipeline.update("test.move", retype, {"at": 9, "new_type": "x"}, expect=1, mismatch=Moved)
        pipeline.flush()
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        pipeline = Pipeline(conn)
        pipeline.insert_rows(events, [_event_row(1, "same")])
        pipeline.insert_rows(events, [_event_row(2, "same")])  # request_id is unique
        pipeline.flush()
    with engine.connect() as conn:
        assert _count(conn, events) == 0, "a refused pipeline left rows behind"


def test_a_pipeline_sends_large_rows_on_their_own_after_what_it_holds(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Pipeline, "MAX_JOINED_BYTES", 500)
    with engine.begin() as conn:
        pipeline = Pipeline(conn)
        pipeline.insert_rows(events, [_event_row(1)])
        big = {**_event_row(2), "payload": '{"b": "' + "x" * 600 + '"}'}
        pipeline.insert_rows(events, [big])  # over the limit: what is held, then it
        assert _count(conn, events) == 2
        pipeline.insert_rows(events, [_event_row(3)])
        pipeline.flush()
    with engine.connect() as conn:
        assert [r[0] for r in _rows(events, conn)] == [1, 2, 3]
