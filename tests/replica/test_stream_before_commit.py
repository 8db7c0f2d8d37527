"""The writer hands a batch to the replication streams once it is decided, before its own
commit, and says so when that commit then fails: the core (replica/protocol/) acknowledges
nothing before the commit, and deposes a primary whose streamed batch did not commit
(test_core.py and the model check those rules; this checks that the writer keeps its side)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event
from replica.errors import NotFound, Unavailable
from tests.inprocess import InProcessReplica


class Streams:
    """What the writer told the streams, and what the database held at the time."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self.written_seqs: list[list[int]] = []
        self.durable_when_written: list[int] = []
        self.failed: list[str] = []

    def written(self, events: list[Event]) -> None:
        self.written_seqs.append([e.seq for e in events])
        with self._engine.connect() as conn:  # another connection: what is committed
            self.durable_when_written.append(eventlog.last_position(conn).seq)

    def write_failed(self, epoch: int, reason: str) -> None:
        self.failed.append(f"epoch {epoch}: {reason}")

    def appended(self, events: list[Event]) -> None:
        pass


def start(engine: sa.Engine) -> tuple[InProcessReplica, Streams, str]:
    replica = InProcessReplica.start(engine)
    replica.service.register("r-alice", "alice", "pw")
    token = replica.service.login("r-login", "alice", "pw").session_token
    streams = Streams(engine)
    replica.replication.tap = streams
    replica.replication.reelect = False  # the test moves to a new tenure itself
    return replica, streams, token


def last_seq(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return eventlog.last_position(conn).seq


def test_a_batch_is_streamed_before_it_is_committed(engine: sa.Engine) -> None:
    replica, streams, token = start(engine)
    before = last_seq(engine)
    seq = replica.service.send("s-1", token, "alice", "hello")
    assert streams.written_seqs == [[seq]] and seq == before + 1
    assert streams.durable_when_written == [before], "streamed only after its commit"
    assert streams.failed == [] and last_seq(engine) == seq


def test_a_streamed_batch_whose_commit_fails_is_reported_and_not_acknowledged(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica, streams, token = start(engine)
    before = last_seq(engine)

    def refuse(*_args: object, **_kw: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    # After the log's INSERT (the batch is streamed then), before the commit.
    monkeypatch.setattr(projections.Applier, "finish", refuse)
    with pytest.raises(Unavailable):
        replica.service.send("s-1", token, "alice", "hello")
    assert streams.written_seqs == [[before + 1]]
    assert len(streams.failed) == 1 and "connection lost" in streams.failed[0]
    assert last_seq(engine) == before, "nothing of the batch is stored"
    monkeypatch.undo()
    # The secondaries may hold the failed batch: nothing more is written in its epoch (the
    # same seqs would carry other events), even before the core has stepped down.
    with pytest.raises(Unavailable, match="writes nothing more in epoch"):
        replica.service.send("s-2", token, "alice", "hello again")
    assert last_seq(engine) == before and len(streams.written_seqs) == 1
    # A new tenure (the core stepped down; an election chose a new epoch): the writer trusts
    # nothing it held, so the retry is decided afresh and stored once.
    snap = replica.role.snapshot
    replica.role.set(snap.role, snap.epoch + 1, 0)
    seq = replica.service.send("s-1", token, "alice", "hello")
    assert seq == before + 1 and last_seq(engine) == seq
    assert len(streams.failed) == 1 and streams.written_seqs[-1] == [seq]


def test_a_batch_that_decided_nothing_is_neither_streamed_nor_reported(
    engine: sa.Engine,
) -> None:
    replica, streams, token = start(engine)
    with pytest.raises(NotFound):
        replica.service.send("s-1", token, "nobody", "hello")
    assert streams.written_seqs == [] and streams.failed == []


def test_a_batch_whose_log_insert_fails_is_not_streamed_and_fences_nothing(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's INSERT runs before the batch is streamed (a logged request id is refused
    there): a failure of it leaves the secondaries unsent, so the epoch stays writable."""
    replica, streams, token = start(engine)
    before = last_seq(engine)

    def refuse(*_args: object, **_kw: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(eventlog, "append_events", refuse)
    with pytest.raises(Unavailable):
        replica.service.send("s-1", token, "alice", "hello")
    assert streams.written_seqs == [] and streams.failed == []
    monkeypatch.undo()
    seq = replica.service.send("s-1", token, "alice", "hello")
    assert seq == before + 1 and streams.written_seqs == [[seq]]
