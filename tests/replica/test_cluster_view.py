"""ClusterStatus's view of the cluster (replica/replication/status.py): probes go only where a
replication stream is silent, so what a stream shows stands in for a probe's answer."""

from __future__ import annotations

from eventlog import Position
from replica.config import ReplicaAddress
from replica.protocol import Role
from replica.protocol.effects import MemberStatus, ReplicaStatus
from replica.replication.ports import LogFacts
from replica.replication.status import cluster_view
from replica.storage.role import RoleSnapshot

REPLICAS = [ReplicaAddress(i, f"127.0.0.1:{5000 + i}") for i in range(3)]


def test_the_primary_shows_a_streaming_secondary_as_its_stream_does() -> None:
    streaming = MemberStatus(1, True, True, 40, 2, True, knows_in_sync=True, streaming=True)
    quiet = MemberStatus(2, True, True, 30, 12, True, knows_in_sync=True, streaming=False)
    status = ReplicaStatus(0, Role.PRIMARY, 3, 0, True, False, False, (streaming, quiet))
    view = cluster_view(
        REPLICAS,
        0,
        LogFacts(Position(3, 42), 42),
        RoleSnapshot(Role.PRIMARY, 3, 0, None),
        status,
        [],
    )
    by_index = {r.index: r for r in view.replicas}
    one = by_index[1]
    assert (one.role, one.epoch, one.last_seq, one.reachable, one.knows_in_sync) == (
        "secondary",
        3,
        40,
        True,
        True,
    )
    assert one.in_sync and one.lag == 2
    two = by_index[2]  # (its stream is quiet: what a probe said, and none came)
    assert (two.role, two.reachable) == ("unknown", False)


def test_a_secondary_shows_its_live_primary_without_probing_it() -> None:
    status = ReplicaStatus(1, Role.SECONDARY, 3, 0, True, True, True, (), claim=0)
    view = cluster_view(
        REPLICAS,
        1,
        LogFacts(Position(3, 42), 42),
        RoleSnapshot(Role.SECONDARY, 3, 0, None),
        status,
        [],
    )
    primary = next(r for r in view.replicas if r.index == 0)
    assert (primary.role, primary.epoch, primary.reachable, primary.last_seq) == (
        "primary",
        3,
        True,
        42,
    )
