"""An in-process replica whose Session stream the test drives: it records every request,
holds sends until told to answer them (or answers at once), applies each request id once in
a log it may share with other fakes (a replicated log's deduplication), and ends a stream
with the status a test names."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from protos import chat_pb2, chat_pb2_grpc
from testsupport.harness import wait_until

TOKEN = "token-1"


class FakeSessionReplica(chat_pb2_grpc.ChatServicer):
    def __init__(
        self, log: dict[str, int], *, max_in_flight: int = 64, answer_at_once: bool = True
    ) -> None:
        self.log = log  # request id -> message id, shared by the fakes of one "cluster"
        self.max_in_flight = max_in_flight
        self.answer_at_once = answer_at_once
        self.address = ""
        self.server: grpc.Server | None = None
        self.unary_sends: list[chat_pb2.SendRequest] = []
        self._cond = threading.Condition()
        self.received: list[chat_pb2.SessionRequest] = []  # sends and acks, in order
        self._held: dict[int, chat_pb2.SessionRequest] = {}
        self.most_in_flight = 0
        self.refused_beyond_bound = 0
        self._replies: queue.SimpleQueue[Any] | None = None
        self._stepped_down: tuple[grpc.StatusCode, str, str] | None = None
        # Until thawed, its ClusterStatus (a liveness probe) answers only after 0.2 s.
        self.thawed = threading.Event()
        self.thawed.set()
        self.probes = 0
        self.opens = 0  # Session streams begun
        # Before answering `open`, wait (up to 2 s) for this many sends on the new stream, and
        # note how many came: a client that sends only once opened would have sent none.
        self.hold_open_for_sends = 0
        self.sends_before_opened: list[int] = []

    # -- what the test does ------------------------------------------------------------------

    def wait_held(self, count: int, timeout: float = 10) -> None:
        def enough() -> bool:
            with self._cond:
                return len(self._held) >= count

        wait_until(enough, timeout, f"{count} requests held at {self.address}")

    def apply_held(self) -> list[str]:
        """Apply every held request to the log without answering (the reply is lost)."""
        with self._cond:
            held = list(self._held.values())
        for request in held:
            self._apply(request)
        return [r.send.request_id for r in held]

    def answer_held(self) -> None:
        with self._cond:
            held, self._held = list(self._held.values()), {}
            replies = self._replies
        assert replies is not None
        for request in reversed(held):  # in another order than sent
            replies.put(self._apply(request))

    def end_stream(self, code: grpc.StatusCode, details: str, primary: str | None = None) -> None:
        with self._cond:
            replies, self._held = self._replies, {}
            if primary is not None:  # not the primary: later streams are refused too
                self._stepped_down = (code, details, primary)
        assert replies is not None
        replies.put((code, details, primary))

    def step_down(self, primary: str) -> None:
        """From now on, refuse Session streams as "not the primary", naming `primary`."""
        with self._cond:
            self._stepped_down = (grpc.StatusCode.FAILED_PRECONDITION, "not the primary", primary)

    def sent_request_ids(self) -> list[str]:
        with self._cond:
            return [r.send.request_id for r in self.received if r.HasField("send")]

    # -- the service -------------------------------------------------------------------------

    def _apply(self, request: chat_pb2.SessionRequest) -> chat_pb2.SessionReply:
        with self._cond:
            message_id = self.log.setdefault(request.send.request_id, len(self.log) + 1)
        return chat_pb2.SessionReply(
            correlation_id=request.correlation_id,
            send=chat_pb2.SendReply(message_id=message_id),
        )

    def Login(self, request: Any, context: grpc.ServicerContext) -> Any:
        return chat_pb2.LoginReply(session_token=TOKEN, username=request.username)

    def ClusterStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self.probes += 1
        self.thawed.wait(0.2)
        return chat_pb2.ClusterStatusReply()

    def Send(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self.unary_sends.append(request)
            message_id = self.log.setdefault(request.request_id, len(self.log) + 1)
        return chat_pb2.SendReply(message_id=message_id)

    def Session(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        first = next(requests)
        assert first.open.session_token == TOKEN
        with self._cond:
            self.opens += 1
        if self._stepped_down is not None:
            code, details, primary = self._stepped_down
            context.set_trailing_metadata((("chat-primary-address", primary),))
            context.abort(code, details)
        replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._cond:
            self._replies = replies
        context.add_callback(lambda: replies.put(None))
        with self._cond:
            received_before = len(self.received)
        threading.Thread(target=self._read, args=(requests, replies), daemon=True).start()
        if self.hold_open_for_sends:
            with self._cond:
                self._cond.wait_for(
                    lambda: len(self.received) - received_before >= self.hold_open_for_sends, 2
                )
                self.sends_before_opened.append(len(self.received) - received_before)
        yield chat_pb2.SessionReply(opened=chat_pb2.SessionOpened(max_in_flight=self.max_in_flight))
        while True:
            item = replies.get()
            if item is None:
                return
            if isinstance(item, tuple):
                code, details, primary = item
                if primary is not None:
                    context.set_trailing_metadata((("chat-primary-address", primary),))
                context.abort(code, details)
            yield item
            if item.HasField("send"):
                with self._cond:
                    self._held.pop(item.correlation_id, None)

    def _read(self, requests: Iterator[Any], replies: queue.SimpleQueue[Any]) -> None:
        try:
            for request in requests:
                if not request.HasField("send"):
                    continue
                with self._cond:
                    self.received.append(request)
                    if len(self._held) >= self.max_in_flight:
                        self.refused_beyond_bound += 1
                        replies.put(
                            chat_pb2.SessionReply(
                                correlation_id=request.correlation_id,
                                error=chat_pb2.RequestError(code=8, message="too many"),
                            )
                        )
                        continue
                    self._held[request.correlation_id] = request
                    self.most_in_flight = max(self.most_in_flight, len(self._held))
                    self._cond.notify_all()
                if self.answer_at_once:
                    replies.put(self._apply(request))
        except grpc.RpcError:
            return


def start_session_replica(replica: FakeSessionReplica) -> FakeSessionReplica:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    chat_pb2_grpc.add_ChatServicer_to_server(replica, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    replica.address = f"127.0.0.1:{port}"
    replica.server = server
    return replica


def stop_session_replica(replica: FakeSessionReplica) -> None:
    if replica.server is not None:
        replica.server.stop(None).wait()
