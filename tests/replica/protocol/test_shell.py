"""The shell's real ports around a running executor, over a real SQLite database, with the
other replicas faked: storage (what must be durable is checked in the database, and nothing
is reported done before its COMMIT returned), the primary's streams, the secondary's stream.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import eventlog
from eventlog import Position
from projections.events import MemberAdded, MemberRecord, MemberRemoved, encode
from protos import replication_pb2 as rpb
from replica.config import ReplicaAddress
from replica.errors import ChatError
from replica.protocol import ProtocolConfig, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.membership import Membership
from replica.replication.addresses import AddressBook
from replica.replication.executor import Executor
from replica.replication.ports import Envelope, Inbox, Persisted, ProbeRound, sendable
from replica.replication.primary import PrimaryStreams, ServedStream
from replica.replication.secondary import FollowStreams
from replica.replication.storage_worker import DatabaseStorage
from replica.server.node import MembershipFirst
from replica.storage.commit import CommitTracker
from replica.storage.database import make_engine, upgrade_schema
from replica.storage.role import RoleState
from replica.storage.writer import LogWriter, NewEvent
from testsupport.harness import wait_until

PROTOCOL = ProtocolConfig(0, (0, 1, 2))


class FakePeers:
    """The executor's peers port: records the calls; the test answers them."""

    def __init__(self, inbox: Inbox, engine: sa.Engine) -> None:
        self._inbox = inbox
        self._engine = engine
        self.rounds: list[fx.ProbeAll] = []
        self.votes: list[tuple[fx.RequestVotes, int]] = []
        self.streams: queue.SimpleQueue[tuple[Iterator[rpb.SecondaryMessage], ScriptedCall]] = (
            queue.SimpleQueue()
        )
        self.metadata = ()
        self.renewed: list[int] = []  # channels renewed (a stream to a new primary)

    def probe_all(self, effect: fx.ProbeAll) -> None:
        self.rounds.append(effect)

    def renew(self, index: int) -> None:
        self.renewed.append(index)

    def request_votes(self, effect: fx.RequestVotes) -> None:
        with self._engine.connect() as conn:
            self.votes.append((effect, eventlog.current_epoch(conn)))

    def answer_probes(self, *views: ins.PeerView | None) -> None:
        outcomes = tuple(
            ins.ProbeOutcome(i, view, refused=view is None, process_gone=view is None)
            for i, view in zip((1, 2), views, strict=True)
        )
        self._inbox.put(ProbeRound(outcomes))

    def stub(self, index: int) -> Any:
        peers = self

        class Stub:
            def Replicate(self, requests: Iterator[rpb.SecondaryMessage], metadata: Any) -> Any:
                call = ScriptedCall()
                peers.streams.put((requests, call))
                return call

        return Stub()


class ScriptedCall:
    """The response side of a Replicate call, fed by the test; cancel() ends it."""

    _END = object()

    def __init__(self) -> None:
        self._messages: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.cancelled = threading.Event()

    def send(self, message: rpb.PrimaryMessage) -> None:
        self._messages.put(message)

    def cancel(self) -> bool:
        self.cancelled.set()
        self._messages.put(self._END)
        return True

    def __iter__(self) -> Iterator[rpb.PrimaryMessage]:
        while True:
            item = self._messages.get()
            if item is self._END:
                return
            assert isinstance(item, rpb.PrimaryMessage)
            yield item


def candidate(index: int, seq: int = 0, epoch: int = 0) -> ins.PeerView:
    return ins.PeerView(
        index, Role.CANDIDATE, epoch, Position(epoch if seq else 0, seq), False, False, False
    )


