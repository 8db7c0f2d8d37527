"""Undo information: what applying an event removed from the projections, kept so that a
truncated tail can be taken back event by event (projections/rollback.py) instead of
rebuilding every projection from the whole log.

Most events need none: their payload alone says how to take them back (a message, an account
or a membership change inserted under the event's seq is deleted again; an ack of messages that
were all undelivered -- the primary logs only those -- is un-acked). Only what ends rows keeps a
record, the rows as they stood: a session ended (by a logout or a login at the cap), an account
deleted with its sessions and inbox. An ack that changed fewer rows than it names cannot be
taken back exactly; its record says so, and a truncation below it rebuilds.

Records are kept for the last UNDO_WINDOW applied events: the horizon is the seq above which
they are complete (a truncation at or above it is undone; below it, rebuilt). Acknowledged
events are never truncated, so only the unacknowledged tail -- seconds of writes -- ever needs
them; the window is far wider than that."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from projections.schema import projection_undo, projection_undo_state

UNDO_WINDOW: Final = 100_000
HORIZON: Final = "horizon"
# What a record may name: the rows an event removed, by table, and whether it is exact.
INEXACT: Final = "inexact"


def encode_row(table: sa.Table, row: Mapping[str, Any]) -> list[Any]:
    """A row as JSON-ready values in the table's column order (timestamps as ISO 8601)."""
    return [
        value.isoformat() if isinstance(value, dt.datetime) else value
        for value in (row[column.name] for column in table.columns)
    ]


def decode_row(table: sa.Table, values: Sequence[Any]) -> dict[str, Any]:
    """The row `encode_row` wrote, ready to insert again."""
    row: dict[str, Any] = {}
    for column, value in zip(table.columns, values, strict=True):
        if value is not None and isinstance(column.type, sa.DateTime):
            value = dt.datetime.fromisoformat(value)
        elif value is not None and isinstance(column.type, sa.Boolean):
            value = bool(value)
        row[column.name] = value
    return row


def select_rows(conn: sa.Connection, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    """The rows of `table` matching `where`, as mappings, in primary-key order."""
    query = sa.select(table).where(*where).order_by(*table.primary_key.columns)
    return [dict(row) for row in conn.execute(query).mappings()]


class UndoRecords:
    """The records of one Applier's events, written with its changes (same transaction)."""

    def __init__(self) -> None:
        self._held: dict[int, dict[str, Any]] = {}

    def removed(self, seq: int, table: sa.Table, rows: Iterable[Mapping[str, Any]]) -> None:
        """Event `seq` removed these rows of `table`."""
        encoded = [encode_row(table, row) for row in rows]
        if encoded:
            self._held.setdefault(seq, {}).setdefault(table.name, []).extend(encoded)

    def inexact(self, seq: int) -> None:
        """Event `seq` cannot be taken back from its payload and this record."""
        self._held.setdefault(seq, {})[INEXACT] = True

    def write(self, conn: sa.Connection) -> None:
        if self._held:
            conn.execute(
                projection_undo.insert(),
                [
                    {"seq": seq, "payload": json.dumps(record, sort_keys=True)}
                    for seq, record in sorted(self._held.items())
                ],
            )
            self._held = {}


def horizon(conn: sa.Connection) -> int:
    value = conn.execute(
        sa.select(projection_undo_state.c.value).where(projection_undo_state.c.name == HORIZON)
    ).scalar()
    return 0 if value is None else int(value)


def set_horizon(conn: sa.Connection, seq: int) -> None:
    updated = conn.execute(
        projection_undo_state.update()
        .where(projection_undo_state.c.name == HORIZON)
        .values(value=seq)
    )
    if updated.rowcount == 0:
        conn.execute(projection_undo_state.insert().values(name=HORIZON, value=seq))


def prune(conn: sa.Connection, position: int) -> None:
    """Forget the records of events more than UNDO_WINDOW below `position`."""
    keep_above = position - UNDO_WINDOW
    if keep_above <= horizon(conn):
        return
    conn.execute(projection_undo.delete().where(projection_undo.c.seq <= keep_above))
    set_horizon(conn, keep_above)


def records_after(conn: sa.Connection, seq: int) -> dict[int, dict[str, Any]]:
    rows = conn.execute(
        sa.select(projection_undo.c.seq, projection_undo.c.payload).where(
            projection_undo.c.seq > seq
        )
    )
    return {int(row.seq): json.loads(row.payload) for row in rows}


def forget_after(conn: sa.Connection, seq: int) -> None:
    conn.execute(projection_undo.delete().where(projection_undo.c.seq > seq))


def reset(conn: sa.Connection) -> None:
    """No records and a horizon of 0 (the projections are emptied: a rebuild records anew)."""
    conn.execute(projection_undo.delete())
    conn.execute(projection_undo_state.delete())
