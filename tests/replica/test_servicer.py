"""The gRPC servicer over an in-process replica, through a real gRPC server: requests that are
not valid messages at all get INVALID_ARGUMENT with the reason (gRPC's own answer would be
INTERNAL "Exception deserializing request!"), and hostile tokens get UNAUTHENTICATED."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import PRIMARY_ADDRESS_KEY, SERVICE_ERROR_KEY
from replica.chat.service import ChatService
from replica.chat.servicer import CHAT_SERVICE
from replica.storage.role import Role
from tests.inprocess import (
    ADDRESSES,
    InProcessReplica,
    assert_unchanged,
    fast_hash_password,
    serve_grpc,
)
from testsupport.harness import wait_until

Code = grpc.StatusCode
# A string field (number 1 in every request that has one) holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"


@pytest.fixture
def channel(engine: sa.Engine) -> Iterator[grpc.Channel]:
    with serve_grpc(InProcessReplica.start(engine)) as made:
        yield made


def refusal(call: Any) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code(), error.details()


@pytest.mark.parametrize(
    "method",
    [m.name for m in CHAT_SERVICE.methods if m.input_type.fields and not m.server_streaming],
)
def test_a_string_that_is_not_utf8_is_invalid_argument(
    engine: sa.Engine, channel: grpc.Channel, method: str
) -> None:
    call = channel.unary_unary(f"/chat.v1.Chat/{method}")
    with assert_unchanged(engine):
        code, details = refusal(lambda: call(NOT_UTF8, timeout=10))
    assert code == Code.INVALID_ARGUMENT
    request_type = CHAT_SERVICE.methods_by_name[method].input_type.full_name
    assert details == (
        f"the request is not a valid {request_type} message (String field had bad UTF-8); "
        "strings must be UTF-8"
    )


@pytest.mark.parametrize("payload", [NOT_UTF8, b"\xff" * 12, b"\x10\xff\xff"])
def test_subscribe_with_bytes_that_do_not_parse_is_invalid_argument(
    channel: grpc.Channel, payload: bytes
) -> None:
    stream = channel.unary_stream("/chat.v1.Chat/Subscribe")(payload, timeout=10)
    code, details = refusal(lambda: next(iter(stream)))
    assert code == Code.INVALID_ARGUMENT
    assert details.startswith("the request is not a valid chat.v1.SubscribeRequest message (")


def test_even_a_request_without_fields_must_parse(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/chat.v1.Chat/ClusterStatus")
    code, details = refusal(lambda: call(b"\xff" * 12, timeout=10))
    assert (code, details) == (
        Code.INVALID_ARGUMENT,
        "the request is not a valid chat.v1.ClusterStatusRequest message (Wire format was corrupt)",
    )
    # An empty message parses.
    assert chat_pb2.ClusterStatusReply.FromString(call(b"", timeout=10)).primary_known


@pytest.mark.parametrize(
    "token", [f"{'0' * 32}.{'é' * 64}", f"{'é' * 32}.{'0' * 64}", "é", "\x00" * 97]
)
def test_a_non_ascii_token_is_unauthenticated(
    engine: sa.Engine, channel: grpc.Channel, token: str
) -> None:
    stub: Any = chat_pb2_grpc.ChatStub(channel)
    request = chat_pb2.LogoutRequest(request_id="r-1", session_token=token)
    with assert_unchanged(engine):
        code, details = refusal(lambda: stub.Logout(request, timeout=10))
    assert (code, details) == (
        Code.UNAUTHENTICATED,
        "not logged in: the session token is missing or invalid",
    )


def test_a_subscription_ends_at_once_when_a_login_beyond_the_cap_ends_its_session(
    engine: sa.Engine,
) -> None:
    replica = InProcessReplica.start(engine)
    replica.service = ChatService(
        engine,
        replica.writer,
        replica.tokens,
        lambda: replica.commits.committed_seq,
        hash_password=fast_hash_password,
        min_password_length=1,
        max_sessions_per_account=2,
    )
    replica.service.register("r-1", "alice", "pw")
    first = replica.service.login("l-1", "alice", "pw").session_token
    replica.service.login("l-2", "alice", "pw")
    # Without a wake-up the stream would only notice at its next recheck, a minute away.
    with serve_grpc(replica, recheck_interval=60) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        stream = stub.Subscribe(chat_pb2.SubscribeRequest(session_token=first), timeout=20)
        items = iter(stream)
        assert next(items).WhichOneof("item") == "caught_up"
        replica.service.login("l-3", "alice", "pw")  # the cap is 2: `first` ends
        started = time.monotonic()
        code, details = refusal(lambda: next(items))
        assert time.monotonic() - started < 10
    assert code == Code.UNAUTHENTICATED
    assert details.startswith("your session has ended")


def test_subscriptions_beyond_the_cap_are_resource_exhausted(engine: sa.Engine) -> None:
    replica = InProcessReplica.start(engine)
    replica.service.register("r-1", "alice", "pw")
    token = replica.service.login("l-1", "alice", "pw").session_token
    with serve_grpc(replica, max_subscriptions=1, recheck_interval=0.1) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        first = stub.Subscribe(chat_pb2.SubscribeRequest(session_token=token), timeout=20)
        assert next(iter(first)).WhichOneof("item") == "caught_up"
        second = stub.Subscribe(chat_pb2.SubscribeRequest(session_token=token), timeout=20)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(second))
        error: Any = info.value
        assert (error.code(), error.details()) == (
            Code.RESOURCE_EXHAUSTED,
            "this replica already serves 1 subscriptions; retry later",
        )
        assert (SERVICE_ERROR_KEY, "ResourceExhausted") in tuple(error.trailing_metadata())
        # A cancelled stream gives its slot back.
        first.cancel()

        def subscribed() -> bool:
            stream = stub.Subscribe(chat_pb2.SubscribeRequest(session_token=token), timeout=20)
            try:
                return next(iter(stream)).WhichOneof("item") == "caught_up"
            except grpc.RpcError:
                return False
            finally:
                stream.cancel()

        wait_until(subscribed, 10, "a subscription slot to come back")


def test_a_client_that_reads_batches_gets_the_backlog_a_page_per_reply(engine: sa.Engine) -> None:
    """Same messages, same order, in far fewer replies; a client that did not ask for batches
    (an older one) still gets one message per reply."""
    replica = InProcessReplica.start(engine)
    chat = replica.service
    chat.register("r-1", "alice", "pw")
    chat.register("r-2", "bob", "pw")
    alice = chat.login("l-1", "alice", "pw").session_token
    bob = chat.login("l-2", "bob", "pw").session_token
    sent = [chat.send(f"s-{i}", alice, "bob", f"m{i}") for i in range(600)]
    with serve_grpc(replica, recheck_interval=60) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        for batches in (True, False):
            request = chat_pb2.SubscribeRequest(session_token=bob, batches=batches)
            stream = stub.Subscribe(request, timeout=20)
            replies = []
            for reply in stream:
                replies.append(reply)
                if reply.WhichOneof("item") == "caught_up":
                    break
            stream.cancel()
            kinds = {r.WhichOneof("item") for r in replies[:-1]}
            got = [
                m.message_id
                for r in replies[:-1]
                for m in (r.messages.messages if batches else [r.message])
            ]
            assert got == sent
            assert kinds == {"messages" if batches else "message"}
            assert len(replies) - 1 == (3 if batches else 600)  # pages of 256


def test_a_subscription_looks_its_session_up_when_it_may_have_ended_not_per_message(
    engine: sa.Engine,
) -> None:
    replica = InProcessReplica.start(engine)
    service = replica.service
    service.register("r-1", "alice", "pw")
    service.register("r-2", "bob", "pw")
    alice = service.login("l-1", "alice", "pw").session_token
    bob = service.login("l-2", "bob", "pw").session_token
    lookups: list[str] = []
    authenticate = service.authenticate

    def counted(token: str) -> Any:
        lookups.append(token)
        return authenticate(token)

    service.authenticate = counted  # type: ignore[method-assign]
    with serve_grpc(replica, recheck_interval=60) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        stream = stub.Subscribe(chat_pb2.SubscribeRequest(session_token=alice), timeout=20)
        items = iter(stream)
        assert next(items).WhichOneof("item") == "caught_up"
        for n in range(20):
            service.send(f"s-{n}", bob, "alice", f"m{n}")
            assert next(items).message.body == f"m{n}"
        assert lookups.count(alice) <= 2, "the session was looked up for every message"
        service.logout("o-1", alice)
        code, details = refusal(lambda: next(items))
    assert code == Code.UNAUTHENTICATED
    assert details.startswith("your session has ended")


# -- during an election: a write waits for the new primary (ChatServicer._await_primary) ------


def _mid_election(engine: sa.Engine) -> tuple[InProcessReplica, str]:
    """A replica with alice logged in, that then knows no primary (its own term ended)."""
    replica = InProcessReplica.start(engine)
    replica.service.register("r-1", "alice", "pw")
    token = replica.service.login("l-1", "alice", "pw").session_token
    replica.role.set(Role.CANDIDATE, replica.role.snapshot.epoch, None)
    return replica, token


def _send(token: str) -> chat_pb2.SendRequest:
    return chat_pb2.SendRequest(request_id="s-1", session_token=token, recipient="alice", body="hi")


def _once_held(replica: InProcessReplica, then: Callable[[], None]) -> threading.Thread:
    """Runs `then` (an election's outcome) once a request is held waiting for a primary --
    not after a guessed delay: a request that is never held never sees it."""
    held = threading.Event()
    await_primary = replica.role.await_primary

    def holding(timeout: float) -> bool:
        held.set()
        return await_primary(timeout)

    replica.role.await_primary = holding  # type: ignore[method-assign]

    def run() -> None:
        if held.wait(10):
            then()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_write_during_an_election_is_refused_naming_the_primary_elected_meanwhile(
    engine: sa.Engine,
) -> None:
    replica, token = _mid_election(engine)
    epoch = replica.role.snapshot.epoch
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        send = _send(token)
        elected = _once_held(replica, lambda: replica.role.set(Role.SECONDARY, epoch + 1, 1))
        with pytest.raises(grpc.RpcError) as info:
            stub.Send(send, timeout=20)
        elected.join()
    error: Any = info.value
    # Answered at once, it would have said "no primary is known yet" and named none.
    assert error.code() == Code.FAILED_PRECONDITION
    assert error.details() == (
        f"replica 0 is not the primary; the primary is replica 1 at {ADDRESSES[1]}"
    )
    assert (PRIMARY_ADDRESS_KEY, ADDRESSES[1]) in error.trailing_metadata()


def test_a_write_during_an_election_this_replica_wins_is_carried_out_here(
    engine: sa.Engine,
) -> None:
    replica, token = _mid_election(engine)
    epoch = replica.role.snapshot.epoch
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        send = _send(token)
        elected = _once_held(replica, lambda: replica.role.set(Role.PRIMARY, epoch + 1, 0))
        reply = stub.Send(send, timeout=20)
        elected.join()
        assert stub.Send(send, timeout=20).message_id == reply.message_id  # (once)
    assert reply.message_id > 0


def test_a_session_stream_opened_during_an_election_opens_on_the_winner(
    engine: sa.Engine,
) -> None:
    replica, token = _mid_election(engine)
    epoch = replica.role.snapshot.epoch
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        opening = chat_pb2.SessionRequest(open=chat_pb2.SessionOpen(session_token=token))
        elected = _once_held(replica, lambda: replica.role.set(Role.PRIMARY, epoch + 1, 0))
        stream = stub.Session(iter([opening]), timeout=20)
        first = next(iter(stream))
        elected.join()
        stream.cancel()
    assert first.WhichOneof("item") == "opened"


def test_a_replica_that_knows_no_primary_answers_within_its_wait(engine: sa.Engine) -> None:
    replica, token = _mid_election(engine)
    with serve_grpc(replica, primary_wait=0.2) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        send = _send(token)
        started = time.monotonic()
        code, details = refusal(lambda: stub.Send(send, timeout=20))
        waited = time.monotonic() - started
    assert (code, details) == (
        Code.FAILED_PRECONDITION,
        "replica 0 is not the primary; no primary is known yet; retry shortly",
    )
    assert waited >= 0.2  # it did wait, and then answered (not at the call's 20 s deadline)


def test_reads_do_not_wait_for_an_election(engine: sa.Engine) -> None:
    replica, _token = _mid_election(engine)
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        page = stub.ListAccounts(chat_pb2.ListAccountsRequest(pattern="*"), timeout=5)
    assert list(page.usernames) == ["alice"]


def test_a_write_on_a_secondary_whose_primary_went_silent_waits_for_the_election(
    engine: sa.Engine,
) -> None:
    replica, token = _mid_election(engine)
    epoch = replica.role.snapshot.epoch
    replica.role.set(Role.SECONDARY, epoch, 2)
    replica.role.stream_from_primary_ended()  # replica 2 was SIGKILLed a moment ago
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        send = _send(token)
        elected = _once_held(replica, lambda: replica.role.set(Role.SECONDARY, epoch + 1, 1))
        code, details = refusal(lambda: stub.Send(send, timeout=20))
        elected.join()
    # Answered at once, it would have named replica 2, which is gone.
    assert (code, details) == (
        Code.FAILED_PRECONDITION,
        f"replica 0 is not the primary; the primary is replica 1 at {ADDRESSES[1]}",
    )


def test_a_secondary_that_hears_from_its_primary_again_names_it_at_once(
    engine: sa.Engine,
) -> None:
    replica, token = _mid_election(engine)
    epoch = replica.role.snapshot.epoch
    replica.role.set(Role.SECONDARY, epoch, 2)
    replica.role.stream_from_primary_ended()
    with serve_grpc(replica, primary_wait=30) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        send = _send(token)
        heard = _once_held(replica, replica.role.heard_from_primary)  # its stream came back
        code, details = refusal(lambda: stub.Send(send, timeout=20))
        heard.join()
        assert replica.role.primary_known()
        started = time.monotonic()
        assert refusal(lambda: stub.Send(send, timeout=20)) == (code, details)
        assert time.monotonic() - started < 10  # (no wait: it names a primary it hears)
    assert (code, details) == (
        Code.FAILED_PRECONDITION,
        f"replica 0 is not the primary; the primary is replica 2 at {ADDRESSES[2]}",
    )
