"""The compiled-once statements store exactly what SQLAlchemy Core would, on both backends."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from eventlog import events
from eventlog.statements import insert_rows, run_compiled
from projections import messages

T0 = dt.datetime(2030, 1, 2, 3, 4, 5, 123456)


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
    def build() -> sa.ClauseElement:
        return (
            events.update()
            .where(events.c.seq == sa.bindparam("at"))
            .values(type=sa.bindparam("new_type"))
        )

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
        moved = run_compiled(conn, "test.retype", build, {"new_type": "b", "at": 1})
        missed = run_compiled(conn, "test.retype", build, {"at": 9, "new_type": "c"})
        assert (moved.rowcount, missed.rowcount) == (1, 0)
        assert conn.execute(sa.select(events.c.type)).scalar_one() == "b"
