"""The executor (replica/replication/executor.py) on its own, with ports that record what they are
handed and a clock the test moves: who may touch the core, what waits for a durable write, what a
failed one does, and what the rest of the process is told. (The protocol model runs the same
executor through every interleaving; these pin single rules.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import pytest

from eventlog import Position
from replica.errors import Unavailable
from replica.protocol import ProtocolConfig, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.replication.executor import Executor, StorageUnavailable, WrongThread
from replica.replication.ports import (
    Answer,
    Envelope,
    FollowStreams,
    Inbox,
    LogFacts,
    LogReader,
    Peers,
    Persisted,
    ProbeRound,
    ServedStream,
    Storage,
)
from replica.storage.commit import CommitTracker
from replica.storage.role import RoleState


class Log(LogReader):
    def __init__(self) -> None:
        self.end = Position(0, 0)

    def last_position(self) -> Position:
        return self.end

    def applied_seq(self) -> int:
        return self.end.seq

    def epoch_end(self, epoch: int) -> Position:
        return self.end if self.end.epoch <= epoch else Position(0, 0)


class HeldStorage(Storage):
    """Reads run at once; durable writes wait for the test (`finish`)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.log = Log()
        self.persisting: list[tuple[fx.Durable, ...]] = []
        self.work: list[object] = []
        self.stalled_since: float | None = None  # (what the watch would say)

    def busy_since(self) -> float | None:
        return self.stalled_since

    def known_facts(self) -> LogFacts:
        return LogFacts(Position(0, 0), 0)

    def persist(self, durable: tuple[fx.Durable, ...]) -> None:
        self.persisting.append(durable)

    def finish(self, failure: str | None = None) -> None:
        self.persisting.pop(0)
        self.inbox.put(Persisted(failure))

    def store_batch(self, stream_id: int, batch: object) -> None:
        self.work.append(("store", stream_id))

    def append_epoch_started(self, epoch: int) -> None:
        self.work.append(("append", epoch))

    def read(
        self,
        then: Callable[[LogReader], None],
        failed: Callable[[str], None],
        *,
        while_writes_wait: bool = False,
    ) -> None:
        self.reads += 1
        then(self.log)

    reads = 0


class RecordingPeers(Peers):
    def __init__(self) -> None:
        self.calls: list[fx.Effect] = []

    def probe_all(self, effect: fx.ProbeAll) -> None:
        self.calls.append(effect)

    def request_votes(self, effect: fx.RequestVotes) -> None:
        self.calls.append(effect)


class RecordingFollow(FollowStreams):
    def __init__(self) -> None:
        self.done: list[object] = []

    def open(self, effect: fx.OpenStream) -> None:
        self.done.append(effect)

    def cancel(self, stream_id: int, reason: str) -> None:
        self.done.append(("cancel", stream_id))

    def hello(self, stream_id: int, epoch: int) -> None:
        self.done.append(("hello", stream_id))

    def ack(self, effect: fx.SendAck) -> None:
        self.done.append(effect)

    def close_all(self, reason: str) -> None:
        self.done.append("close_all")


class RecordingStream(ServedStream):
    def __init__(self, secondary: int) -> None:
        self.secondary = secondary
        self.got: list[object] = []

    def divergence(self, effect: fx.SendDivergence) -> None:
        self.got.append(effect)

    def refuse(self, reason: str) -> None:
        self.got.append(("refused", reason))

    def send(self, effect: fx.SendEvents | fx.SendHeartbeat) -> None:
        self.got.append(effect)

    def end(self, reason: str) -> None:
        self.got.append(("ended", reason))

    def ready(self) -> bool:
        return True


