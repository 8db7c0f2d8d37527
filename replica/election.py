"""The coordinator: watches the cluster, follows the primary, elects a new one when it is lost,
and steps down on learning of a newer epoch. The decisions themselves are in protocol.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
import sqlalchemy as sa

import eventlog
import projections
from eventlog import Position
from protos import replication_pb2 as rpb
from replica import protocol
from replica.commit import CommitTracker, InboxNotifier
from replica.config import ClusterConfig
from replica.database import StorageOutageLog
from replica.follower import Follower, FollowerState, StaleLeader
from replica.leader import ReplicationHub
from replica.peers import Peers, ProbeResult
from replica.role import Role, RoleState
from replica.writer import LogWriter, NewEvent

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        index: int,
        config: ClusterConfig,
        engine: sa.Engine,
        role: RoleState,
        writer: LogWriter,
        commits: CommitTracker,
        hub: ReplicationHub,
        notifier: InboxNotifier,
        peers: Peers,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.config = config
        self._engine = engine
        self._role = role
        self._writer = writer
        self._commits = commits
        self._hub = hub
        self._notifier = notifier
        self._peers = peers
        self._clock = clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake_follower = threading.Event()
        self._tick_now = threading.Event()
        self._interval = config.heartbeat_interval_ms / 1000
        self._peer_timeout = config.peer_timeout_ms / 1000
        # A primary drops an unreachable member after insync_timeout; the member stops
        # vouching for its log well before that.
        self._vouch_window = config.insync_timeout_ms / 1000 / 2
        self._tick_outage = StorageOutageLog(log, index, "the coordinator", clock=clock)
        self._follow_outage = StorageOutageLog(log, index, "replication", clock=clock)
        self._slot = sorted(r.index for r in config.replicas).index(index)
        with engine.connect() as conn:
            self._current_epoch = eventlog.current_epoch(conn)
        self.follower_state = FollowerState()
        self.follower = Follower(
            index,
            engine,
            writer.lock,
            lambda: self._current_epoch,
            self.observe_epoch,
            self.follower_state,
            on_committed=self._secondary_committed,
        )
        self._target: tuple[int, int] | None = None  # (primary index, epoch) to follow
        self._started_at = clock()
        self._last_tick = clock()
        self._last_probe: list[ProbeResult] = []
        self._threads: list[threading.Thread] = []
        self._stream_cancel: Callable[[], None] | None = None
        self._last_election_view: object = None

    # -- public --------------------------------------------------------------------------

    @property
    def current_epoch(self) -> int:
        return self._current_epoch

    @property
    def trusted(self) -> bool:
        """Holds every event the latest primary acknowledged: in its in-sync set and knows it,
        and up and listening since (see protocol.electable). A follower stuck storing a batch
        for half the in-sync timeout may have been dropped without hearing of it."""
        s = self.follower_state
        if self._role.snapshot.role is Role.PRIMARY or not s.in_sync:
            return False
        now = self._clock()
        lost_at, busy_since = s.stream_lost_at, s.processing_since
        if protocol.vouches(
            True,
            None if s.streaming or lost_at is None else now - lost_at,
            None if busy_since is None else now - busy_since,
            self._vouch_window,
        ):
            return True
        if not s.streaming:
            # For good: only the primary, over a new stream, can tell it it is in sync again.
            s.in_sync = False
        return False

    def following_live_primary(self) -> bool:
        s = self.follower_state
        return s.streaming and self._clock() - s.last_contact < self._peer_timeout

    def start(self) -> None:
        self._role.set(Role.CANDIDATE, self._current_epoch, None, None)
        for name, target in (("coordinator", self._run), ("follower", self._follow_loop)):
            thread = threading.Thread(target=target, name=f"{name}-{self.index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake_follower.set()
        self._cancel_stream()
        for thread in self._threads:
            thread.join(timeout=2)

    def observe_epoch(self, epoch: int) -> None:
        """Durably record a newer epoch; a primary that sees one steps down."""
        with self._lock:
            if epoch <= self._current_epoch:
                return
            with self._engine.begin() as conn:
                eventlog.raise_current_epoch(conn, epoch)
            self._current_epoch = epoch
            if self._role.snapshot.role is Role.PRIMARY:
                self._step_down(f"a newer epoch {epoch} exists")

    def _secondary_committed(self, seq: int) -> None:
        if self._role.snapshot.role is not Role.PRIMARY:
            self._commits.advance(seq)

    def my_position(self) -> Position:
        with self._engine.connect() as conn:
            return eventlog.last_position(conn)

    def handle_vote(self, request: rpb.VoteRequest) -> rpb.VoteReply:
        with self._lock:

            def refuse(reason: str) -> rpb.VoteReply:
                return rpb.VoteReply(granted=False, epoch=self._current_epoch, reason=reason)

            if request.epoch <= self._current_epoch:
                return refuse(f"epoch {request.epoch} is not newer than {self._current_epoch}")
            if self._role.snapshot.role is Role.PRIMARY:
                return refuse("I am the primary and alive")
            if self.following_live_primary():
                return refuse(
                    f"I follow a live primary (replica {self.follower_state.primary_index})"
                )
            mine = self.my_position()
            theirs = Position(request.position.epoch, request.position.seq)
            if theirs < mine:
                return refuse(f"my log ({mine.epoch}, {mine.seq}) is more up to date")
            # A voter keeps vouching for its log: the new primary counts it in its in-sync set
            # from the start (ReplicationHub.activate), so acknowledges nothing without it.
            with self._engine.begin() as conn:
                eventlog.raise_current_epoch(conn, request.epoch)
            self._current_epoch = request.epoch
            self._cancel_stream()
            log.info(
                "replica %d: voted for replica %d in epoch %d",
                self.index,
                request.candidate_index,
                request.epoch,
            )
            return rpb.VoteReply(granted=True, epoch=request.epoch)

    def handle_probe(self, request: rpb.ProbeRequest) -> rpb.ProbeReply:
        if (
            request.from_primary
            and request.from_epoch >= self._current_epoch
            and self._role.snapshot.role is not Role.PRIMARY
            and self._target != (request.from_index, request.from_epoch)
            and request.from_index in {p.index for p in self.config.peers_of(self.index)}
        ):
            # A new primary announces itself: follow it now rather than at our next probe.
            self._set_target(request.from_index, request.from_epoch)
        return self.probe_reply()

    def probe_reply(self) -> rpb.ProbeReply:
        snap = self._role.snapshot
        with self._engine.connect() as conn:
            position = eventlog.last_position(conn)
            applied = projections.last_applied_seq(conn)
        reply = rpb.ProbeReply(
            self=rpb.PeerState(
                index=self.index,
                role=snap.role.value,
                epoch=self._current_epoch,
                position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
                applied_seq=applied,
                in_sync=snap.role is Role.PRIMARY or self.follower_state.in_sync,
                reachable=True,
            ),
            primary_known=snap.primary_index is not None,
            primary_index=snap.primary_index or 0,
            trusted=self.trusted,
            following_live_primary=self.following_live_primary(),
        )
        if snap.role is Role.PRIMARY:
            for view in self._hub.views():
                reply.secondaries.append(
                    rpb.PeerState(
                        index=view.index,
                        in_sync=view.in_sync,
                        reachable=view.connected,
                        position=rpb.LogPosition(seq=view.acked_seq),
                        lag=max(0, self._hub.last_seq - view.acked_seq),
                    )
                )
        return reply

    def last_probe(self) -> list[ProbeResult]:
        return list(self._last_probe)

    # -- the coordinator loop ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._tick_now.wait(self._interval)
            self._tick_now.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except sa.exc.DBAPIError as exc:  # elections wait for the database to come back
                self._tick_outage.failed(exc)
            except Exception:  # a failing tick must not kill the coordinator
                log.exception("replica %d: coordinator tick failed", self.index)
            else:
                self._tick_outage.succeeded()
                if self.follower_state.streaming:
                    self._follow_outage.succeeded()

    def _tick(self) -> None:
        now = self._clock()
        previous, self._last_tick = self._last_tick, now
        gap = now - previous
        if gap > max(4 * self._interval, self._peer_timeout / 2) and self._was_frozen(previous):
            # Paused (SIGSTOP, a stall of the whole process): the others may have moved on.
            log.warning("replica %d: was paused for %.2fs", self.index, gap)
            self.follower_state.in_sync = False
            self._hub.note_pause()
            if gap > self._peer_timeout:
                # Long enough for the others to have elected a new primary, which this one
                # cannot rule out when it cannot reach them: acknowledging anything more
                # could contradict what the new primary acknowledged.
                self._step_down(f"paused for {gap:.2f}s, the others may have elected")
        probes = self._peers.probe_all(
            rpb.ProbeRequest(
                from_index=self.index,
                from_epoch=self._current_epoch,
                from_primary=self._role.snapshot.role is Role.PRIMARY,
            ),
            timeout=max(self._interval * 2, 0.2),
        )
        self._last_probe = probes
        live = [p.reply for p in probes if p.reply is not None]
        newest = max((r.self.epoch for r in live), default=0)
        snap = self._role.snapshot
        if snap.role is Role.PRIMARY:
            if newest > snap.epoch:
                self.observe_epoch(newest)
            else:
                self._hub.tick(gone={p.peer.index for p in probes if p.process_gone})
            return
        primaries = [
            r
            for r in live
            if r.self.role == Role.PRIMARY.value and r.self.epoch >= self._current_epoch
        ]
        if primaries:
            best = max(primaries, key=lambda r: r.self.epoch)
            self._set_target(best.self.index, best.self.epoch)
            # Not streaming from it yet: the vouch ends with the stream anyway (`trusted`).
            return
        if self.following_live_primary():
            return
        quiet_since = max(self.follower_state.last_contact, self._started_at)
        # A primary whose stream broke and that refuses connections is gone (a killed process
        # closes its sockets at once); only a silent one needs the full timeout.
        target_gone = self._target is not None and any(
            p.peer.index == self._target[0] and p.refused for p in probes
        )
        if self._target is not None and not target_gone and now - quiet_since < self._peer_timeout:
            return
        if any(r.following_live_primary for r in live):
            return  # someone still hears a primary; we will learn of it
        self._elect(live)

    def _was_frozen(self, since: float) -> bool:
        """Whether nothing in this process heard from a peer since `since`: a late tick on a
        busy machine, while the replication threads kept exchanging messages, is no pause."""
        if self._role.snapshot.role is Role.PRIMARY:
            return self._hub.last_ack_at < since
        return self.follower_state.last_contact < since

    def _set_target(self, primary_index: int, epoch: int) -> None:
        with self._lock:
            if epoch > self._current_epoch:
                with self._engine.begin() as conn:
                    eventlog.raise_current_epoch(conn, epoch)
                self._current_epoch = epoch
            address = self.config.replica(primary_index).address
            if self._target != (primary_index, epoch):
                log.info(
                    "replica %d: following replica %d (epoch %d)", self.index, primary_index, epoch
                )
                self._target = (primary_index, epoch)
                self._wake_follower.set()
            self._role.set(Role.SECONDARY, epoch, primary_index, address)

    def _elect(self, live: list[rpb.ProbeReply]) -> None:
        with self._lock:
            if self._role.snapshot.role is Role.PRIMARY or self._stop.is_set():
                return
            self._target = None
            self._cancel_stream()
            mine = protocol.CandidateView(
                self.index, self.my_position(), self._current_epoch, self.trusted
            )
            electorate = [mine] + [
                protocol.CandidateView(
                    r.self.index,
                    Position(r.self.position.epoch, r.self.position.seq),
                    r.self.epoch,
                    r.trusted,
                )
                for r in live
                if r.self.role != Role.PRIMARY.value
            ]
            choice = protocol.choose_primary(electorate, len(self.config.replicas))
            self._role.set(Role.CANDIDATE, self._current_epoch, None, None)
            self._log_election_view(electorate, choice)
            if choice != self.index:
                return
            if len(electorate) < protocol.votes_needed(self.config.min_insync):
                return
            epoch = protocol.next_epoch(
                max(c.epoch for c in electorate), self._slot, len(self.config.replicas)
            )
            with self._engine.begin() as conn:
                eventlog.raise_current_epoch(conn, epoch)
            self._current_epoch = epoch
            request = rpb.VoteRequest(
                candidate_index=self.index,
                epoch=epoch,
                position=rpb.LogPosition(epoch=mine.position.epoch, seq=mine.position.seq),
            )
        others = [c.index for c in electorate if c.index != self.index]
        replies = self._peers.request_votes(others, request, timeout=self._peer_timeout)
        refused = {
            i: r.reason if r else "unreachable" for i, r in replies.items() if not (r and r.granted)
        }
        if refused:
            log.info("replica %d: election for epoch %d failed: %s", self.index, epoch, refused)
            for reply in replies.values():
                if reply is not None and reply.epoch > epoch:
                    self.observe_epoch(reply.epoch)
            return
        self._become_primary(epoch, others)

    def _log_election_view(
        self, electorate: list[protocol.CandidateView], choice: int | None
    ) -> None:
        summary = (
            tuple((c.index, c.position.epoch, c.position.seq, c.trusted) for c in electorate),
            choice,
        )
        if summary != self._last_election_view:
            self._last_election_view = summary
            log.info(
                "replica %d: no live primary; electorate %s -> %s",
                self.index,
                ", ".join(
                    f"{c.index}@{c.position.epoch}.{c.position.seq}{'*' if c.trusted else ''}"
                    for c in electorate
                ),
                "none yet (waiting for a replica that was in sync, or for all replicas)"
                if choice is None
                else f"replica {choice}",
            )

    def _become_primary(self, epoch: int, voters: list[int]) -> None:
        with self._lock:
            if self._current_epoch != epoch or self._stop.is_set():
                return  # a newer epoch appeared while votes were collected
            self._cancel_stream()
            last = self.my_position()
            self.follower_state.in_sync = False
            self._commits.reset(min(self.follower_state.committed_seq, last.seq))
            self._hub.activate(epoch, last.seq, voters)
            # The new epoch starts durably, in the log, before any client write: committing
            # this event also commits every earlier event the new primary holds.
            self._writer.append_system_event(
                NewEvent(projections.EventTypes.EPOCH_STARTED, {"replica_index": self.index}),
                epoch,
            )
            self._role.set(Role.PRIMARY, epoch, self.index, self.config.replica(self.index).address)
            self._target = None
        self._tick_now.set()  # announce it to the others at once (handle_probe)
        log.info(
            "replica %d: primary for epoch %d (log was at %d.%d)",
            self.index,
            epoch,
            last.epoch,
            last.seq,
        )

    def _step_down(self, reason: str) -> None:
        with self._lock:
            if self._role.snapshot.role is not Role.PRIMARY:
                return
            log.warning("replica %d: stepping down: %s", self.index, reason)
            self._role.set(Role.SECONDARY, self._current_epoch, None, None)
            self._hub.deactivate()
            self._commits.abandon()
            self._notifier.wake_all()

    # -- following -----------------------------------------------------------------------

    def _cancel_stream(self) -> None:
        cancel = self._stream_cancel
        if cancel is not None:
            cancel()

    def _follow_loop(self) -> None:
        while not self._stop.is_set():
            target = self._target
            if target is None or self._role.snapshot.role is Role.PRIMARY:
                self._wake_follower.wait(self._interval)
                self._wake_follower.clear()
                continue
            primary_index, _epoch = target
            stop = threading.Event()
            self._stream_cancel = stop.set
            try:
                self.follower.follow(
                    self._peers.stub(primary_index),
                    primary_index,
                    lambda stop=stop, target=target: (  # type: ignore[misc]
                        stop.is_set() or self._stop.is_set() or self._target != target
                    ),
                    self._peers.metadata,
                    cancel_event=stop,
                )
            except StaleLeader as exc:
                log.info("replica %d: %s", self.index, exc)
                with self._lock:
                    if self._target == target:
                        self._target = None
            except grpc.RpcError as exc:
                log.debug(
                    "replica %d: stream to replica %d ended: %s", self.index, primary_index, exc
                )
            except sa.exc.DBAPIError as exc:  # nothing stored, nothing acked: retried below
                self._follow_outage.failed(exc)
            except Exception:
                log.exception(
                    "replica %d: replication from replica %d failed", self.index, primary_index
                )
            finally:
                self._stream_cancel = None
            self._tick_now.set()  # look at the cluster now rather than at the next tick
            self._wake_follower.wait(self._interval)
            self._wake_follower.clear()
