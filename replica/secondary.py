"""The secondary's side of replication: the follow loop and its one stream to the primary.

The core decides which stream to open (OpenStream) and when to give it up (CancelStream); this
module runs it: it says Hello, reads what the primary sends, turns each message into an input,
and carries out what comes back -- truncating a divergent tail, storing and applying a batch
in one transaction, acking. It never acks on its own: an ack is an effect the core emits only
after the store it depends on was reported done."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc
import sqlalchemy as sa

import eventlog
import projections
from eventlog import Position
from protos import replication_pb2 as rpb
from replica.coordinator import Coordinator, LocalEffects, StreamControl
from replica.database import StorageOutageLog
from replica.peers import Peers
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.rules import LogPosition
from replica.spans import DISABLED, Spans
from replica.wire import event_from_proto

log = logging.getLogger(__name__)


class _Outbox:
    """The request side of the stream: messages queued here are sent in order."""

    _CLOSE = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, message: rpb.SecondaryMessage) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._CLOSE)

    def __iter__(self) -> Iterator[rpb.SecondaryMessage]:
        while True:
            item = self._queue.get()
            if item is self._CLOSE:
                return
            assert isinstance(item, rpb.SecondaryMessage)
            yield item


@dataclass(frozen=True)
class _Wanted:
    stream_id: int
    primary: int
    epoch: int


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


class _StreamCancelled(Exception):
    pass


class Secondary(StreamControl):
    def __init__(
        self,
        index: int,
        engine: sa.Engine,
        write_lock: threading.Lock,
        coordinator: Coordinator,
        peers: Peers,
        *,
        spans: Spans = DISABLED,
        on_log_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._spans = spans
        # Under the write lock, after a transaction of ours wrote the log: the writer must not
        # trust what it holds in memory (LogWriter.forget_positions).
        self._on_log_written = on_log_written
        # Where the log ends (== the projections' position) after this stream's last store,
        # so that the next store reads neither; the position's compare-and-set guards it.
        self._known_end: Position | None = None
        self.index = index
        self._engine = engine
        self._write_lock = write_lock
        self._coordinator = coordinator
        self._peers = peers
        self._lock = threading.Lock()
        self._wanted: _Wanted | None = None
        self._wake = threading.Event()
        self._active: tuple[int, _Cancellable | None] | None = None  # (id, call)
        # Streams given up before their call was registered: older than the newest opened,
        # or cancelled by id.
        self._newest_opened = 0
        self._cancelled: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = StorageOutageLog(log, index, "replication", clock=coordinator.clock)
        self.on_database_error: Callable[[], None] | None = None  # metrics
        coordinator.attach_stream_control(self)

    # -- StreamControl (called by the coordinator, from any thread) ------------------------

    def open(self, stream_id: int, primary: int, epoch: int) -> None:
        with self._lock:
            self._wanted = _Wanted(stream_id, primary, epoch)
            self._newest_opened = max(self._newest_opened, stream_id)
            self._cancelled = {i for i in self._cancelled if i >= stream_id}
            active = self._active
        if active is not None and active[0] != stream_id:
            self._cancel_call(active)
        self._wake.set()

    def cancel(self, stream_id: int) -> None:
        with self._lock:
            if self._wanted is not None and self._wanted.stream_id == stream_id:
                self._wanted = None
            self._cancelled.add(stream_id)
            active = self._active
        if active is not None and active[0] == stream_id:
            self._cancel_call(active)

    @staticmethod
    def _cancel_call(active: tuple[int, _Cancellable | None]) -> None:
        call = active[1]
        if call is not None:
            call.cancel()

    # -- the follow loop -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"secondary-{self.index}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            active = self._active
        if active is not None:
            self._cancel_call(active)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                wanted, self._wanted = self._wanted, None
            if wanted is None or self._stop.is_set():
                continue
            try:
                self._follow(wanted)
            except sa.exc.DBAPIError as exc:  # nothing stored, nothing acked: retried later
                self._outage.failed(exc)
            except _StreamCancelled:
                pass
            except grpc.RpcError as exc:
                log.debug(
                    "replica %d: stream to replica %d ended: %s", self.index, wanted.primary, exc
                )
            except Exception:
                log.exception(
                    "replica %d: replication from replica %d failed", self.index, wanted.primary
                )
            else:
                self._outage.succeeded()
            finally:
                with self._lock:
                    self._active = None
                self._coordinator.run(ins.ReplicationStreamEnded(wanted.stream_id))
                self._coordinator.request_tick()  # look at the cluster now

    def _follow(self, wanted: _Wanted) -> None:
        """Run one stream until it breaks or the core gives it up."""
        stream_id = wanted.stream_id
        self._known_end = None
        outbox = _Outbox()
        outbox.put(self._hello(wanted.epoch))
        responses = self._peers.stub(wanted.primary).Replicate(
            iter(outbox), metadata=self._peers.metadata
        )
        with self._lock:
            if (
                self._stop.is_set()
                or stream_id < self._newest_opened
                or stream_id in self._cancelled
            ):
                responses.cancel()  # given up already
            self._active = (stream_id, responses)
        try:
            for message in responses:
                self._handle(stream_id, message, outbox)
        finally:
            outbox.close()
            responses.cancel()

    def _handle(self, stream_id: int, message: rpb.PrimaryMessage, outbox: _Outbox) -> None:
        cancelled: list[str] = []

        def local(effect: fx.Effect) -> bool:
            match effect:
                case fx.SendAck(sid, position, in_sync, ack_id) if sid == stream_id:
                    self._spans.mark("ack_queued", position.seq)
                    outbox.put(_ack(position, in_sync, ack_id))
                case fx.SendHello(sid, epoch) if sid == stream_id:
                    outbox.put(self._hello(epoch))
                case fx.CancelStream(sid, reason) if sid == stream_id:
                    cancelled.append(reason)  # after the rest is carried out
                case _:
                    return False
            return True

        kind = message.WhichOneof("kind")
        if kind == "divergence":
            self._resolve_divergence(stream_id, message, local)
        elif kind == "batch":
            self._receive_batch(stream_id, message, local)
        elif kind == "heartbeat":
            beat = message.heartbeat
            self._coordinator.run(
                ins.HeartbeatReceived(
                    stream_id,
                    message.primary_epoch,
                    beat.committed_seq,
                    beat.in_sync,
                    beat.echo_ack_id,
                ),
                local,
            )
        if cancelled:
            raise _StreamCancelled(cancelled[0])

    def _hello(self, epoch: int) -> rpb.SecondaryMessage:
        with self._engine.connect() as conn:
            position = eventlog.last_position(conn)
        return rpb.SecondaryMessage(
            hello=rpb.Hello(
                secondary_index=self.index,
                secondary_epoch=epoch,
                position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            )
        )

    def _resolve_divergence(
        self,
        stream_id: int,
        message: rpb.PrimaryMessage,
        local: LocalEffects,
    ) -> None:
        end = message.divergence.primary_end
        primary_end = Position(end.epoch, end.seq)
        # Under the write lock from the reads to the new Hello: the log cannot change between
        # what the core decided on and what is cut.
        with self._write_lock:
            with self._engine.connect() as conn:
                own_last = eventlog.last_position(conn)
                own_end = eventlog.epoch_end_seq(conn, primary_end.epoch)

            def truncating(effect: fx.Effect) -> bool:
                if not isinstance(effect, fx.Truncate):
                    return local(effect)
                started = time.monotonic()
                self._on_log_written()
                self._known_end = None
                with self._engine.begin() as conn:
                    # The projections hold the tail's effects: take them back first, while
                    # the tail is still in the log (undone event by event, or rebuilt).
                    rolled = projections.roll_back(conn, effect.after_seq)
                    removed = eventlog.truncate_after(conn, effect.after_seq)
                log.warning(
                    "replica %d: truncated %d divergent event(s) after seq %d (epoch %d tail);"
                    " projections %s in %.3fs",
                    self.index,
                    removed,
                    effect.after_seq,
                    own_last.epoch,
                    rolled.value,
                    time.monotonic() - started,
                )
                return True

            self._coordinator.run(
                ins.DivergenceReceived(
                    stream_id, message.primary_epoch, primary_end, own_last, own_end
                ),
                truncating,
            )

    def _receive_batch(
        self, stream_id: int, message: rpb.PrimaryMessage, local: LocalEffects
    ) -> None:
        batch = message.batch
        if not batch.events:
            return
        last = batch.events[-1]
        self._spans.mark("received_batch", last.seq)
        stored: list[Position] = []

        def storing(effect: fx.Effect) -> bool:
            if isinstance(effect, fx.StoreBatch) and effect.stream_id == stream_id:
                try:
                    stored.append(self._store(batch))
                    self._spans.mark("stored", stored[-1].seq)
                except sa.exc.DBAPIError as exc:
                    if self.on_database_error is not None:
                        self.on_database_error()
                    self._coordinator.run(ins.StoreFailed(stream_id, str(exc.orig)))
                    raise
                return True
            return local(effect)

        self._coordinator.run(
            ins.BatchReceived(stream_id, message.primary_epoch, Position(last.epoch, last.seq)),
            storing,
        )
        if stored:
            self._coordinator.run(
                ins.BatchStored(
                    stream_id, stored[0], batch.committed_seq, batch.in_sync, batch.echo_ack_id
                ),
                local,
            )

    def _store(self, batch: rpb.Batch) -> Position:
        events = [event_from_proto(e) for e in batch.events]
        with self._write_lock, self._engine.begin() as conn:
            self._on_log_written()
            known, self._known_end = self._known_end, None  # until this one committed
            last = eventlog.last_position(conn) if known is None else known
            fresh = [e for e in events if e.seq > last.seq]
            applied = None
            if fresh:
                # Sends only (the common batch): the log's INSERT, the messages' INSERT and
                # the position's update read nothing the others write, so on MySQL they
                # travel in one round trip instead of three.
                pipeline = projections.sends_pipeline(conn, fresh)
                eventlog.append_events(conn, fresh, after_seq=last.seq, pipeline=pipeline)
                position = None if known is None else known.seq
                applied = projections.apply_events(
                    conn, fresh, position=position, pipeline=pipeline
                )
                if pipeline is not None:
                    pipeline.flush()
                last = fresh[-1].position
        if known is not None or applied == last.seq:
            self._known_end = last
        return last


def _ack(position: LogPosition, in_sync: bool, ack_id: int) -> rpb.SecondaryMessage:
    return rpb.SecondaryMessage(
        ack=rpb.Ack(
            position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            in_sync=in_sync,
            ack_id=ack_id,
        )
    )
