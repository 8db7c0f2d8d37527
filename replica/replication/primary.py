"""The primary's side of replication: serving one secondary's Replicate stream.

Every decision -- accept the stream or refuse it, what to send next, whether the secondary is
told it is in sync, when the stream must end -- is the core's (replica/protocol/in_sync.py),
made on the executor's thread and handed to the stream's `ServedStream` (the executor's port
for it). The call's own thread sends what it is handed, reading the events the core asks for
from the recent-events cache or the log; a second thread turns the secondary's acks into
inputs. The writer tells this module of each batch (`written`, `appended`, `write_failed`)."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import sqlalchemy as sa

import eventlog
from eventlog import Event, Position
from protos import replication_pb2 as rpb
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.replication import ports
from replica.storage.spans import DISABLED, Spans
from replica.storage.watch import StorageWatch
from replica.storage.wire import event_to_proto

log = logging.getLogger(__name__)


class RecentEvents:
    """The newest appended events, already in their wire form, so that a stream feeding a
    secondary that keeps up neither reads them back from the database nor converts them once
    per secondary. Holds a contiguous run of seqs; anything older comes from the database."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._events: deque[rpb.Event] = deque()

    def add(self, events: list[Event]) -> None:
        """Events from the writer: a batch already added when it was written (before its
        commit) is not added again once it is durable. A seq is not an event: one held with
        another epoch than the one added (a batch of an older tenure that failed, written while
        a newer tenure began) is dropped with everything after it."""
        if not events:
            return
        with self._lock:
            held = {e.seq: e.epoch for e in self._held_from(events[0].seq)}
        if any(held.get(e.seq, e.epoch) != e.epoch for e in events):
            with self._lock:
                while self._events and self._events[-1].seq >= events[0].seq:
                    self._events.pop()
            held = {}
        protos = [event_to_proto(e) for e in events if e.seq not in held]
        with self._lock:
            if self._events and protos and protos[0].seq != self._events[-1].seq + 1:
                self._events.clear()  # a gap (e.g. an in-doubt commit): start a new run
            self._events.extend(protos)
            while len(self._events) > self._capacity:
                self._events.popleft()

    def _held_from(self, seq: int) -> list[rpb.Event]:
        if not self._events or seq > self._events[-1].seq:
            return []
        start = max(0, seq - self._events[0].seq)
        return list(itertools.islice(self._events, start, None))

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


@dataclass(frozen=True)
class _Refused:
    reason: str


@dataclass(frozen=True)
class _Ended:
    reason: str


_Item = fx.SendDivergence | fx.SendEvents | fx.SendHeartbeat | _Refused | _Ended


class ServedStream(ports.ServedStream):
    """What the executor hands one served stream, queued for the call's thread."""

    # Messages queued beyond which the stream is not fed more (the call's thread sends
    # them, or gRPC's flow control holds it).
    READY_BELOW = 2

    def __init__(self, secondary: int, inbox: ports.Inbox) -> None:
        self.secondary = secondary
        self._inbox = inbox
        self._items: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.stream_id: int | None = None  # the core's, once it answered the Hello
        self._closed = False  # the call is over
        self.ended = threading.Event()  # the core ended it: what is queued is not sent

    def divergence(self, effect: fx.SendDivergence) -> None:
        with self._lock:
            self.stream_id = effect.stream_id
            closed = self._closed
        if closed:  # the call ended before its Hello was answered: the core forgets it
            self._inbox.submit(ins.SecondaryDisconnected(self.secondary, effect.stream_id))
        self._items.put(effect)

    def refuse(self, reason: str) -> None:
        self._items.put(_Refused(reason))

    def send(self, effect: fx.SendEvents | fx.SendHeartbeat) -> None:
        self._items.put(effect)

    def end(self, reason: str) -> None:
        self.ended.set()
        self._items.put(_Ended(reason))

    def ready(self) -> bool:
        return self._items.qsize() < self.READY_BELOW

    def close(self) -> None:
        """The call is over: the core hears the stream is gone (now, or once it answers the
        Hello)."""
        with self._lock:
            self._closed = True
            stream_id = self.stream_id
        if stream_id is not None:
            self._inbox.submit(ins.SecondaryDisconnected(self.secondary, stream_id))

    def next(self, context: grpc.ServicerContext, stopping: threading.Event) -> _Item:
        while True:
            if self.ended.is_set():
                return _Ended("ended")
            try:
                return self._items.get(timeout=1.0)
            except queue.Empty:
                if not context.is_active() or stopping.is_set():
                    return _Ended("the call ended")


