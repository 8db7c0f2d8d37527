"""The coordinator: the shell around this replica's protocol core (replica/protocol/).

It owns the core and the one clock, and is the only way in: `run(input)` steps the core under
a lock, then carries out the effects in order, outside it. Elections live here: the tick loop
probes the others, asks for votes and reports what came back as inputs; it never blocks on a
call, so a late tick means the process did not run (the core's pause detection relies on it).
Effects that belong to a caller -- a reply, a message on a stream -- are handed back to it
(`local`); the rest are carried out here: durable epochs, the role the process shows, the
commit point, the secondary's stream, probes and votes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Position
from protos import replication_pb2 as rpb
from replica.commit import CommitTracker
from replica.config import ClusterConfig
from replica.database import StorageOutageLog
from replica.errors import Unavailable
from replica.notifier import InboxNotifier
from replica.peers import Peers, ProbeResult
from replica.protocol import ProtocolConfig, ReplicaCore, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.role import RoleState
from replica.writer import LogWriter, NewEvent

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]
# Handles the effects that belong to the caller of `run`; returns False for the others.
LocalEffects = Callable[[fx.Effect], bool]


class StreamControl:
    """What the coordinator needs of the secondary's follow loop (replica/secondary.py)."""

    def open(self, stream_id: int, primary: int, epoch: int) -> None:
        raise NotImplementedError

    def cancel(self, stream_id: int) -> None:
        raise NotImplementedError


def protocol_config(index: int, config: ClusterConfig) -> ProtocolConfig:
    return ProtocolConfig(
        index=index,
        members=tuple(r.index for r in config.replicas),
        min_insync=config.min_insync,
        heartbeat_interval=config.heartbeat_interval_ms / 1000,
        peer_timeout=config.peer_timeout_ms / 1000,
        insync_timeout=config.insync_timeout_ms / 1000,
    )


