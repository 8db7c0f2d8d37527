"""The primary's side of replication: who is in sync, the commit point, and the stream that
feeds each secondary."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import sqlalchemy as sa

import eventlog
from eventlog import Event, Position
from protos import replication_pb2 as rpb
from replica import protocol
from replica.commit import CommitTracker
from replica.config import ClusterConfig
from replica.errors import Unavailable
from replica.wire import event_to_proto

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]


@dataclass
class SecondaryState:
    index: int
    stream_id: int = 0
    connected: bool = False
    acked_seq: int = 0
    # Counts for the commit point. A member leaves in two steps: it is told (`leaving`), and
    # it is removed once it acks that it knows, or once it has been unreachable too long.
    in_sync: bool = False
    leaving_since: float | None = None
    behind_since: float | None = None
    disconnected_at: float | None = None


@dataclass(frozen=True)
class SecondaryView:
    index: int
    connected: bool
    acked_seq: int
    in_sync: bool


class RecentEvents:
    """The newest appended events, already in their wire form, so that a stream feeding a
    secondary that keeps up neither reads them back from the database nor converts them once
    per secondary. Holds a contiguous run of seqs; anything older comes from the database."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._events: deque[rpb.Event] = deque()

    def add(self, events: list[Event]) -> None:
        protos = [event_to_proto(e) for e in events]
        with self._lock:
            if self._events and protos and protos[0].seq != self._events[-1].seq + 1:
                self._events.clear()  # a gap (e.g. an in-doubt commit): start a new run
            self._events.extend(protos)
            while len(self._events) > self._capacity:
                self._events.popleft()

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def after(self, seq: int, limit: int) -> list[rpb.Event] | None:
        """Up to `limit` events from seq + 1 on, or None if seq + 1 is not held."""
        with self._lock:
            if not self._events or not self._events[0].seq <= seq + 1 <= self._events[-1].seq:
                return None
            start = seq + 1 - self._events[0].seq
            return list(itertools.islice(self._events, start, start + limit))


