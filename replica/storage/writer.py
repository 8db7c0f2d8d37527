"""The single writer: validate a command against the projections, append its event and apply
it in one transaction, then wait until it is committed before the caller replies."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event
from eventlog.statements import Pipeline
from replica.errors import ChatError, Unavailable
from replica.storage.commit import CommitTracker
from replica.storage.database import storage_error
from replica.storage.directory import Directory
from replica.storage.role import RoleState
from replica.storage.spans import DISABLED, Spans
from replica.storage.watch import KnownLog, StorageWatch

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """Naive UTC: both backends store DATETIME without a zone."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class NewEvent:
    type: str
    payload: dict[str, Any]


# Reads the projections inside the writer's transaction; returns the event to append, None
# when the command changes nothing, or raises a ChatError.
Decide = Callable[[sa.Connection], NewEvent | None]


class ReplicationFeed(Protocol):
    """What the writer tells replication (replica/replication/primary.py), under its lock: a batch's
    events as soon as they are decided (`written`, before their local commit), that such a
    batch then failed to commit (`write_failed`), and events once durable (`appended`)."""

    def written(self, events: list[Event]) -> None: ...

    def write_failed(self, epoch: int, reason: str) -> None: ...

    def appended(self, events: list[Event]) -> None: ...


class NoReplication:
    """A writer on its own (tests, tools): nothing to tell."""

    def written(self, events: list[Event]) -> None:
        pass

    def write_failed(self, epoch: int, reason: str) -> None:
        pass

    def appended(self, events: list[Event]) -> None:
        pass


@dataclass(frozen=True)
class Outcome:
    event: Event | None
    duplicate: bool


@dataclass(eq=False)
class _Command:
    request_id: str | None
    decide: Decide
    reads_inboxes: bool = True  # decide() reads the messages table
    received_ns: int = 0  # when it came in (only with spans on)
    # The commit tracker's tenure its batch was written in (-1, no tenure, until then).
    commit_tenure: int = -1
    # Set once the command is written (done) or its thread is to lead the next batch.
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    outcome: Outcome | None = None
    error: ChatError | None = None


class _RequestIdLogged(Exception):
    """The log's unique index refused a batch's INSERT: one of its request ids is logged."""


