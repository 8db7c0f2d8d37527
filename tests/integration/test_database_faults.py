"""A replica whose own database fails, on MySQL with real processes: it must stop vouching for
its log, so that it cannot later elect itself without what the others acknowledged meanwhile."""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from protos import replication_pb2 as rpb
from replica.config import load_cluster_config
from replica.replication.peers import Peers, ProbeResult
from tests.conftest import MYSQL_SERVER_URL, require_mysql
from tests.integration.cluster_checks import (
    SETTINGS,
    check_exactly_once,
    db_url,
    primary_of,
    read_inbox,
    register_users,
    seen_by,
    sending,
    three_replicas,
    wait_all_running_follow,
    wait_converged,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.mysql]


@pytest.fixture
def cluster(cluster_processes: Callable[..., ClusterProcesses]) -> Iterator[ClusterProcesses]:
    require_mysql()
    with three_replicas(cluster_processes, "mysql", "dbfault") as made:
        yield made


def rename_events_table(cluster: ClusterProcesses, index: int, old: str, new: str) -> None:
    """Every statement of replica `index` on its log fails while the table is renamed away."""
    database = make_url(db_url(cluster, index)).database
    server = sa.create_engine(MYSQL_SERVER_URL + "/", poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            conn.execute(sa.text(f"RENAME TABLE `{database}`.`{old}` TO `{database}`.`{new}`"))
    finally:
        server.dispose()


def test_a_secondary_with_a_failing_database_does_not_elect_itself_alone(
    cluster: ClusterProcesses,
) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    wait_all_running_follow(cluster, primary)
    broken, other = [i for i in range(3) if i != primary]
    rename_events_table(cluster, broken, "events", "events_hidden")
    try:
        with sending(cluster, ["alice"], "dave") as load:
            # Its next store fails, its stream breaks, and the primary drops it.
            wait_until(
                lambda: (
                    (seen := seen_by(cluster, primary, broken)) is not None and not seen.in_sync
                ),
                20,
                f"replica {broken} to leave the in-sync set",
            )
            # Acknowledged by the primary and `other` only.
            load.wait_for_acks(load.acknowledged_count() + 30)
        cluster.kill(primary)
        cluster.kill(other)
    finally:
        rename_events_table(cluster, broken, "events_hidden", "events")
    # Alone and working again, it knows it may lack acknowledged events: it must wait for the
    # others rather than lead. (A bounded observation of something that must not happen.)
    deadline = time.monotonic() + 3 * SETTINGS["peer_timeout_ms"] / 1000
    while time.monotonic() < deadline:
        assert primary_of(cluster, broken) is None, (
            f"replica {broken} elected itself without the events acknowledged while its "
            f"database was failing\n{cluster.log_tail(broken)}"
        )
        time.sleep(0.05)
    cluster.start(primary)
    cluster.start(other)
    new_primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, new_primary)
    wait_converged(cluster)
    check_exactly_once(load.log, read_inbox(cluster, "dave"))


def _probe(peers: Peers, index: int, timeout: float = 5.0) -> ProbeResult:
    done: queue.Queue[list[ProbeResult]] = queue.Queue()
    peers.probe_all(rpb.ProbeRequest(from_index=peers.index, from_epoch=0), timeout, done.put)
    return next(r for r in done.get(timeout=10) if r.peer.index == index)


def test_a_replica_whose_database_fails_stops_vouching_before_it_answers_unavailable(
    cluster: ClusterProcesses,
) -> None:
    """Its peers may elect without it on that answer, so it must have stopped vouching first;
    and they must be able to tell that answer from a timeout (behind which it may be running
    and vouching: an election waits for it) and from a dead process."""
    primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, primary)
    broken, other = [i for i in range(3) if i != primary]
    config = load_cluster_config(cluster.config_path)
    peers = Peers(other, config, cluster.cluster_secret.encode())
    wait_until(
        lambda: (reply := _probe(peers, broken).reply) is not None and reply.trusted,
        20,
        f"replica {broken} to vouch for its log",
    )
    rename_events_table(cluster, broken, "events", "events_hidden")
    try:
        # A probe is answered from memory; once its database has failed (here: storing the
        # batch a registration brings) for longer than half the storage timeout, it answers
        # UNAVAILABLE -- after it stopped vouching.
        register_users(cluster, ["erin"])
        seen: list[ProbeResult] = []

        def refused() -> bool:
            seen.append(result := _probe(peers, broken))
            return result.refused

        wait_until(refused, 10, lambda: f"replica {broken} to answer UNAVAILABLE: {seen[-3:]}")
        result = seen[-1]
        assert result.reply is None and not result.process_gone, result
        assert "stops vouching" in cluster.log_text(broken), cluster.log_tail(broken)
    finally:
        rename_events_table(cluster, broken, "events_hidden", "events")
    cluster.process(broken).send_signal(signal.SIGSTOP)
    try:
        result = _probe(peers, broken, timeout=0.5)
        assert result.reply is None and not result.refused and not result.process_gone, result
    finally:
        cluster.process(broken).send_signal(signal.SIGCONT)
    cluster.kill(broken)
    # The first call after the kill may still meet the old connection's end ("Socket closed",
    # a reset) rather than a refused new one: a refusal, not yet known as a gone process. The
    # next probe round tells it: nothing listens on the port any more.
    seen: list[ProbeResult] = []

    def gone() -> bool:
        seen.append(result := _probe(peers, broken))
        assert result.reply is None and result.refused, result
        return result.process_gone

    wait_until(gone, 10, lambda: f"replica {broken}'s killed process to be seen gone: {seen}")
