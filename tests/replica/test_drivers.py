"""The shell around the protocol core, with a manual clock and fake peers: the coordinator
(ticks, probes, votes, durable epochs, the role shown), the primary's streams and the
secondary's stream. A real SQLite database underneath: what must be durable is checked in it.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import eventlog
from protos import replication_pb2 as rpb
from replica.commit import CommitTracker
from replica.config import ClusterConfig, ReplicaAddress
from replica.coordinator import Coordinator
from replica.database import make_engine, upgrade_schema
from replica.notifier import InboxNotifier
from replica.peers import ProbeResult
from replica.primary import PrimaryStreams
from replica.protocol import Role
from replica.protocol import effects as fx
from replica.role import RoleState
from replica.secondary import Secondary
from replica.writer import LogWriter
from testsupport.harness import wait_until

CONFIG = ClusterConfig(
    replicas=tuple(ReplicaAddress(i, f"127.0.0.1:{50100 + i}") for i in range(3))
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakePeers:
    """Records the calls the coordinator makes; the test answers them."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self.probe_rounds: list[tuple[rpb.ProbeRequest, Callable[[list[ProbeResult]], None]]] = []
        self.vote_calls: list[tuple[Sequence[int], rpb.VoteRequest, int]] = []
        self.vote_answers: list[Callable[[int, rpb.VoteReply | None], None]] = []
        self.streams: queue.SimpleQueue[tuple[Iterator[rpb.SecondaryMessage], Any]] = (
            queue.SimpleQueue()
        )
        self.metadata = ()

    def probe_all(
        self, request: rpb.ProbeRequest, timeout: float, done: Callable[[list[ProbeResult]], None]
    ) -> None:
        self.probe_rounds.append((request, done))

    def request_votes(
        self,
        indexes: Sequence[int],
        request: rpb.VoteRequest,
        timeout: float,
        on_reply: Callable[[int, rpb.VoteReply | None], None],
    ) -> None:
        with self._engine.connect() as conn:
            recorded = eventlog.current_epoch(conn)
        self.vote_calls.append((tuple(indexes), request, recorded))
        self.vote_answers.append(on_reply)

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


def candidate(index: int, seq: int = 0, epoch: int = 0) -> rpb.ProbeReply:
    return rpb.ProbeReply(
        self=rpb.PeerState(
            index=index,
            role="candidate",
            epoch=epoch,
            position=rpb.LogPosition(epoch=epoch if seq else 0, seq=seq),
        )
    )


class Replica:
    """Replica 0's shell over a real database, not started: the test turns the loop."""

    def __init__(self, tmp_path: Path, index: int = 0) -> None:
        self.engine = make_engine(f"sqlite:///{tmp_path}/replica-{index}.db")
        upgrade_schema(self.engine)
        self.clock = Clock()
        self.role = RoleState(index)
        self.commits = CommitTracker()
        self.writer = LogWriter(self.engine, self.role, self.commits, commit_timeout=2)
        self.peers = FakePeers(self.engine)
        self.coordinator = Coordinator(
            index,
            CONFIG,
            self.engine,
            self.role,
            self.writer,
            self.commits,
            InboxNotifier(),
            self.peers,  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.writer.set_admission(self.coordinator.check_writable)
        self.streams = PrimaryStreams(self.coordinator, self.engine)
        self.writer.add_append_listener(self.streams.on_appended)
        self.secondary = Secondary(
            index,
            self.engine,
            self.writer.lock,
            self.coordinator,
            self.peers,  # type: ignore[arg-type]
        )
        self.coordinator.start()

    def turn(self, seconds: float = 0.1) -> None:
        """Time passes and the loop runs what is due."""
        self.clock.now += seconds
        self.coordinator.work_once()
        self.coordinator.work_once()

    def answer_probes(self, *replies: rpb.ProbeReply | None) -> None:
        _request, done = self.peers.probe_rounds.pop()
        self.peers.probe_rounds.clear()
        done(
            [
                ProbeResult(
                    CONFIG.replica(i), reply, refused=reply is None, process_gone=reply is None
                )
                for i, reply in zip((1, 2), replies, strict=True)
            ]
        )
        self.coordinator.work_once()

    def elect(self) -> int:
        self.turn()
        self.answer_probes(candidate(1), candidate(2))
        voters, request, _ = self.peers.vote_calls[-1]
        for voter in voters:
            self.peers.vote_answers[-1](voter, rpb.VoteReply(granted=True, epoch=request.epoch))
        for _ in voters:
            self.coordinator.work_once()
        assert self.role.snapshot.role is Role.PRIMARY
        return request.epoch

    def epoch_recorded(self) -> int:
        with self.engine.connect() as conn:
            return eventlog.current_epoch(conn)

    def log(self) -> list[eventlog.Event]:
        with self.engine.connect() as conn:
            return eventlog.read_events(conn, 0)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path)
    yield r
    r.coordinator.stop()
    r.secondary.stop()
    r.engine.dispose()