class Replica:
    """Replica 0 of three, its executor claimed by the test's thread."""

    def __init__(self) -> None:
        self.now = 100.0
        self.inbox = Inbox()
        self.storage = HeldStorage(self.inbox)
        self.peers = RecordingPeers()
        self.follow = RecordingFollow()
        self.role = RoleState(0)
        self.commits = CommitTracker()
        self.tenures_changed = 0
        self.executor = Executor(
            ProtocolConfig(0, (0, 1, 2)),
            3,
            inbox=self.inbox,
            storage=self.storage,
            peers=self.peers,
            follow=self.follow,
            role=self.role,
            commits=self.commits,
            clock=lambda: self.now,
            tenure_changed=self._tenure_changed,
        )
        self.executor.claim()

    def _tenure_changed(self) -> None:
        self.tenures_changed += 1

    def run(self) -> None:
        while self.executor.process_next():
            pass

    def vote(self, candidate: int, epoch: int) -> Future[Answer]:
        answer = self.executor.vote_requested(candidate, epoch, Position(0, 0))
        self.run()
        return answer

    def elect(self) -> None:
        """Probes answered by two candidates with empty logs, both vote: primary of epoch 6."""
        self.executor.tick()
        outcomes = tuple(
            ins.ProbeOutcome(
                i, ins.PeerView(i, Role.CANDIDATE, 3, Position(0, 0), False, False, False)
            )
            for i in (1, 2)
        )
        self.inbox.submit(ins.ProbesAnswered(Position(0, 0), outcomes))
        self.run()
        self.storage.finish()  # epoch 6 recorded
        self.run()
        for voter in (1, 2):
            self.inbox.submit(ins.VoteReplied(voter, 6, True))
        self.run()
        assert ("append", 6) in self.storage.work
        self.storage.log.end = Position(6, 1)
        self.inbox.submit(ins.EpochStartAppended(Position(6, 1)))
        self.run()
        assert self.role.snapshot.role is Role.PRIMARY


def test_only_the_executors_thread_may_touch_the_core() -> None:
    replica = Replica()
    replica.inbox.submit(ins.Tick())
    raised: list[BaseException] = []

    def elsewhere() -> None:
        try:
            replica.executor.process_next()
        except WrongThread as exc:
            raised.append(exc)
        try:
            replica.executor.core.status(0.0)
        except WrongThread as exc:
            raised.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(5)
    assert len(raised) == 2, "another thread stepped or read the core"
    assert replica.executor.process_next(), "the owner could not"


def test_a_vote_is_answered_only_once_storage_reported_it_durable() -> None:
    replica = Replica()
    answer = replica.vote(1, 7)
    assert replica.storage.persisting == [(fx.PersistEpoch(7),)]
    assert not answer.done(), "the vote was answered before its epoch was durable"
    replica.storage.finish()
    replica.run()
    (reply,) = answer.result(0).replies
    assert reply == fx.ReplyVote(True, 7)


def test_later_steps_wait_behind_a_durable_write() -> None:
    """What a later step decided follows what an earlier one decided, even when it needs
    nothing durable itself: a probe's answer waits for the vote before it."""
    replica = Replica()
    vote = replica.vote(1, 7)
    probe = replica.executor.probe(ins.ProbeReceived(2, 3, False))
    replica.run()
    assert not probe.done() and not vote.done()
    replica.storage.finish()
    replica.run()
    assert vote.done() and probe.done()
    (status,) = probe.result(0).replies
    assert isinstance(status, fx.ReplyProbe) and status.status.epoch == 7


def test_a_failed_durable_write_restarts_the_core_from_what_is_durable() -> None:
    """The effects after a failed write never happen, as after a crash: the caller is told to
    retry, streams end, the replica starts over as a candidate -- and its new streams never
    reuse an id its predecessor gave out (late messages may still carry one)."""
    replica = Replica()
    replica.executor.process(Envelope(ins.ProbeReceived(1, 3, True)))  # primary 1: follow it
    (opened,) = [e for e in replica.follow.done if isinstance(e, fx.OpenStream)]
    answer = replica.vote(2, 7)
    replica.storage.finish("the database went away")
    replica.run()
    with pytest.raises(Unavailable, match="durable write failed"):
        answer.result(0)
    assert "close_all" in replica.follow.done
    assert replica.role.snapshot.role is Role.CANDIDATE
    replica.executor.process(Envelope(ins.ProbeReceived(1, 8, True)))
    replica.storage.finish()  # epoch 8
    replica.run()
    reopened = [e for e in replica.follow.done if isinstance(e, fx.OpenStream)][-1]
    assert reopened.stream_id > opened.stream_id


def test_a_new_primary_term_and_its_end_are_told_to_the_process() -> None:
    replica = Replica()
    replica.elect()
    assert replica.tenures_changed == 1  # ResetCommit: cached events of an older tenure are stale
    replica.now += 1.2  # paused: it steps down at its next input
    replica.executor.tick()
    assert replica.role.snapshot.role is not Role.PRIMARY
    assert replica.tenures_changed == 2


def test_an_input_is_stamped_when_it_is_processed_not_when_it_came() -> None:
    """A primary paused with an input waiting sees the pause when it takes that input."""
    replica = Replica()
    replica.elect()
    replica.inbox.submit(ins.SecondaryDisconnected(1, 99))
    replica.now += 1.2
    replica.run()
    assert replica.role.snapshot.role is not Role.PRIMARY


