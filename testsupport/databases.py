"""Whole-database reads for comparing replicas, and dropping a test's MySQL database."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from eventlog import Event, read_events
from projections.schema import PROJECTION_TABLES, projection_position
from replica.storage.database import quote_identifier


def iter_all_events(conn: sa.Connection, batch_size: int = 1000) -> Iterable[Event]:
    """The whole log, in order, read in batches."""
    after = 0
    while True:
        batch = read_events(conn, after, batch_size)
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


def iter_table_rows(conn: sa.Connection) -> Iterable[tuple[str, list[tuple[object, ...]]]]:
    """Every projection table's rows in primary-key order (for digests and comparisons)."""
    for table in (*PROJECTION_TABLES, projection_position):
        key = list(table.primary_key.columns)
        rows = conn.execute(sa.select(table).order_by(*key)).all()
        yield table.name, [tuple(r) for r in rows]


def drop_mysql_database(url: str) -> None:
    """Drop the MySQL database a test or benchmark made."""
    parsed = make_url(url)
    server = sa.create_engine(parsed.set(database=""), poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            conn.execute(
                sa.text(f"DROP DATABASE IF EXISTS {quote_identifier(parsed.database or '')}")
            )
    finally:
        server.dispose()