class LogWriter:
    MAX_BATCH = 256
    RECENT_REQUESTS = 16_384

    def __init__(
        self,
        engine: sa.Engine,
        role: RoleState,
        commits: CommitTracker,
        *,
        feed: ReplicationFeed | None = None,
        clock: Clock = utc_now,
        commit_timeout: float = 10.0,
        spans: Spans = DISABLED,
        watch: StorageWatch | None = None,
        known: KnownLog | None = None,
    ) -> None:
        self._spans = spans
        # Whether the database makes progress, and where the log ends (for answers that must
        # not wait on the database: replica/storage/watch.py).
        self.watch = watch if watch is not None else StorageWatch(role.index)
        self.known = known if known is not None else KnownLog()
        self._engine = engine
        self._role = role
        self._commits = commits
        self._clock = clock
        self.on_database_error: Callable[[], None] | None = None  # metrics
        self._commit_timeout = commit_timeout
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Command] = []
        # Whether a thread is writing batches (the leader); the others wait on their own
        # command, each woken once, instead of queueing on the write lock in turn.
        self._leading = False
        # The replication streams: told of a batch's events as soon as they are decided, so
        # that the secondaries store them while this replica commits them; and told when
        # such a batch then failed to commit (the primary must step down).
        self._feed: ReplicationFeed = feed or NoReplication()
        # The epoch in which a streamed batch failed to commit here: the secondaries may hold
        # it, so nothing more is written in that epoch (the same seqs would carry other
        # events). The core steps down when it hears of the failure; this holds off the
        # writes that come before it has.
        self._fenced_epoch: int | None = None
        # Held in memory between batches of one tenure, so that a batch reads neither the log's
        # end nor the projections' position, nor (through the directory) the accounts and
        # sessions a send names. Forgotten at a new tenure and after any failed batch; the
        # position's compare-and-set (projections.PositionMoved) guards the assumption.
        self.directory = Directory()
        self._cached_epoch: int | None = None  # the epoch the two below belong to
        self._last_seq: int | None = None  # the log's end == the projections' position
        # The events of this tenure's latest committed request ids (a retry of one is answered
        # without a query); forgotten with the rest. Any other logged request id is caught by
        # the log's unique index.
        # Seqs only: an event may hold a 4 KiB body twice over (payload and its JSON), and a
        # retry that finds its request here reads its event back, one row by seq.
        self._recent: OrderedDict[str, int] = OrderedDict()
        # Batches the log's unique index refused (a logged request id this writer did not
        # hold in memory), each then written again with the lookup.
        self.request_ids_refused = 0
        # The epoch the batch being written was handed to the streams in (None: not yet).
        self._streamed: int | None = None

    def queued(self) -> int:
        """Commands waiting for the next batch (a test composes a batch with it)."""
        with self._queue_lock:
            return len(self._queue)

    @property
    def lock(self) -> threading.Lock:
        """Held while the log is written; replication holds it to truncate or append."""
        return self._lock

    def execute(
        self, request_id: str | None, decide: Decide, *, reads_inboxes: bool = True
    ) -> Outcome:
        """Run one command. Commands that arrive while the log is being written are written
        together in the next transaction (group commit): one commit, one replication round
        trip, however many commands. A `decide` that does not read the messages table says so
        (`reads_inboxes=False`): the messages the batch has sent so far need not be inserted
        before it runs."""
        command = _Command(request_id, decide, reads_inboxes)
        if self._spans.enabled:
            command.received_ns = time.monotonic_ns()
        with self._queue_lock:
            self._queue.append(command)
            leads = not self._leading
            self._leading = True
        if not leads:
            # A leader writes it, or hands this thread the lead (wake set, not yet done).
            command.wake.wait()
        if not command.done:
            self._lead()
        if command.error is not None:
            raise command.error
        outcome = command.outcome
        assert outcome is not None
        if outcome.event is not None:
            self._commits.wait_committed(
                outcome.event.seq, self._commit_timeout, tenure=command.commit_tenure
            )
            self._spans.mark("woken", outcome.event.seq)
        return outcome

    def _lead(self) -> None:
        """Write the queued commands as one batch (this thread's among them), then hand the
        lead to the first command still queued, or give it up."""
        batch: list[_Command] = []
        try:
            with self._lock:
                with self._queue_lock:
                    batch = self._queue[: self.MAX_BATCH]
                    del self._queue[: self.MAX_BATCH]
                self._write_batch(batch)
        finally:
            unfinished = [c for c in batch if not c.done]  # (only if the write itself broke)
            if unfinished:
                self._fail(unfinished, Unavailable("the write was interrupted; retry"))
                for command in unfinished:
                    command.done = True
                    command.wake.set()
            with self._queue_lock:
                if self._queue:
                    self._queue[0].wake.set()
                else:
                    self._leading = False

    def _write_batch(self, batch: list[_Command]) -> None:
        """Decide, append and apply each command in turn in one transaction (each decides on
        the state the ones before it left); a command's domain error fails that command only."""
        appended: list[Event] = []
        self._streamed = None
        locked_ns = time.monotonic_ns() if self._spans.enabled else 0
        try:
            epoch = self._admit_batch(batch)
            try:
                appended = self._transaction(batch, epoch, look_up=False)
            except _RequestIdLogged:
                # A request id this tenure has not seen is in the log already (a retry after a
                # failover, or one older than what is kept): the unique index refused the
                # INSERT before anything was streamed. Written again with the lookup, the
                # duplicate is answered with its first result as before; the rest is written.
                self.request_ids_refused += 1
                self._forget()
                for command in batch:
                    command.outcome, command.error = None, None
                appended = self._transaction(batch, epoch, look_up=True)
        except ChatError as exc:  # not the primary: nothing was written
            self._forget()
            self._fail(batch, exc)
            appended = []
        except sa.exc.DBAPIError as exc:
            # The transaction rolled back (or its commit is in doubt): nothing of the batch
            # is acked. The driver's message only: the parameters hold password hashes.
            log.error("replica %d: the database refused a write: %s", self._role.index, exc.orig)
            if self.on_database_error is not None:
                self.on_database_error()
            self._failed(batch, storage_error(exc), self._streamed, str(exc.orig))
            appended = []
        except Exception as exc:
            log.exception("replica %d: writing a batch of commands failed", self._role.index)
            error = Unavailable(f"the write failed ({exc.__class__.__name__}); retry")
            self._failed(batch, error, self._streamed, exc.__class__.__name__)
            appended = []
        self._finish_batch(batch, appended, locked_ns)

    def _transaction(self, batch: list[_Command], epoch: int, *, look_up: bool) -> list[Event]:
        """The batch's transaction; its events once committed. Without `look_up` no query
        looks for logged request ids: those of this tenure's recent commits are known
        (`_recent`), and the log's unique index refuses any other (_RequestIdLogged, raised
        before the events are streamed); with it, the batch's request ids are read first."""
        known = self._last_seq
        self._last_seq = None  # until this batch is known to have committed
        with self.watch.operation(), self._engine.begin() as conn:
            start = eventlog.last_position(conn).seq if known is None else known
            logged: dict[str, Event] = {}
            if look_up:
                logged = eventlog.find_by_request_ids(
                    conn, [c.request_id for c in batch if c.request_id is not None]
                )
            applier = projections.Applier(conn, position=known)
            appended = self._decide_batch(conn, batch, epoch, start, logged, applier)
            seq = appended[-1].seq if appended else start
            if appended:
                # The log's INSERT first, on its own: a request id already logged is refused
                # here, before any secondary was sent the batch. Nothing a decide() reads
                # comes from the log itself (request ids are checked in `logged`/`_recent`).
                try:
                    # (Through a pipeline of its own: on MySQL one multi-row INSERT built
                    # here, cheaper than the driver's executemany, which parses it.)
                    inserted = Pipeline(conn)
                    eventlog.append_events(conn, appended, after_seq=start, pipeline=inserted)
                    inserted.flush()
                except sa.exc.IntegrityError as exc:
                    if look_up or not any(e.request_id is not None for e in appended):
                        raise
                    raise _RequestIdLogged() from exc
                # The secondaries store them while this transaction applies and commits
                # them: the core acknowledges nothing before Appended says they are durable
                # here too, and a failure from here on deposes this primary.
                self._streamed = epoch
                self._feed.written(appended)
            # The apply's closing writes (the messages' INSERT, the position's update...) go
            # to MySQL in one round trip (nothing reads between them).
            pipeline = projections.apply_pipeline(conn, appended)
            applied = applier.finish(pipeline)
            if pipeline is not None:
                pipeline.flush()
        self.directory.committed()
        self._remember(appended)
        if appended:
            self.known.set(appended[-1].position, applied)
        if applied == seq:
            self._last_seq = seq
        return appended

    def _remember(self, committed: list[Event]) -> None:
        recent = self._recent
        for event in committed:
            if event.request_id is not None:
                recent[event.request_id] = event.seq
        while len(recent) > self.RECENT_REQUESTS:
            recent.popitem(last=False)

    def _admit_batch(self, batch: list[_Command]) -> int:
        """The epoch the batch is written in; raises Unavailable (a ChatError) when this
        replica may not write now. Stamps each command with the commit tracker's tenure."""
        # Read before the role: a tenure that ends after this read fails the waits in execute().
        commit_tenure = self._commits.tenure
        for command in batch:
            command.commit_tenure = commit_tenure
        snap = self._role.require_primary()
        if snap.epoch == self._fenced_epoch:
            raise Unavailable(
                "this replica's commit of a streamed batch failed: it writes nothing more "
                f"in epoch {snap.epoch}; retry with the same request_id"
            )
        if snap.epoch != self._cached_epoch:
            self._forget()
            self._cached_epoch = snap.epoch
        return snap.epoch

    def _decide_batch(
        self,
        conn: sa.Connection,
        batch: list[_Command],
        epoch: int,
        after_seq: int,
        logged: dict[str, Event],
        applier: projections.Applier,
    ) -> list[Event]:
        """Each command's event, in seq order after `after_seq`; a command whose decide()
        raised a ChatError keeps it as its error and takes no seq."""
        appended: list[Event] = []
        seq = after_seq
        for command in batch:
            try:
                event = self._write_one(conn, command, epoch, seq + 1, logged, applier)
            except ChatError as exc:
                command.error = exc
                continue
            if event is not None:
                seq = event.seq
                appended.append(event)
        return appended

    def _finish_batch(self, batch: list[_Command], appended: list[Event], locked_ns: int) -> None:
        """Tell the commit tracker and the streams what became durable, then wake the batch."""
        if appended:
            if self._spans.enabled:
                self._mark_batch(batch, locked_ns, appended[-1].seq)
            self._commits.appended(appended)
            self._feed.appended(appended)
        for command in batch:
            command.done = True
            command.wake.set()

    def _write_one(
        self,
        conn: sa.Connection,
        command: _Command,
        epoch: int,
        seq: int,
        logged: dict[str, Event],
        applier: projections.Applier,
    ) -> Event | None:
        """Decide one command and apply its event (appended with the batch's); `logged`: the
        events of request ids already in the log or earlier in this batch."""
        request_id = command.request_id
        if request_id is not None:
            existing = logged.get(request_id) or self._recalled(conn, request_id)
            if existing is not None:
                command.outcome = Outcome(existing, duplicate=True)
                return None
        self._commits.admit()
        if command.reads_inboxes:
            applier.flush_messages()
        new = command.decide(conn)
        if self._spans.enabled:
            self._spans.mark("decided", seq)
        if new is None:
            command.outcome = Outcome(None, duplicate=False)
            return None
        # Encoded once: the log's INSERT and the streams' messages both carry this text.
        payload_json = eventlog.encode_payload(new.payload)
        event = Event(seq, epoch, new.type, new.payload, request_id, self._clock(), payload_json)
        applier.add(event)
        self.directory.applied(event)
        if request_id is not None:
            logged[request_id] = event
        command.outcome = Outcome(event, duplicate=False)
        return event

    def _recalled(self, conn: sa.Connection, request_id: str) -> Event | None:
        """The logged event of a request id this tenure committed recently, read back by seq;
        None if it is not among them."""
        seq = self._recent.get(request_id)
        if seq is None:
            return None
        found = eventlog.read_events(conn, seq - 1, 1)
        if not found or found[0].seq != seq or found[0].request_id != request_id:
            # (Cannot happen while the memory is forgotten with the log's every other writer;
            # the unique index still guards the request if it does.)
            log.error("replica %d: request %s is not at seq %d", self._role.index, request_id, seq)
            return None
        return found[0]

    def _mark_batch(self, batch: list[_Command], locked_ns: int, last_seq: int) -> None:
        self._spans.mark("local_commit", last_seq)
        for command in batch:
            outcome = command.outcome
            if outcome is not None and outcome.event is not None and not outcome.duplicate:
                self._spans.mark_at("received", outcome.event.seq, command.received_ns)
                self._spans.mark_at("locked", outcome.event.seq, locked_ns)

    def _failed(
        self, batch: list[_Command], error: ChatError, streamed: int | None, why: str
    ) -> None:
        self._forget()
        if streamed is not None:
            self._fenced_epoch = streamed
            self._feed.write_failed(streamed, why)
        self._fail(batch, error)

    def _forget(self) -> None:
        """What is held in memory can no longer be answered for (a failed or in-doubt batch,
        a new tenure, a write by another path): read it afresh."""
        self._cached_epoch = None
        self._last_seq = None
        self.directory.clear()
        self._recent.clear()

    def forget_positions(self) -> None:
        """The log or the projections were written by another path (replication, repair);
        call with the write lock held."""
        self._forget()

    @staticmethod
    def _fail(batch: list[_Command], error: ChatError) -> None:
        for command in batch:
            command.outcome = None
            command.error = error

    def append_system_event(self, new: NewEvent, epoch: int) -> Event:
        """An event the cluster writes itself (e.g. a new primary's epoch marker)."""
        with self._lock:
            with self.watch.operation(), self._engine.begin() as conn:
                self._forget()
                seq = eventlog.last_position(conn).seq + 1
                event = Event(seq, epoch, new.type, new.payload, None, self._clock())
                eventlog.append_events(conn, [event])
                applied = projections.apply_events(conn, [event])
            self.known.set(event.position, applied)
        self._commits.appended([event])
        self._feed.appended([event])
        return event