def test_a_stream_the_core_ends_is_ended() -> None:
    replica = Replica()
    replica.elect()
    stream = RecordingStream(1)
    replica.executor.process(Envelope(ins.SecondaryHello(1, None, 6), stream=stream))
    (divergence,) = stream.got
    assert isinstance(divergence, fx.SendDivergence)
    replica.inbox.submit(ins.SecondaryAcked(1, divergence.stream_id, 1, True))
    replica.run()
    # Deposed by a newer epoch: the stream is ended at its next turn.
    newer = ins.PeerView(2, Role.PRIMARY, 8, Position(6, 1), True, False, False)
    replica.inbox.submit(ins.ProbesAnswered(None, (ins.ProbeOutcome(2, newer),)))
    replica.run()
    replica.storage.finish()
    replica.run()
    assert any(isinstance(g, tuple) and g[0] == "ended" for g in stream.got), stream.got


def test_a_secondary_following_a_live_primary_hears_probe_rounds_without_reading_its_log() -> None:
    """Its own log's end matters only for an election, which it holds none of while its
    primary is live: on a slow database a read per round (every heartbeat) would queue ahead
    of its stores. Once the primary is silent, each round reads it again."""
    r = Replica()
    r.inbox.submit(ins.ProbeReceived(1, 4, True))  # primary 1 of epoch 4 announces itself
    r.run()
    r.storage.finish()  # epoch 4 recorded
    r.run()
    (opened,) = [e for e in r.follow.done if isinstance(e, fx.OpenStream)]
    position = Position(3, 5)
    r.inbox.submit(ins.DivergenceReceived(opened.stream_id, 4, position, position, position))
    r.inbox.submit(ins.HeartbeatReceived(opened.stream_id, 4, 5, True))
    r.run()
    reads = r.storage.reads
    view = ins.PeerView(1, Role.PRIMARY, 4, position, True, False, False)
    others = (ins.ProbeOutcome(1, view), ins.ProbeOutcome(2, None))
    r.inbox.put(ProbeRound(others))
    r.run()
    assert r.storage.reads == reads
    r.now += 1.0  # nothing heard from the primary since
    r.inbox.put(ProbeRound(others))
    r.run()
    assert r.storage.reads == reads + 1


# -- a stalled database ----------------------------------------------------------------------


def test_a_probe_is_answered_from_memory_without_waiting_on_storage() -> None:
    replica = Replica()
    replica.storage.stalled_since = replica.now - 0.3  # (busy, not yet stalled)
    answer = replica.executor.probe(ins.ProbeReceived(1, 3, False))
    replica.run()
    assert answer.result(0).facts == replica.storage.known_facts()
    assert not replica.storage.work and not replica.storage.persisting, "no read, no write"


def test_a_stalled_replica_answers_unavailable_only_once_its_core_heard_why() -> None:
    """Its peer may elect without it on that answer: the core must have stopped vouching
    first (DatabaseFailed), exactly as when a read fails."""
    replica = Replica()
    stalled_after = replica.executor.config.stalled_after
    replica.storage.stalled_since = replica.now - stalled_after - 0.1
    asks: list[Callable[[], Future[Answer]]] = [
        lambda: replica.executor.probe(ins.ProbeReceived(1, 3, False)),
        lambda: replica.executor.vote_requested(1, 9, Position(0, 0)),
    ]
    for ask in asks:
        answer = ask()
        assert not answer.done(), "told before the core heard it"
        replica.run()
        with pytest.raises(StorageUnavailable, match="database stalled since"):
            answer.result(0)
    assert replica.executor.core.current_epoch == 3, "no vote was recorded"


def test_a_tick_tells_the_core_since_when_storage_has_waited() -> None:
    """A primary's storage waits past the storage timeout: the tick carries it, and with both
    secondaries acking the primary steps down."""
    replica = Replica()
    replica.elect()
    assert replica.role.snapshot.role is Role.PRIMARY
    served = {voter: RecordingStream(voter) for voter in (1, 2)}
    for voter, stream in served.items():
        replica.executor.hello(ins.SecondaryHello(voter, None, 6), stream)
    replica.run()
    streams = {
        voter: next(e.stream_id for e in s.got if isinstance(e, fx.SendDivergence))
        for voter, s in served.items()
    }
    replica.storage.stalled_since = replica.now
    timeout = replica.executor.config.storage_timeout
    for _ in range(round(timeout / 0.1) + 3):
        replica.now += 0.1
        for voter, sid in streams.items():
            replica.inbox.submit(ins.SecondaryAcked(voter, sid, 1, True))
        replica.executor.tick()
        replica.run()
    assert replica.role.snapshot.role is not Role.PRIMARY
