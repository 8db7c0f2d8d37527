"""Failover and retry of ChatClient against scripted in-process replicas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from client import (
    Backoff,
    ChatClient,
    ChatError,
    ChatUnavailableError,
    ClientHooks,
    ClientSettings,
    NotLoggedInError,
)
from client.models import CaughtUp, Message
from protos import chat_pb2, chat_pb2_grpc
from tests.client.chat_fakes import (
    CAUGHT_UP,
    FakeReplica,
    FakeTime,
    answer,
    batch,
    fail,
    message,
    stop_replica,
    stream,
)

SENT = answer(chat_pb2.SendReply(message_id=7))
LOGGED_IN = answer(chat_pb2.LoginReply(session_token="token-1", username="bob"))


def make_client(
    addresses: list[str],
    fake_time: FakeTime,
    *,
    timeout: float = 5.0,
    backoff: Backoff | None = None,
    on_replica_change: Callable[[str], None] | None = None,
    on_unreachable: Callable[[str], None] | None = None,
    settings: ClientSettings | None = None,
) -> ChatClient:
    settings = settings or ClientSettings(timeout=timeout, backoff=backoff or Backoff())
    hooks = ClientHooks(
        on_replica_change=on_replica_change,
        on_unreachable=on_unreachable,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    return ChatClient(addresses, settings, hooks=hooks)


def logged_in(client: ChatClient, replica: FakeReplica) -> ChatClient:
    replica.script("Login", LOGGED_IN)
    client.login("bob", "secret")
    return client


def test_follows_the_primary_hint_with_the_same_request_id(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0, r1, r2 = replicas
    changes: list[str] = []
    client = make_client(
        [r0.address, r1.address, r2.address], fake_time, on_replica_change=changes.append
    )
    logged_in(client, r0)
    r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, "not primary", primary=r2.address))
    r2.script("Send", SENT)

    assert client.send("alice", "hello") == 7

    assert r1.requests("Send") == []
    (first,) = r0.requests("Send")
    (second,) = r2.requests("Send")
    assert first.request_id == second.request_id != ""
    assert second.session_token == "token-1"
    assert changes == [r0.address, r2.address]
    assert fake_time.sleeps == []
    assert client.connected_address == r2.address


# A reconnect backoff far beyond a call's timeout: a channel that failed to connect keeps
# failing at once, with that stale error, for the whole call.
SLOW_RECONNECT = ClientSettings(
    timeout=5.0,
    channel_options=(
        ("grpc.initial_reconnect_backoff_ms", 60_000),
        ("grpc.min_reconnect_backoff_ms", 60_000),
        ("grpc.max_reconnect_backoff_ms", 60_000),
    ),
)


@contextlib.contextmanager
def replica_back_at(address: str) -> Iterator[FakeReplica]:
    """A scripted replica listening at `address` (one that was down is back)."""
    back = FakeReplica()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    chat_pb2_grpc.add_ChatServicer_to_server(back, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(address)
    server.start()
    try:
        yield back
    finally:
        server.stop(None).wait()


def test_a_named_primary_that_came_back_is_reached_on_a_fresh_channel(
    replicas: list[FakeReplica], dead_address: str, fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    client = make_client([dead_address, r0.address], fake_time, settings=SLOW_RECONNECT)
    with client:
        logged_in(client, r0)  # tried the dead address first: its channel failed to connect
        with replica_back_at(dead_address) as back:  # back, and elected
            back.script("Send", SENT)
            r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=dead_address))

            assert client.send("alice", "hello") == 7

        assert fake_time.sleeps == []  # no round of backoff: the hint was followed at once
        assert client.connected_address == dead_address


def test_a_primary_named_after_failing_to_connect_is_tried_again_at_once_afresh(
    replicas: list[FakeReplica], dead_address: str, fake_time: FakeTime
) -> None:
    r0, r1, _ = replicas
    client = make_client([dead_address, r1.address, r0.address], fake_time, settings=SLOW_RECONNECT)
    with client:
        r1.script("Login", fail(grpc.StatusCode.FAILED_PRECONDITION, "no primary yet"))
        r0.script("Login", LOGGED_IN)
        client.login("bob", "secret")  # tried the dead address first: its channel failed
        with replica_back_at(dead_address) as back:
            back.script("Send", SENT)
            # r0 knows no primary; the dead address fails (stale) in this round; r1 names it.
            r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, "no primary yet"))
            r1.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=dead_address))

            assert client.send("alice", "hello") == 7

        assert fake_time.sleeps == []
        assert [len(back.requests("Send")), len(r1.requests("Send"))] == [1, 1]


def test_stays_with_the_new_primary(replicas: list[FakeReplica], fake_time: FakeTime) -> None:
    r0, r1, _ = replicas
    client = logged_in(make_client([r0.address, r1.address], fake_time), r0)
    r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r1.address))
    r1.script("Send", SENT)

    client.send("alice", "one")
    client.send("alice", "two")

    assert [request.body for request in r1.requests("Send")] == ["one", "two"]
    assert len(r0.requests("Send")) == 1


def test_without_a_hint_asks_cluster_status(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0, r1, r2 = replicas
    client = logged_in(make_client([r0.address, r1.address, r2.address], fake_time), r0)
    r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, "not primary"))
    r0.script(
        "ClusterStatus",
        answer(
            chat_pb2.ClusterStatusReply(
                primary_known=True,
                primary_index=2,
                replicas=[
                    chat_pb2.ReplicaStatus(index=index, address=replica.address)
                    for index, replica in enumerate(replicas)
                ],
            )
        ),
    )
    r2.script("Send", SENT)

    assert client.send("alice", "hello") == 7
    assert r1.requests("Send") == []


def test_skips_a_dead_replica(
    replicas: list[FakeReplica], dead_address: str, fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    r0.script("Register", answer(chat_pb2.RegisterReply(username="bob")))
    client = make_client([dead_address, r0.address], fake_time)

    assert client.register("Bob", "secret") == "bob"
    assert fake_time.sleeps == []


def test_retries_unavailable_after_a_backoff(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    r0.script(
        "Register",
        fail(grpc.StatusCode.UNAVAILABLE, "no primary yet"),
        fail(grpc.StatusCode.UNAVAILABLE, "no primary yet"),
        answer(chat_pb2.RegisterReply(username="bob")),
    )
    client = make_client([r0.address], fake_time, backoff=Backoff(initial=0.05, maximum=0.5))

    assert client.register("bob", "secret") == "bob"
    assert fake_time.sleeps == [0.05, 0.1]
    assert len({request.request_id for request in r0.requests("Register")}) == 1


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_domain_errors_are_raised_at_once(
    replicas: list[FakeReplica], fake_time: FakeTime, code: grpc.StatusCode
) -> None:
    r0, r1, _ = replicas
    r0.script("Register", fail(code, 'user "bob" says no'))
    client = make_client([r0.address, r1.address], fake_time)

    with pytest.raises(ChatError) as raised:
        client.register("bob", "secret")

    assert raised.value.code == code
    assert str(raised.value) == f'user "bob" says no ({code.name})'
    assert len(r0.requests("Register")) == 1
    assert r1.received == []
    assert fake_time.sleeps == []


def test_gives_up_at_the_deadline(replicas: list[FakeReplica], fake_time: FakeTime) -> None:
    r0, r1, _ = replicas
    for replica in (r0, r1):
        replica.script("Register", fail(grpc.StatusCode.UNAVAILABLE))
    client = make_client(
        [r0.address, r1.address], fake_time, timeout=1.0, backoff=Backoff(0.05, 0.5)
    )

    with pytest.raises(ChatUnavailableError) as raised:
        client.register("bob", "secret")

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.message == f"no replica reachable at {r0.address}, {r1.address}"
    assert fake_time.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.25])
    requests = r0.requests("Register") + r1.requests("Register")
    assert len(requests) == 2 * len(fake_time.sleeps)
    assert len({request.request_id for request in requests}) == 1


def test_a_replica_named_after_it_refused_in_this_round_is_asked_again_at_once(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    # r0 knew no primary yet; by the time r1 answers, the election made r0 the primary.
    r0, r1, _ = replicas
    client = logged_in(make_client([r0.address, r1.address], fake_time), r0)
    r0.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, "no primary yet"), SENT)
    r1.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r0.address))

    assert client.send("alice", "hello") == 7

    assert fake_time.sleeps == []  # not a back-off later, in a round of its own
    assert len(r0.requests("Send")) == 2


def test_replicas_pointing_at_each_other_end_in_no_primary(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0, r1, _ = replicas
    r0.script("Register", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r1.address))
    r1.script("Register", fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r0.address))
    client = make_client([r0.address, r1.address], fake_time, timeout=0.2)

    with pytest.raises(ChatUnavailableError, match="no primary found"):
        client.register("bob", "secret")

    assert sum(fake_time.sleeps) == pytest.approx(0.2)


def test_calls_needing_a_session_fail_before_login(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    client = make_client([replicas[0].address], fake_time)

    with pytest.raises(NotLoggedInError):
        client.send("alice", "hi")
    assert replicas[0].received == []


def test_logout_forgets_the_session(replicas: list[FakeReplica], fake_time: FakeTime) -> None:
    r0 = replicas[0]
    client = logged_in(make_client([r0.address], fake_time), r0)
    r0.script("Logout", answer(chat_pb2.LogoutReply()))

    client.logout()

    assert client.session is None
    assert r0.requests("Logout")[0].session_token == "token-1"


def test_list_accounts_and_history_follow_page_tokens(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    client = logged_in(make_client([r0.address], fake_time), r0)
    r0.script(
        "ListAccounts",
        answer(chat_pb2.ListAccountsReply(usernames=["alice", "bob"], next_page_token="p2")),
        answer(chat_pb2.ListAccountsReply(usernames=["carol"])),
    )
    r0.script(
        "History",
        answer(
            chat_pb2.HistoryReply(messages=[chat_pb2.Message(message_id=1)], next_page_token="h2")
        ),
        answer(chat_pb2.HistoryReply(messages=[chat_pb2.Message(message_id=2)])),
    )

    assert list(client.list_accounts("*")) == ["alice", "bob", "carol"]
    assert [m.message_id for m in client.history("alice")] == [1, 2]
    assert [r.page_token for r in r0.requests("ListAccounts")] == ["", "p2"]
    assert [r.page_token for r in r0.requests("History")] == ["", "h2"]


def test_subscription_survives_failover_without_duplicates(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0, r1, _ = replicas
    client = logged_in(make_client([r0.address, r1.address], fake_time), r0)
    r0.script(
        "Subscribe",
        stream(message(1), message(2), then=fail(grpc.StatusCode.UNAVAILABLE, "shutting down")),
        fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r1.address),
    )
    r1.script("Subscribe", stream(message(1), message(2), message(3), CAUGHT_UP))
    subscription = client.subscribe()

    items = [next(subscription) for _ in range(4)]
    subscription.cancel()

    assert [getattr(item, "message_id", "caught up") for item in items] == [1, 2, 3, "caught up"]
    assert list(subscription) == []
    assert r1.requests("Subscribe")[0].session_token == "token-1"


def test_a_batched_subscription_survives_failover_without_duplicates(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    """A batch that overlaps what was yielded before the failover yields only what is new."""
    r0, r1, _ = replicas
    client = logged_in(make_client([r0.address, r1.address], fake_time), r0)
    r0.script(
        "Subscribe",
        stream(batch(1, 2), then=fail(grpc.StatusCode.UNAVAILABLE, "shutting down")),
        fail(grpc.StatusCode.FAILED_PRECONDITION, primary=r1.address),
    )
    r1.script("Subscribe", stream(batch(1, 2, 3), batch(4), CAUGHT_UP))
    subscription = client.subscribe()

    items = [next(subscription) for _ in range(5)]
    subscription.cancel()

    assert [getattr(item, "message_id", "caught up") for item in items] == [1, 2, 3, 4, "caught up"]
    assert all(r.batches for r in r0.requests("Subscribe") + r1.requests("Subscribe"))


def test_subscription_moves_on_when_its_replica_goes_down(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0, r1, _ = replicas
    client = logged_in(make_client([r0.address, r1.address], fake_time), r0)
    r0.script("Subscribe", stream(message(1), CAUGHT_UP))
    r1.script("Subscribe", stream(message(1), message(2), CAUGHT_UP))
    subscription = client.subscribe()
    assert [next(subscription), next(subscription)] == [
        Message.from_proto(message(1).message),
        CaughtUp(),
    ]

    stop_replica(r0)

    assert [next(subscription), next(subscription)] == [
        Message.from_proto(message(2).message),
        CaughtUp(),
    ]
    assert client.connected_address == r1.address
    subscription.cancel()


def test_subscription_refused_raises(replicas: list[FakeReplica], fake_time: FakeTime) -> None:
    r0 = replicas[0]
    client = logged_in(make_client([r0.address], fake_time), r0)
    r0.script("Subscribe", fail(grpc.StatusCode.UNAUTHENTICATED, "session revoked"))

    with pytest.raises(ChatError, match="session revoked"):
        next(client.subscribe())


def test_cancel_from_another_thread_ends_the_subscription(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    client = logged_in(make_client([r0.address], fake_time), r0)
    r0.script("Subscribe", stream(CAUGHT_UP))
    subscription = client.subscribe()
    caught_up = threading.Event()
    received: list[object] = []

    def consume() -> None:
        for item in subscription:
            received.append(item)
            caught_up.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert caught_up.wait(5)
    subscription.cancel()
    consumer.join(5)

    assert not consumer.is_alive()
    assert received == [CaughtUp()]


def test_close_ends_a_waiting_subscription(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    r0 = replicas[0]
    client = logged_in(make_client([r0.address], fake_time), r0)
    r0.script("Subscribe", stream(CAUGHT_UP))
    subscription = client.subscribe()
    assert isinstance(next(subscription), CaughtUp)

    client.close()

    with pytest.raises(ChatError) as raised:
        next(subscription)
    assert raised.value.code == grpc.StatusCode.CANCELLED


def test_when_no_replica_answers_the_caller_hears_it_after_one_round_then_the_timeout_holds(
    replicas: list[FakeReplica], fake_time: FakeTime
) -> None:
    for replica in replicas:
        stop_replica(replica)
    told: list[tuple[float, str]] = []
    client = make_client(
        [r.address for r in replicas],
        fake_time,
        timeout=10.0,
        on_unreachable=lambda text: told.append((fake_time.now, text)),
    )
    with pytest.raises(ChatError) as raised:
        client.register("alice", "secret")
    addresses = ", ".join(r.address for r in replicas)
    # Once, after every address was tried once (no pause yet), with the time still allowed.
    assert told == [(0.0, f"no replica answers at {addresses}; still trying for up to 10 s")]
    assert fake_time.now >= 10.0, "it gave up before its documented timeout"
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