class Replica:
    """Replica 0 with its real executor, storage and streams over SQLite; peers faked."""

    def __init__(self, tmp_path: Path) -> None:
        self.engine = make_engine(f"sqlite:///{tmp_path}/replica-0.db")
        upgrade_schema(self.engine)
        self.inbox = Inbox()
        self.role = RoleState(0)
        self.commits = CommitTracker()
        self.streams = PrimaryStreams(self.engine, self.inbox)
        self.writer = LogWriter(self.engine, self.role, self.commits, feed=self.streams)
        self.storage = DatabaseStorage(
            0, self.engine, self.writer, self.inbox, initial_voters=PROTOCOL.members
        )
        self.peers = FakePeers(self.inbox, self.engine)
        self.follow = FollowStreams(0, self.peers, self.storage, self.inbox)  # type: ignore[arg-type]
        self.executor = Executor(
            PROTOCOL,
            0,
            inbox=self.inbox,
            storage=self.storage,
            peers=self.peers,  # type: ignore[arg-type]
            follow=self.follow,
            role=self.role,
            commits=self.commits,
            clock=time.monotonic,
        )
        self.storage.start()
        self.executor.start()

    def stop(self) -> None:
        self.executor.stop()
        self.follow.stop()
        self.streams.stop()
        self.storage.stop()
        self.engine.dispose()

    def elect(self) -> int:
        wait_until(lambda: self.peers.rounds, 5, "no probe round")
        self.peers.answer_probes(candidate(1), candidate(2))
        wait_until(lambda: self.peers.votes, 5, "no vote asked for")
        effect, _ = self.peers.votes[-1]
        for voter in effect.voters:
            self.inbox.submit(ins.VoteReplied(voter, effect.epoch, True))
        wait_until(lambda: self.role.snapshot.role is Role.PRIMARY, 5, "not primary")
        return effect.epoch

    def epoch_recorded(self) -> int:
        with self.engine.connect() as conn:
            return eventlog.current_epoch(conn)

    def log(self) -> list[eventlog.Event]:
        with self.engine.connect() as conn:
            return eventlog.read_events(conn, 0)

    def status(self) -> fx.ReplicaStatus:
        return self.executor.status().result(5)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path)
    yield r
    r.stop()


# -- elections and votes ------------------------------------------------------------------


def test_an_election_records_the_epoch_before_asking_and_starts_it_in_the_log(
    replica: Replica,
) -> None:
    epoch = replica.elect()
    effect, recorded = replica.peers.votes[-1]
    assert effect.voters == (1, 2) and epoch == 1
    assert recorded == 1, "votes were asked for before the epoch was durable"
    (started,) = replica.log()
    assert (started.type, started.epoch, started.seq) == ("epoch_started", 1, 1)
    snap = replica.role.snapshot
    assert (snap.role, snap.epoch, snap.primary_index) == (Role.PRIMARY, 1, 0)
    wait_until(lambda: replica.peers.rounds[-1].announce, 5, "a new primary announces itself")


def test_the_primary_named_goes_silent_when_the_stream_from_it_ends_until_heard_again(
    replica: Replica,
) -> None:
    """What the executor tells RoleState for the servicer's hold (ChatServicer._await_primary):
    a secondary whose stream from its primary ended does not vouch that it is there."""
    wait_until(lambda: replica.peers.rounds, 5, "the executor did not start")
    replica.role.set(Role.SECONDARY, 3, 1)  # (as SetRole would: following replica 1)
    assert replica.role.primary_known()
    replica.inbox.submit(ins.ReplicationStreamEnded(41))
    wait_until(lambda: not replica.role.primary_known(), 5, "the named primary stayed known")
    replica.inbox.submit(ins.HeartbeatReceived(42, 3, 0, False))
    wait_until(replica.role.primary_known, 5, "a heartbeat did not make it known again")


def test_a_vote_is_on_disk_when_it_is_granted(replica: Replica) -> None:
    answer = replica.executor.vote_requested(2, 5, Position(0, 0)).result(5)
    (reply,) = answer.replies
    assert reply == fx.ReplyVote(True, 5)
    assert replica.epoch_recorded() == 5
    (again,) = replica.executor.vote_requested(1, 5, Position(0, 0)).result(5).replies
    assert again == fx.ReplyVote(False, 5, "epoch 5 is not newer than 5")


# -- storage ------------------------------------------------------------------------------


