"""The client's typed exceptions: each refusal of a real replica arrives as the ChatError
subclass that names it (from the error class the replica sends), with its status code and
message -- a rate limit with the seconds until the next try -- and a transport failure as
the class its status code means."""

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
    ChatClient,
    ChatError,
    InvalidArgument,
    NotFound,
    NotLoggedInError,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
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
    with ChatClient([address], timeout=10.0) as c:
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