# -- the coordinator ----------------------------------------------------------------------


def test_an_election_records_the_epoch_before_asking_and_starts_it_in_the_log(
    replica: Replica,
) -> None:
    replica.turn()
    assert len(replica.peers.probe_rounds) == 1
    replica.answer_probes(candidate(1), candidate(2))
    voters, request, recorded = replica.peers.vote_calls[-1]
    assert voters == (1, 2) and request.epoch == 3
    assert recorded == 3, "votes were asked for before the epoch was durable"
    assert replica.role.snapshot.role is Role.CANDIDATE
    replica.peers.vote_answers[-1](1, rpb.VoteReply(granted=True, epoch=3))
    replica.coordinator.work_once()
    assert replica.log() == [] and replica.role.snapshot.role is Role.CANDIDATE
    replica.peers.vote_answers[-1](2, rpb.VoteReply(granted=True, epoch=3))
    replica.coordinator.work_once()
    (started,) = replica.log()
    assert (started.type, started.epoch, started.seq) == ("epoch_started", 3, 1)
    snap = replica.role.snapshot
    assert (snap.role, snap.epoch, snap.primary_index) == (Role.PRIMARY, 3, 0)
    announce, _ = replica.peers.probe_rounds[-1]
    assert announce.from_primary, "a new primary announces itself at once"


def test_a_refused_vote_ends_the_election(replica: Replica) -> None:
    replica.turn()
    replica.answer_probes(candidate(1), candidate(2))
    replica.peers.vote_answers[-1](1, None)  # unreachable
    replica.coordinator.work_once()
    replica.peers.vote_answers[-1](2, rpb.VoteReply(granted=True, epoch=3))
    replica.coordinator.work_once()
    assert replica.log() == [] and replica.role.snapshot.role is Role.CANDIDATE


def test_one_probe_round_at_a_time(replica: Replica) -> None:
    replica.turn()
    replica.turn()
    replica.turn()
    assert len(replica.peers.probe_rounds) == 1, "a new round while one was under way"


def test_a_vote_is_on_disk_when_it_is_granted(replica: Replica) -> None:
    reply = replica.coordinator.handle_vote(
        rpb.VoteRequest(candidate_index=2, epoch=5, position=rpb.LogPosition())
    )
    assert reply.granted and reply.epoch == 5
    assert replica.epoch_recorded() == 5
    again = replica.coordinator.handle_vote(
        rpb.VoteRequest(candidate_index=1, epoch=5, position=rpb.LogPosition())
    )
    assert not again.granted


def test_a_paused_primary_steps_down_by_its_own_clock(replica: Replica) -> None:
    replica.elect()
    replica.turn(0.1)
    assert replica.role.snapshot.role is Role.PRIMARY
    replica.turn(1.2)  # nothing ran for 1.2 s: SIGSTOP, then SIGCONT
    assert replica.role.snapshot.role is Role.SECONDARY


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
    wait_until(lambda: replica.coordinator.status().secondaries[0].acked_seq == 1, 5, "no ack")
    assert replica.commits.committed_seq == 0, "committed without voter 2, in sync too"
    for _ in range(10):  # a primary drops no one until it has run for 1.5 x peer_timeout
        replica.turn(0.1)
    replica.answer_probes(candidate(1, 1, epoch), None)  # 2's process is gone
    assert replica.commits.committed_seq == 1
    context.active = False
    requests.put(ack(1, epoch, in_sync=True))


