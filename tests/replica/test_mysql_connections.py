"""A replica's MySQL connections: no round trip but the statements themselves on a busy
connection (no ping per cursor, none per checkout), and a connection that went stale while it
sat idle in the pool -- or died under a statement -- is replaced, losing nothing committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import replica.storage.database
from tests.conftest import DatabaseFactory, require_mysql

pytestmark = pytest.mark.mysql

ADMIN_COMMANDS = sa.text("SHOW SESSION STATUS LIKE 'Com_admin_commands'")  # pings among them


@pytest.fixture
def mysql_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    require_mysql()
    factory = DatabaseFactory("mysql", tmp_path)
    engine = factory.engine(migrate=False)
    try:
        yield engine
    finally:
        engine.dispose()
        factory.cleanup()


def _admin_commands(conn: sa.Connection) -> int:
    return int(conn.execute(ADMIN_COMMANDS).one()[1])


def _connection_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())


def test_a_busy_connection_sends_no_pings(mysql_engine: sa.Engine) -> None:
    with mysql_engine.connect() as conn:
        session = _connection_id(conn)
        before = _admin_commands(conn)
    for _ in range(20):  # checkouts in quick succession: the pool hands out the same one
        with mysql_engine.begin() as conn:
            assert _connection_id(conn) == session
            conn.execute(sa.text("SELECT 1")).all()
            conn.execute(sa.text("SELECT 2")).all()
    with mysql_engine.connect() as conn:
        assert _connection_id(conn) == session
        assert _admin_commands(conn) == before


def _kill(engine: sa.Engine, connection_id: int) -> None:
    with engine.connect() as other:
        other.execute(sa.text(f"KILL CONNECTION {int(connection_id)}"))


def test_a_connection_killed_while_idle_is_replaced_at_checkout(
    mysql_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica.storage.database, "IDLE_BEFORE_PING", 0.0)
    with mysql_engine.connect() as conn:
        stale = _connection_id(conn)
    # A second engine's connection does the killing, so the pool's one stays idle.
    killer = replica.storage.database.make_engine(mysql_engine.url.render_as_string(False))
    try:
        _kill(killer, stale)
    finally:
        killer.dispose()
    with mysql_engine.connect() as conn:  # pinged, found dead, replaced: no error
        assert _connection_id(conn) != stale
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_a_connection_killed_under_a_busy_pool_fails_one_transaction_only(
    mysql_engine: sa.Engine,
) -> None:
    with mysql_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INT PRIMARY KEY)"))
    with mysql_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        victim = _connection_id(conn)
    killer = replica.storage.database.make_engine(mysql_engine.url.render_as_string(False))
    try:
        _kill(killer, victim)
    finally:
        killer.dispose()
    # Checked out at once (not idle long enough for a ping): the statement fails as a
    # disconnect, and nothing of that transaction is stored...
    with pytest.raises(sa.exc.DBAPIError) as failed, mysql_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (2)"))
    assert failed.value.connection_invalidated
    # ...and the next one gets a new connection.
    with mysql_engine.begin() as conn:
        assert _connection_id(conn) != victim
        conn.execute(sa.text("INSERT INTO t VALUES (3)"))
    with mysql_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM t ORDER BY x")).scalars().all() == [1, 3]


def test_a_commit_costs_no_rollback_but_an_open_transaction_is_rolled_back_on_return(
    mysql_engine: sa.Engine,
) -> None:
    rollbacks = sa.text("SHOW SESSION STATUS LIKE 'Com_rollback'")
    with mysql_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INT PRIMARY KEY)"))
    with mysql_engine.connect() as conn:
        session = _connection_id(conn)
        before = int(conn.execute(rollbacks).one()[1])
    for x in range(5):
        with mysql_engine.begin() as conn:
            assert _connection_id(conn) == session
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": x})
    raw = mysql_engine.raw_connection()  # bypasses the Connection's own transaction handling
    cursor = raw.cursor()
    cursor.execute("INSERT INTO t VALUES (99)")
    cursor.close()
    raw.close()  # back to the pool inside its transaction: rolled back there
    with mysql_engine.connect() as conn:
        assert _connection_id(conn) == session
        # The reads' connect() ends its transaction once (the rollback before this one), the
        # five commits none, the returned open transaction one.
        assert int(conn.execute(rollbacks).one()[1]) == before + 2
        assert conn.execute(sa.text("SELECT x FROM t ORDER BY x")).scalars().all() == [
            0,
            1,
            2,
            3,
            4,
        ]
