"""The secondary's side of replication: the executor's port for its one stream to the primary.

The core decides which stream to open (OpenStream), when to say Hello again (SendHello), what
to ack (SendAck) and when to give a stream up (CancelStream); this module runs it. Each stream
has a thread that reads what the primary sends and hands each message to the executor as an
input -- a batch with its events, for the StoreBatch that may follow; a divergence answer
with the log's ends read in storage's order, while client writes wait -- and reports the
stream's end. It never acks on its own: an ack is an effect the core emits only once storage
reported the batch's transaction committed."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from eventlog import Position
from protos import replication_pb2 as rpb
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.rules import LogPosition
from replica.replication import ports
from replica.replication.peers import Peers, UnknownPeer
from replica.storage.spans import DISABLED, Spans

log = logging.getLogger(__name__)


class _Outbox:
    """The request side of a stream: messages queued here are sent in order."""

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


class _Stream:
    """One stream to a primary: its outbox, its call, the thread that reads it."""

    def __init__(self, owner: FollowStreams, effect: fx.OpenStream) -> None:
        self.owner = owner
        self.stream_id = effect.stream_id
        self.primary = effect.primary
        self.outbox = _Outbox()
        self._lock = threading.Lock()
        self._call: grpc.Future[rpb.PrimaryMessage] | None = None
        self._cancelled = False
        self._ended = False
        self.thread: threading.Thread | None = None

    def start(self, hello: rpb.SecondaryMessage) -> None:
        """The Hello is ready (storage read the log's end): open the call."""
        with self._lock:
            if self._cancelled:
                self._report_end()
                return
            self.outbox.put(hello)
            self.thread = threading.Thread(
                target=self._read,
                name=f"follow-{self.owner.index}-{self.stream_id}",
                daemon=True,
            )
            self.thread.start()

    def _read(self) -> None:
        owner = self.owner
        heard = False  # anything from the primary on this stream
        try:
            responses = owner.peers.stub(self.primary).Replicate(
                iter(self.outbox), metadata=owner.peers.metadata
            )
            with self._lock:
                self._call = responses
                if self._cancelled:
                    responses.cancel()
            for message in responses:
                heard = True
                owner.received(self, message)
        except grpc.RpcError as exc:
            log.debug("replica %d: stream to replica %d ended: %s", owner.index, self.primary, exc)
            if not heard and exc.code() is grpc.StatusCode.UNAVAILABLE:
                # Perhaps only the channel's own past (a restart it has not noticed): the next
                # stream goes over a new channel.
                owner.peers.renew(self.primary)
        except ValueError as exc:  # the channel closed: the replica is stopping
            log.debug("replica %d: stream not opened: %s", owner.index, exc)
        except UnknownPeer:
            log.warning(
                "replica %d: replica %d leads, but its address is not known here yet",
                owner.index,
                self.primary,
            )
        finally:
            self.outbox.close()
            with self._lock:
                self._report_end()

    def _report_end(self) -> None:
        if not self._ended:
            self._ended = True
            self.owner.inbox.submit(ins.ReplicationStreamEnded(self.stream_id))

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            call = self._call
        if call is not None:
            call.cancel()

    def failed(self, reason: str) -> None:
        """Storage could not read what the stream needs: it ends."""
        log.debug("replica %d: stream %d ends: %s", self.owner.index, self.stream_id, reason)
        with self._lock:
            started = self.thread is not None
            self._cancelled = True
            call = self._call
            if not started:
                self._report_end()
        if call is not None:
            call.cancel()


class FollowStreams(ports.FollowStreams):
    def __init__(
        self,
        index: int,
        peers: Peers,
        storage: ports.Storage,
        inbox: ports.Inbox,
        *,
        spans: Spans = DISABLED,
    ) -> None:
        self.index = index
        self.peers = peers
        self.inbox = inbox
        self._storage = storage
        self._spans = spans
        self._lock = threading.Lock()
        self._current: _Stream | None = None
        self._last_primary: int | None = None  # of the latest stream opened

    def _stream(self, stream_id: int) -> _Stream | None:
        with self._lock:
            current = self._current
        return current if current is not None and current.stream_id == stream_id else None

    # -- FollowStreams (called by the executor) --------------------------------------------

    def open(self, effect: fx.OpenStream) -> None:
        stream = _Stream(self, effect)
        with self._lock:
            old, self._current = self._current, stream
            another = effect.primary != self._last_primary
            self._last_primary = effect.primary
        if another:
            # A new primary (a failover): its channel may not have carried anything since the
            # replica last went down -- a live stream means no probes -- and would fail at
            # once from its back-off; a new channel connects now.
            self.peers.renew(effect.primary)
        if old is not None:
            old.cancel()
        self._storage.read(
            lambda log_: stream.start(self._hello(log_.last_position(), effect.epoch)),
            stream.failed,
        )

    def cancel(self, stream_id: int, reason: str) -> None:
        with self._lock:
            stream = self._current
            if stream is None or stream.stream_id != stream_id:
                return
            self._current = None
        stream.cancel()

    def hello(self, stream_id: int, epoch: int) -> None:
        stream = self._stream(stream_id)
        if stream is None:
            return
        self._storage.read(
            lambda log_: stream.outbox.put(self._hello(log_.last_position(), epoch)),
            stream.failed,
        )

    def ack(self, effect: fx.SendAck) -> None:
        stream = self._stream(effect.stream_id)
        if stream is None:
            return
        self._spans.mark("ack_queued", effect.position.seq)
        stream.outbox.put(_ack(effect.position, effect.in_sync, effect.ack_id))

    def close_all(self, reason: str) -> None:
        with self._lock:
            stream, self._current = self._current, None
        if stream is not None:
            stream.cancel()

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            stream, self._current = self._current, None
        if stream is not None:
            stream.cancel()
            if stream.thread is not None:
                stream.thread.join(timeout)

    # -- what the primary sends (the stream's thread) --------------------------------------

    def received(self, stream: _Stream, message: rpb.PrimaryMessage) -> None:
        stream_id = stream.stream_id
        kind = message.WhichOneof("kind")
        if kind == "divergence":
            end = message.divergence.primary_end
            primary_end = Position(end.epoch, end.seq)
            epoch = message.primary_epoch

            def decide(log_: ports.LogReader) -> None:
                self.inbox.submit(ports.divergence_received(stream_id, epoch, primary_end, log_))

            # Client writes wait from the reads to what the core decides: the log cannot
            # change between them (a replica that stepped down may still be committing a
            # batch it streamed as primary).
            self._storage.read(decide, stream.failed, while_writes_wait=True)
        elif kind == "batch":
            batch = message.batch
            if not batch.events:
                return
            last = batch.events[-1]
            self._spans.mark("received_batch", last.seq)
            self.inbox.put(
                ports.Envelope(
                    ins.BatchReceived(
                        stream_id, message.primary_epoch, Position(last.epoch, last.seq)
                    ),
                    batch=batch,
                )
            )
        elif kind == "heartbeat":
            beat = message.heartbeat
            self.inbox.submit(
                ins.HeartbeatReceived(
                    stream_id,
                    message.primary_epoch,
                    beat.committed_seq,
                    beat.in_sync,
                    beat.echo_ack_id,
                )
            )

    def _hello(self, position: LogPosition, epoch: int) -> rpb.SecondaryMessage:
        return rpb.SecondaryMessage(
            hello=rpb.Hello(
                secondary_index=self.index,
                secondary_epoch=epoch,
                position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            )
        )


def _ack(position: LogPosition, in_sync: bool, ack_id: int) -> rpb.SecondaryMessage:
    return rpb.SecondaryMessage(
        ack=rpb.Ack(
            position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            in_sync=in_sync,
            ack_id=ack_id,
        )
    )
