"""min_insync = 2: with both secondaries gone the primary refuses writes (nothing is
acknowledged that a single replica holds), and accepts them again once one is back in sync."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from client import ClientSettings
from client.errors import ChatError
from client.library import ChatClient
from tests.integration.cluster_checks import (
    PASSWORD,
    read_inbox,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = pytest.mark.slow


def test_min_insync_two_refuses_writes_alone(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    cluster = cluster_processes(3, settings={"min_insync": 2})
    cluster.start_all()
    primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, primary)
    with ChatClient(cluster.addresses, ClientSettings(timeout=20)) as client:
        client.register("alice", PASSWORD)
        client.login("alice", PASSWORD)
        assert client.send("alice", "with everyone") > 0
        secondaries = [i for i in range(3) if i != primary]
        for index in secondaries:
            cluster.kill(index)
    with ChatClient(cluster.addresses, ClientSettings(timeout=3)) as client:
        # Login itself is a write: refused too, with a message that says why.
        with pytest.raises(ChatError) as refused:
            client.login("alice", PASSWORD)
        assert "min_insync" in str(refused.value) or "in sync" in str(refused.value)
    cluster.start(secondaries[0])
    wait_until(
        lambda: _can_send(cluster, "back in sync"),
        30,
        "writes did not resume once a secondary was back in sync",
    )
    bodies = [m.body for m in read_inbox(cluster, "alice")]
    assert bodies.count("with everyone") == 1
    assert bodies.count("back in sync") == 1


def _can_send(cluster: ClusterProcesses, body: str) -> bool:
    try:
        with ChatClient(cluster.addresses, ClientSettings(timeout=5)) as client:
            client.login("alice", PASSWORD)
            client.send("alice", body)
            return True
    except ChatError:
        return False