class FailingCommits:
    """Every COMMIT on the engine raises, as a connection lost on COMMIT does."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        sa.event.listen(self.engine, "commit", self._fail)

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "commit", self._fail)

    @staticmethod
    def _fail(_conn: sa.Connection) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("Lost connection during COMMIT"))


def standalone_storage(tmp_path: Path) -> tuple[DatabaseStorage, Inbox, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/storage.db")
    upgrade_schema(engine)
    inbox = Inbox()
    writer = LogWriter(engine, RoleState(0), CommitTracker())
    return DatabaseStorage(0, engine, writer, inbox, initial_voters=(0, 1, 2)), inbox, engine


def a_batch(*seqs: int, epoch: int = 4) -> rpb.Batch:
    return rpb.Batch(
        events=[rpb.Event(seq=s, epoch=epoch, type="epoch_started", payload="{}") for s in seqs],
        committed_seq=0,
        in_sync=True,
    )


def test_a_batch_is_reported_stored_only_once_its_commit_returned(tmp_path: Path) -> None:
    storage, inbox, engine = standalone_storage(tmp_path)
    with FailingCommits(engine):
        storage.store_batch(7, a_batch(1, 2))
        storage.run_pending()
    reported = inbox.drain()
    assert [type(r.input) for r in reported if isinstance(r, Envelope)] == [ins.StoreFailed], (
        reported
    )
    with engine.connect() as conn:
        assert eventlog.last_position(conn).seq == 0
    storage.store_batch(8, a_batch(1, 2))  # (the stream ended with the failure: a new one)
    storage.run_pending()
    (stored,) = inbox.drain()
    assert isinstance(stored, Envelope) and stored.input == ins.BatchStored(
        8, Position(4, 2), 0, True, 0
    )


def test_after_a_failed_store_the_stream_s_later_batches_are_not_stored(tmp_path: Path) -> None:
    """Storage works in order while the stream goes on: batches queued behind one that failed
    would follow a gap. They are reported failed too (the core ended the stream with the
    first), and a new stream's batches are stored again."""
    storage, inbox, engine = standalone_storage(tmp_path)
    with FailingCommits(engine):
        storage.store_batch(7, a_batch(1, 2))
        storage.run_pending()
    storage.store_batch(7, a_batch(3))
    storage.run_pending()
    reported = [r.input for r in inbox.drain() if isinstance(r, Envelope)]
    assert [type(r) for r in reported] == [ins.StoreFailed, ins.StoreFailed]
    storage.store_batch(8, a_batch(1, 2, 3))
    storage.run_pending()
    (stored,) = inbox.drain()
    assert isinstance(stored, Envelope) and stored.input == ins.BatchStored(
        8, Position(4, 3), 0, True, 0
    )


def membership_batch(after: int, event: object, epoch: int = 4) -> rpb.Batch:
    """Events after seq `after`: an epoch start, then the membership event."""
    kind, payload = encode(event)  # type: ignore[arg-type]
    return rpb.Batch(
        events=[
            rpb.Event(seq=after + 1, epoch=epoch, type="epoch_started", payload="{}"),
            rpb.Event(seq=after + 2, epoch=epoch, type=kind, payload=json.dumps(payload)),
        ],
        committed_seq=0,
        in_sync=True,
    )


def test_the_executor_hears_of_a_stored_membership_change_before_the_batch_is_acked(
    tmp_path: Path,
) -> None:
    """The latest membership event in the log is the membership in force, committed or not:
    told to the core before BatchStored (so a removed replica's ack already says it is out),
    and again when a truncation cuts the change off."""
    storage, inbox, _ = standalone_storage(tmp_path)
    assert storage.read_membership() == Membership.initial((0, 1, 2))
    members = (
        MemberRecord(index=0, address="h0:1", voter=True),
        MemberRecord(index=1, address="h1:1", voter=True),
    )
    storage.store_batch(
        7, membership_batch(0, MemberRemoved(index=2, members=members, removed=(2,)))
    )
    storage.run_pending()
    told, stored = [r.input for r in inbox.drain() if isinstance(r, Envelope)]
    assert told == ins.MembershipChanged(
        Membership(frozenset({0, 1}), frozenset(), frozenset({2}), 2, frozenset({0, 1, 2}))
    )
    assert isinstance(stored, ins.BatchStored) and stored.position == Position(4, 2)
    storage.store_batch(7, a_batch(3))
    storage.run_pending()
    assert [type(r.input) for r in inbox.drain() if isinstance(r, Envelope)] == [ins.BatchStored]
    storage.persist((fx.Truncate(1),))
    storage.run_pending()
    told, done = inbox.drain()
    assert isinstance(told, Envelope) and told.input == ins.MembershipChanged(
        Membership.initial((0, 1, 2))
    )
    assert done == Persisted()


