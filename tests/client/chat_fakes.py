"""A scripted, in-process Chat server for client tests (no replication, no database)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from protos import chat_pb2, chat_pb2_grpc

Handler = Callable[[Any, grpc.ServicerContext], Any]


def answer(reply: Any) -> Handler:
    return lambda request, context: reply


def fail(code: grpc.StatusCode, details: str = "", *, primary: str | None = None) -> Handler:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        if primary is not None:
            context.set_trailing_metadata((("chat-primary-address", primary),))
        context.abort(code, details)

    return handler


def stream(*items: chat_pb2.SubscribeReply, then: Handler | None = None) -> Handler:
    """A Subscribe handler: yields `items`, then runs `then` (e.g. fail) or stays open."""

    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from items
        if then is not None:
            then(request, context)
            return
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(30)

    return handler


T0_MS = 1_796_169_600_000  # 2026-12-02T00:00:00Z; message i is sent i seconds later


def at(message_id: int) -> str:
    """The SENT_AT column the CLI prints for fake message `message_id`."""
    return f"2026-12-02T00:00:{message_id:02d}.000Z"


def message(message_id: int, sender: str = "alice", body: str = "hi") -> chat_pb2.SubscribeReply:
    return chat_pb2.SubscribeReply(
        message=chat_pb2.Message(
            message_id=message_id,
            sender=sender,
            recipient="bob",
            body=body,
            sent_at_unix_ms=T0_MS + 1000 * message_id,
        )
    )


def batch(*message_ids: int) -> chat_pb2.SubscribeReply:
    return chat_pb2.SubscribeReply(
        messages=chat_pb2.MessageBatch(messages=[message(i).message for i in message_ids])
    )


CAUGHT_UP = chat_pb2.SubscribeReply(caught_up=chat_pb2.CaughtUp())


class FakeReplica(chat_pb2_grpc.ChatServicer):
    """Answers each method from a script: handlers are used in order, the last one repeats."""

    def __init__(self) -> None:
        self.address = ""
        self.server: grpc.Server | None = None
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Handler]] = {}
        self.received: list[tuple[str, Any]] = []

    def script(self, method: str, *handlers: Handler) -> None:
        with self._lock:
            self._scripts[method] = list(handlers)

    def requests(self, method: str) -> list[Any]:
        with self._lock:
            return [request for name, request in self.received if name == method]

    def _next(self, method: str, request: Any, context: grpc.ServicerContext) -> Handler:
        with self._lock:
            self.received.append((method, request))
            handlers = self._scripts.get(method)
            if not handlers:
                handler = fail(grpc.StatusCode.UNIMPLEMENTED, f"{method} not scripted")
            else:
                handler = handlers.pop(0) if len(handlers) > 1 else handlers[0]
        return handler

    def _unary(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        return self._next(method, request, context)(request, context)

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Register", request, context)

    def Login(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Login", request, context)

    def Logout(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Logout", request, context)

    def ListAccounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("ListAccounts", request, context)

    def Send(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Send", request, context)

    def Ack(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Ack", request, context)

    def History(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("History", request, context)

    def DeleteAccount(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("DeleteAccount", request, context)

    def ClusterStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("ClusterStatus", request, context)

    def Subscribe(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._next("Subscribe", request, context)(request, context)


def start_replica(credentials: grpc.ServerCredentials | None = None) -> FakeReplica:
    """A fake replica on a free port; TLS with `credentials`."""
    replica = FakeReplica()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    chat_pb2_grpc.add_ChatServicer_to_server(replica, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    replica.address = f"127.0.0.1:{port}"
    replica.server = server
    return replica


def stop_replica(replica: FakeReplica) -> None:
    if replica.server is not None:
        replica.server.stop(None).wait()


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
