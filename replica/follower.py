"""The secondary's side of replication: one stream to the primary, truncating a divergent tail,
then storing and applying each batch in one transaction and acking it."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Position
from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from replica import protocol
from replica.wire import event_from_proto

log = logging.getLogger(__name__)


class StaleLeader(Exception):
    """The stream's primary is of an older epoch than this replica has seen."""


@dataclass
class FollowerState:
    """What the follower has heard; read by the coordinator (monotonic times)."""

    primary_index: int | None = None
    primary_epoch: int = 0
    last_contact: float = 0.0
    in_sync: bool = False
    committed_seq: int = 0
    streaming: bool = False
    processing_since: float | None = None  # set while a message is being stored
    stream_lost_at: float | None = None  # when the last stream ended (None while streaming)


class _Outbox:
    """The request side of the stream: messages queued here are sent in order."""

    _CLOSE = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()

    def put(self, message: rpb.FollowerMessage) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._CLOSE)

    def __iter__(self) -> Iterator[rpb.FollowerMessage]:
        while True:
            item = self._queue.get()
            if item is self._CLOSE:
                return
            assert isinstance(item, rpb.FollowerMessage)
            yield item


class Follower:
    def __init__(
        self,
        index: int,
        engine: sa.Engine,
        write_lock: threading.Lock,
        current_epoch: Callable[[], int],
        observe_epoch: Callable[[int], None],
        state: FollowerState,
        *,
        on_committed: Callable[[int], None] = lambda seq: None,
    ) -> None:
        self.index = index
        self._engine = engine
        self._write_lock = write_lock
        self._current_epoch = current_epoch
        self._observe_epoch = observe_epoch
        self.state = state
        # Reads on a secondary show what the primary reports committed, up to what is stored.
        self._on_committed = on_committed
        self._stored_position = Position(0, 0)

    def follow(
        self,
        stub: rpb_grpc.ReplicationStub,
        primary_index: int,
        should_stop: Callable[[], bool],
        metadata: tuple[tuple[str, str], ...] = (),
        cancel_event: threading.Event | None = None,
    ) -> None:
        """Run one stream until it breaks, the primary turns out stale, should_stop(), or
        cancel_event is set (from another thread)."""
        outbox = _Outbox()
        outbox.put(self._hello())
        responses = stub.Replicate(iter(outbox), metadata=metadata)
        if cancel_event is not None:
            threading.Thread(
                target=lambda: (cancel_event.wait(), responses.cancel()),
                daemon=True,
                name=f"cancel-stream-{self.index}",
            ).start()
        try:
            for message in responses:
                if should_stop():
                    break
                if message.leader_epoch < self._current_epoch():
                    raise StaleLeader(
                        f"primary {primary_index} is at epoch {message.leader_epoch}, "
                        f"older than {self._current_epoch()}"
                    )
                self.state.processing_since = time.monotonic()
                try:
                    reply = self._handle(message, primary_index)
                finally:
                    self.state.processing_since = None
                self.state.last_contact = time.monotonic()
                if reply is not None:
                    outbox.put(reply)
        finally:
            if self.state.streaming or self.state.stream_lost_at is None:
                self.state.stream_lost_at = time.monotonic()
            self.state.streaming = False
            outbox.close()
            responses.cancel()
            if cancel_event is not None:
                cancel_event.set()

    def _handle(self, message: rpb.LeaderMessage, primary_index: int) -> rpb.FollowerMessage | None:
        self._observe_epoch(message.leader_epoch)
        self.state.primary_index = primary_index
        self.state.primary_epoch = message.leader_epoch
        kind = message.WhichOneof("kind")
        if kind == "divergence":
            reply = self._resolve_divergence(message.divergence)
            if reply.HasField("ack"):
                self.state.streaming = True
                self.state.stream_lost_at = None
            return reply
        if kind == "batch":
            position = self._store(message.batch)
            self.state.in_sync = message.batch.in_sync
            self.state.committed_seq = message.batch.committed_seq
            self._on_committed(min(message.batch.committed_seq, position.seq))
            return self._ack(position)
        if kind == "heartbeat":
            self.state.in_sync = message.heartbeat.in_sync
            self.state.committed_seq = message.heartbeat.committed_seq
            self._on_committed(min(message.heartbeat.committed_seq, self._stored_position.seq))
            # Acked too: it tells the primary this replica is alive and what it believes
            # about its membership (the primary removes a member only once it knows).
            return self._ack(self._stored_position)
        return None

    def _ack(self, position: Position) -> rpb.FollowerMessage:
        return rpb.FollowerMessage(
            ack=rpb.Ack(
                position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
                in_sync=self.state.in_sync,
            )
        )

    def _hello(self) -> rpb.FollowerMessage:
        with self._engine.connect() as conn:
            return self._hello_from(conn)

    def _resolve_divergence(self, divergence: rpb.Divergence) -> rpb.FollowerMessage:
        leader_end = Position(divergence.leader_end.epoch, divergence.leader_end.seq)
        with self._write_lock, self._engine.begin() as conn:
            own_last = eventlog.last_position(conn)
            own_end = eventlog.epoch_end_seq(conn, leader_end.epoch)
            cut = protocol.truncation_point(own_last, leader_end, own_end)
            if cut < own_last.seq:
                removed = eventlog.truncate_after(conn, cut)
                # The projections held the removed events' effects: derive them again.
                projections.rebuild(conn)
                log.warning(
                    "replica %d: truncated %d divergent event(s) after seq %d (epoch %d tail)",
                    self.index,
                    removed,
                    cut,
                    own_last.epoch,
                )
                return self._hello_from(conn)
            self._stored_position = own_last
            return self._ack(own_last)

    def _hello_from(self, conn: sa.Connection) -> rpb.FollowerMessage:
        position = eventlog.last_position(conn)
        return rpb.FollowerMessage(
            hello=rpb.Hello(
                follower_index=self.index,
                follower_epoch=self._current_epoch(),
                position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            )
        )

    def _store(self, batch: rpb.Batch) -> Position:
        events = [event_from_proto(e) for e in batch.events]
        with self._write_lock, self._engine.begin() as conn:
            last = eventlog.last_position(conn)
            fresh = [e for e in events if e.seq > last.seq]
            if fresh:
                eventlog.append_events(conn, fresh, after_seq=last.seq)
                projections.apply_events(conn, fresh)
                last = fresh[-1].position
        self._stored_position = last
        return last
