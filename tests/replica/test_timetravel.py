"""`python -m replica rebuild --until SEQ --into URL`: the projections as they stood at SEQ,
in another database, from the real command line."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

import eventlog
from replica.storage.database import make_engine
from tests.conftest import DatabaseFactory
from tests.inprocess import InProcessReplica, snapshot


def rebuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replica", "rebuild", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rebuild_until_a_seq_writes_the_projections_as_they_stood_then(
    databases: DatabaseFactory,
) -> None:
    source_url = databases.url()
    chat = InProcessReplica.start(databases.engine(source_url)).service
    chat.register("r1", "alice", "password-a")
    chat.register("r2", "bob", "password-b")
    bob = chat.login("r3", "bob", "password-b").session_token
    alice = chat.login("r4", "alice", "password-a").session_token
    chat.send("r5", alice, "bob", "before the deletion")
    chat.send("r6", bob, "alice", "hi alice")
    then = snapshot(databases.engine(source_url))  # what an audit wants back
    chat.delete_account("r7", bob, "password-b")
    chat.send("r8", alice, "alice", "after it")
    assert snapshot(databases.engine(source_url)).tables != then.tables

    into = databases.url()
    done = rebuild("--db", source_url, "--until", str(then.log_end.seq), "--into", into)
    assert done.returncode == 0, done.stderr
    assert f"as of seq {then.log_end.seq}" in done.stdout
    copy = make_engine(into, create_database=False)
    try:
        assert snapshot(copy) == then  # the log up to SEQ and every projection row
    finally:
        copy.dispose()


def test_rebuild_refuses_what_it_cannot_do_in_one_line(databases: DatabaseFactory) -> None:
    source_url = databases.url()
    source = databases.engine(source_url)
    InProcessReplica.start(source).service.register("r1", "alice", "password-a")
    with source.connect() as conn:
        end = eventlog.last_position(conn).seq
    used = databases.url()
    assert rebuild("--db", source_url, "--into", used).returncode == 0  # the whole log
    for args, says in [
        (["--until", str(end + 5), "--into", databases.url()], "past the end of the log"),
        (["--until", "-1", "--into", databases.url()], "0 or more"),
        (["--into", used], "already holds a log"),
        (["--into", source_url], "the replica's own database"),
    ]:
        done = rebuild("--db", source_url, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    # Nothing was half-written by a refusal.
    fresh = make_engine(databases.url())
    with fresh.connect() as conn:
        assert not sa.inspect(conn).has_table("events")
    fresh.dispose()