def test_a_hello_from_a_newer_epoch_deposes_the_primary(replica: Replica) -> None:
    epoch = replica.elect()
    context = FakeContext()
    stream = replica.streams.serve(iter([hello(2, epoch + 4)]), context)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError):
        next(stream)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert replica.role.snapshot.role is not Role.PRIMARY
    assert replica.epoch_recorded() == epoch + 4


def test_a_stream_ended_outside_its_own_turn_stops_no_other_effect(replica: Replica) -> None:
    """The in-sync set removes a member that did not confirm leaving on a tick or a probe
    round and ends its stream there. On real hosts (a secondary cut off by a partition) the
    coordinator once had no one to carry that EndStream out: the step failed and the commit
    advance after it was lost, stalling every write until the next one."""
    replica.elect()
    seen = replica.coordinator.sender_wakeups()
    replica.coordinator.carry_out([fx.EndStream(1, 99, "removed unheard"), fx.AdvanceCommit(1)])
    assert replica.commits.committed_seq == 1
    assert replica.coordinator.sender_wakeups() > seen, "the stream is not woken to end"


# -- the secondary's stream ---------------------------------------------------------------


def primary_message(epoch: int, **kind: Any) -> rpb.PrimaryMessage:
    return rpb.PrimaryMessage(primary_epoch=epoch, **kind)


def event_proto(seq: int, epoch: int) -> rpb.Event:
    return rpb.Event(seq=seq, epoch=epoch, type="epoch_started", payload="{}")


def test_the_secondary_acks_only_what_it_stored(replica: Replica) -> None:
    replica.secondary.start()
    replica.coordinator.handle_probe(
        rpb.ProbeRequest(from_index=1, from_epoch=4, from_primary=True)
    )
    assert replica.epoch_recorded() == 4 and replica.role.snapshot.primary_index == 1
    requests, call = replica.peers.streams.get(timeout=5)
    said = iter(requests)
    first = next(said)
    assert first.hello.secondary_epoch == 4 and first.hello.position.seq == 0
    call.send(primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition())))
    assert next(said).ack.position.seq == 0
    call.send(
        primary_message(
            4,
            batch=rpb.Batch(
                events=[event_proto(1, 4), event_proto(2, 4)], committed_seq=0, in_sync=True
            ),
        )
    )
    acked = next(said).ack
    stored = [e.seq for e in replica.log()]
    assert acked.position.seq == 2 and stored == [1, 2], "acked what it had not stored"
    assert acked.in_sync
    # The primary falls silent; once the peer timeout passed, this replica votes in epoch 5,
    # which ends the stream.
    for _ in range(7):
        replica.turn(0.1)
    vote = replica.coordinator.handle_vote(
        rpb.VoteRequest(candidate_index=2, epoch=5, position=rpb.LogPosition(epoch=4, seq=2))
    )
    assert vote.granted
    assert call.cancelled.wait(5), "the vote did not end the stream to the old primary"
    # Its target is still replica 1: the stream opens again, saying epoch 5 -- and a message
    # of the deposed primary's epoch 4 ends it (fencing).
    replica.turn(0.1)
    requests, call = replica.peers.streams.get(timeout=5)
    said = iter(requests)
    assert next(said).hello.secondary_epoch == 5
    call.send(
        primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=4, seq=2)))
    )
    assert call.cancelled.wait(5), "a stream of an older epoch was accepted"
    assert [e.seq for e in replica.log()] == [1, 2]


def test_the_secondary_truncates_a_divergent_tail_before_acking(replica: Replica) -> None:
    with replica.engine.begin() as conn:
        eventlog.append_events(
            conn,
            [
                eventlog.Event(seq, 3, "epoch_started", {}, None, dt.datetime(2030, 1, 1))
                for seq in (1, 2, 3)
            ],
        )
    replica.secondary.start()
    replica.coordinator.handle_probe(
        rpb.ProbeRequest(from_index=1, from_epoch=4, from_primary=True)
    )
    requests, call = replica.peers.streams.get(timeout=5)
    said = iter(requests)
    assert next(said).hello.position.seq == 3
    # The primary's log has epoch 3 only up to seq 1.
    call.send(
        primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=3, seq=1)))
    )
    again = next(said)
    assert again.hello.position.seq == 1 and [e.seq for e in replica.log()] == [1]
    call.send(
        primary_message(4, divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=3, seq=1)))
    )
    assert next(said).ack.position.seq == 1
