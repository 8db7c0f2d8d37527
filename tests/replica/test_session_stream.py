"""The Session stream over an in-process replica, through a real gRPC server: pipelined sends
and acks answered by correlation id, pushes down the same stream, a refused request answered
with the status the unary call would give while the stream goes on, the bound on requests in
flight, and the stream's own refusals (not the primary, no session) ending it as Subscribe's
do."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import PRIMARY_ADDRESS_KEY, SERVICE_ERROR_KEY
from replica.storage.role import Role
from tests.inprocess import ADDRESSES, InProcessReplica, serve_grpc

Code = grpc.StatusCode
CODE_BY_NUMBER = {code.value[0]: code for code in Code}
_CLOSE = None


class Requests:
    """A Session call's request side, fed by the test as it goes."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[chat_pb2.SessionRequest | None] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[chat_pb2.SessionRequest]:
        return iter(self._queue.get, _CLOSE)

    def put(self, request: chat_pb2.SessionRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(_CLOSE)


def send(cid: int, request_id: str, recipient: str, body: str) -> chat_pb2.SessionRequest:
    return chat_pb2.SessionRequest(
        correlation_id=cid,
        send=chat_pb2.SendRequest(request_id=request_id, recipient=recipient, body=body),
    )


def ack(cid: int, request_id: str, *message_ids: int) -> chat_pb2.SessionRequest:
    return chat_pb2.SessionRequest(
        correlation_id=cid,
        ack=chat_pb2.AckRequest(request_id=request_id, message_ids=message_ids),
    )


def open_session(
    stub: Any, token: str, *, push: bool = False
) -> tuple[Requests, Any, Iterator[chat_pb2.SessionReply]]:
    requests = Requests()
    requests.put(chat_pb2.SessionRequest(open=chat_pb2.SessionOpen(session_token=token, push=push)))
    call = stub.Session(iter(requests), timeout=30)
    return requests, call, iter(call)


def logged_in(replica: InProcessReplica, *names: str) -> list[str]:
    tokens = []
    for name in names:
        replica.service.register(f"r-{name}", name, "pw")
        tokens.append(replica.service.login(f"l-{name}", name, "pw").session_token)
    return tokens


@pytest.fixture
def replica(engine: sa.Engine) -> InProcessReplica:
    return InProcessReplica.start(engine)


def hold_sends(replica: InProcessReplica) -> tuple[threading.Event, threading.Semaphore]:
    """Every send waits until `release` is set; `started` counts the sends that began."""
    release = threading.Event()
    started = threading.Semaphore(0)
    real_send = replica.service.send

    def held_send(*args: Any) -> int:
        started.release()
        release.wait(30)
        return real_send(*args)

    replica.service.send = held_send  # type: ignore[method-assign]
    return release, started


def test_pipelined_sends_are_answered_by_correlation_id(replica: InProcessReplica) -> None:
    alice, bob = logged_in(replica, "alice", "bob")
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests, call, replies = open_session(stub, alice)
        assert next(replies).opened.max_in_flight == 64
        bodies = {cid: f"message {cid}" for cid in range(1, 21)}
        for cid, body in bodies.items():  # all before reading any result
            requests.put(send(cid, f"send-{cid}", "bob", body))
        answered = {}
        for _ in bodies:
            reply = next(replies)
            assert reply.WhichOneof("item") == "send"
            answered[reply.correlation_id] = reply.send.message_id
        requests.close()
        assert list(replies) == []  # the stream ends once the client closed its side
        assert call.code() == Code.OK
    assert sorted(answered) == sorted(bodies)
    inbox = replica.service.history(bob, "alice", 100, "", newest_first=False).items
    assert {m.message_id: m.body for m in inbox} == {
        answered[cid]: body for cid, body in bodies.items()
    }


def test_pushes_and_acks_go_over_the_same_stream(replica: InProcessReplica) -> None:
    alice, bob = logged_in(replica, "alice", "bob")
    waiting = replica.service.send("s-0", bob, "alice", "sent while away")
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests, call, replies = open_session(stub, alice, push=True)
        assert next(replies).WhichOneof("item") == "opened"
        backlog = next(replies)
        assert [m.message_id for m in backlog.push.messages.messages] == [waiting]
        assert next(replies).push.WhichOneof("item") == "caught_up"
        live = replica.service.send("s-1", bob, "alice", "live")
        pushed = next(replies)
        assert pushed.correlation_id == 0
        assert [(m.message_id, m.body) for m in pushed.push.messages.messages] == [(live, "live")]
        requests.put(ack(7, "ack-1", waiting, live))
        reply = next(replies)
        assert (reply.correlation_id, reply.ack.acked_count) == (7, 2)
        # The same request id again: the first result, nothing applied twice.
        requests.put(ack(8, "ack-1", waiting, live))
        reply = next(replies)
        assert (reply.correlation_id, reply.ack.acked_count) == (8, 2)
        call.cancel()
        # Acked: a new session's backlog is empty.
        requests, call, replies = open_session(stub, alice, push=True)
        assert next(replies).WhichOneof("item") == "opened"
        assert next(replies).push.WhichOneof("item") == "caught_up"
        call.cancel()


def test_a_refused_request_gets_the_unary_status_and_the_stream_goes_on(
    replica: InProcessReplica,
) -> None:
    (alice,) = logged_in(replica, "alice")
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        expected = {}
        for request_id, recipient, body in (("u-1", "nobody", "hi"), ("u-2", "alice", "")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Send(
                    chat_pb2.SendRequest(
                        request_id=request_id, session_token=alice, recipient=recipient, body=body
                    )
                )
            error: Any = info.value
            expected[recipient] = (
                error.code(),
                error.details(),
                dict(error.trailing_metadata())[SERVICE_ERROR_KEY],
            )
        requests, call, replies = open_session(stub, alice)
        next(replies)
        requests.put(send(1, "s-1", "nobody", "hi"))
        requests.put(send(2, "s-2", "alice", ""))
        refusals = {}
        for _ in range(2):
            reply = next(replies)
            refusals[reply.correlation_id] = (
                CODE_BY_NUMBER[reply.error.code],
                reply.error.message,
                reply.error.error,
            )
        assert refusals == {1: expected["nobody"], 2: expected["alice"]}
        assert expected["nobody"][0] == Code.NOT_FOUND
        assert expected["alice"][0] == Code.INVALID_ARGUMENT
        requests.put(send(3, "s-3", "alice", "still here"))
        assert next(replies).send.message_id > 0
        call.cancel()


def test_requests_beyond_the_bound_are_resource_exhausted(replica: InProcessReplica) -> None:
    alice, _bob = logged_in(replica, "alice", "bob")
    release, started = hold_sends(replica)
    with serve_grpc(replica, max_in_flight_per_session=2) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests, call, replies = open_session(stub, alice)
        assert next(replies).opened.max_in_flight == 2
        requests.put(send(1, "s-1", "bob", "one"))
        requests.put(send(2, "s-2", "bob", "two"))
        for _ in range(2):
            assert started.acquire(timeout=10)  # both are being carried out
        requests.put(send(3, "s-3", "bob", "three"))
        refused = next(replies)
        assert refused.correlation_id == 3
        assert refused.error.code == Code.RESOURCE_EXHAUSTED.value[0]
        assert refused.error.message == (
            "more than 2 requests in flight on this Session stream; "
            "wait for a result before sending more"
        )
        release.set()
        assert sorted(next(replies).correlation_id for _ in range(2)) == [1, 2]
        # Their places are free again: the refused one, sent again, is carried out.
        requests.put(send(4, "s-3", "bob", "three"))
        reply = next(replies)
        assert (reply.correlation_id, reply.WhichOneof("item")) == (4, "send")
        call.cancel()


def test_a_stream_on_a_secondary_is_refused_as_not_primary(replica: InProcessReplica) -> None:
    (alice,) = logged_in(replica, "alice")
    replica.role.set(Role.SECONDARY, 1, 2)
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        with pytest.raises(grpc.RpcError) as unary:
            stub.Send(
                chat_pb2.SendRequest(
                    request_id="u", session_token=alice, recipient="alice", body="hi"
                )
            )
        _requests, _call, replies = open_session(stub, alice)
        with pytest.raises(grpc.RpcError) as streamed:
            next(replies)
    expected: Any = unary.value
    error: Any = streamed.value
    assert error.code() == expected.code() == Code.FAILED_PRECONDITION
    assert error.details() == expected.details()
    assert (PRIMARY_ADDRESS_KEY, ADDRESSES[2]) in tuple(error.trailing_metadata())


def test_a_stream_ends_when_its_replica_stops_being_primary(replica: InProcessReplica) -> None:
    (alice,) = logged_in(replica, "alice")
    with serve_grpc(replica, recheck_interval=0.05) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        _requests, _call, replies = open_session(stub, alice)
        next(replies)
        replica.role.set(Role.SECONDARY, 2, 1)
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
    error: Any = info.value
    assert error.code() == Code.FAILED_PRECONDITION
    assert (PRIMARY_ADDRESS_KEY, ADDRESSES[1]) in tuple(error.trailing_metadata())


def test_a_stream_without_a_valid_session_is_unauthenticated(
    replica: InProcessReplica,
) -> None:
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        _requests, _call, replies = open_session(stub, "not-a-token")
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
    error: Any = info.value
    assert error.code() == Code.UNAUTHENTICATED


def test_a_stream_must_begin_with_open(replica: InProcessReplica) -> None:
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests = Requests()
        requests.put(send(1, "s-1", "bob", "hi"))
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.Session(iter(requests), timeout=30)))
    error: Any = info.value
    assert error.code() == Code.INVALID_ARGUMENT
    assert "begins with an `open` request" in error.details()