class RecordingStreams:
    """The writer's streams, noting what the executor's inbox held when they were told."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.inbox_when_written: list[object] = []

    def written(self, events: list[eventlog.Event]) -> None:
        self.inbox_when_written = [r.input for r in self.inbox.drain() if isinstance(r, Envelope)]

    def write_failed(self, epoch: int, reason: str) -> None:
        pass

    def appended(self, events: list[eventlog.Event]) -> None:
        pass


def test_a_membership_written_is_told_first_and_read_again_when_its_commit_fails(
    tmp_path: Path,
) -> None:
    """The primary's own membership event: in force from the moment it is written (the core
    hears before the events are streamed, the address book learns the new member); if its
    commit then fails -- perhaps in doubt -- the next storage job reads the log again, before
    any read an election waits on, and the core hears what the log really says."""
    engine = make_engine(f"sqlite:///{tmp_path}/storage.db")
    upgrade_schema(engine)
    inbox = Inbox()
    role = RoleState(0)
    role.set(Role.PRIMARY, 1, 0)
    streams = RecordingStreams(inbox)
    feed = MembershipFirst(streams)  # type: ignore[arg-type]
    writer = LogWriter(engine, role, CommitTracker(), feed=feed)
    book = AddressBook([ReplicaAddress(i, f"h{i}:1") for i in range(3)])
    storage = DatabaseStorage(0, engine, writer, inbox, initial_voters=(0, 1, 2), addresses=book)
    feed.storage = storage
    storage.read_membership()
    members = tuple(MemberRecord(index=i, address=f"h{i}:1", voter=True) for i in range(3))
    learner = MemberRecord(index=3, address="h3:1", voter=False)
    added = MemberAdded(index=3, address="h3:1", members=(*members, learner))
    with FailingCommits(engine), pytest.raises(ChatError):
        writer.execute("r1", lambda conn: NewEvent(*encode(added)), reads_inboxes=False)
    written = Membership(frozenset({0, 1, 2}), frozenset({3}), frozenset(), 1, frozenset({0, 1, 2}))
    assert streams.inbox_when_written == [ins.MembershipChanged(written)]
    found = book.get(3)
    assert found is not None and found.address == "h3:1"
    read: list[Position] = []
    storage.read(lambda reader: read.append(reader.last_position()), lambda reason: None)
    storage.run_pending()
    told = [r.input for r in inbox.drain() if isinstance(r, Envelope)]
    assert ins.MembershipChanged(Membership.initial((0, 1, 2))) in told
    assert read == [Position(0, 0)]


def test_a_durable_write_whose_commit_fails_is_reported_failed(tmp_path: Path) -> None:
    storage, inbox, engine = standalone_storage(tmp_path)
    with FailingCommits(engine):
        storage.persist((fx.PersistEpoch(9),))
        storage.run_pending()
    (reported,) = inbox.drain()
    assert isinstance(reported, Persisted) and reported.failure is not None
    storage.persist((fx.PersistEpoch(9),))
    storage.run_pending()
    assert inbox.drain() == [Persisted()]
    with engine.connect() as conn:
        assert eventlog.current_epoch(conn) == 9


# -- the primary's streams ----------------------------------------------------------------


class FakeContext:
    def __init__(self) -> None:
        self.active = True
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.RpcError(details)


def hello(index: int, epoch: int, seq: int = 0, last_epoch: int = 0) -> rpb.SecondaryMessage:
    return rpb.SecondaryMessage(
        hello=rpb.Hello(
            secondary_index=index,
            secondary_epoch=epoch,
            position=rpb.LogPosition(epoch=last_epoch, seq=seq),
        )
    )


def ack(seq: int, epoch: int, in_sync: bool) -> rpb.SecondaryMessage:
    return rpb.SecondaryMessage(
        ack=rpb.Ack(position=rpb.LogPosition(epoch=epoch, seq=seq), in_sync=in_sync)
    )


def test_a_stream_starts_with_divergence_then_sends_what_the_secondary_lacks(
    replica: Replica,
) -> None:
    epoch = replica.elect()
    requests: queue.SimpleQueue[rpb.SecondaryMessage] = queue.SimpleQueue()
    requests.put(hello(1, epoch))
    context = FakeContext()

    def incoming() -> Iterator[rpb.SecondaryMessage]:
        while context.active:
            yield requests.get()

    stream = replica.streams.serve(incoming(), context)  # type: ignore[arg-type]
    first = next(stream)
    assert first.primary_epoch == epoch
    assert first.divergence.primary_end.seq == 0
    requests.put(ack(0, 0, in_sync=True))  # a voter: in sync from the start
    batch = next(stream)
    assert [e.seq for e in batch.batch.events] == [1]
    assert batch.batch.in_sync
    assert replica.commits.committed_seq == 0, "committed before the in-sync voter acked"
    requests.put(ack(1, epoch, in_sync=True))
    wait_until(lambda: replica.status().secondaries[0].acked_seq == 1, 5, "no ack")
    assert replica.commits.committed_seq == 0, "committed without voter 2, in sync too"
    context.active = False
    requests.put(ack(1, epoch, in_sync=True))


def test_a_stream_whose_call_ends_before_its_hello_is_answered_is_forgotten() -> None:
    """The core answers a Hello by giving the stream an id; if the call is already over by
    then, the core hears that it is gone (it would otherwise keep it as pending forever)."""
    inbox = Inbox()
    stream = ServedStream(1, inbox)
    stream.close()
    assert inbox.drain() == []
    stream.divergence(fx.SendDivergence(1, 42, 3, 0))
    (gone,) = inbox.drain()
    assert isinstance(gone, Envelope) and gone.input == ins.SecondaryDisconnected(1, 42)


def test_a_batch_is_sent_only_as_the_core_decided_it() -> None:
    """Read when its turn comes, a batch must hold every seq decided, none of a newer epoch
    than the stream's: this replica's log may have moved on (it truncated and follows)."""
    effect = fx.SendEvents(1, 7, 4, 2, 4, 0, True)
    assert sendable(effect, [Position(4, 3), Position(3, 4)])
    assert not sendable(effect, [Position(4, 3)]), "one missing"
    assert not sendable(effect, [Position(4, 3), Position(6, 4)]), "a newer epoch's"


def test_a_hello_from_a_newer_epoch_deposes_the_primary(replica: Replica) -> None:
    epoch = replica.elect()
    context = FakeContext()
    stream = replica.streams.serve(iter([hello(2, epoch + 4)]), context)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError):
        next(stream)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.FAILED_PRECONDITION
    wait_until(lambda: replica.role.snapshot.role is not Role.PRIMARY, 5, "still primary")
    assert replica.epoch_recorded() == epoch + 4


# -- the secondary's stream ---------------------------------------------------------------


def primary_message(epoch: int, **kind: Any) -> rpb.PrimaryMessage:
    return rpb.PrimaryMessage(primary_epoch=epoch, **kind)


def test_the_secondary_acks_only_what_it_stored(replica: Replica) -> None:
    replica.executor.probe(ins.ProbeReceived(1, 4, True)).result(5)
    assert replica.epoch_recorded() == 4 and replica.role.snapshot.primary_index == 1
    requests, call = replica.peers.streams.get(timeout=5)
    said = iter(requests)
    first = next(said)
    assert first.hello.secondary_epoch == 4 and first.hello.position.seq == 0
    call.send(primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition())))
    assert next(said).ack.position.seq == 0
    call.send(primary_message(4, batch=a_batch(1, 2)))
    acked = next(said).ack
    stored = [e.seq for e in replica.log()]
    assert acked.position.seq == 2 and stored == [1, 2], "acked what it had not stored"
    assert acked.in_sync
    # Once the primary has been silent for the peer timeout, a vote in epoch 5 ends the
    # stream; a stream of the deposed primary's epoch 4 is then refused (fencing).

    def granted() -> bool:
        (vote,) = replica.executor.vote_requested(2, 5, Position(4, 2)).result(5).replies
        return isinstance(vote, fx.ReplyVote) and vote.granted

    wait_until(granted, 5, "the vote was never granted")
    assert call.cancelled.wait(5), "the vote did not end the stream to the old primary"
    # (Streams it reopened to the silent primary in epoch 4 while the vote was refused, before
    # the peer timeout passed, are skipped: the one opened after the vote is in epoch 5.)
    deadline = time.monotonic() + 5
    while True:
        requests, call = replica.peers.streams.get(timeout=max(0.01, deadline - time.monotonic()))
        said = iter(requests)
        epoch = next(said).hello.secondary_epoch
        if epoch != 4:
            break
    assert epoch == 5
    call.send(
        primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=4, seq=2)))
    )
    assert call.cancelled.wait(5), "a stream of an older epoch was accepted"
    assert [e.seq for e in replica.log()] == [1, 2]


def events_of_epochs(engine: sa.Engine, *epochs: int) -> None:
    with engine.begin() as conn:
        eventlog.append_events(
            conn,
            [
                eventlog.Event(seq, epoch, "epoch_started", {}, None, dt.datetime(2030, 1, 1))
                for seq, epoch in enumerate(epochs, 1)
            ],
        )


def test_the_secondary_truncates_a_divergent_tail_before_acking(replica: Replica) -> None:
    """Its log holds epoch 3 at seq 1 and epoch 5 after; the primary's holds epoch 3 up to
    seq 2. Seqs alone agree up to 2; the epochs only up to 1."""
    events_of_epochs(replica.engine, 3, 5, 5)
    replica.executor.probe(ins.ProbeReceived(1, 7, True)).result(5)
    requests, call = replica.peers.streams.get(timeout=5)
    said = iter(requests)
    assert next(said).hello.position.seq == 3
    # The primary's last position with epoch <= 5 is (3, 2).
    call.send(
        primary_message(7, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=3, seq=2)))
    )
    again = next(said)
    assert again.hello.position.seq == 1, "kept an event of epoch 5 where the primary has 3"
    assert [(e.seq, e.epoch) for e in replica.log()] == [(1, 3)]
    call.send(
        primary_message(7, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=3, seq=1)))
    )
    assert next(said).ack.position.seq == 1


def test_a_stream_to_a_new_primary_goes_over_a_renewed_channel(replica: Replica) -> None:
    """A secondary whose stream is alive probes no one, so its channel to a replica that went
    down and came back may sit in gRPC's reconnect back-off: the first stream to each new
    primary asks for a fresh channel. A stream reopened to the same primary does not (its
    channel just carried the last one)."""
    replica.executor.probe(ins.ProbeReceived(1, 4, True)).result(5)
    requests, call = replica.peers.streams.get(timeout=5)
    assert next(iter(requests)).hello.secondary_epoch == 4
    assert replica.peers.renewed == [1]
    call.cancel()  # the stream ends (the primary's call ended); the same primary again
    requests, call = replica.peers.streams.get(timeout=5)
    assert next(iter(requests)).hello.secondary_epoch == 4
    assert replica.peers.renewed == [1], "a stream to the same primary renewed its channel"
    replica.executor.probe(ins.ProbeReceived(2, 5, True)).result(5)
    wait_until(lambda: call.cancelled.is_set(), 5, "the stream to the old primary went on")
    deadline = time.monotonic() + 5
    while True:  # (streams reopened to 1 before the probe from 2 arrived are skipped)
        requests, call = replica.peers.streams.get(timeout=max(0.01, deadline - time.monotonic()))
        if next(iter(requests)).hello.secondary_epoch == 5:
            break
    assert replica.peers.renewed == [1, 2]
