"""The client library against a real replica: each refusal arrives as the ChatError subclass
that names it (from the error class the replica sends), with its status code and message -- a
rate limit with the seconds until the next try -- and a transport failure as the class its
status code means; every call returns plain dataclasses, never protobuf messages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import client
from client import (
    AlreadyExists,
    CaughtUp,
    ChatClient,
    ChatError,
    ClientSettings,
    ClusterStatus,
    InvalidArgument,
    Message,
    NotFound,
    NotLoggedInError,
    RateLimited,
    ReplicaStatus,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from protos import chat_pb2
from protos.wire import RETRY_AFTER_KEY, SERVICE_ERROR_KEY
from tests.integration.cluster_checks import wait_for_primary
from testsupport.harness import ClusterProcesses

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real replica (SQLite) for the module; tests use their own user names."""
    with ClusterProcesses(tmp_path_factory.mktemp("errors"), 1) as cluster:
        cluster.start(0)
        wait_for_primary(cluster)
        yield cluster.address(0)


@pytest.fixture
def chat(address: str) -> Iterator[ChatClient]:
    with ChatClient([address], ClientSettings(timeout=10.0)) as c:
        yield c


def name(word: str) -> str:
    return f"{word}{uuid.uuid4().hex[:8]}"


def test_each_refusal_is_its_own_class(chat: ChatClient) -> None:
    alice = chat.register(name("alice"), PASSWORD)
    with pytest.raises(AlreadyExists) as taken:
        chat.register(alice, PASSWORD)
    assert taken.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert alice in taken.value.message
    with pytest.raises(InvalidArgument):
        chat.register("no spaces!", PASSWORD)
    with pytest.raises(Unauthenticated) as wrong:
        chat.login(alice, "not the password")
    assert not isinstance(wrong.value, NotLoggedInError)
    with pytest.raises(NotLoggedInError):
        chat.send(alice, "before login")
    chat.login(alice, PASSWORD)
    with pytest.raises(NotFound) as nobody:
        chat.send(name("nobody"), "hello?")
    assert nobody.value.code is grpc.StatusCode.NOT_FOUND
    # All of them are ChatErrors, printed as the CLI prints them.
    assert isinstance(nobody.value, ChatError)
    assert str(nobody.value).endswith("(NOT_FOUND)")


def test_a_rate_limit_says_when_to_try_again(chat: ChatClient) -> None:
    bob = chat.register(name("bob"), PASSWORD)
    for _ in range(5):  # the account's burst of failed logins
        with pytest.raises(Unauthenticated):
            chat.login(bob, "wrong password")
    with pytest.raises(RateLimited) as limited:
        chat.login(bob, PASSWORD)
    assert isinstance(limited.value, ResourceExhausted)
    assert limited.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < limited.value.retry_after <= 10.0
    assert "too many failed logins" in limited.value.message


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


@pytest.mark.parametrize(
    ("code", "trailers", "expected"),
    [
        # The replica's class wins over the code.
        (grpc.StatusCode.FAILED_PRECONDITION, ((SERVICE_ERROR_KEY, "NotPrimary"),), Unavailable),
        (grpc.StatusCode.NOT_FOUND, ((SERVICE_ERROR_KEY, "NotFound"),), NotFound),
        # A transport failure (no class): the code says.
        (grpc.StatusCode.UNAVAILABLE, (), Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (), ResourceExhausted),
        (grpc.StatusCode.INTERNAL, (), ChatError),
        # A retry-after that is not a number: still the limit, without the time.
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ((SERVICE_ERROR_KEY, "ResourceExhausted"), (RETRY_AFTER_KEY, "soon")),
            ResourceExhausted,
        ),
    ],
)
def test_the_class_comes_from_the_replica_or_else_the_code(
    code: grpc.StatusCode, trailers: Any, expected: type[ChatError]
) -> None:
    error = ChatError.from_rpc_error(_Failed(code, "what the replica said", trailers))
    assert type(error) is expected
    assert error.code is code and error.message == "what the replica said"


def test_importing_the_library_leaves_the_environment_alone(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = "import os, client; print(os.environ.get('GRPC_VERBOSITY'))"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(client.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "None"


def test_calls_return_plain_dataclasses(address: str) -> None:
    with ChatClient([address]) as alice, ChatClient([address]) as bob:
        a = alice.register(name("alice"), PASSWORD)
        b = bob.register(name("bob"), PASSWORD)
        alice.login(a, PASSWORD)
        bob.login(b, PASSWORD)
        message_id = alice.send(b, "hello")
        [sent] = list(alice.history(b))
        assert type(sent) is Message
        assert (sent.message_id, sent.sender, sent.recipient, sent.body) == (
            message_id,
            a,
            b,
            "hello",
        )
        assert sent.sent_at.tzinfo is not None
        assert abs(sent.sent_at.timestamp() * 1000 - sent.sent_at_unix_ms) < 1
        subscription = bob.subscribe()
        received = [next(subscription), next(subscription)]
        subscription.cancel()
        assert received == [sent, CaughtUp()]
        status = alice.cluster_status()
        assert type(status) is ClusterStatus
        assert status.primary_index == 0 and status.primary_known
        [replica] = status.replicas
        assert type(replica) is ReplicaStatus
        assert (replica.index, replica.address, replica.role) == (0, address, "primary")


def test_a_status_without_a_primary_says_none() -> None:
    reply = chat_pb2.ClusterStatusReply(answered_by=2, primary_index=0, primary_known=False)
    status = ClusterStatus.from_proto(reply)
    assert status.primary_index is None and not status.primary_known


def test_settings_refuse_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="timeouts must be positive"):
        ClientSettings(timeout=0)
    with pytest.raises(ValueError, match="attempt_timeout -1"):
        ClientSettings(attempt_timeout=-1)
