"""The writer's in-memory directory of accounts and sessions is exact: whatever the log, the
way it is cut into batches and which batches roll back, every lookup answers what the
writer's own transaction would read from the database at that moment."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog import Event
from projections import Applier, EventTypes
from projections import queries as q
from replica.storage.directory import Directory
from tests.conftest import DatabaseFactory
from tests.inprocess import reset_database
from tests.projections.test_apply import valid_logs

_ENGINES: dict[DatabaseFactory, sa.Engine] = {}


class _RolledBack(Exception):
    pass


def _names_and_sessions(log: list[Event]) -> tuple[list[str], list[str]]:
    names = sorted({str(e.payload["username"]) for e in log if "username" in e.payload})
    sessions = sorted(
        {str(e.payload["session_id"]) for e in log if e.type == EventTypes.SESSION_OPENED}
    )
    return names, [*sessions, "never-opened"]


def _check(directory: Directory, conn: sa.Connection, names: list[str], ids: list[str]) -> None:
    for name in names:
        assert directory.account(conn, name) == q.find_account(conn, name), name
    for sid in ids:
        assert directory.session_account(conn, sid) == q.find_session_account(conn, sid), sid


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(log=valid_logs(), data=st.data())
def test_every_lookup_answers_what_the_transaction_reads(
    databases: DatabaseFactory, log: list[Event], data: st.DataObject
) -> None:
    if databases not in _ENGINES:
        _ENGINES[databases] = databases.engine()
    engine = _ENGINES[databases]
    reset_database(engine)
    names, ids = _names_and_sessions(log)
    directory = Directory(capacity=data.draw(st.sampled_from([2, 1000]), label="capacity"))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(log)), max_size=6), label="cuts"))
    for start, end in zip([0, *cuts], [*cuts, len(log)], strict=True):
        batch = log[start:end]
        if not batch:
            continue
        # A batch may roll back (a failed commit) and is then written again.
        if data.draw(st.booleans(), label="rolls back first"):
            with pytest.raises(_RolledBack), engine.begin() as conn:
                _write(directory, conn, batch, names, ids)
                raise _RolledBack
            directory.abandoned()
        with engine.begin() as conn:
            _write(directory, conn, batch, names, ids)
        directory.committed()
        with engine.connect() as conn:
            _check(directory, conn, names, ids)


def _write(
    directory: Directory, conn: sa.Connection, batch: list[Event], names: list[str], ids: list[str]
) -> None:
    """As the writer does: each event decided on what the ones before it left."""
    applier = Applier(conn)
    for event in batch:
        _check(directory, conn, names, ids)
        applier.add(event)
        directory.applied(event)
    applier.finish()
    _check(directory, conn, names, ids)
