"""The primary's side of replication: serving one secondary's Replicate stream.

Every decision -- accept the stream or refuse it, what to send next, whether the secondary is
told it is in sync, when the stream must end -- is the core's (replica/protocol/in_sync.py).
This module reads the events the core asks for (from the recent-events cache or the log),
sends them, and turns the secondary's acks into inputs."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterator

import grpc
import sqlalchemy as sa

import eventlog
from eventlog import Event, Position
from protos import replication_pb2 as rpb
from replica.coordinator import Coordinator
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.spans import DISABLED, Spans
from replica.wire import event_to_proto

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
        commit) is not added again once it is durable."""
        with self._lock:
            held = self._events[-1].seq if self._events else None
        if held is not None:
            events = [e for e in events if e.seq > held]
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


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrimaryStreams:
    """Serves the Replicate streams of the secondaries while this replica is primary."""

    RECENT_EVENTS = 4096  # kept in wire form for the streams (RecentEvents)

    def __init__(
        self, coordinator: Coordinator, engine: sa.Engine, *, spans: Spans = DISABLED
    ) -> None:
        self._spans = spans
        self._coordinator = coordinator
        self._engine = engine
        self.recent = RecentEvents(self.RECENT_EVENTS)
        # A new term may hold other events at the same seqs (after a truncation).
        coordinator.add_term_listener(self.recent.clear)

    def on_written(self, events: list[Event]) -> None:
        """The writer decided these events and is committing them: cache them for the
        streams and let the core stream them now."""
        self.recent.add(events)
        self._coordinator.run(ins.Written(events[-1].seq))

    def on_write_failed(self, epoch: int, reason: str) -> None:
        """Events on_written announced (in `epoch`) did not commit here: the core steps
        down."""
        self._coordinator.run(ins.LocalWriteFailed(epoch, reason))

    def on_appended(self, events: list[Event]) -> None:
        """The writer's listener: cache the events (unless on_written did), then tell the
        core they are durable here."""
        if events:
            self.recent.add(events)
            self._coordinator.run(ins.Appended(events[-1].seq))

    def serve(
        self, requests: Iterator[rpb.SecondaryMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.PrimaryMessage]:
        first = next(requests, None)
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Replicate stream starts with Hello")
        secondary = first.hello.secondary_index
        message = first
        stream_id: int | None = None
        try:
            # Divergence rounds: the secondary truncates and says Hello again until it matches.
            while True:
                hello = message.hello
                try:
                    stream_id, divergence = self._answer_hello(secondary, stream_id, hello)
                except _Refused as refused:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, refused.reason)
                yield divergence
                reply = next(requests, None)
                if reply is None:
                    return
                if reply.HasField("ack"):
                    break
                if not reply.HasField("hello"):
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "expected Hello or Ack after Divergence"
                    )
                message = reply
            self._coordinator.run(
                ins.SecondaryAcked(
                    secondary,
                    stream_id,
                    reply.ack.position.seq,
                    reply.ack.in_sync,
                    reply.ack.ack_id,
                )
            )
            reader = threading.Thread(
                target=self._read_acks,
                args=(requests, secondary, stream_id),
                daemon=True,
                name=f"acks-{secondary}",
            )
            reader.start()
            yield from self._send(secondary, stream_id, context)
        finally:
            if stream_id is not None:  # (also while still in its divergence rounds)
                self._coordinator.run(ins.SecondaryDisconnected(secondary, stream_id))

    def _answer_hello(
        self, secondary: int, stream_id: int | None, hello: rpb.Hello
    ) -> tuple[int, rpb.PrimaryMessage]:
        answers: list[rpb.PrimaryMessage] = []
        ids: list[int] = []
        refusals: list[str] = []

        def local(effect: fx.Effect) -> bool:
            match effect:
                case fx.RefuseStream(_, reason):
                    refusals.append(reason)  # after the rest (a step-down) is carried out
                case fx.SendDivergence(_, sid, epoch, written_seq):
                    with self._engine.connect() as conn:
                        end = eventlog.epoch_end_seq(conn, hello.position.epoch)
                    if hello.position.epoch >= epoch and written_seq > end.seq:
                        end = Position(epoch, written_seq)  # (its commit here under way)
                    ids.append(sid)
                    answers.append(
                        rpb.PrimaryMessage(
                            primary_epoch=epoch,
                            divergence=rpb.Divergence(
                                primary_end=rpb.LogPosition(epoch=end.epoch, seq=end.seq)
                            ),
                        )
                    )
                case _:
                    return False
            return True

        self._coordinator.run(
            ins.SecondaryHello(secondary, stream_id, hello.secondary_epoch), local
        )
        if refusals:
            raise _Refused(refusals[0])
        return ids[0], answers[0]

    def _read_acks(
        self, requests: Iterator[rpb.SecondaryMessage], secondary: int, stream_id: int
    ) -> None:
        try:
            for message in requests:
                if message.HasField("ack"):
                    self._spans.mark(f"acked_by_{secondary}", message.ack.position.seq)
                    self._coordinator.run(
                        ins.SecondaryAcked(
                            secondary,
                            stream_id,
                            message.ack.position.seq,
                            message.ack.in_sync,
                            message.ack.ack_id,
                        )
                    )
        except grpc.RpcError:
            pass  # the stream ended; the sender notices through the context
        finally:
            self._coordinator.run(ins.SecondaryDisconnected(secondary, stream_id))

    def _send(
        self, secondary: int, stream_id: int, context: grpc.ServicerContext
    ) -> Iterator[rpb.PrimaryMessage]:
        coordinator = self._coordinator
        wait = coordinator.config.heartbeat_interval_ms / 1000 / 2
        while context.is_active() and not coordinator.stopping:
            seen = coordinator.sender_wakeups()
            outgoing, ended = self._next_messages(secondary, stream_id)
            yield from outgoing
            if ended:
                return
            if not outgoing:
                coordinator.wait_for_senders(seen, wait)

    def _next_messages(
        self, secondary: int, stream_id: int
    ) -> tuple[list[rpb.PrimaryMessage], bool]:
        """What the core wants sent now on this stream, and whether the stream must end."""
        outgoing: list[rpb.PrimaryMessage] = []
        ended: list[str] = []

        def local(effect: fx.Effect) -> bool:
            match effect:
                case fx.SendEvents():
                    outgoing.append(self._batch(secondary, effect))
                case fx.SendHeartbeat(_, _, epoch, committed, last_seq, in_sync, echo):
                    outgoing.append(
                        rpb.PrimaryMessage(
                            primary_epoch=epoch,
                            heartbeat=rpb.Heartbeat(
                                committed_seq=committed,
                                last_seq=last_seq,
                                in_sync=in_sync,
                                echo_ack_id=echo,
                            ),
                        )
                    )
                case fx.EndStream():
                    ended.append(effect.reason)
                case _:
                    return False
            return True

        self._coordinator.run(ins.SendWanted(secondary, stream_id), local)
        return outgoing, bool(ended)

    def _batch(self, secondary: int, effect: fx.SendEvents) -> rpb.PrimaryMessage:
        count = effect.through_seq - effect.after_seq
        events = self.recent.after(effect.after_seq, count)
        if events is None or not events or events[-1].seq != effect.through_seq:
            with self._engine.connect() as conn:
                stored = eventlog.read_events(conn, effect.after_seq, count)
            events = [event_to_proto(e) for e in stored]
        if not events or events[-1].seq != effect.through_seq:
            # The core counts these as sent: a stream that cannot send them must end, and the
            # secondary resumes from what it acked.
            raise RuntimeError(
                f"events {effect.after_seq + 1}..{effect.through_seq} are not all in the log"
            )
        self._spans.mark(f"sent_to_{secondary}", effect.through_seq)
        return rpb.PrimaryMessage(
            primary_epoch=effect.epoch,
            batch=rpb.Batch(
                events=events,
                committed_seq=effect.committed_seq,
                in_sync=effect.in_sync,
                echo_ack_id=effect.echo,
            ),
        )
