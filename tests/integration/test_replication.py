"""Three real replica processes on distinct loopback addresses, real SIGKILLs, on SQLite and
MySQL. After each scenario: every acknowledged send is delivered exactly once, and every
replica's log and projections are identical (digests read from each replica's database)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

import eventlog
import projections
from eventlog import Event
from replica.storage.database import make_engine
from tests.integration.cluster_checks import (
    HOSTS,
    check_exactly_once,
    db_url,
    history_on_each_replica,
    read_inbox,
    register_users,
    sending,
    status,
    three_replicas,
    wait_all_running_follow,
    wait_converged,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(
    backend: str, cluster_processes: Callable[..., ClusterProcesses]
) -> Iterator[ClusterProcesses]:
    with three_replicas(cluster_processes, backend, "repl") as made:
        yield made


def test_every_replica_has_its_own_address(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    reply = status(cluster, primary)
    assert reply is not None
    assert [r.address.split(":")[0] for r in reply.replicas] == HOSTS
    wait_all_running_follow(cluster, primary)


def test_kill_primary_mid_stream(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "carol", "dave"])
    with sending(cluster, ["alice", "bob", "carol"], "dave") as load:
        load.wait_for_acks(30)
        cluster.kill(primary)
        before = load.acknowledged_count()
        new_primary = wait_for_primary(cluster)
        assert new_primary != primary
        load.wait_for_acks(before + 30)
        cluster.start(primary)
        load.wait_for_acks(load.acknowledged_count() + 20)
    log = load.log
    wait_converged(cluster)
    check_exactly_once(log, read_inbox(cluster, "dave"))
    assert "stepping down" not in cluster.log_text(new_primary)
    # Once heartbeats carry the commit point, every replica serves the same history.
    wait_until(
        lambda: len({tuple(v) for v in history_on_each_replica(cluster, "dave", "alice")}) == 1,
        10,
        "replicas serve different histories",
    )
    assert history_on_each_replica(cluster, "dave", "alice")[0], "history is empty"


def test_kill_two_of_three_then_restart(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "dave"])
    wait_all_running_follow(cluster, primary)
    secondaries = [i for i in range(3) if i != primary]
    with sending(cluster, ["alice", "bob"], "dave") as load:
        load.wait_for_acks(20)
        # The primary and one secondary die at once; the survivor was in sync, so it takes
        # over. (Killed one after the other, the two survivors of the first death may elect
        # one of them first; if that one then dies before confirming the other in sync in
        # its epoch, the last one rightly cannot tell what it acknowledged, and waits.)
        cluster.kill_together([primary, secondaries[0]])
        survivor = wait_for_primary(cluster, [secondaries[1]])
        load.wait_for_acks(load.acknowledged_count() + 30)
        cluster.start(primary)
        cluster.start(secondaries[0])
        wait_all_running_follow(cluster, survivor)
        load.wait_for_acks(load.acknowledged_count() + 20)
    wait_converged(cluster)
    check_exactly_once(load.log, read_inbox(cluster, "dave"))


def test_kill_all_three_and_restart(cluster: ClusterProcesses) -> None:
    wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "dave"])
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(20)
        for index in range(3):
            cluster.kill(index)
        # Back while the send in flight still retries: it lands once or fails, never twice
        # (and the load does not sit out its client's 20 s timeout).
        cluster.start_all()
        primary = wait_for_primary(cluster)
    with sending(cluster, ["bob"], "dave") as more:
        more.wait_for_acks(10)
    wait_all_running_follow(cluster, primary)
    wait_converged(cluster)
    log = load.log
    log.acknowledged.update(more.log.acknowledged)
    log.failed.extend(more.log.failed)
    check_exactly_once(log, read_inbox(cluster, "dave"))


def test_restarted_replica_catches_up_and_does_not_take_over(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    lagging = next(i for i in range(3) if i != primary)
    cluster.kill(lagging)
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(300, timeout=60)
    cluster.start(lagging)
    wait_converged(cluster)
    assert wait_for_primary(cluster) == primary, "leadership moved without a failure"
    check_exactly_once(load.log, read_inbox(cluster, "dave"))


def test_deposed_primary_tail_is_truncated(cluster: ClusterProcesses) -> None:
    """A replica whose log ends in events no other replica has (what a primary that died
    before replicating leaves behind) truncates them when it rejoins a newer epoch."""
    old = wait_for_primary(cluster)
    register_users(cluster, ["alice", "dave"])
    wait_all_running_follow(cluster, old)
    cluster.kill(old)
    new = wait_for_primary(cluster)
    with sending(cluster, ["alice"], "dave") as load:
        load.wait_for_acks(10)
    for index in range(3):
        cluster.kill(index)
    # Forge the old primary's unacknowledged tail: events of its old epoch past its log.
    engine = make_engine(db_url(cluster, old), create_database=False)
    with engine.begin() as conn:
        last = eventlog.last_position(conn)
        dave = conn.execute(
            projections.accounts.select().where(projections.accounts.c.username == "dave")
        ).one()
        alice = conn.execute(
            projections.accounts.select().where(projections.accounts.c.username == "alice")
        ).one()
        tail = [
            Event(
                last.seq + n,
                last.epoch,
                projections.EventTypes.MESSAGE_SENT,
                {
                    "sender_id": alice.account_id,
                    "sender": "alice",
                    "recipient_id": dave.account_id,
                    "recipient": "dave",
                    "body": f"unacknowledged tail {n}",
                },
                f"tail-{n}",
                conn.execute(eventlog.events.select().limit(1)).one().created_at,
            )
            for n in range(1, 30)
        ]
        eventlog.append_events(conn, tail)
        projections.apply_events(conn, tail)
    engine.dispose()
    cluster.start_all()
    primary = wait_for_primary(cluster)
    assert primary != old or new == old
    wait_converged(cluster)
    assert "truncated" in cluster.log_text(old)
    # From its undo information, in time proportional to the tail: not a rebuild.
    assert "projections undone event by event" in cluster.log_text(old)
    delivered = read_inbox(cluster, "dave")
    assert not [m for m in delivered if m.body.startswith("unacknowledged tail")]
    check_exactly_once(load.log, delivered)


def test_paused_primary_steps_down_and_loses_nothing(cluster: ClusterProcesses) -> None:
    old = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob", "dave"])
    wait_all_running_follow(cluster, old)
    with sending(cluster, ["alice", "bob"], "dave") as load:
        load.wait_for_acks(20)
        os.kill(cluster.process(old).pid, signal.SIGSTOP)
        try:
            new = wait_for_primary(cluster, [i for i in range(3) if i != old])
            load.wait_for_acks(load.acknowledged_count() + 20)
        finally:
            os.kill(cluster.process(old).pid, signal.SIGCONT)
        # By its own pause detection, before anything else it does (a probe showing the newer
        # epoch would depose it too, a moment later).
        wait_until(
            lambda: "stepping down: paused for" in cluster.log_text(old),
            10,
            lambda: "the paused primary did not notice its pause: " + cluster.log_tail(old, 15),
        )
        load.wait_for_acks(load.acknowledged_count() + 10)
    assert wait_for_primary(cluster) == new
    wait_converged(cluster)
    check_exactly_once(load.log, read_inbox(cluster, "dave"))
