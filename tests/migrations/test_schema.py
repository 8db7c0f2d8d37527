"""The migrations are the schema's history; the SQLAlchemy tables are its current shape."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import eventlog
import projections
from projections.queries import latest_membership
from replica.storage.database import (
    SchemaError,
    alembic_config,
    current_revision,
    make_engine,
    upgrade_schema,
)
from tests.conftest import DatabaseFactory
from testsupport.harness import REPO_ROOT, ClusterProcesses

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
TABLES = {
    *eventlog.metadata.tables,
    *projections.metadata.tables,
    "alembic_version",
}
FUTURE_REVISION = "9999_from_the_future"
T0 = dt.datetime(2030, 1, 1)


def schema_differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, [eventlog.metadata, projections.metadata]))


def stamp(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_the_history_is_linear_from_0001_initial() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD]
    revisions = list(script.walk_revisions())  # newest first
    assert revisions[-1].revision == "0001_initial"
    assert revisions[-1].down_revision is None
    assert all(r.down_revision == older.revision for r, older in itertools.pairwise(revisions))


def test_migrated_schema_equals_the_metadata(databases: DatabaseFactory) -> None:
    engine = databases.engine()
    assert current_revision(engine) == HEAD
    assert set(sa.inspect(engine).get_table_names()) == TABLES
    assert schema_differences(engine) == []


def test_the_comparison_would_notice_a_difference(databases: DatabaseFactory) -> None:
    engine = databases.engine()
    with engine.begin() as conn:
        [index] = [i for i in projections.sessions.indexes if i.name == "ix_sessions_account_id"]
        conn.execute(sa.schema.DropIndex(index))
    [difference] = schema_differences(engine)
    assert difference[0] == "add_index"  # type: ignore[index]


def migrate(engine: sa.Engine, how: Callable[..., None], revision: str) -> None:
    """`command.upgrade` or `command.downgrade` to `revision`, as a replica runs them."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        how(config, revision)


def test_0004_membership_changes_downgrades_and_upgrades_again(
    databases: DatabaseFactory,
) -> None:
    engine = databases.engine()
    events = [
        eventlog.Event(1, 1, "epoch_started", {"replica_index": 0}, None, T0),
        eventlog.Event(
            2,
            1,
            *projections.encode(
                projections.MemberAdded(
                    index=3,
                    address="h3:1",
                    members=(
                        projections.MemberRecord(index=0, address="h0:1", voter=True),
                        projections.MemberRecord(index=3, address="h3:1", voter=False),
                    ),
                )
            ),
            None,
            T0,
        ),
    ]
    with engine.begin() as conn:
        eventlog.append_events(conn, events)
        projections.apply_events(conn, events)
    migrate(engine, command.downgrade, "0003_projection_undo")
    assert current_revision(engine) == "0003_projection_undo"
    assert set(sa.inspect(engine).get_table_names()) == TABLES - {"membership_changes"}
    [difference] = schema_differences(engine)
    assert difference[0] == "add_table"  # type: ignore[index]
    assert difference[1].name == "membership_changes"  # type: ignore[index]
    with engine.connect() as conn:
        assert eventlog.last_position(conn).seq == 2  # the log and the rest stay
    migrate(engine, command.upgrade, "head")
    assert current_revision(engine) == HEAD
    assert schema_differences(engine) == []
    with engine.begin() as conn:
        assert latest_membership(conn) is None  # empty until a rebuild
        projections.rebuild(conn)
        latest = latest_membership(conn)
    assert latest is not None and latest.seq == 2 and latest.learners == {3}


def test_upgrade_schema_is_idempotent(databases: DatabaseFactory) -> None:
    engine = databases.engine()
    with engine.begin() as conn:
        eventlog.append_events(conn, [eventlog.Event(1, 1, "epoch_started", {}, None, T0)])
    assert upgrade_schema(engine) == HEAD
    with engine.connect() as conn:
        assert eventlog.last_position(conn).seq == 1  # data survives a second upgrade


def test_alembic_command_line_upgrades_a_fresh_database(databases: DatabaseFactory) -> None:
    url = databases.url()
    engine = databases.engine(url, migrate=False)  # created (MySQL) and removed afterwards
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"db={url}", "upgrade", "head"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(engine) == HEAD
    assert schema_differences(engine) == []
    # Running it again keeps the data.
    with engine.begin() as conn:
        eventlog.append_events(conn, [eventlog.Event(1, 1, "epoch_started", {}, None, T0)])
    again = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"db={url}", "upgrade", "head"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        assert eventlog.last_position(conn).seq == 1


def test_upgrade_schema_refuses_an_unknown_revision(databases: DatabaseFactory) -> None:
    engine = databases.engine()
    stamp(engine, FUTURE_REVISION)
    with pytest.raises(SchemaError) as info:
        upgrade_schema(engine)
    message = str(info.value)
    assert f"is at schema revision '{FUTURE_REVISION}'" in message
    assert "which this version does not know" in message
    assert f"newest known: '{HEAD}'" in message
    assert "upgrade the software or point --db at another database" in message
    # Refusing changed nothing.
    assert current_revision(engine) == FUTURE_REVISION


def test_schema_error_names_the_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    upgrade_schema(engine)
    stamp(engine, FUTURE_REVISION)
    with pytest.raises(SchemaError, match=r"database sqlite:///.*x\.db is at schema revision"):
        upgrade_schema(engine)
    engine.dispose()


@pytest.mark.slow
def test_a_replica_refuses_to_start_on_an_unknown_revision(
    databases: DatabaseFactory, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    url = databases.url()
    engine = databases.engine(url)
    stamp(engine, FUTURE_REVISION)
    cluster = cluster_processes(1, db_urls=[url])
    cluster.start(0, wait=False)
    assert cluster.wait_exit(0, timeout=60) == 1
    log = cluster.log_text(0)
    assert f"is at schema revision '{FUTURE_REVISION}', which this version does not know" in log
    assert "Traceback" not in log
    assert current_revision(engine) == FUTURE_REVISION
