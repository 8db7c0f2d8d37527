"""Hot statements at a fraction of SQLAlchemy Core's CPU per execution: compiled once per
dialect, then handed to the driver as they are. Core builds and hashes a statement's cache
key on every execute even when its compiled form is cached; on the write path (a batch of
a few events: the log's INSERT, the projections' position) that costs a fifth of a
secondary's CPU."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any]
# (SQL, row -> values in order, bind processors by position, positional?, bind names)
_Prepared = tuple[
    str, Callable[[dict[str, Any]], Any], list[tuple[int, _Processor]], bool, list[str]
]
_INSERTS: dict[tuple[str, str, str], _Prepared] = {}


def insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """`conn.execute(table.insert(), rows)` at a fraction of the CPU: the statement is
    compiled once per dialect, and each row's values go through the columns' own bind
    processors (so what is stored is exactly what SQLAlchemy would store) to the driver's
    executemany -- as tuples for a positional paramstyle (SQLite's qmark, the `format` the
    replica's MySQL engines use), as dicts for pyformat (mysql-connector's own default);
    mysql-connector makes one multi-row INSERT of either. SQLAlchemy's per-row
    parameter building costs a third of a replay's CPU."""
    if not rows:
        return
    prepared = _prepared_insert(conn, table)
    if prepared is None:
        conn.execute(table.insert(), rows)  # a dialect this shortcut was not made for
        return
    conn.exec_driver_sql(prepared[0], _row_params(prepared, rows))


def _prepared_insert(conn: sa.Connection, table: sa.Table) -> _Prepared | None:
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
            return None
        found: list[tuple[int, _Processor]] = []
        for i, name in enumerate(names):
            process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                found.append((i, process))
        getter: Callable[[dict[str, Any]], Any] = operator.itemgetter(*names)
        prepared = _INSERTS[key] = (compiled.string, getter, found, compiled.positional, names)
    return prepared


def _row_params(prepared: _Prepared, rows: list[dict[str, Any]]) -> list[Any]:
    _sql, values_of, processors, positional, names = prepared
    params: list[Any] = []
    for row in rows:
        values = list(values_of(row))
        for i, bind in processors:
            values[i] = bind(values[i])
        params.append(tuple(values) if positional else dict(zip(names, values, strict=True)))
    return params


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
    sql, order = _compiled(conn, key, build)
    if order is None:
        return conn.exec_driver_sql(sql, dict(params))
    return conn.exec_driver_sql(sql, tuple(params[name] for name in order))


def _compiled(
    conn: sa.Connection, key: str, build: Callable[[], sa.ClauseElement]
) -> tuple[str, tuple[str, ...] | None]:
    dialect = conn.dialect
    entry = _STATEMENTS.get((dialect.name, dialect.paramstyle, key))
    if entry is None:
        compiled = cast(SQLCompiler, build().compile(dialect=dialect))
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        entry = _STATEMENTS[(dialect.name, dialect.paramstyle, key)] = (compiled.string, order)
    return entry


class Pipeline:
    """Writes of one transaction that may travel together: on MySQL with the positional
    `format` style (the replica's engines), every statement given here goes to the server in
    one multi-statement round trip at flush() -- a multi-row INSERT per insert_rows(), then
    the updates -- instead of one round trip each; elsewhere each runs at once, as the
    functions above would run it. Only for writes that nothing in the transaction reads
    before flush(), and whose order among themselves is all that matters. An update's
    row count is checked at flush (`expect`); a mismatch raises what `mismatch` makes."""

    # Held rows beyond this many bytes of values are sent at once instead (a statement of
    # their own, as insert_rows sends it); MariaDB's max_allowed_packet is 16 MiB by default.
    MAX_JOINED_BYTES = 1 << 20

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._joined = conn.dialect.name == "mysql" and conn.dialect.paramstyle == "format"
        self._bytes = 0
        self._sql: list[str] = []
        self._params: list[Any] = []
        # Per statement: (rows it must change, what to raise otherwise), or None.
        self._checks: list[tuple[int, Callable[[], Exception]] | None] = []

    def insert_rows(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        prepared = _prepared_insert(self._conn, table) if self._joined and rows else None
        if prepared is None:
            insert_rows(self._conn, table, rows)
            return
        sql = prepared[0]
        head, _, group = sql.partition(" VALUES ")
        params = _row_params(prepared, rows)
        size = sum(len(v) if isinstance(v, str | bytes) else 8 for row in params for v in row)
        if not group or self._bytes + size > self.MAX_JOINED_BYTES:
            # Large rows go on their own, as insert_rows sends them (the server's
            # max_allowed_packet bounds one statement; a multi-statement carries them all):
            # what is held goes first.
            self.flush()
            self._conn.exec_driver_sql(sql, params)
            return
        self._sql.append(f"{head} VALUES {', '.join([group] * len(rows))}")
        for values in params:
            self._params.extend(values)
        self._bytes += size
        self._checks.append((len(rows), lambda: RuntimeError(f"{table.name}: rows missing")))

    def update(
        self,
        key: str,
        build: Callable[[], sa.ClauseElement],
        params: Mapping[str, Any],
        *,
        expect: int,
        mismatch: Callable[[], Exception],
    ) -> None:
        if not self._joined:
            if run_compiled(self._conn, key, build, params).rowcount != expect:
                raise mismatch()
            return
        sql, order = _compiled(self._conn, key, build)
        assert order is not None
        self._sql.append(sql)
        self._params.extend(params[name] for name in order)
        self._checks.append((expect, mismatch))

    def flush(self) -> None:
        """Send what is held (MySQL), check every row count; raises DBAPIError as Core would
        for the server's refusal of any of the statements."""
        if not self._sql:
            return
        sql, params, checks = ";\n".join(self._sql), tuple(self._params), self._checks
        self._sql, self._params, self._checks, self._bytes = [], [], [], 0
        cursor = self._conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        dbapi = self._conn.dialect.loaded_dbapi
        try:
            counts = []
            try:
                cursor.execute(sql, params)
                counts.append(cursor.rowcount)
                while cursor.nextset():
                    counts.append(cursor.rowcount)
            except dbapi.Error as exc:
                raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi.Error) from exc
            except Exception as exc:  # the C extension's own MySQLError, past the first result
                raise sa.exc.DBAPIError.instance(
                    sql, params, _as_dbapi_error(dbapi, exc), dbapi.Error
                ) from exc
        finally:
            cursor.close()
        if len(counts) != len(checks):
            raise RuntimeError(f"{len(checks)} statements sent, {len(counts)} results")
        for count, check in zip(counts, checks, strict=True):
            if check is not None and count != check[0]:
                raise check[1]()


def _as_dbapi_error(dbapi: Any, exc: Exception) -> Exception:
    """mysql-connector's C extension raises its own MySQLError for a statement after the
    first of a multi-statement; the driver's error classes for it, as for any other."""
    errno = getattr(exc, "errno", None)
    if errno is None:
        return cast(Exception, dbapi.DatabaseError(str(exc)))
    from mysql.connector.errors import get_mysql_exception

    msg, state = getattr(exc, "msg", str(exc)), getattr(exc, "sqlstate", None)
    return cast(Exception, get_mysql_exception(errno, msg, state))
