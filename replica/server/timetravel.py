"""python -m replica rebuild --until SEQ --into URL [--index N] [--config F] [--db URL]

Writes the log up to SEQ, and the projections (accounts, sessions, inboxes) exactly as they
stood once that event was applied, into another, empty database: for audits ("what did the
inbox hold before that deletion?") and debugging, with any SQL client. The replica's own
database is only read, so this may run beside the live replica. The copy is not a replica:
it keeps no epoch, and a replica pointed at it would start as a lagging member of nothing."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

import eventlog
import projections
from replica.config import ConfigError, default_db_url, load_cluster_config
from replica.storage.database import SchemaError, make_engine, upgrade_schema

BATCH = 5000

log = logging.getLogger("replica.rebuild")


class RebuildError(Exception):
    """Something the operator must change; the message says what."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m replica rebuild",
        description="Write the log up to a seq, and the projections as they stood at that seq,"
        " into another (empty) database.",
    )
    parser.add_argument(
        "--until",
        type=int,
        default=None,
        metavar="SEQ",
        help="the last event to apply (default: the end of the log)",
    )
    parser.add_argument(
        "--into", required=True, metavar="URL", help="SQLAlchemy URL of an empty database"
    )
    parser.add_argument(
        "--index",
        type=int,
        default=int(os.environ.get("CHAT_INDEX", "0")),
        help="the replica whose database is read (as for `python -m replica`)",
    )
    parser.add_argument("--config", default=os.environ.get("CHAT_CONFIG"), help="cluster TOML file")
    parser.add_argument(
        "--db", default=None, help="SQLAlchemy URL of the database to read (overrides --index)"
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CHAT_DATA_DIR", "data"),
        help="where the replica's SQLite file is (default: data)",
    )
    return parser.parse_args(argv)


def source_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    cluster = load_cluster_config(args.config)
    me = cluster.replica(args.index)
    return (
        os.environ.get(f"CHAT_DB_URL_{args.index}")
        or me.db
        or default_db_url(args.index, Path(args.data_dir))
    )


def rebuild_into(source: sa.Engine, target: sa.Engine, until: int | None) -> int:
    """Copy the log up to `until` into `target` and apply it there; the seq reached."""
    with source.connect() as conn:
        end = eventlog.last_position(conn).seq
    if until is None:
        until = end
    if until < 0:
        raise RebuildError(f"--until must be 0 or more, not {until}")
    if until > end:
        raise RebuildError(f"--until {until} is past the end of the log (seq {end})")
    upgrade_schema(target)
    with target.connect() as conn:
        held = eventlog.last_position(conn).seq
        applied = projections.last_applied_seq(conn)
    if held or applied:
        raise RebuildError(
            f"{target.url.render_as_string(hide_password=True)} already holds a log (up to seq"
            f" {held}); give an empty database"
        )
    position = 0
    started = noted = time.monotonic()
    while position < until:
        with source.connect() as src:
            batch = eventlog.read_events(src, position, min(BATCH, until - position))
        if not batch:
            raise RebuildError(f"the log ends at seq {position}, before {until}")
        with target.begin() as dst:
            eventlog.append_events(dst, batch)
            position = projections.apply_events(dst, batch)
        if time.monotonic() - noted >= 2.0:
            noted = time.monotonic()
            log.info("applied %d of %d events", position, until)
    took = time.monotonic() - started
    log.info("applied %d events in %.1fs", position, took)
    return position


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        url = source_url(args)
        if make_url(url) == make_url(args.into):
            raise RebuildError("--into names the replica's own database; give another one")
        source = make_engine(url, create_database=False)
        target = make_engine(args.into)
        try:
            with source.connect() as conn:
                if not sa.inspect(conn).has_table(eventlog.events.name):
                    shown = make_url(url).render_as_string(hide_password=True)
                    raise RebuildError(f"{shown} holds no event log")
            seq = rebuild_into(source, target, args.until)
        finally:
            source.dispose()
            target.dispose()
    except (RebuildError, ConfigError, SchemaError, OSError) as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as exc:
        print(f"rebuild: database error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    shown = make_url(args.into).render_as_string(hide_password=True)
    print(f"wrote the log and the projections as of seq {seq} into {shown}")
    return 0
