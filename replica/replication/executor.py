"""The executor: the one thread that owns this replica's protocol core.

Every input -- an RPC that needs a decision, a message or an ack on a stream, a probe round or
a vote, a tick, a storage outcome -- arrives in one inbox. The executor takes one item at a
time, steps the core with it, and carries out the `Ready` the core returns: what must be
durable (`persist`) goes to storage first, and what follows (`then`) is carried out only once
storage reported it durable -- in order, after every earlier step's, through one exhaustive
`match`. Slow work (the database, calls to peers, the streams' sending) runs in the ports
(replica/replication/ports.py), which report back through the inbox; a caller that needs a decision
waits on a future the executor completes. No other thread touches the core: `process` raises
`WrongThread` on any thread but the one that claimed the executor.

The loop (`run`) is a thin thread around `process`: the protocol model
(tests/replica/protocol/sim.py) calls `process` itself, one item at a time, with simulated
ports, so one seed replays one history exactly. Modelled on etcd's raft `node.go` (one
goroutine owns the state; the application persists what `Ready` says before the messages go
out) and hashicorp/raft's one loop per replica.

If a durable write fails, or an effect cannot be carried out, the effects after it never
happen -- exactly as if the process had died there -- so the core is restarted from what is
durable: streams end, waiting callers are told to retry, and the replica starts over as a
candidate (a crash the model checks, without the process exiting).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar, assert_never

from replica.errors import Unavailable
from replica.protocol import ProtocolConfig, ReplicaCore, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.membership import Membership, MembershipChange
from replica.protocol.rules import LogPosition
from replica.replication.ports import (
    Answer,
    Envelope,
    FollowStreams,
    Inbox,
    Item,
    LogFacts,
    LogReader,
    Peers,
    Persisted,
    ProbeRound,
    Query,
    ServedStream,
    Stop,
    Storage,
)
from replica.storage.commit import CommitTracker
from replica.storage.role import RoleState
from replica.storage.watch import stalled_reason

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")


class WrongThread(RuntimeError):
    """The core was touched from a thread other than the executor's."""


class StorageUnavailable(Unavailable):
    """The replica's database failed where a peer asked something of it (the core stopped
    vouching before this was raised)."""


