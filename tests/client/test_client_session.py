"""ChatClient over the Session stream, against replicas whose stream the test drives: sends go
over the stream by default (unary when asked, or when the replica has no Session method),
several threads' sends are in flight at once and each caller gets its own result, the first
ones right behind `open`; once the stream fails (it breaks, or an attempt to open it is
refused) every unanswered request carries on as a unary call under the same request id (each
applied once) and later ones go unary until the stream is open again; and the client stays
within the replica's bound on requests in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from client import (
    AsyncChatClient,
    Backoff,
    ChatClient,
    ChatUnavailableError,
    ClientSettings,
    Liveness,
    NotFound,
)
from protos import chat_pb2
from tests.client.chat_fakes import answer, start_replica, stop_replica
from tests.client.session_fakes import (
    TOKEN,
    FakeSessionReplica,
    start_session_replica,
    stop_session_replica,
)
from testsupport.harness import wait_until

SETTINGS = ClientSettings(
    timeout=10.0, backoff=Backoff(initial=0.01, maximum=0.05), session_stream=True
)


@pytest.fixture
def cluster() -> Iterator[Callable[..., FakeSessionReplica]]:
    started: list[FakeSessionReplica] = []
    log: dict[str, int] = {}

    def start(**kwargs: object) -> FakeSessionReplica:
        replica = start_session_replica(FakeSessionReplica(log, **kwargs))  # type: ignore[arg-type]
        started.append(replica)
        return replica

    yield start
    for replica in started:
        stop_session_replica(replica)


def client_of(*replicas: FakeSessionReplica, settings: ClientSettings = SETTINGS) -> ChatClient:
    client = ChatClient([r.address for r in replicas], settings)
    client.login("alice", "pw")
    return client


def client_stream_open(client: ChatClient) -> bool:
    stream = client._stream
    return stream is not None and stream.is_open


def sends_from_threads(client: ChatClient, count: int) -> list[futures.Future[int]]:
    pool = futures.ThreadPoolExecutor(max_workers=count)
    sent = [pool.submit(client.send, "bob", f"message {i}") for i in range(count)]
    pool.shutdown(wait=False)
    return sent


def test_sends_go_over_the_stream_by_default_and_unary_when_asked(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    with client_of(replica, settings=ClientSettings()) as client:
        first = client.send("bob", "over the stream")
    with client_of(replica, settings=ClientSettings(session_stream=False)) as client:
        second = client.send("bob", "unary")
    assert [r.send.body for r in replica.received] == ["over the stream"]
    assert [r.body for r in replica.unary_sends] == ["unary"]
    assert replica.log == {
        replica.received[0].send.request_id: first,
        replica.unary_sends[0].request_id: second,
    }


def test_a_replica_without_session_gets_unary_calls() -> None:
    server = start_replica()  # its Session is the generated servicer's: UNIMPLEMENTED
    try:
        server.script("Login", answer(chat_pb2.LoginReply(session_token="t", username="alice")))
        server.script("Send", answer(chat_pb2.SendReply(message_id=3)))
        with ChatClient([server.address], SETTINGS) as client:
            client.login("alice", "pw")
            assert client.send("bob", "one") == 3
            assert client.send("bob", "two") == 3
        assert [r.body for r in server.requests("Send")] == ["one", "two"]
    finally:
        stop_replica(server)


def test_sends_of_many_threads_are_pipelined_and_each_gets_its_own_result(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster(answer_at_once=False)
    with client_of(replica) as client:
        sent = sends_from_threads(client, 8)
        replica.wait_held(8)  # all eight in flight on the one stream at once
        replica.answer_held()  # answered in reverse order
        results = [f.result(timeout=10) for f in sent]
    by_body = {r.send.body: replica.log[r.send.request_id] for r in replica.received}
    assert results == [by_body[f"message {i}"] for i in range(8)]
    assert sorted(results) == list(range(1, 9))


def test_requests_on_a_stream_that_breaks_carry_on_as_unary_calls_to_the_new_primary(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    old, new = cluster(answer_at_once=False), cluster()
    with client_of(old, new) as client:
        sent = sends_from_threads(client, 5)
        old.wait_held(5)
        applied = old.apply_held()  # committed there, but no reply goes out
        old.end_stream(grpc.StatusCode.FAILED_PRECONDITION, "not the primary", new.address)
        results = [f.result(timeout=10) for f in sent]
        assert client.connected_address == new.address
        # Not over a stream opened on the new primary first: as unary calls, which found it.
        assert new.opens == 0
        assert {r.session_token for r in new.unary_sends} == {TOKEN}
    # The same five request ids, once each, and each caller got what the log holds for its id.
    assert sorted(r.request_id for r in new.unary_sends) == sorted(old.sent_request_ids())
    assert sorted(applied) == sorted(old.sent_request_ids())
    assert len(old.log) == 5
    by_body = {r.body: old.log[r.request_id] for r in new.unary_sends}
    assert results == [by_body[f"message {i}"] for i in range(5)]


def test_a_request_whose_replica_broke_the_stream_goes_on_at_the_next_replica(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    gone, primary = cluster(answer_at_once=False), cluster()
    with client_of(gone, primary) as client:
        [sent] = sends_from_threads(client, 1)
        gone.wait_held(1)
        gone.end_stream(grpc.StatusCode.UNAVAILABLE, "connection reset")  # (not its answer)
        assert sent.result(timeout=10) == 1
    # Not first back to the replica whose connection broke, as a unary call would not either.
    assert gone.unary_sends == []
    assert [r.body for r in primary.unary_sends] == ["message 0"]


def test_a_request_that_finds_the_stream_broken_goes_unary_while_it_opens_again(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    with client_of(replica) as client:
        sent = sends_from_threads(client, 3)
        assert sorted(f.result(timeout=10) for f in sent) == [1, 2, 3]
        replica.end_stream(grpc.StatusCode.UNAVAILABLE, "going down")
        wait_until(lambda: not client_stream_open(client), 5, "the stream did not close")
        assert client.send("bob", "while closed") == 4
        wait_until(lambda: replica.opens == 2, 5, "the stream was not opened again")
        wait_until(lambda: client_stream_open(client), 5, "the stream did not open")
        assert client.send("bob", "on the stream again") == 5
    assert [r.body for r in replica.unary_sends] == ["while closed"]
    assert [r.send.body for r in replica.received][-1] == "on the stream again"
    assert len(replica.received) == 4


def test_the_first_requests_go_right_behind_open_not_after_its_answer(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    replica.hold_open_for_sends = 1
    with client_of(replica) as client:
        assert client.send("bob", "first") == 1
    assert replica.sends_before_opened == [1]  # a round trip saved
    assert replica.unary_sends == []


def test_requests_go_unary_when_the_first_attempt_to_open_fails(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    deposed, primary = cluster(), cluster()
    with client_of(deposed, primary) as client:  # logged in at the first
        deposed.step_down(primary.address)  # it refuses streams from now on
        assert client.send("bob", "hello") == 1
        wait_until(lambda: primary.opens == 1, 5, "the stream did not follow the primary")
    assert deposed.opens == 1
    assert [r.body for r in deposed.unary_sends] == ["hello"]  # (its unary Send still answers)
    assert deposed.received == primary.received == []


def test_the_client_keeps_within_the_replicas_bound(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster(max_in_flight=3, answer_at_once=False)
    with client_of(replica) as client:  # its own bound is 64: the replica's 3 wins
        sent = sends_from_threads(client, 10)
        replica.wait_held(3)
        answered = 0
        while answered < 10:
            replica.wait_held(min(3, 10 - answered))
            held = len(replica.received) - answered
            replica.answer_held()
            answered += held
        results = [f.result(timeout=10) for f in sent]
    assert sorted(results) == list(range(1, 11))
    assert replica.most_in_flight == 3
    assert replica.refused_beyond_bound == 0


def test_a_refused_request_raises_its_own_class(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    refusal = chat_pb2.RequestError(code=5, message="no such user: zed", error="NotFound")
    original = replica._apply

    def refuse_zed(request: chat_pb2.SessionRequest) -> chat_pb2.SessionReply:
        if request.send.recipient == "zed":
            return chat_pb2.SessionReply(correlation_id=request.correlation_id, error=refusal)
        return original(request)

    replica._apply = refuse_zed  # type: ignore[method-assign]
    with client_of(replica) as client:
        with pytest.raises(NotFound) as info:
            client.send("zed", "hi")
        assert info.value.message == "no such user: zed"
        assert client.send("bob", "still fine") == 1


def test_close_fails_a_waiting_send_at_once(cluster: Callable[..., FakeSessionReplica]) -> None:
    replica = cluster(answer_at_once=False)
    client = client_of(replica)
    [sent] = sends_from_threads(client, 1)
    replica.wait_held(1)
    closer = threading.Thread(target=client.close)
    closer.start()
    with pytest.raises(Exception, match="client closed"):
        sent.result(timeout=10)
    closer.join(10)


def test_a_replica_that_stops_answering_is_left_and_the_request_goes_unary(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster(answer_at_once=False)
    quick = Liveness(check_after=0.05, probe_timeout=0.05, suspect_for=0.1)
    with client_of(
        replica, settings=ClientSettings(timeout=10.0, liveness=quick, session_stream=True)
    ) as client:
        replica.thawed.clear()
        [sent] = sends_from_threads(client, 1)
        replica.wait_held(1)
        wait_until(lambda: replica.probes > 0, 5, "no liveness probe")
        wait_until(lambda: replica.unary_sends, 5, "the send did not go on as a unary call")
        replica.thawed.set()
        assert sent.result(timeout=5) == 1
    assert [r.request_id for r in replica.unary_sends] == replica.sent_request_ids()


# Long beside the backoff (10-50 ms): a stream reopened at once would have been by then.
IDLE_WAIT = 0.3


def test_an_idle_stream_that_breaks_is_opened_again_by_its_next_request(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    with client_of(replica) as client:
        assert client.send("bob", "before") == 1
        replica.end_stream(grpc.StatusCode.UNAVAILABLE, "going down")
        time.sleep(IDLE_WAIT)
        assert replica.opens == 1  # nothing awaits a result, nobody listens: not yet
        assert client.send("bob", "after") == 2  # (unary, while the stream opens)
        wait_until(lambda: replica.opens == 2, 5, "the next request opened no stream")


def test_a_stream_with_a_subscriber_is_opened_again_at_once(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    with client_of(replica) as client:
        subscription = client.subscribe()
        wait_until(lambda: replica.opens == 1, 5, "the subscription opened no stream")
        replica.end_stream(grpc.StatusCode.UNAVAILABLE, "going down")
        wait_until(lambda: replica.opens == 2, 5, "the subscriber's stream was not reopened")
        subscription.cancel()


# -- the asyncio client: the same stream ------------------------------------------------------


def test_async_sends_are_pipelined_and_carry_on_as_unary_calls_to_the_new_primary(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    old, new = cluster(answer_at_once=False), cluster()

    async def scenario() -> list[int]:
        async with AsyncChatClient([old.address, new.address], SETTINGS) as client:
            await client.login("alice", "pw")
            sends = [asyncio.create_task(client.send("bob", f"message {i}")) for i in range(5)]
            await asyncio.to_thread(old.wait_held, 5)  # all five in flight at once
            old.apply_held()  # committed there, no reply goes out
            old.end_stream(grpc.StatusCode.FAILED_PRECONDITION, "not the primary", new.address)
            results = await asyncio.gather(*sends)
            assert client.connected_address == new.address
            assert new.opens == 0  # (no request found the stream closed since)
            return results

    results = asyncio.run(scenario())
    assert sorted(r.request_id for r in new.unary_sends) == sorted(old.sent_request_ids())
    assert {r.session_token for r in new.unary_sends} == {TOKEN}
    assert len(old.log) == 5
    by_body = {r.body: old.log[r.request_id] for r in new.unary_sends}
    assert results == [by_body[f"message {i}"] for i in range(5)]


def test_async_requests_go_unary_when_the_first_attempt_to_open_fails(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    deposed, primary = cluster(), cluster()

    async def scenario() -> int:
        async with AsyncChatClient([deposed.address, primary.address], SETTINGS) as client:
            await client.login("alice", "pw")  # at the first
            deposed.step_down(primary.address)
            sent = await client.send("bob", "hello")
            await asyncio.to_thread(
                wait_until, lambda: primary.opens == 1, 5, "the stream did not follow"
            )
            return sent

    assert asyncio.run(scenario()) == 1
    assert [r.body for r in deposed.unary_sends] == ["hello"]
    assert deposed.received == primary.received == []


def test_async_client_keeps_within_the_replicas_bound(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster(max_in_flight=2, answer_at_once=False)

    def answer_two_at_a_time() -> None:
        answered = 0
        while answered < 10:
            replica.wait_held(min(2, 10 - answered))
            held = len(replica.received) - answered
            replica.answer_held()
            answered += held

    async def scenario() -> list[int]:
        async with AsyncChatClient([replica.address], SETTINGS) as client:
            await client.login("alice", "pw")
            driver = asyncio.create_task(asyncio.to_thread(answer_two_at_a_time))
            sent = await asyncio.gather(*(client.send("bob", f"m{i}") for i in range(10)))
            await driver
            return sent

    assert sorted(asyncio.run(scenario())) == list(range(1, 11))
    assert replica.unary_sends == []
    assert replica.most_in_flight == 2
    assert replica.refused_beyond_bound == 0


def test_async_idle_stream_that_breaks_is_opened_again_by_its_next_request(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()

    async def scenario() -> list[int]:
        async with AsyncChatClient([replica.address], SETTINGS) as client:
            await client.login("alice", "pw")
            before = await client.send("bob", "before")
            replica.end_stream(grpc.StatusCode.UNAVAILABLE, "going down")
            await asyncio.sleep(IDLE_WAIT)
            opens_while_idle = replica.opens
            after = await client.send("bob", "after")  # (unary, while the stream opens)
            await asyncio.to_thread(
                wait_until, lambda: replica.opens == 2, 5, "the next request opened no stream"
            )
            return [before, opens_while_idle, after]

    assert asyncio.run(scenario()) == [1, 1, 2]
    assert [r.body for r in replica.unary_sends] == ["after"]


def test_a_request_past_its_deadline_says_what_a_unary_call_would(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    settings = ClientSettings(timeout=0.5, backoff=Backoff(0.01, 0.05), session_stream=True)
    with client_of(replica, settings=settings) as client:
        assert client.send("bob", "before") == 1
        stop_session_replica(replica)
        with pytest.raises(ChatUnavailableError) as raised:
            client.send("bob", "after")
    assert raised.value.message == f"no replica reachable at {replica.address}"


def test_async_request_past_its_deadline_says_what_a_unary_call_would(
    cluster: Callable[..., FakeSessionReplica],
) -> None:
    replica = cluster()
    settings = ClientSettings(timeout=0.5, backoff=Backoff(0.01, 0.05), session_stream=True)

    async def scenario() -> str:
        async with AsyncChatClient([replica.address], settings) as client:
            await client.login("alice", "pw")
            await client.send("bob", "before")
            stop_session_replica(replica)
            with pytest.raises(ChatUnavailableError) as raised:
                await client.send("bob", "after")
            return raised.value.message

    assert asyncio.run(scenario()) == f"no replica reachable at {replica.address}"