def test_a_streams_requests_are_carried_out_together(replica: InProcessReplica) -> None:
    """Pipelined sends wait for their commit side by side (so the writer batches them), not one
    after another."""
    alice, _bob = logged_in(replica, "alice", "bob")
    release, started = hold_sends(replica)
    with serve_grpc(replica) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests, call, replies = open_session(stub, alice)
        next(replies)
        for cid in range(1, 6):
            requests.put(send(cid, f"s-{cid}", "bob", f"m{cid}"))
        for _ in range(5):  # all five under way before any is let through
            assert started.acquire(timeout=10)
        release.set()
        assert sorted(next(replies).correlation_id for _ in range(5)) == [1, 2, 3, 4, 5]
        call.cancel()


def test_pushes_start_and_stop_on_request(replica: InProcessReplica) -> None:
    alice, bob = logged_in(replica, "alice", "bob")
    with serve_grpc(replica, recheck_interval=0.05) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        requests, call, replies = open_session(stub, alice)  # no pushes yet
        next(replies)
        requests.put(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=True)))
        assert next(replies).push.WhichOneof("item") == "caught_up"
        requests.put(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=False)))
        # Once stopped, a message for alice is not pushed; a send's result still comes.
        requests.put(send(1, "s-1", "bob", "marker"))
        assert next(replies).correlation_id == 1
        replica.service.send("s-2", bob, "alice", "not pushed")
        requests.put(send(2, "s-3", "bob", "after"))
        reply = next(replies)
        assert (reply.correlation_id, reply.WhichOneof("item")) == (2, "send")
        call.cancel()