class Executor:
    def __init__(
        self,
        config: ProtocolConfig,
        current_epoch: int,
        *,
        inbox: Inbox,
        storage: Storage,
        peers: Peers,
        follow: FollowStreams,
        role: RoleState,
        commits: CommitTracker,
        clock: Clock,
        tenure_changed: Callable[[], None] = lambda: None,
        observe: Callable[[fx.Effect], None] = lambda effect: None,
        left: Callable[[str], None] = lambda reason: None,
        membership: Membership | None = None,
        raise_effect_errors: bool = False,
    ) -> None:
        """`raise_effect_errors`: an effect that raises propagates (the protocol model: a bug
        fails the example) instead of restarting the core (a replica keeps serving).
        `membership`: the latest in the log (storage tells of every change after:
        MembershipChanged); every core this executor makes starts with the latest."""
        self.config = config
        self.inbox = inbox
        self._storage = storage
        self._peers = peers
        self._follow = follow
        self._role = role
        self._commits = commits
        self._clock = clock
        self._tenure_changed = tenure_changed  # a tenure began or ended (caches are stale)
        self._observe = observe  # sees every effect carried out (metrics)
        self._left = left  # this replica was removed from the cluster: the process stops
        self._raise_effect_errors = raise_effect_errors
        self._membership = membership
        self._core = ReplicaCore(config, current_epoch, clock(), membership=membership)
        self._owner: int | None = None
        # Steps whose `then` waits: for their own `persist`, or behind an earlier one's.
        self._waiting: deque[tuple[fx.Ready, Envelope]] = deque()
        self._persisting = False
        # The primary's side: each secondary's stream by the core's stream id; those past
        # their first ack are fed (asked what to send next) when something may have changed.
        self._served: dict[int, ServedStream] = {}
        self._serving: set[int] = set()
        self._feed: set[int] = set()
        # A probe round under way since (one at a time, unless the core announces or a
        # stream just ended); a round that never reports is given up after a while.
        self._probing_since: float | None = None
        self._probe_now = False
        self._reading_position = False  # a probe round's read of the log's end waits in storage
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- ownership ---------------------------------------------------------------------------

    def claim(self) -> None:
        """The calling thread is the executor's from now on (the loop's, or a test's)."""
        self._owner = threading.get_ident()

    def _here(self) -> ReplicaCore:
        if self._owner != threading.get_ident():
            raise WrongThread("only the executor's thread may touch the protocol core")
        return self._core

    @property
    def core(self) -> ReplicaCore:
        """The core, for the executor's own thread (the protocol model's checks)."""
        return self._here()

    # -- the way in (any thread) -----------------------------------------------------------

    def submit(self, event: ins.Input) -> None:
        self.inbox.put(Envelope(event))

    def ask(self, event: ins.Input) -> Future[Answer]:
        """Step `event`; the future gets the replies addressed to the caller once every effect
        of the step was carried out (or Unavailable if they could not be)."""
        answer: Future[Answer] = Future()
        self.inbox.put(Envelope(event, answer=answer))
        return answer

    def probe(self, request: ins.ProbeReceived) -> Future[Answer]:
        """A peer's probe, answered with this replica's status and its log's end as of the
        last commit (known in memory: a probe decides nothing on it, so it need not wait in
        storage's order behind a slow write) -- or, while its database is stalled, UNAVAILABLE
        with the reason, once the core stopped vouching (`stalled`)."""
        stalled = self.stalled()
        if stalled is not None:
            return self.database_failed(stalled)
        answer: Future[Answer] = Future()
        self.inbox.put(Envelope(request, answer=answer, facts=self._storage.known_facts()))
        return answer

    def stalled(self) -> str | None:
        """Why this replica's database counts as stalled (no progress on what waits on it for
        `stalled_after`), if it does: it then has nothing to say of its log to its peers --
        any answer it gives would be stale, and an election waiting on it would stall too.
        (Any thread: reads only what the storage port keeps in memory.)"""
        since = self._storage.busy_since()
        if since is None:
            return None
        stalled_for = self._clock() - since
        if stalled_for < self.config.stalled_after:
            return None
        return stalled_reason(stalled_for)

    def vote_requested(self, candidate: int, epoch: int, position: LogPosition) -> Future[Answer]:
        """A candidate's vote request, decided on this replica's log as storage has it once
        every write handed to it before is done (its acks are all in what is read); if the
        database fails -- or is stalled now, when the read would wait behind it -- the core
        hears DatabaseFailed first and the future fails with StorageUnavailable."""
        stalled = self.stalled()
        if stalled is not None:
            return self.database_failed(stalled)
        answer: Future[Answer] = Future()

        def read(reader: LogReader) -> None:
            facts = LogFacts(reader.last_position(), reader.applied_seq())
            request = ins.VoteRequested(candidate, epoch, position, facts.last)
            self.inbox.put(Envelope(request, answer=answer, facts=facts))

        def failed(reason: str) -> None:
            self.inbox.put(Envelope(ins.DatabaseFailed(reason), answer=answer, failure=reason))

        self._storage.read(read, failed)
        return answer

    def database_failed(self, reason: str) -> Future[Answer]:
        """This replica's database failed while serving a peer: the core stops vouching before
        the peer is told (the future fails with StorageUnavailable once it has)."""
        answer: Future[Answer] = Future()
        self.inbox.put(Envelope(ins.DatabaseFailed(reason), answer=answer, failure=reason))
        return answer

    def hello(self, hello: ins.SecondaryHello, stream: ServedStream) -> None:
        """A secondary's Hello on the stream `stream` serves."""
        self.inbox.put(Envelope(hello, stream=stream))

    def batch_received(self, event: ins.BatchReceived, batch: object) -> None:
        self.inbox.put(Envelope(event, batch=batch))

    def status(self) -> Future[fx.ReplicaStatus]:
        """The core's status (read on the executor's thread)."""
        return self.query(lambda core, now: core.status(now))

    def query(self, read: Callable[[ReplicaCore, float], T]) -> Future[T]:
        """`read(core, now)` on the executor's thread, its result in the future (Unavailable
        if the replica stops first). It must only read."""
        answer: Future[object] = Future()
        self.inbox.put(Query(read, answer))
        return answer  # type: ignore[return-value]

    def membership_change_refusal(
        self, change: MembershipChange, latest: Membership
    ) -> Future[str | None]:
        """Why the core would not have `change` written now, if it would not (the writer asks
        under its lock, with the latest membership it wrote: see ReplicaCore)."""
        return self.query(lambda core, now: core.membership_change_refusal(change, now, latest))

    # -- the executor's thread -------------------------------------------------------------

    def process_next(self) -> bool:
        """Take and process one item from the inbox, if there is one (for a test or the
        model; the loop does the same)."""
        self._here()
        item = self.inbox.take()
        if item is None:
            return False
        self.process(item)
        return True

    def tick(self) -> None:
        """Logical time passes: step a Tick (the loop does every heartbeat interval)."""
        self._step(Envelope(ins.Tick(self._storage.busy_since())))
        self._feed_senders()

    def process(self, item: Item) -> None:
        self._here()
        match item:
            case Envelope():
                self._step(item)
            case Persisted(failure):
                self._persisted(failure)
            case ProbeRound(outcomes):
                self._probe_round(outcomes)
            case Query(read, answer):
                try:
                    answer.set_result(read(self._core, self._clock()))
                except Exception as exc:  # (a bug in the read: its caller hears of it)
                    answer.set_exception(exc)
            case Stop():
                self._stopping = True
            case _:
                assert_never(item)
        self._feed_senders()

    def _step(self, envelope: Envelope) -> None:
        core = self._here()
        event = envelope.input
        match event:
            case ins.SecondaryDisconnected(_, stream_id):
                self._forget_served(stream_id)
            case ins.SecondaryAcked(_, stream_id) if stream_id in self._served:
                if stream_id not in self._serving:  # its first ack: it is told at once
                    self._serving.add(stream_id)
                    self._feed.add(stream_id)
            case ins.ProbesAnswered(_, _, ended_at):
                self._probing_since = None
                if ended_at is not None:  # (the read _probe_round handed storage is done)
                    self._reading_position = False
            case ins.Tick():
                self._feed.update(self._serving)  # (heartbeats)
            case ins.MembershipChanged(membership):
                self._membership = membership  # (for a core made after this one)
            case ins.HeartbeatReceived() | ins.BatchReceived():
                self._role.heard_from_primary()
            case ins.ReplicationStreamEnded():
                # Until it hears from a primary again, a write asked of this replica waits a
                # moment for the election that may follow (ChatServicer._await_primary).
                self._role.stream_from_primary_ended()
            case _:
                pass
        ready = core.step(self._clock(), event)
        if ready.persist or self._waiting:
            self._waiting.append((ready, envelope))
            self._next_persist()
        else:
            self._carry_out(ready.then, envelope)
        match event:
            case ins.SecondaryAcked(secondary, stream_id) if core.has_more_to_send(
                secondary, stream_id
            ):
                self._feed.add(stream_id)  # (it may have been held back by flow control)
            case ins.ReplicationStreamEnded():
                # Look at the cluster now: a probe round under way may have left before the
                # stream ended (and a new primary is found sooner).
                self._probe_now = True
                self._step(Envelope(ins.Tick(self._storage.busy_since())))
            case _:
                pass

    def _next_persist(self) -> None:
        """Carry out the waiting steps in order, handing each one's `persist` to storage and
        going on only once it reported them durable."""
        while self._waiting and not self._persisting:
            ready, envelope = self._waiting[0]
            if ready.persist:
                self._persisting = True
                self._storage.persist(ready.persist)
                return
            self._waiting.popleft()
            self._carry_out(ready.then, envelope)

    def _persisted(self, failure: str | None) -> None:
        self._persisting = False
        if failure is not None:
            self._restart(f"a durable write failed ({failure})")
            return
        ready, envelope = self._waiting.popleft()
        self._carry_out(ready.then, envelope)
        self._next_persist()

    def _carry_out(self, then: tuple[fx.Then, ...], envelope: Envelope) -> None:
        replies: list[fx.Then] = []
        try:
            for effect in then:
                self._observe(effect)
                self._effect(effect, envelope, replies)
        except Exception as exc:
            if self._raise_effect_errors:
                raise
            log.exception("replica %d: carrying out %s failed", self.config.index, effect)
            self._restart(f"carrying out {type(effect).__name__} failed ({exc})", envelope)
            return
        answer = envelope.answer
        if answer is None or answer.done():
            return
        if envelope.failure is not None:
            answer.set_exception(StorageUnavailable(envelope.failure))
        else:
            answer.set_result(Answer(tuple(replies), envelope.facts))

    def _effect(self, effect: fx.Then, envelope: Envelope, replies: list[fx.Then]) -> None:
        """Carry out one effect: the only place effects are carried out."""
        index = self.config.index
        match effect:
            case fx.SetRole(role, epoch, primary):
                self._role.set(role, epoch, primary)
            case fx.StepDown(reason):
                log.warning("replica %d: stepping down: %s", index, reason)
                self._commits.abandon()
                self._tenure_changed()
            case fx.ResetCommit(seq):
                self._commits.reset(seq)
                self._tenure_changed()
            case fx.AdvanceCommit(seq) | fx.SecondaryCommitted(seq):
                self._commits.advance(seq)
            case fx.CommitStalled(shortfall):
                self._commits.set_stalled(shortfall)
            case fx.WakeSenders():
                self._feed.update(self._serving)
            case fx.LeaveCluster(reason):
                log.error("replica %d: %s; stopping", index, reason)
                self._left(reason)
            case fx.LogNote(level, text):
                log.log(
                    logging.WARNING if level == "warning" else logging.INFO,
                    "replica %d: %s",
                    index,
                    text,
                )
            case fx.StoreBatch(stream_id):
                self._storage.store_batch(stream_id, envelope.batch)
            case fx.AppendEpochStarted(epoch):
                self._storage.append_epoch_started(epoch)
            case fx.ProbeAll(_, _, announce):
                self._probe_all(effect, announce)
            case fx.RequestVotes():
                self._peers.request_votes(effect)
            case fx.ReplyProbe() | fx.ReplyVote():
                replies.append(effect)
            case fx.OpenStream():
                self._follow.open(effect)
            case fx.CancelStream(stream_id, reason):
                self._follow.cancel(stream_id, reason)
            case fx.SendHello(stream_id, epoch):
                self._follow.hello(stream_id, epoch)
            case fx.SendAck():
                self._follow.ack(effect)
            case fx.SendDivergence(_, stream_id):
                stream = self._stream_of(envelope)
                self._served[stream_id] = stream
                stream.divergence(effect)
            case fx.RefuseStream(_, reason):
                self._stream_of(envelope).refuse(reason)
            case fx.SendEvents(secondary, stream_id) | fx.SendHeartbeat(secondary, stream_id):
                served = self._served.get(stream_id)
                if served is not None:
                    served.send(effect)
                    if self._core.has_more_to_send(secondary, stream_id):
                        self._feed.add(stream_id)
            case fx.EndStream(_, stream_id, reason):
                served = self._served.get(stream_id)
                self._forget_served(stream_id)
                if served is not None:
                    log.info(
                        "replica %d: ending the stream to %d: %s", index, served.secondary, reason
                    )
                    served.end(reason)
            case _:
                assert_never(effect)

    @staticmethod
    def _stream_of(envelope: Envelope) -> ServedStream:
        if envelope.stream is None:
            raise AssertionError("a stream's answer decided outside its Hello")
        return envelope.stream

    def _forget_served(self, stream_id: int) -> None:
        self._served.pop(stream_id, None)
        self._serving.discard(stream_id)
        self._feed.discard(stream_id)

    def _feed_senders(self) -> None:
        """Ask the core what each stream that may have something to send should send, as long
        as the stream would take it (a stream whose messages are still on their way is asked
        again at its next ack, or the next tick)."""
        while self._feed:
            stream_id = self._feed.pop()
            served = self._served.get(stream_id)
            if served is None or not served.ready():
                continue
            self._step(Envelope(ins.SendWanted(served.secondary, stream_id)))

    # -- probes ------------------------------------------------------------------------------

    def _probe_all(self, effect: fx.ProbeAll, announce: bool) -> None:
        now = self._clock()
        since = self._probing_since
        under_way = since is not None and now - since < 2 * self.config.probe_timeout
        if under_way and not (announce or self._probe_now):
            return  # the round under way reports soon
        self._probing_since = now
        self._probe_now = False
        self._peers.probe_all(effect)

    def _probe_round(self, outcomes: tuple[ins.ProbeOutcome, ...]) -> None:
        """A round ended: the core hears it with the log's end as storage has it then (for an
        election). A primary needs no position: it hears the round at once, so that neither
        a slow nor a failing database keeps it from noticing it is cut off. (The round is
        over once the core heard it: with storage slow, no new round piles up meanwhile.)
        Nor does a secondary that follows a live primary: it elects no one on this round, and
        a read per round would queue ahead of its stores on a slow database."""
        core = self._core
        ended = self._clock()
        if (
            core.role is Role.PRIMARY
            or core.following_live_primary(ended)
            or self._reading_position
        ):
            # (While a read for an earlier round still waits -- a slow or stalled database --
            # no other piles up behind it: this round elects no one.)
            self._step(Envelope(ins.ProbesAnswered(None, outcomes)))
            return
        self._reading_position = True

        def read(reader: LogReader) -> None:
            position = reader.last_position()
            self.inbox.submit(ins.ProbesAnswered(position, outcomes, ended))

        def failed(reason: str) -> None:
            self.inbox.submit(ins.ProbesAnswered(None, outcomes, ended))

        self._storage.read(read, failed)

    # -- failures ----------------------------------------------------------------------------

    def _restart(self, reason: str, failed: Envelope | None = None) -> None:
        """What was decided after this point will not happen: start over from what is durable,
        as a process restarted after a crash would -- without exiting. The core's epoch is
        kept (a higher epoch in memory than on disk only makes it refuse more); ids go on
        from the old core's, since its streams' late messages may still arrive."""
        index = self.config.index
        log.warning(
            "replica %d: %s: the protocol restarts from what is durable (as after a crash)",
            index,
            reason,
        )
        envelopes = [e for _, e in self._waiting] + ([failed] if failed is not None else [])
        self._waiting.clear()
        self._persisting = False
        for envelope in envelopes:
            if envelope.answer is not None and not envelope.answer.done():
                envelope.answer.set_exception(Unavailable(f"replica {index}: {reason}; retry"))
            if envelope.stream is not None:
                envelope.stream.refuse(reason)
        for stream_id, served in list(self._served.items()):
            self._forget_served(stream_id)
            served.end(reason)
        self._follow.close_all(reason)
        old = self._core
        self._core = ReplicaCore(
            self.config,
            old.current_epoch,
            self._clock(),
            ids_after=old.last_id,
            membership=self._membership,
        )
        self._probing_since = None
        self._commits.abandon()
        self._tenure_changed()
        self._role.set(Role.CANDIDATE, old.current_epoch, None)

    # -- the loop ----------------------------------------------------------------------------

    def start(self, epoch: int | None = None, membership: Membership | None = None) -> None:
        """Run the loop on a thread of its own, with a fresh core in `epoch` and `membership`
        (the log's, read once the database answered; by default those it was made with)."""
        epoch = self._core.current_epoch if epoch is None else epoch
        if membership is not None:
            self._membership = membership
        self._core = ReplicaCore(self.config, epoch, self._clock(), membership=self._membership)
        self._thread = threading.Thread(
            target=self.run, name=f"executor-{self.config.index}", daemon=True
        )
        self._thread.start()

    def run(self) -> None:
        """Take inputs in order and tick every heartbeat interval, until stopped. Nothing here
        waits on I/O, so a late tick means the process did not run (pause detection)."""
        self.claim()
        interval = self.config.heartbeat_interval
        next_tick = self._clock()
        while not self._stopping:
            item = self.inbox.take(timeout=max(0.0, next_tick - self._clock()))
            try:
                if item is not None:
                    self.process(item)
                if self._clock() >= next_tick and not self._stopping:
                    next_tick = self._clock() + interval
                    self.tick()
            except Exception:
                log.exception(
                    "replica %d: the executor failed to process %s", self.config.index, item
                )
        self._fail_pending("the replica is stopping")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop taking inputs now (what waits in the inbox is answered "stopping")."""
        self._stopping = True
        self.inbox.put(Stop())  # (wakes the loop)
        if self._thread is not None:
            self._thread.join(timeout)

    def _fail_pending(self, reason: str) -> None:
        envelopes = [e for _, e in self._waiting]
        self._waiting.clear()
        for item in self.inbox.drain():
            if isinstance(item, Envelope):
                envelopes.append(item)
            elif isinstance(item, Query):
                item.answer.set_exception(Unavailable(reason))
        for envelope in envelopes:
            if envelope.answer is not None and not envelope.answer.done():
                envelope.answer.set_exception(Unavailable(reason))
            if envelope.stream is not None:
                envelope.stream.refuse(reason)
        for served in self._served.values():
            served.end(reason)
        self._served.clear()
