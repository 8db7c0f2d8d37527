"""Opening a replica's database and bringing its schema to the current revision."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

import migrations
from replica.errors import ChatError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
# MySQL's "disk full" (1021), "table is full" (1114) and "error writing file" (3, e.g. ENOSPC).
_MYSQL_STORAGE_FULL = frozenset({3, 1021, 1114})
# MySQL client and server errors of a server that is not serving (yet): too many connections
# (1040), shutting down (1053), connection killed (1927), no socket (2002), no TCP connection
# (2003), unknown host (2005: DNS may come up late at boot), gone away or lost (2006, 2013,
# 2055), disconnected for inactivity (4031). Waiting may fix them; a refused login (1045), an
# unknown database or a missing privilege it cannot.
_MYSQL_UNREACHABLE = frozenset({1040, 1053, 1927, 2002, 2003, 2005, 2006, 2013, 2055, 4031})


class SchemaError(Exception):
    """The database's schema is at a revision this code does not know."""


def make_engine(url: str, *, create_database: bool = True) -> sa.Engine:
    """An engine for a replica's database. SQLite files get WAL and a busy timeout; a MySQL
    database that does not exist yet is created (utf8mb4)."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            private_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = sa.create_engine(parsed, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "mysql":
        _warn_if_pure_python_driver()
        if create_database:
            create_mysql_database(parsed)
        # No pre-ping on every checkout: a busy replica's connections are never stale, and a
        # ping is a round trip per transaction (see _ping_if_idle).
        kwargs.update(pool_recycle=3600, pool_size=8, max_overflow=16)
        # The pool's own reset is a ROLLBACK round trip after every commit; _end_open_transaction
        # rolls back only a connection that comes back inside a transaction.
        kwargs["pool_reset_on_return"] = None
        # Positional %s placeholders: the driver fills a batch INSERT's rows ~20% faster than
        # with named %(name)s ones (a regex substitution per value).
        kwargs["paramstyle"] = "format"
        # READ COMMITTED: readers always see the latest committed projections.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "mysql":
        sa.event.listen(engine, "handle_error", _driver_error_as_dbapi_error, retval=True)
        sa.event.listen(engine, "connect", _no_ping_per_cursor)
        sa.event.listen(engine, "checkin", _note_checkin)
        sa.event.listen(engine, "checkout", _ping_if_idle)
        sa.event.listen(engine, "reset", _end_open_transaction)
    return engine


# A pooled MySQL connection idle for longer than this is pinged before use: the server may
# have restarted or dropped it meanwhile. One that is busy is not (a ping per transaction is
# a tenth of a send's round trips); if its server went away, the statement fails with a
# disconnect error, the pool replaces every connection older than that, and the caller
# answers UNAVAILABLE -- a client retries with the same request_id.
IDLE_BEFORE_PING = 2.0


def _driver_error_as_dbapi_error(context: sa.engine.ExceptionContext) -> BaseException | None:
    """mysql-connector's C part raises its own error, not a DB-API one, when the server goes
    away during a COMMIT: SQLAlchemy would pass it on raw, and callers that handle database
    failures (UNAVAILABLE, retry) would take it for a bug. Made what it is: an OperationalError
    on a lost connection (the pool then replaces its connections)."""
    original = context.original_exception
    if context.sqlalchemy_exception is not None or not type(original).__module__.startswith(
        "_mysql_connector"
    ):
        return None
    context.is_disconnect = True
    return sa.exc.OperationalError(
        context.statement or "COMMIT", context.parameters or {}, original
    )


def _no_ping_per_cursor(dbapi_connection: Any, _record: Any) -> None:
    """mysql-connector pings the server (`is_connected()`) each time a cursor is made -- a
    round trip per statement. A lost connection shows as the statement's own error instead,
    which SQLAlchemy recognises as a disconnect."""
    dbapi_connection.is_connected = _connected


def _connected() -> bool:
    return True


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _end_open_transaction(dbapi_connection: Any, record: Any, _state: Any) -> None:
    # The driver knows from the server's last reply whether a transaction is open.
    if not getattr(dbapi_connection, "in_transaction", True):
        return
    try:
        dbapi_connection.rollback()
    except Exception as exc:  # the driver's error types differ with and without its C part
        # The connection is lost (the server went away mid-transaction): the pool replaces
        # it, as it would after this error -- without logging the error's traceback, which
        # the caller has already reported in one line.
        if record is not None:
            record.invalidate(e=exc)


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get("checked_in_at")
    if idle_since is None or time.monotonic() - idle_since < IDLE_BEFORE_PING:
        return
    try:
        dbapi_connection.ping(reconnect=False)
    except Exception as exc:  # the driver's error types differ with and without its C part
        # The pool replaces the connection and tries another.
        raise sa.exc.DisconnectionError(f"a pooled connection was stale: {exc}") from exc


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_sqlite_file(path: Path) -> None:
    """Create the database's directory (0700) and file (0600) before SQLite does, if they do
    not exist: every message and password hash is in it, and SQLite gives its -wal and -shm
    files the main file's permissions. Existing ones are left as they are (see
    loose_permissions)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def loose_permissions(paths: Sequence[Path]) -> list[str]:
    """For each existing path that its group or others may read or write, a line saying so
    and how to fix it."""
    found = []
    for path in paths:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            wanted = PRIVATE_DIR if path.is_dir() else PRIVATE_FILE
            found.append(
                f"{path} is open to other users (mode {mode:04o}); it holds messages or"
                f" secrets: chmod {wanted:o} {path}"
            )
    return found


