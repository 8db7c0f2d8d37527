"""Hot statements at a fraction of SQLAlchemy Core's CPU per execution: compiled once per
dialect, then handed to the driver as they are. Core builds and hashes a statement's cache
key on every execute even when its compiled form is cached; on the write path (a batch of
a few events: the log's INSERT, the projections' position) that was a fifth of a
secondary's CPU."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any]
_INSERTS: dict[
    tuple[str, str, str],
    tuple[str, Callable[[dict[str, Any]], Any], list[tuple[int, _Processor]], bool, list[str]],
] = {}


def insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """`conn.execute(table.insert(), rows)` at a fraction of the CPU: the statement is
    compiled once per dialect, and each row's values go through the columns' own bind
    processors (so what is stored is exactly what SQLAlchemy would store) to the driver's
    executemany -- as tuples for a positional paramstyle (SQLite's qmark, the `format` the
    replica's MySQL engines use), as dicts for pyformat (mysql-connector's own default);
    mysql-connector makes one multi-row INSERT of either. SQLAlchemy's per-row
    parameter building was a third of a replay's CPU."""
    if not rows:
        return
    key = (conn.dialect.name, conn.dialect.paramstyle, table.name)
    prepared = _INSERTS.get(key)
    if prepared is None:
        dialect = conn.dialect
        compiled = table.insert().compile(dialect=dialect)
        if compiled.positional:
            names = list(compiled.positiontup or [])
        else:
            names = [bind.key for bind in compiled.binds.values()]
            if any(f"%({name})s" not in compiled.string for name in names):
                names = []  # not pyformat, or names rendered escaped
        if len(names) < 2 or sorted(names) != sorted(c.name for c in table.columns):
            conn.execute(table.insert(), rows)  # a dialect this shortcut was not made for
            return
        found: list[tuple[int, _Processor]] = []
        for i, name in enumerate(names):
            process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                found.append((i, process))
        getter: Callable[[dict[str, Any]], Any] = operator.itemgetter(*names)
        prepared = _INSERTS[key] = (compiled.string, getter, found, compiled.positional, names)
    sql, values_of, processors, positional, names = prepared
    params: list[Any] = []
    for row in rows:
        values = list(values_of(row))
        for i, bind in processors:
            values[i] = bind(values[i])
        params.append(tuple(values) if positional else dict(zip(names, values, strict=True)))
    conn.exec_driver_sql(sql, params)


_STATEMENTS: dict[tuple[str, str, str], tuple[str, tuple[str, ...] | None]] = {}


def run_compiled(
    conn: sa.Connection,
    key: str,
    build: Callable[[], sa.ClauseElement],
    params: Mapping[str, Any],
) -> sa.CursorResult[Any]:
    """Execute the statement `build()` makes (built and compiled once per dialect, under
    `key`) with `params` by bind name. Only for parameters that need no bind processing
    (integers, strings): they go to the driver as they are."""
    dialect = conn.dialect
    entry = _STATEMENTS.get((dialect.name, dialect.paramstyle, key))
    if entry is None:
        compiled = cast(SQLCompiler, build().compile(dialect=dialect))
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        entry = _STATEMENTS[(dialect.name, dialect.paramstyle, key)] = (compiled.string, order)
    sql, order = entry
    if order is None:
        return conn.exec_driver_sql(sql, dict(params))
    return conn.exec_driver_sql(sql, tuple(params[name] for name in order))