class Coordinator:
    def __init__(
        self,
        index: int,
        config: ClusterConfig,
        engine: sa.Engine,
        role: RoleState,
        writer: LogWriter,
        commits: CommitTracker,
        notifier: InboxNotifier,
        peers: Peers,
        *,
        clock: Monotonic = time.monotonic,
    ) -> None:
        self.index = index
        self.config = config
        self._engine = engine
        self._role = role
        self._writer = writer
        self._commits = commits
        self._notifier = notifier
        self._peers = peers
        self._clock = clock
        self._protocol = protocol_config(index, config)
        with engine.connect() as conn:
            epoch = eventlog.current_epoch(conn)
        self._lock = threading.Lock()
        self._core = ReplicaCore(self._protocol, epoch, clock())
        self._stream_control: StreamControl | None = None
        self._senders = threading.Condition()
        self._sender_wakeups = 0
        self._effect_observers: list[Callable[[fx.Effect], None]] = []
        self._stop = threading.Event()
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._probing = False
        self._probe_now = False  # a tick was asked for: probe even if a round is under way
        self._next_tick = clock()
        self._last_probe: list[ProbeResult] = []
        self._tick_outage = StorageOutageLog(log, index, "the coordinator", clock=clock)
        self._term_listeners: list[Callable[[], None]] = []

    # -- wiring --------------------------------------------------------------------------

    def attach_stream_control(self, control: StreamControl) -> None:
        self._stream_control = control

    def add_term_listener(self, listener: Callable[[], None]) -> None:
        """Called when a primary's term begins (ResetCommit) or ends (StepDown)."""
        self._term_listeners.append(listener)

    def start(self) -> None:
        with self._lock:
            # Time starts now: whatever start-up took is not a pause.
            self._core = ReplicaCore(self._protocol, self._core.current_epoch, self._clock())
        self._next_tick = self._clock()
        self._thread = threading.Thread(
            target=self._loop, name=f"coordinator-{self.index}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(lambda: None)
        with self._senders:
            self._sender_wakeups += 1
            self._senders.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def clock(self) -> Monotonic:
        """The process's one monotonic clock (injected; the core's inputs are stamped by it)."""
        return self._clock

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the way in ----------------------------------------------------------------------

    def step(self, event: ins.Input) -> list[fx.Effect]:
        """Step the core; the caller carries out the effects (see `run`)."""
        with self._lock:
            return self._core.step(self._clock(), event)

    def run(self, event: ins.Input, local: LocalEffects | None = None) -> None:
        """Step the core and carry out its effects in order: `local` first gets each one and
        returns whether it handled it; the rest are carried out here. If one fails, the
        core is told of those that will now not happen, and the error propagates."""
        self.carry_out(self.step(event), local)

    def add_effect_observer(self, observer: Callable[[fx.Effect], None]) -> None:
        """`observer` sees every effect the core decides, as it is carried out (metrics)."""
        self._effect_observers.append(observer)

    def carry_out(self, effects: Sequence[fx.Effect], local: LocalEffects | None = None) -> None:
        for position, effect in enumerate(effects):
            for observe in self._effect_observers:
                observe(effect)
            try:
                if local is None or not local(effect):
                    self._carry_out(effect)
            except BaseException:
                self._not_carried_out(effects[position + 1 :])
                raise

    def _not_carried_out(self, effects: Sequence[fx.Effect]) -> None:
        """Effects after a failed one never happen; the core waits for some of them to report
        back, so it hears that they will not."""
        for effect in effects:
            if isinstance(effect, fx.OpenStream):
                self._inbox.put(
                    lambda e=effect: self.run(ins.ReplicationStreamEnded(e.stream_id))  # type: ignore[misc]
                )
            elif isinstance(effect, fx.AppendEpochStarted):
                self._inbox.put(lambda: self.run(ins.EpochStartFailed("an earlier step failed")))
            elif isinstance(effect, fx.RequestVotes):
                for voter in effect.voters:
                    self._inbox.put(
                        lambda e=effect, v=voter: self.run(  # type: ignore[misc]
                            ins.VoteReplied(v, e.epoch, False, 0, "not asked")
                        )
                    )

    def _carry_out(self, effect: fx.Effect) -> None:
        match effect:
            case fx.PersistEpoch(epoch):
                with self._engine.begin() as conn:
                    eventlog.raise_current_epoch(conn, epoch)
            case fx.SetRole(role, epoch, primary, version):
                address = None if primary is None else self.config.replica(primary).address
                self._role.set(role, epoch, primary, address, version)
            case fx.StepDown(reason):
                log.warning("replica %d: stepping down: %s", self.index, reason)
                self._commits.abandon()
                self._notifier.wake_all()
                for listener in self._term_listeners:
                    listener()
            case fx.ResetCommit(seq):
                self._commits.reset(seq)
                for listener in self._term_listeners:
                    listener()
            case fx.AdvanceCommit(seq) | fx.SecondaryCommitted(seq):
                self._commits.advance(seq)
            case fx.CommitStalled(reason, version):
                self._commits.set_stalled(reason, version)
            case fx.WakeSenders():
                self._wake_senders()
            case fx.EndStream(secondary, _, reason):
                # Decided outside that stream's own turn (an evaluation on a tick or a probe
                # round): the core has forgotten the stream, so its next turn ends it. Wake it
                # for that turn now.
                log.info("replica %d: ending the stream to %d: %s", self.index, secondary, reason)
                self._wake_senders()
            case fx.LogNote(level, text):
                log.log(
                    logging.WARNING if level == "warning" else logging.INFO,
                    "replica %d: %s",
                    self.index,
                    text,
                )
            case fx.ProbeAll():
                self._probe_all(effect)
            case fx.RequestVotes():
                self._request_votes(effect)
            case fx.AppendEpochStarted(epoch):
                self._append_epoch_started(epoch)
            case fx.OpenStream(stream_id, primary, epoch):
                assert self._stream_control is not None
                self._stream_control.open(stream_id, primary, epoch)
            case fx.CancelStream(stream_id):
                assert self._stream_control is not None
                self._stream_control.cancel(stream_id)
            case _:
                raise AssertionError(f"replica {self.index}: {effect} has no one to carry it out")

    # -- views -----------------------------------------------------------------------------

    @property
    def current_epoch(self) -> int:
        return self._core.current_epoch

    def status(self) -> fx.ReplicaStatus:
        with self._lock:
            return self._core.status(self._clock())

    def check_writable(self) -> None:
        """The writer's admission: raises Unavailable when too few replicas are in sync."""
        with self._lock:
            reason = self._core.write_refusal()
        if reason is not None:
            raise Unavailable(reason)

    def _wake_senders(self) -> None:
        with self._senders:
            self._sender_wakeups += 1
            self._senders.notify_all()

    def sender_wakeups(self) -> int:
        return self._sender_wakeups

    def wait_for_senders(self, seen: int, timeout: float) -> None:
        """Until a WakeSenders after `seen` (see sender_wakeups), stop, or `timeout`."""
        with self._senders:
            self._senders.wait_for(
                lambda: self._sender_wakeups != seen or self._stop.is_set(), timeout
            )

    def last_probe(self) -> list[ProbeResult]:
        return list(self._last_probe)

    # -- the tick loop -------------------------------------------------------------------

    def request_tick(self) -> None:
        """Look at the cluster now rather than at the next tick (e.g. the primary's stream
        just ended: a round already under way may have left before that)."""

        def tick() -> None:
            self._probe_now = True
            self.run(ins.Tick())

        self._inbox.put(tick)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.work_once(block=True)

    def work_once(self, block: bool = False) -> None:
        """One turn of the tick loop: the next piece of queued work (a finished probe round, a
        vote reply, a requested tick), then a tick if one is due. `block`: wait for work
        until the next tick is due."""
        timeout = max(0.0, self._next_tick - self._clock()) if block else 0.0
        try:
            work = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            work = None
        if self._stop.is_set():
            return
        try:
            if work is not None:
                work()
            if self._clock() >= self._next_tick:
                self._next_tick = self._clock() + self._protocol.heartbeat_interval
                self.run(ins.Tick())
        except sa.exc.DBAPIError as exc:  # elections wait for the database to come back
            self._tick_outage.failed(exc)
        except Exception:  # a failing step must not kill the coordinator
            log.exception("replica %d: coordinator step failed", self.index)
        else:
            self._tick_outage.succeeded()

    # -- probes ----------------------------------------------------------------------------

    def _probe_all(self, effect: fx.ProbeAll) -> None:
        if self._probing and not (effect.announce or self._probe_now):
            return  # the round under way reports soon
        self._probing = True
        self._probe_now = False
        request = rpb.ProbeRequest(
            from_index=self.index, from_epoch=effect.epoch, from_primary=effect.from_primary
        )
        timeout = max(self._protocol.heartbeat_interval * 2, 0.2)
        self._peers.probe_all(
            request,
            timeout,
            lambda results: self._inbox.put(lambda: self._probes_done(results)),
        )

    def _probes_done(self, results: list[ProbeResult]) -> None:
        self._probing = False
        self._last_probe = results
        with self._engine.connect() as conn:
            own = eventlog.last_position(conn)
        self.run(ins.ProbesAnswered(own, tuple(_outcome(r) for r in results)))

    def handle_probe(self, request: rpb.ProbeRequest) -> rpb.ProbeReply:
        with self._engine.connect() as conn:
            position = eventlog.last_position(conn)
            applied = projections.last_applied_seq(conn)
        replies: list[fx.ReplicaStatus] = []

        def local(effect: fx.Effect) -> bool:
            if isinstance(effect, fx.ReplyProbe):
                replies.append(effect.status)
                return True
            return False

        self.run(
            ins.ProbeReceived(request.from_index, request.from_epoch, request.from_primary), local
        )
        return probe_reply(replies[-1], position, applied)

    def probe_reply(self) -> rpb.ProbeReply:
        """What this replica would answer a probe (for its own cluster status view)."""
        with self._engine.connect() as conn:
            position = eventlog.last_position(conn)
            applied = projections.last_applied_seq(conn)
        return probe_reply(self.status(), position, applied)

    # -- votes -----------------------------------------------------------------------------

    def _request_votes(self, effect: fx.RequestVotes) -> None:
        request = rpb.VoteRequest(
            candidate_index=self.index,
            epoch=effect.epoch,
            position=rpb.LogPosition(epoch=effect.position.epoch, seq=effect.position.seq),
        )

        def on_reply(voter: int, reply: rpb.VoteReply | None) -> None:
            answer = (
                ins.VoteReplied(voter, effect.epoch, False, 0, "unreachable")
                if reply is None
                else ins.VoteReplied(voter, effect.epoch, reply.granted, reply.epoch, reply.reason)
            )
            self._inbox.put(lambda: self.run(answer))

        self._peers.request_votes(effect.voters, request, self._protocol.peer_timeout, on_reply)

    def handle_vote(self, request: rpb.VoteRequest) -> rpb.VoteReply:
        with self._engine.connect() as conn:
            own = eventlog.last_position(conn)
        replies: list[fx.ReplyVote] = []

        def local(effect: fx.Effect) -> bool:
            if isinstance(effect, fx.ReplyVote):
                replies.append(effect)
                return True
            return False

        theirs = Position(request.position.epoch, request.position.seq)
        self.run(ins.VoteRequested(request.candidate_index, request.epoch, theirs, own), local)
        reply = replies[-1]
        return rpb.VoteReply(granted=reply.granted, epoch=reply.epoch, reason=reply.reason)

    def _append_epoch_started(self, epoch: int) -> None:
        try:
            event = self._writer.append_system_event(
                NewEvent(projections.EventTypes.EPOCH_STARTED, {"replica_index": self.index}),
                epoch,
            )
        except sa.exc.DBAPIError as exc:
            self.run(ins.EpochStartFailed(str(exc.orig)))
            raise
        self.run(ins.EpochStartAppended(event.position))


def _outcome(result: ProbeResult) -> ins.ProbeOutcome:
    reply = result.reply
    view = None
    if reply is not None:
        view = ins.PeerView(
            index=reply.self.index,
            role=Role(reply.self.role),
            epoch=reply.self.epoch,
            position=Position(reply.self.position.epoch, reply.self.position.seq),
            in_sync=reply.self.in_sync,
            trusted=reply.trusted,
            following_live_primary=reply.following_live_primary,
            claim=reply.claim_primary if reply.claims else None,
        )
    return ins.ProbeOutcome(result.peer.index, view, result.refused, result.process_gone)


def probe_reply(status: fx.ReplicaStatus, position: Position, applied: int) -> rpb.ProbeReply:
    reply = rpb.ProbeReply(
        self=rpb.PeerState(
            index=status.index,
            role=status.role.value,
            epoch=status.epoch,
            position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            applied_seq=applied,
            in_sync=status.in_sync,
            reachable=True,
        ),
        primary_known=status.primary_index is not None,
        primary_index=status.primary_index or 0,
        trusted=status.trusted,
        following_live_primary=status.following_live_primary,
        claims=status.claim is not None,
        claim_primary=status.claim or 0,
    )
    for member in status.secondaries:
        reply.secondaries.append(
            rpb.PeerState(
                index=member.index,
                in_sync=member.in_sync,
                reachable=member.connected,
                position=rpb.LogPosition(seq=member.acked_seq),
                lag=member.lag,
            )
        )
    return reply