def _warn_if_pure_python_driver() -> None:
    import mysql.connector

    if not mysql.connector.HAVE_CEXT:
        log.warning(
            "mysql-connector-python %s runs without its C extension (often: the system's "
            "OpenSSL is older than the extension needs); every statement costs more CPU",
            mysql.connector.__version__,
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_mysql_database(url: sa.URL) -> None:
    """Create the URL's MySQL database (utf8mb4) if it does not exist; nothing for SQLite."""
    if url.get_backend_name() != "mysql" or not url.database:
        return
    server = sa.create_engine(url.set(database=""), poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            conn.execute(
                sa.text(
                    f"CREATE DATABASE IF NOT EXISTS {quote_identifier(url.database or '')} "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
            )
    finally:
        server.dispose()


def quote_identifier(name: str) -> str:
    """A MySQL identifier (a database name) quoted for a statement: it cannot be a bound
    parameter; it comes from the operator's URL, and is quoted so that any character in it
    stays part of the name."""
    return "`" + name.replace("`", "``") + "`"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: sa.Engine) -> str:
    """Upgrade the database to the newest revision; refuse one at an unknown revision (written
    by a newer version of this code). Returns the head revision."""
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    revision = current_revision(engine)
    if revision is not None:
        try:
            script.get_revision(revision)
        except Exception as exc:  # alembic raises several types for an unknown revision
            raise SchemaError(
                f"database {engine.url.render_as_string(hide_password=True)} is at schema "
                f"revision {revision!r}, which this version does not know (newest known: "
                f"{head!r}); upgrade the software or point --db at another database"
            ) from exc
    if revision != head:
        log.info("upgrading schema from %s to %s", revision, head)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    return head


class UnsafeDurability(Exception):
    """The database server may acknowledge commits it has not written to disk."""


def durability_risks(engine: sa.Engine) -> list[str]:
    """The MySQL server's settings under which it acknowledges a commit before the commit is
    on disk, each with its fix: a replica there would acknowledge sends that a power loss of
    every host erases. None on SQLite (every connection gets synchronous=FULL, above)."""
    if engine.dialect.name != "mysql":
        return []
    with engine.connect() as conn:
        flush, log_bin, sync_binlog = conn.execute(
            sa.text("SELECT @@innodb_flush_log_at_trx_commit, @@log_bin, @@sync_binlog")
        ).one()
    risks = []
    if int(flush) != 1:
        risks.append(
            f"innodb_flush_log_at_trx_commit = {flush} (InnoDB flushes its log about once a "
            "second, not at each commit): set it to 1"
        )
    if int(log_bin) and int(sync_binlog) != 1:
        risks.append(
            f"sync_binlog = {sync_binlog} with binary logging on (the binary log is not "
            "flushed at each commit): set it to 1"
        )
    return risks


def database_unreachable(exc: sa.exc.DBAPIError) -> bool:
    """The database server cannot be reached or does not serve yet: worth waiting for (never
    for SQLite: a file it cannot open stays so)."""
    return exc.connection_invalidated or getattr(exc.orig, "errno", None) in _MYSQL_UNREACHABLE


def database_location(engine: sa.Engine) -> str:
    """Where the database is, for a person: "HOST:PORT/NAME" (MySQL) or the SQLite file."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.host or 'localhost'}:{url.port or 3306}/{url.database or ''}"


def storage_problem(exc: sa.exc.DBAPIError) -> str:
    """One line on what the database said (the driver's own message, without the SQL)."""
    if exc.orig is not None:
        return f"{exc.orig.__class__.__name__}: {exc.orig}".splitlines()[0]
    return str(exc).splitlines()[0]


class StorageOutageLog:
    """Logs a failing database when it starts failing, then at most every `every` seconds while
    it goes on (with how often it failed), and once when it works again -- instead of a
    traceback on every tick of every thread that touches it."""

    def __init__(
        self,
        logger: logging.Logger,
        index: int,
        what: str,
        *,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._index = index
        self._what = what
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._logged_at = 0.0
        self._failures = 0

    def failed(self, exc: sa.exc.DBAPIError) -> None:
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._logged_at < self._every:
                return
            self._logged_at = now
            failures, self._failures = self._failures, 0
        self._logger.warning(
            "replica %d: database unavailable for %s (%d failure(s)): %s",
            self._index,
            self._what,
            failures,
            storage_problem(exc),
        )

    def succeeded(self) -> None:
        if self._failing_since is None:
            return
        with self._lock:
            since, self._failing_since, self._failures = self._failing_since, None, 0
        if since is not None:
            self._logger.warning(
                "replica %d: database works again for %s after %.1fs",
                self._index,
                self._what,
                self._clock() - since,
            )


def storage_error(exc: sa.exc.DBAPIError) -> ChatError:
    """What a client is told when the database refused a write: RESOURCE_EXHAUSTED when it is
    full (retrying will not help until someone frees space), UNAVAILABLE otherwise. The
    driver's own message is kept, never the SQL or its parameters."""
    reason = str(exc.orig).strip() or exc.orig.__class__.__name__
    if _storage_full(exc.orig):
        return ResourceExhausted(
            f"the replica could not store the command (disk full?): {reason}; nothing was applied"
        )
    return Unavailable(
        f"the replica could not store the command: {reason}; nothing was applied, retry shortly"
    )


def _storage_full(error: BaseException | None) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(error, "errno", None) in _MYSQL_STORAGE_FULL
