"""The bench's databases on one backend: fresh, migrated, copied, and all removed at the end.

SQLite databases are files under the run's work directory; MySQL databases are named
`bench_<tag>_<name>` on the configured server (loopback) and dropped afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

import eventlog
import projections
from replica.storage.database import make_engine, upgrade_schema
from testsupport.databases import drop_mysql_database

BACKENDS = ("sqlite", "mysql")

# Every table a replica's log and projections live in (the alembic version table is made by
# the migration of the destination itself).
STATE_TABLES = (*eventlog.metadata.sorted_tables, *projections.metadata.sorted_tables)


class Databases:
    def __init__(self, backend: str, work_dir: Path, mysql_server_url: str, tag: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        self.backend = backend
        self._dir = work_dir / f"db-{backend}"
        self._server = mysql_server_url.rstrip("/")
        self._tag = tag
        self._urls: list[str] = []
        self._engines: list[sa.Engine] = []

    def url(self, name: str) -> str:
        """The URL of database `name` (not created; a replica creates and migrates its own)."""
        if self.backend == "sqlite":
            self._dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{self._dir / f'{name}.db'}"
        else:
            url = f"{self._server}/bench_{self._tag}_{name}"
        if url not in self._urls:
            self._urls.append(url)
        return url

    def migrated(self, name: str) -> sa.Engine:
        """A fresh database `name` at the newest schema revision (emptied if it existed)."""
        url = self.url(name)
        self.drop(url)
        engine = make_engine(url)
        upgrade_schema(engine)
        self._engines.append(engine)
        return engine

    def reader(self, url: str) -> sa.Engine:
        """An engine on an existing database, closed at cleanup."""
        engine = make_engine(url, create_database=False)
        self._engines.append(engine)
        return engine

    def copy(self, source: sa.Engine, name: str) -> str:
        """Copy the log and projections of `source` into a new database `name`; its URL.
        Nothing may write to `source` meanwhile."""
        url = self.url(name)
        self.drop(url)
        if self.backend == "sqlite":
            with source.connect() as conn:
                # Moves everything out of the write-ahead log, so the main file is the database.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            source.dispose()
            shutil.copyfile(_sqlite_path(str(source.url)), _sqlite_path(url))
            return url
        source_schema = source.url.database
        if not source_schema:
            raise ValueError(f"{source.url} names no database")
        target = make_engine(url)
        try:
            upgrade_schema(target)
            with target.begin() as conn:
                for table in STATE_TABLES:
                    origin = table.to_metadata(sa.MetaData(), schema=source_schema)
                    conn.execute(table.delete())
                    conn.execute(
                        table.insert().from_select([c.name for c in table.c], sa.select(origin))
                    )
        finally:
            target.dispose()
        return url

    def drop(self, url: str) -> None:
        if self.backend == "sqlite":
            path = Path(_sqlite_path(url))
            for suffix in ("", "-wal", "-shm", "-journal"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        else:
            drop_mysql_database(url)

    def cleanup(self) -> None:
        for engine in self._engines:
            engine.dispose()
        self._engines.clear()
        for url in self._urls:
            self.drop(url)
        self._urls.clear()
        if self.backend == "sqlite":
            shutil.rmtree(self._dir, ignore_errors=True)


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    if not database:
        raise ValueError(f"{url} names no SQLite file")
    return database


def mysql_version(server_url: str) -> str:
    engine = sa.create_engine(server_url.rstrip("/") + "/", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.select(sa.func.version())).scalar_one())
    finally:
        engine.dispose()
