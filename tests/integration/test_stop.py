"""A replica stopped by SIGTERM at any moment exits 0, saying so, with no traceback in its log:
under load, in the middle of an election, in the middle of a probe round, while cut off from
its peers (they are stopped with SIGSTOP: its calls to them hang until their deadlines). The
harness fails a test whose replicas logged a traceback (testsupport/harness.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.cluster_checks import (
    register_users,
    sending,
    three_replicas,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(cluster_processes: Callable[..., ClusterProcesses]) -> Iterator[ClusterProcesses]:
    with three_replicas(cluster_processes, "sqlite", "stop") as made:
        yield made


def stopped_cleanly(cluster: ClusterProcesses, index: int) -> None:
    assert cluster.terminate(index) == 0
    log = cluster.log_text(index)
    assert f"replica {index}: stopped" in log
    assert not cluster.tracebacks(), cluster.tracebacks()


def test_sigterm_under_load_mid_election_and_mid_probe(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob"])
    wait_all_running_follow(cluster, primary)
    first, last = (i for i in range(3) if i != primary)
    with sending(cluster, ["alice"], "bob") as load:
        load.wait_for_acks(20)
        # A secondary, while it stores what the primary streams.
        stopped_cleanly(cluster, first)
        load.wait_for_acks(load.acknowledged_count() + 10)
        # The primary, with writes in flight.
        mark = len(cluster.log_text(last))
        stopped_cleanly(cluster, primary)
    # The last one lost its primary: it probes the others and elects -- stopped then.
    logged(cluster, last, "no live primary", mark)
    stopped_cleanly(cluster, last)
    # One that has just started: stopped in its first probe rounds.
    mark = len(cluster.log_text(first))
    cluster.start(first, wait=False)
    logged(cluster, first, "serving on", mark)
    stopped_cleanly(cluster, first)


def logged(
    cluster: ClusterProcesses, index: int, text: str, mark: int, timeout: float = 20.0
) -> None:
    """Until replica `index` logs `text` after the first `mark` characters of its log."""
    wait_until(
        lambda: text in cluster.log_text(index)[mark:],
        timeout,
        f"replica {index} never logged {text!r}",
    )


def test_sigterm_while_its_peers_do_not_answer(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, primary)
    others = [i for i in range(3) if i != primary]
    for i in others:
        cluster.process(i).send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)  # its probes and streams to them hang; it steps down meanwhile
        stopped_cleanly(cluster, primary)
    finally:
        for i in others:
            cluster.process(i).send_signal(signal.SIGCONT)
    for i in others:
        stopped_cleanly(cluster, i)
