"""A replica that stops answering (a SIGSTOPped primary) is abandoned within a second, not after
the per-attempt timeout; a slow one that still answers is waited for. Real clock, real gRPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from client import ChatClient, ClientSettings
from client.failover import Liveness, _Unresponsive, _Watchdog
from protos import chat_pb2
from tests.client.chat_fakes import FakeReplica, answer, fail, start_replica, stop_replica
from testsupport.harness import wait_until

STATUS = answer(chat_pb2.ClusterStatusReply())


@pytest.fixture
def released() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def pair() -> Iterator[tuple[FakeReplica, FakeReplica]]:
    a, b = start_replica(), start_replica()
    yield a, b
    stop_replica(a)
    stop_replica(b)


def hang(released: threading.Event) -> Any:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        released.wait(20)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    return handler


def freeze(replica: FakeReplica, released: threading.Event) -> None:
    """The replica stops answering (a SIGSTOPped process): its sends and its status hang."""
    replica.script("Send", hang(released))
    replica.script("ClusterStatus", hang(released))


def slow(seconds: float, reply: Any) -> Any:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        time.sleep(seconds)  # the server being slow is what is under test
        return reply

    return handler


def logged_in(client: ChatClient, replica: FakeReplica) -> ChatClient:
    replica.script("Login", answer(chat_pb2.LoginReply(session_token="t", username="bob")))
    client.login("bob", "secret")
    return client


def test_a_replica_that_stops_answering_is_left_well_before_the_attempt_timeout(
    pair: tuple[FakeReplica, FakeReplica], released: threading.Event
) -> None:
    frozen, alive = pair
    with ChatClient(
        [frozen.address, alive.address], ClientSettings(timeout=10, attempt_timeout=3)
    ) as client:
        logged_in(client, frozen)
        freeze(frozen, released)
        alive.script("Send", answer(chat_pb2.SendReply(message_id=42)))
        start = time.monotonic()
        assert client.send("alice", "hello") == 42
        elapsed = time.monotonic() - start
        assert elapsed < 1.5, f"took {elapsed:.2f}s to leave a silent replica"
        (first,) = frozen.requests("Send")
        (second,) = alive.requests("Send")
        assert first.request_id == second.request_id, "the retry must keep its request_id"
        # The next call starts at the replica that answered, not at the silent one.
        assert client.send("alice", "again") == 42
        assert len(frozen.requests("Send")) == 1


def test_a_slow_replica_that_still_answers_is_waited_for(
    pair: tuple[FakeReplica, FakeReplica],
) -> None:
    busy, other = pair
    with ChatClient(
        [busy.address, other.address], ClientSettings(timeout=10, attempt_timeout=3)
    ) as client:
        logged_in(client, busy)
        busy.script("Send", slow(1.2, chat_pb2.SendReply(message_id=7)))
        busy.script("ClusterStatus", STATUS)
        other.script("Send", fail(grpc.StatusCode.FAILED_PRECONDITION, "not the primary"))
        assert client.send("alice", "hello") == 7
        assert other.requests("Send") == [], "left a replica that was only slow"
        assert len(busy.requests("ClusterStatus")) >= 2, "never checked it was alive"


def test_every_call_waiting_on_a_silent_replica_is_abandoned_and_retried_elsewhere(
    pair: tuple[FakeReplica, FakeReplica], released: threading.Event
) -> None:
    frozen, alive = pair
    with ChatClient(
        [frozen.address, alive.address], ClientSettings(timeout=10, attempt_timeout=3)
    ) as client:
        logged_in(client, frozen)
        freeze(frozen, released)
        alive.script("Send", answer(chat_pb2.SendReply(message_id=9)))
        results: list[int] = []
        start = time.monotonic()
        senders = [
            threading.Thread(target=lambda: results.append(client.send("alice", "hi")))
            for _ in range(3)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(10)
        elapsed = time.monotonic() - start
        assert results == [9, 9, 9]
        assert elapsed < 2.0, f"took {elapsed:.2f}s to leave a silent replica"
        # Each call was sent once to each replica, with its own request_id kept.
        assert len(frozen.requests("Send")) == 3
        assert {r.request_id for r in frozen.requests("Send")} == {
            r.request_id for r in alive.requests("Send")
        }


def test_the_watchdog_thread_ends_with_its_client(pair: tuple[FakeReplica, FakeReplica]) -> None:
    replica, _ = pair
    client = ChatClient([replica.address], ClientSettings(timeout=5, attempt_timeout=3))
    logged_in(client, replica)
    before = set(threading.enumerate())
    replica.script("Send", answer(chat_pb2.SendReply(message_id=1)))
    assert client.send("alice", "hello") == 1
    watchdog = client._failover._watchdog._thread  # (what is under test)
    assert watchdog is not None and watchdog.is_alive(), "no watchdog thread after a call"
    assert watchdog in before, "the watchdog is one thread per client, not one per call"
    client.close()
    watchdog.join(2)
    assert not watchdog.is_alive()


def test_a_call_that_starts_on_a_channel_already_given_up_is_abandoned_at_once() -> None:
    """The watchdog gives up on a stub's channel while a call waits on it; a call that picked
    the same stub up just before the pool replaced it must not run on the closed channel."""

    class Stub:
        pass

    stub = Stub()
    given_up: list[tuple[str, object]] = []
    watchdog = _Watchdog(
        Liveness(check_after=0.05, probe_timeout=0.05),
        lambda _address, _stub: False,  # the replica never answers the check
        lambda address, s: given_up.append((address, s)),
    )
    try:
        with watchdog.watching("a:1", stub) as watch:  # type: ignore[arg-type]
            assert wait_until(lambda: watch.abandoned, timeout=5)
        assert given_up == [("a:1", stub)]
        with pytest.raises(_Unresponsive), watchdog.watching("a:1", stub):  # type: ignore[arg-type]
            pytest.fail("ran on a channel given up")
        with watchdog.watching("a:1", Stub()) as fresh:  # type: ignore[arg-type]
            assert not fresh.abandoned  # a new channel's stub is watched afresh
    finally:
        watchdog.close()
