from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.client.admin_fakes import FakeAdminReplica, start_admin_replica
from tests.client.chat_fakes import FakeReplica, FakeTime, start_replica, stop_replica


@pytest.fixture
def replicas() -> Iterator[list[FakeReplica]]:
    """Three scripted replicas on free ports; nothing scripted means UNIMPLEMENTED."""
    started = [start_replica() for _ in range(3)]
    yield started
    for replica in started:
        stop_replica(replica)


@pytest.fixture
def dead_address() -> str:
    """An address nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def admin_replicas() -> Iterator[list[FakeAdminReplica]]:
    """Two scripted replicas serving the Admin service too."""
    started = [start_admin_replica() for _ in range(2)]
    yield started
    for replica in started:
        stop_replica(replica)
