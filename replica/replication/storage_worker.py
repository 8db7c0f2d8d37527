"""The executor's storage port on the replica's database: one worker thread that does what it
is handed in order -- durable writes (an epoch, a truncation), storing a batch from the
primary, appending the epoch_started event, reads for inputs -- and reports each outcome to
the executor's inbox. Nothing is reported done before its transaction committed."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event, Position
from projections.events import MemberRecord
from protos import replication_pb2 as rpb
from replica.config import ReplicaAddress
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.membership import Membership
from replica.replication.addresses import AddressBook
from replica.replication.ports import Inbox, LogFacts, LogReader, Persisted, Storage
from replica.storage.database import StorageOutageLog, storage_problem
from replica.storage.membership import (
    MEMBERSHIP_EVENT_TYPES,
    members_in_log,
    membership_after,
    membership_in_log,
)
from replica.storage.spans import DISABLED, Spans
from replica.storage.wire import event_from_proto
from replica.storage.writer import LogWriter, NewEvent

log = logging.getLogger(__name__)

Job = Callable[[], None]


class _Reader(LogReader):
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def last_position(self) -> Position:
        return eventlog.last_position(self._conn)

    def applied_seq(self) -> int:
        return projections.last_applied_seq(self._conn)

    def epoch_end(self, epoch: int) -> Position:
        return eventlog.epoch_end_seq(self._conn, epoch)


class DatabaseStorage(Storage):
    def __init__(
        self,
        index: int,
        engine: sa.Engine,
        writer: LogWriter,
        inbox: Inbox,
        *,
        initial_voters: tuple[int, ...],
        addresses: AddressBook | None = None,
        spans: Spans = DISABLED,
        on_store_error: Callable[[], None] = lambda: None,
    ) -> None:
        """`initial_voters`: the cluster config's replicas, the membership before any
        membership event in the log. `addresses`: told the members' addresses whenever the
        membership changes."""
        self.index = index
        self._initial_voters = initial_voters
        self._addresses = addresses
        # The membership the executor was last told of (read_membership sets the first), and
        # whether it may differ from the log's (a write of a membership event failed, its
        # commit perhaps in doubt: the next job reads it again).
        self.membership: Membership | None = None
        self._membership_lock = threading.Lock()
        self._membership_unsure = False
        self._engine = engine
        self._writer = writer
        self._inbox = inbox
        self._spans = spans
        self._on_store_error = on_store_error  # metrics
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._outage = StorageOutageLog(log, index, "replication")
        # Where the log ends (== the projections' position) after the last batch stored from
        # stream `_known_stream`, so that the next one reads neither; the position's
        # compare-and-set (projections.PositionMoved) guards the assumption.
        self._known_stream: int | None = None
        self._known_end: Position | None = None
        self._failed_stream: int | None = None  # a batch of it failed: skip the rest
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._work, name=f"storage-{self.index}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping:
                return
            job()

    def run_pending(self) -> None:
        """Do every job handed over so far, on the calling thread (for tests that turn the
        replica by hand; never while the worker runs)."""
        assert self._thread is None, "the worker runs"
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job()

    def _failed(self, exc: BaseException) -> str:
        if isinstance(exc, sa.exc.DBAPIError):
            self._outage.failed(exc)
            return storage_problem(exc)
        if not self._stopping:
            log.error(
                "replica %d: a storage job failed: %s: %s",
                self.index,
                exc.__class__.__name__,
                exc,
                exc_info=exc,
            )
        return f"{exc.__class__.__name__}: {exc}"

    # -- Storage ---------------------------------------------------------------------------

    def busy_since(self) -> float | None:
        return self._writer.watch.busy_since()

    def known_facts(self) -> LogFacts:
        last, applied = self._writer.known.get()
        return LogFacts(last, applied)

    def persist(self, durable: tuple[fx.Durable, ...]) -> None:
        def job() -> None:
            try:
                for effect in durable:
                    match effect:
                        case fx.PersistEpoch(epoch):
                            with self._writer.watch.operation(), self._engine.begin() as conn:
                                eventlog.raise_current_epoch(conn, epoch)
                        case fx.Truncate(after_seq):
                            self._truncate(after_seq)
            except Exception as exc:
                self._inbox.put(Persisted(self._failed(exc)))
                return
            self._outage.succeeded()
            self._inbox.put(Persisted())

        self._jobs.put(job)

    def _truncate(self, after_seq: int) -> None:
        started = time.monotonic()
        with self._writer.lock:
            self._writer.forget_positions()
            self._known_end = None
            with self._writer.watch.operation(), self._engine.begin() as conn:
                # The projections hold the tail's effects: take them back first, while the
                # tail is still in the log (undone event by event, or rebuilt).
                rolled = projections.roll_back(conn, after_seq)
                removed = eventlog.truncate_after(conn, after_seq)
                end = eventlog.last_position(conn)
                applied = projections.last_applied_seq(conn)
                membership = membership_in_log(conn, self._initial_voters)
                members = members_in_log(conn)
            self._writer.known.set(end, applied)
        self._tell_membership(membership, members)  # (the tail cut may have held a change)
        log.warning(
            "replica %d: truncated %d divergent event(s) after seq %d; projections %s in %.3fs",
            self.index,
            removed,
            after_seq,
            rolled.value,
            time.monotonic() - started,
        )

    def store_batch(self, stream_id: int, batch: object) -> None:
        if not isinstance(batch, rpb.Batch):
            raise TypeError(f"a replication batch, not {type(batch).__name__}")

        def job() -> None:
            if stream_id == self._failed_stream:
                # An earlier batch of this stream was not stored (its stream ended with it):
                # this one would follow a gap.
                self._inbox.submit(ins.StoreFailed(stream_id, "an earlier batch was not stored"))
                return
            if stream_id != self._known_stream:
                self._known_stream, self._known_end = stream_id, None
            known, self._known_end = self._known_end, None  # until this one committed
            try:
                membership, members = None, None
                with self._writer.lock:
                    with self._writer.watch.operation(), self._engine.begin() as conn:
                        self._writer.forget_positions()
                        stored, exact = self._store(conn, batch, known)
                        if self._membership_unsure or any(
                            e.type in MEMBERSHIP_EVENT_TYPES for e in batch.events
                        ):
                            membership = membership_in_log(conn, self._initial_voters)
                            members = members_in_log(conn)
                    self._writer.known.set(stored, stored.seq)
            except Exception as exc:
                self._failed_stream = stream_id
                self._on_store_error()
                self._inbox.submit(ins.StoreFailed(stream_id, self._failed(exc)))
                return
            # Committed: only now may the ack that BatchStored leads to go out -- after the
            # membership it stored, if it changed (a replica removed acks knowing it).
            self._outage.succeeded()
            if membership is not None:
                self._tell_membership(membership, members)
            if exact:
                self._known_end = stored
            self._spans.mark("stored", stored.seq)
            self._inbox.submit(
                ins.BatchStored(
                    stream_id, stored, batch.committed_seq, batch.in_sync, batch.echo_ack_id
                )
            )

        self._jobs.put(job)

    @staticmethod
    def _store(
        conn: sa.Connection, batch: rpb.Batch, known: Position | None
    ) -> tuple[Position, bool]:
        """Append and apply what the log lacks of `batch`, in the caller's transaction: the
        log's new end, and whether it is known to equal the projections' position."""
        events = [event_from_proto(e) for e in batch.events]
        last = eventlog.last_position(conn) if known is None else known
        fresh = [e for e in events if e.seq > last.seq]
        if not fresh:
            return last, known is not None
        # The log's INSERT, and the apply's closing writes (the messages' INSERT, the
        # position's update...) read nothing the others write, so on MySQL they travel in one
        # round trip instead of three.
        pipeline = projections.apply_pipeline(conn, fresh)
        eventlog.append_events(conn, fresh, after_seq=last.seq, pipeline=pipeline)
        position = None if known is None else known.seq
        applied = projections.apply_events(conn, fresh, position=position, pipeline=pipeline)
        if pipeline is not None:
            pipeline.flush()
        last = fresh[-1].position
        return last, known is not None or applied == last.seq

    def read_membership(self) -> Membership:
        """The membership in the log now (at start-up, before the worker runs)."""
        with self._engine.connect() as conn:
            membership = membership_in_log(conn, self._initial_voters)
            members = members_in_log(conn)
        with self._membership_lock:
            self.membership = membership
            self._membership_unsure = False
        self._set_addresses(members)
        return membership

    def _tell_membership(
        self, membership: Membership, members: tuple[MemberRecord, ...] | None
    ) -> None:
        """The membership in the log (as stored or written) is `membership`: the core hears
        it if it changed, the address book learns its members."""
        with self._membership_lock:
            self._membership_unsure = False
            changed = membership != self.membership
            self.membership = membership
            if changed:
                self._inbox.submit(ins.MembershipChanged(membership))
        self._set_addresses(members)

    def _set_addresses(self, members: tuple[MemberRecord, ...] | None) -> None:
        if self._addresses is not None and members is not None:
            self._addresses.set_members(
                ReplicaAddress(m.index, m.address, peer_address=m.peer_address) for m in members
            )

    # -- what the writer tells (under its lock) ----------------------------------------------

    def written(self, events: list[Event]) -> None:
        """The writer (this replica as primary) decided `events` and streams them: a
        membership event among them is in force from now on (Raft's rule: the latest in the
        log, committed or not), so the core hears of it before the events are streamed."""
        for event in events:
            if event.type in MEMBERSHIP_EVENT_TYPES:
                before = self.membership or Membership.initial(self._initial_voters)
                membership, members = membership_after(event, before)
                self._tell_membership(membership, members)

    def write_failed(self) -> None:
        """A written batch did not commit here (or its commit is in doubt): what the core
        was told at `written` may not be in the log. The next job reads it again (before
        any read an election waits on), and so does every job after until one succeeds."""
        with self._membership_lock:
            self._membership_unsure = True
        self._jobs.put(self._check_membership)

    def _check_membership(self) -> None:
        if not self._membership_unsure:
            return
        try:
            with self._writer.watch.operation(), self._engine.connect() as conn:
                membership = membership_in_log(conn, self._initial_voters)
                members = members_in_log(conn)
        except Exception as exc:
            self._failed(exc)
            return
        self._tell_membership(membership, members)

    def append_epoch_started(self, epoch: int) -> None:
        def job() -> None:
            try:
                event = self._writer.append_system_event(
                    NewEvent(*projections.encode(projections.EpochStarted(self.index))),
                    epoch,
                )
            except Exception as exc:
                self._inbox.submit(ins.EpochStartFailed(self._failed(exc)))
                return
            self._outage.succeeded()
            self._inbox.submit(ins.EpochStartAppended(event.position))

        self._jobs.put(job)

    def read(
        self,
        then: Callable[[LogReader], None],
        failed: Callable[[str], None],
        *,
        while_writes_wait: bool = False,
    ) -> None:
        def job() -> None:
            self._check_membership()
            lock = self._writer.lock if while_writes_wait else contextlib.nullcontext()
            answered = False
            try:
                with lock, self._writer.watch.operation(), self._engine.connect() as conn:
                    then(_Reader(conn))
                    answered = True
            except Exception as exc:
                reason = self._failed(exc)
                if not answered:  # (one answer: a failure closing the connection is not one)
                    failed(reason)
                return
            self._outage.succeeded()

        self._jobs.put(job)
