"""A database that refuses a write (a full disk) is a clear error for the client, appends and
applies nothing, acknowledges nothing, and the replica serves again once space is back.

A full disk is simulated with SQLite's `PRAGMA max_page_count` (set at every connection checkout
to the file's current size): the database file cannot grow, and writes that need a new page fail
with SQLITE_FULL, "database or disk is full", exactly as on a full disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from protos import chat_pb2, chat_pb2_grpc
from replica.errors import ResourceExhausted, Unavailable
from replica.storage.database import make_engine, storage_error, upgrade_schema
from tests.inprocess import InProcessReplica, serve_grpc, snapshot

PASSWORD = "correct horse"
DISK_FULL = (
    "the replica could not store the command (disk full?): database or disk is full; "
    "nothing was applied"
)
NO_LIMIT = 4294967294  # SQLite's largest max_page_count


class PageLimit:
    """Applies a max_page_count to every connection as it is checked out of the pool."""

    def __init__(self) -> None:
        self.pages = NO_LIMIT

    def apply(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        # PRAGMA values cannot be bound parameters; this one is an int of the test's own.
        cursor.execute(f"PRAGMA max_page_count = {int(self.pages)}")
        cursor.close()

    def freeze(self) -> None:
        """No more pages than the file has now (SQLite clamps a lower limit to the size)."""
        self.pages = 1

    def lift(self) -> None:
        self.pages = NO_LIMIT


def rpc_error(call: Any) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_a_full_disk_refuses_writes_clearly_and_applies_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    upgrade_schema(engine)
    limit = PageLimit()
    sa.event.listen(engine, "checkout", limit.apply)
    replica = InProcessReplica.start(engine)
    try:
        with serve_grpc(replica) as channel:
            stub: Any = chat_pb2_grpc.ChatStub(channel)
            for name in ("alice", "bob"):
                stub.Register(
                    chat_pb2.RegisterRequest(
                        request_id=f"r-{name}", username=name, password=PASSWORD
                    )
                )
            token = stub.Login(
                chat_pb2.LoginRequest(request_id="l-alice", username="alice", password=PASSWORD)
            ).session_token

            limit.freeze()
            # Sends fill the free space left in the file's pages; then a page must be added.
            sent: list[int] = []
            for n in range(1000):
                request = chat_pb2.SendRequest(
                    request_id=f"s-{n}", session_token=token, recipient="bob", body="x" * 3000
                )
                before = snapshot(engine)
                try:
                    sent.append(stub.Send(request, timeout=10).message_id)
                except grpc.RpcError as exc:
                    error: Any = exc
                    break
            else:
                pytest.fail("the database never filled up")

            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == DISK_FULL
            assert snapshot(engine) == before, "a refused write appended or applied something"
            assert replica.commits.committed_seq == before.log_end.seq
            # Another command that needs the space is refused alike; reads are still served.
            other = chat_pb2.SendRequest(
                request_id="s-other", session_token=token, recipient="alice", body="y" * 3000
            )
            error = rpc_error(lambda: stub.Send(other, timeout=10))
            assert (error.code(), error.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                DISK_FULL,
            )
            history = stub.History(
                chat_pb2.HistoryRequest(session_token=token, other_user="bob", page_size=1000)
            )
            assert [m.message_id for m in history.messages] == sent
            assert snapshot(engine) == before

            limit.lift()
            # The refused request was not stored: retried with the same id, it is written now.
            assert stub.Send(request, timeout=10).message_id == before.log_end.seq + 1
            assert stub.Send(other, timeout=10).message_id == before.log_end.seq + 2
    finally:
        engine.dispose()


class DriverError(Exception):
    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@pytest.mark.parametrize(
    ("driver_error", "kind", "message"),
    [
        (
            DriverError("The table 'events' is full", errno=1114),
            ResourceExhausted,
            "the replica could not store the command (disk full?): The table 'events' is full; "
            "nothing was applied",
        ),
        (
            sqlite3.OperationalError("disk I/O error"),
            Unavailable,
            "the replica could not store the command: disk I/O error; nothing was applied, "
            "retry shortly",
        ),
        (
            DriverError("Lost connection to MySQL server during query", errno=2013),
            Unavailable,
            "the replica could not store the command: Lost connection to MySQL server during "
            "query; nothing was applied, retry shortly",
        ),
    ],
)
def test_storage_errors_say_what_happened_without_the_sql(
    driver_error: Exception, kind: type[Exception], message: str
) -> None:
    wrapped = sa.exc.OperationalError(
        "INSERT INTO events (payload) VALUES (?)", ('{"password_hash": "secret"}',), driver_error
    )
    error = storage_error(wrapped)
    assert type(error) is kind
    assert str(error) == message
