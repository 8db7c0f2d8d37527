"""A client pipelining sends over its Session stream while the primary is SIGKILLed: the
stream is reopened on the new primary, the sends in flight are sent again with their request
ids, and every acknowledged send is delivered exactly once (three real replica processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.cluster_checks import (
    PipelinedSenders,
    check_exactly_once,
    read_inbox,
    register_users,
    three_replicas,
    wait_converged,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(
    backend: str, cluster_processes: Callable[..., ClusterProcesses]
) -> Iterator[ClusterProcesses]:
    with three_replicas(cluster_processes, backend, "session") as made:
        yield made


def test_sigkill_of_the_primary_under_pipelined_sends(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    load = PipelinedSenders(cluster, "alice", 8, "dave")
    load.start()
    try:
        load.wait_for_acks(100)
        cluster.kill(primary)
        before = load.acknowledged_count()
        assert wait_for_primary(cluster) != primary
        load.wait_for_acks(before + 100)
        cluster.start(primary)  # to converge with the others afterwards
    finally:
        log = load.stop()
    assert load.most_at_once > 1, "the sends were never in flight together"
    assert not log.failed, f"sends failed: {log.failed[:5]}"
    wait_converged(cluster)
    check_exactly_once(log, read_inbox(cluster, "dave"))