class PrimaryStreams:
    """Serves the Replicate streams of the secondaries while this replica is primary."""

    RECENT_EVENTS = 4096  # kept in wire form for the streams (RecentEvents)

    def __init__(
        self,
        engine: sa.Engine,
        inbox: ports.Inbox,
        *,
        spans: Spans = DISABLED,
        watch: StorageWatch | None = None,
    ) -> None:
        self._spans = spans
        self._watch = watch if watch is not None else StorageWatch(-1)
        self._engine = engine
        self._inbox = inbox
        self.recent = RecentEvents(self.RECENT_EVENTS)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    # -- the writer's feed (writer.ReplicationFeed) ----------------------------------------

    def written(self, events: list[Event]) -> None:
        """The writer decided these events and is committing them: cache them for the
        streams and let the core stream them now."""
        self.recent.add(events)
        self._inbox.submit(ins.Written(events[-1].seq))

    def write_failed(self, epoch: int, reason: str) -> None:
        """Events `written` announced (in `epoch`) did not commit here: the core steps
        down."""
        self._inbox.submit(ins.LocalWriteFailed(epoch, reason))

    def appended(self, events: list[Event]) -> None:
        """Events are durable here: cache them (unless `written` did) and tell the core."""
        if events:
            self.recent.add(events)
            self._inbox.submit(ins.Appended(events[-1].seq))

    # -- one secondary's stream (a gRPC thread) --------------------------------------------

    def serve(
        self, requests: Iterator[rpb.SecondaryMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.PrimaryMessage]:
        first = next(requests, None)
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Replicate stream starts with Hello")
        secondary = first.hello.secondary_index
        stream = ServedStream(secondary, self._inbox)
        hello = first.hello
        self._inbox.put(
            ports.Envelope(
                ins.SecondaryHello(secondary, None, hello.secondary_epoch), stream=stream
            )
        )
        try:
            while True:
                item = stream.next(context, self._stopping)
                match item:
                    case _Refused(reason):
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
                    case _Ended():
                        return
                    case fx.SendDivergence():
                        stream_id = item.stream_id
                        yield self._divergence(item, hello)
                        # The secondary truncates and says Hello again until nothing is cut;
                        # then it acks, and from its first ack on this stream is fed.
                        reply = next(requests, None)
                        if reply is None:
                            return
                        if reply.HasField("hello"):
                            hello = reply.hello
                            self._inbox.put(
                                ports.Envelope(
                                    ins.SecondaryHello(secondary, stream_id, hello.secondary_epoch),
                                    stream=stream,
                                )
                            )
                            continue
                        if not reply.HasField("ack"):
                            context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                "expected Hello or Ack after Divergence",
                            )
                        self._acked(secondary, stream_id, reply.ack)
                        threading.Thread(
                            target=self._read_acks,
                            args=(requests, stream, stream_id),
                            daemon=True,
                            name=f"acks-{secondary}-{stream_id}",
                        ).start()
                    case fx.SendEvents():
                        batch = self._batch(item)
                        if batch is None or stream.ended.is_set():
                            return
                        yield batch
                    case fx.SendHeartbeat(_, _, epoch, committed, last_seq, in_sync, echo):
                        yield rpb.PrimaryMessage(
                            primary_epoch=epoch,
                            heartbeat=rpb.Heartbeat(
                                committed_seq=committed,
                                last_seq=last_seq,
                                in_sync=in_sync,
                                echo_ack_id=echo,
                            ),
                        )
        finally:
            stream.close()  # (also while still in its divergence rounds)

    def _divergence(self, effect: fx.SendDivergence, hello: rpb.Hello) -> rpb.PrimaryMessage:
        """This log's last position among events of epoch <= the Hello's last epoch; through
        `written_seq`, all of `epoch` (its commit here may be under way)."""
        with self._watch.operation(), self._engine.connect() as conn:
            end = eventlog.epoch_end_seq(conn, hello.position.epoch)
        if hello.position.epoch >= effect.epoch and effect.written_seq > end.seq:
            end = Position(effect.epoch, effect.written_seq)
        return rpb.PrimaryMessage(
            primary_epoch=effect.epoch,
            divergence=rpb.Divergence(primary_end=rpb.LogPosition(epoch=end.epoch, seq=end.seq)),
        )

    def _acked(self, secondary: int, stream_id: int, ack: rpb.Ack) -> None:
        self._spans.mark(f"acked_by_{secondary}", ack.position.seq)
        self._inbox.submit(
            ins.SecondaryAcked(secondary, stream_id, ack.position.seq, ack.in_sync, ack.ack_id)
        )

    def _read_acks(
        self, requests: Iterator[rpb.SecondaryMessage], stream: ServedStream, stream_id: int
    ) -> None:
        try:
            for message in requests:
                if message.HasField("ack"):
                    self._acked(stream.secondary, stream_id, message.ack)
        except grpc.RpcError:
            pass  # the stream ended
        except ValueError:
            pass  # its call is gone (the server stops)
        finally:
            stream.end("the secondary's side ended")

    def _batch(self, effect: fx.SendEvents) -> rpb.PrimaryMessage | None:
        count = effect.through_seq - effect.after_seq
        events = self.recent.after(effect.after_seq, count)
        if events is None or not ports.sendable(effect, events):
            with self._watch.operation(), self._engine.connect() as conn:
                stored = eventlog.read_events(conn, effect.after_seq, count)
            events = [event_to_proto(e) for e in stored]
        if not ports.sendable(effect, events):
            # The core counts these as sent: a stream that cannot send them ends, and the
            # secondary resumes from what it acked. (Events of a newer epoch than the stream's
            # mean this replica's log moved on since: it is no longer that epoch's primary.)
            log.warning(
                "events %d..%d of epoch %d or older are not all in the log: ending the stream "
                "to replica %d",
                effect.after_seq + 1,
                effect.through_seq,
                effect.epoch,
                effect.secondary,
            )
            return None
        self._spans.mark(f"sent_to_{effect.secondary}", effect.through_seq)
        return rpb.PrimaryMessage(
            primary_epoch=effect.epoch,
            batch=rpb.Batch(
                events=events,
                committed_seq=effect.committed_seq,
                in_sync=effect.in_sync,
                echo_ack_id=effect.echo,
            ),
        )
