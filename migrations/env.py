"""Alembic environment. The database comes from, in order: a connection handed over by the
replica (config.attributes["connection"]), `-x db=URL`, CHAT_DB_URL, alembic.ini's url."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool

import eventlog
import projections

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    # Standalone (the alembic command): log as alembic.ini says. A replica logs its own way.
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = [eventlog.metadata, projections.metadata]


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("CHAT_DB_URL")
    return url or config.get_main_option("sqlalchemy.url") or ""


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