@dataclass
class _Stream:
    index: int
    stream_id: int
    acked: Position = field(default_factory=lambda: Position(0, 0))
    # Ends of batches that reached the end of the log when they were sent.
    tips: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReplicationHub:
    """Tracks the secondaries of this primary; the commit point is the lowest seq acked by every
    in-sync secondary (Kafka acks=all).

    A secondary may vouch for holding every acknowledged event in an election only while it is
    in the set and knows it; so the set never shrinks behind a member's back: a connected
    member is told first and removed when it confirms, and an unreachable one is removed only
    after `insync_timeout_ms`, while it stops vouching after half of that (Coordinator)."""

    RECENT_EVENTS = 4096  # kept in wire form for the streams (RecentEvents)

    def __init__(
        self,
        index: int,
        config: ClusterConfig,
        commits: CommitTracker,
        *,
        clock: Monotonic = time.monotonic,
    ) -> None:
        self.index = index
        self._config = config
        self._commits = commits
        self._clock = clock
        self._cond = threading.Condition()
        self._active = False
        self._epoch = 0
        self._last_seq = 0
        self._next_stream_id = 0
        self._secondaries: dict[int, SecondaryState] = {}
        self.recent = RecentEvents(self.RECENT_EVENTS)
        self._membership_version = 0  # bumped when what a member should be told changes
        self.last_ack_at = 0.0  # from any secondary (monotonic)
        # Removing a silent secondary from the in-sync set is safe only if this primary has been
        # running, and so heartbeating, for longer than a secondary waits before electing: a
        # paused (SIGSTOPped) primary must not wake up and count on a set it no longer leads.
        self._awake_since = clock()

    # -- lifecycle -----------------------------------------------------------------------

    def activate(self, epoch: int, last_seq: int, voters: Iterable[int] = ()) -> None:
        """Lead `epoch`. The replicas that voted start in the in-sync set: they keep vouching
        for their logs through the election, so nothing is acknowledged without them until
        they catch up or are removed."""
        with self._cond:
            now = self._clock()
            self._active = True
            self._epoch = epoch
            self._last_seq = last_seq
            self._secondaries = {
                v: SecondaryState(v, in_sync=True, behind_since=now, disconnected_at=now)
                for v in voters
            }
            self._awake_since = now
            self.recent.clear()
            self._cond.notify_all()

    def deactivate(self) -> None:
        with self._cond:
            self._active = False
            self._secondaries = {}
            self.recent.clear()
            self._cond.notify_all()

    @property
    def active(self) -> bool:
        return self._active

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def note_pause(self) -> None:
        """The process was not running for a while (e.g. SIGSTOP): restart the awake window."""
        with self._cond:
            self._awake_since = self._clock()

    # -- writes --------------------------------------------------------------------------

    def check_writable(self) -> None:
        with self._cond:
            in_sync = sum(1 for s in self._secondaries.values() if s.in_sync)
        if not protocol.enough_in_sync(in_sync, self._config.min_insync):
            raise Unavailable(
                f"only {in_sync + 1} replica(s) in sync, fewer than min_insync="
                f"{self._config.min_insync}; writes are refused until a secondary catches up"
            )

    def on_appended(self, events: list[Event]) -> None:
        if not events:
            return
        self.recent.add(events)
        with self._cond:
            self._last_seq = max(self._last_seq, events[-1].seq)
            now = self._clock()
            for s in self._secondaries.values():
                if s.acked_seq < self._last_seq and s.behind_since is None:
                    s.behind_since = now
            self._cond.notify_all()
        self._advance_commit()

    def _advance_commit(self) -> None:
        with self._cond:
            if not self._active:
                return
            in_sync = {i: s.acked_seq for i, s in self._secondaries.items() if s.in_sync}
            enough = protocol.enough_in_sync(len(in_sync), self._config.min_insync)
            point = protocol.commit_point(self._last_seq, in_sync)
        if not enough:
            self._commits.set_stalled(
                f"only {len(in_sync) + 1} replica(s) in sync, fewer than min_insync="
                f"{self._config.min_insync}: not acknowledged yet; retry with the same "
                "request_id once a secondary has caught up"
            )
            return
        self._commits.set_stalled(None)
        self._commits.advance(point)

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, index: int) -> int:
        with self._cond:
            self._next_stream_id += 1
            state = self._secondaries.get(index)
            if state is None:
                state = self._secondaries[index] = SecondaryState(index)
            state.stream_id = self._next_stream_id
            state.connected = True
            state.disconnected_at = None
            self._cond.notify_all()
        self._advance_commit()
        return self._next_stream_id

    def close_stream(self, index: int, stream_id: int) -> None:
        with self._cond:
            state = self._secondaries.get(index)
            if state is None or state.stream_id != stream_id:
                return
            state.connected = False
            state.disconnected_at = self._clock()
        # It leaves the in-sync set at a later tick of the coordinator, which first checks
        # that this process was not paused (a paused primary must step down instead).

    def on_ack(
        self, index: int, stream_id: int, seq: int, knows_in_sync: bool, was_tip: bool = False
    ) -> None:
        """`was_tip`: `seq` was the end of the log when it was sent, so the secondary is caught
        up as of then (under steady writes it is never level with the log's end itself)."""
        with self._cond:
            state = self._secondaries.get(index)
            if state is None or state.stream_id != stream_id:
                return
            now = self._clock()
            state.acked_seq = max(state.acked_seq, seq)
            self.last_ack_at = now
            caught_up = state.acked_seq >= self._last_seq or was_tip
            if caught_up:
                state.behind_since = None
            elif state.behind_since is None:
                state.behind_since = now
            if state.leaving_since is not None and not knows_in_sync:
                self._remove_locked(state, "behind for too long")
            elif caught_up and state.leaving_since is not None:
                state.leaving_since = None  # caught up before it left: it stays
                self._membership_version += 1
            elif caught_up and not state.in_sync:
                state.in_sync = True
                self._membership_version += 1
                log.info(
                    "replica %d: replica %d joined the in-sync set at seq %d",
                    self.index,
                    index,
                    seq,
                )
            self._cond.notify_all()
        self._advance_commit()

    def tick(self, gone: Collection[int] = ()) -> None:
        """Called periodically by the coordinator, after it checked this process was not
        paused: start or finish removing members that left or fell behind for too long.
        `gone`: members whose host refused a connection just now (no process listens)."""
        with self._cond:
            self._evaluate_locked(self._clock(), gone)
        self._advance_commit()

    def _evaluate_locked(self, now: float, gone: Collection[int]) -> None:
        timeout = self._config.insync_timeout_ms / 1000
        if now - self._awake_since < self._config.peer_timeout_ms / 1000 * 1.5:
            return
        for s in self._secondaries.values():
            if not s.in_sync:
                continue
            if s.index in gone and not s.connected:
                # A dead process vouches for nothing, and a restarted one starts out of sync:
                # waiting out the timeout would only stall every write for it.
                self._remove_locked(s, "its process is gone: connection refused")
            elif s.disconnected_at is not None and now - s.disconnected_at > timeout:
                self._remove_locked(s, f"unreachable for more than {timeout:.1f}s")
            elif s.leaving_since is not None and now - s.leaving_since > timeout:
                self._remove_locked(s, "did not confirm leaving")
            elif (
                s.leaving_since is None
                and s.behind_since is not None
                and now - s.behind_since > timeout
            ):
                s.leaving_since = now  # told now; removed when it confirms
                self._membership_version += 1
                self._cond.notify_all()

    def _remove_locked(self, state: SecondaryState, reason: str) -> None:
        state.in_sync = False
        state.leaving_since = None
        self._membership_version += 1
        self._cond.notify_all()
        log.warning(
            "replica %d: replica %d left the in-sync set (%s)", self.index, state.index, reason
        )

    def in_sync_of(self, index: int) -> bool:
        """What to tell a secondary: whether it is in the set and not on its way out."""
        with self._cond:
            state = self._secondaries.get(index)
            return state is not None and state.in_sync and state.leaving_since is None

    @property
    def membership_version(self) -> int:
        return self._membership_version

    def wait_for_change(self, seq: int, membership_version: int, timeout: float) -> None:
        """Until the log grows past `seq`, the in-sync set changes, or `timeout`."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._last_seq > seq
                    or self._membership_version != membership_version
                    or not self._active
                ),
                timeout,
            )

    def views(self) -> list[SecondaryView]:
        with self._cond:
            return [
                SecondaryView(s.index, s.connected, s.acked_seq, s.in_sync)
                for s in self._secondaries.values()
            ]


class LeaderStream:
    """Serves one secondary's Replicate stream on the primary."""

    BATCH_EVENTS = 500
    MAX_IN_FLIGHT = 5000

    def __init__(
        self,
        hub: ReplicationHub,
        engine: sa.Engine,
        commits: CommitTracker,
        heartbeat_interval: float,
        on_newer_epoch: Callable[[int], None],
    ) -> None:
        self._hub = hub
        self._engine = engine
        self._commits = commits
        self._heartbeat_interval = heartbeat_interval
        self._on_newer_epoch = on_newer_epoch

    def serve(
        self, requests: Iterator[rpb.FollowerMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.LeaderMessage]:
        first = next(requests, None)
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Replicate stream starts with Hello")
        hello = first.hello
        epoch = self._hub.epoch
        if hello.follower_epoch > epoch:
            self._on_newer_epoch(hello.follower_epoch)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "a newer epoch exists; stepping down"
            )
        if not self._hub.active:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this replica is not the primary")
        follower = hello.follower_index
        position = Position(hello.position.epoch, hello.position.seq)
        # Divergence rounds: the follower truncates and says Hello again until it matches.
        while True:
            with self._engine.connect() as conn:
                leader_end = eventlog.epoch_end_seq(conn, position.epoch)
            yield rpb.LeaderMessage(
                leader_epoch=epoch,
                divergence=rpb.Divergence(
                    leader_end=rpb.LogPosition(epoch=leader_end.epoch, seq=leader_end.seq)
                ),
            )
            reply = next(requests, None)
            if reply is None:
                return
            if reply.HasField("ack"):
                start = reply.ack.position.seq
                break
            position = Position(reply.hello.position.epoch, reply.hello.position.seq)
        stream_id = self._hub.open_stream(follower)
        state = _Stream(follower, stream_id, Position(0, start))
        self._hub.on_ack(follower, stream_id, start, reply.ack.in_sync)
        reader = threading.Thread(
            target=self._read_acks, args=(requests, state), daemon=True, name=f"acks-{follower}"
        )
        reader.start()
        try:
            yield from self._send(state, start, epoch, context)
        finally:
            self._hub.close_stream(follower, stream_id)

    def _read_acks(self, requests: Iterator[rpb.FollowerMessage], state: _Stream) -> None:
        try:
            for message in requests:
                if message.HasField("ack"):
                    seq = message.ack.position.seq
                    state.acked = Position(message.ack.position.epoch, seq)
                    with state.lock:
                        was_tip = seq in state.tips
                        state.tips = {t for t in state.tips if t > seq}
                    self._hub.on_ack(
                        state.index, state.stream_id, seq, message.ack.in_sync, was_tip
                    )
        except grpc.RpcError:
            pass  # the stream ended; serve() notices through the context
        finally:
            self._hub.close_stream(state.index, state.stream_id)

    def _send(
        self, state: _Stream, start: int, epoch: int, context: grpc.ServicerContext
    ) -> Iterator[rpb.LeaderMessage]:
        sent = start
        last_sent_at = 0.0
        told_in_sync: bool | None = None
        while context.is_active() and self._hub.active and self._hub.epoch == epoch:
            now = time.monotonic()
            membership = self._hub.membership_version
            in_sync = self._hub.in_sync_of(state.index)
            in_flight = sent - state.acked.seq
            if sent < self._hub.last_seq and in_flight < self.MAX_IN_FLIGHT:
                events = self._hub.recent.after(sent, self.BATCH_EVENTS)
                if events is None:  # catching up from further back
                    with self._engine.connect() as conn:
                        stored = eventlog.read_events(conn, sent, self.BATCH_EVENTS)
                    events = [event_to_proto(e) for e in stored]
                if events:
                    sent = events[-1].seq
                    last_sent_at = now
                    if sent >= self._hub.last_seq:
                        with state.lock:
                            state.tips.add(sent)
                    yield rpb.LeaderMessage(
                        leader_epoch=epoch,
                        batch=rpb.Batch(
                            events=events,
                            committed_seq=self._commits.committed_seq,
                            in_sync=in_sync,
                        ),
                    )
                    told_in_sync = in_sync
                    continue
            # A secondary learns at once that it joined or left the in-sync set: until it
            # knows, it cannot vouch for holding every acknowledged event in an election.
            if now - last_sent_at >= self._heartbeat_interval or in_sync != told_in_sync:
                last_sent_at = now
                told_in_sync = in_sync
                if sent >= self._hub.last_seq:
                    with state.lock:
                        state.tips.add(sent)  # its ack then shows it holds the whole log
                yield rpb.LeaderMessage(
                    leader_epoch=epoch,
                    heartbeat=rpb.Heartbeat(
                        committed_seq=self._commits.committed_seq,
                        last_seq=self._hub.last_seq,
                        in_sync=in_sync,
                    ),
                )
            self._hub.wait_for_change(sent, membership, self._heartbeat_interval / 2)
