"""Replica-to-replica RPCs need the cluster secret: clients cannot call them, and a replica
with another secret cannot join."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from client import ClientSettings
from client.library import ChatClient
from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from protos.wire import CLUSTER_SECRET_KEY
from tests.integration.cluster_checks import (
    PASSWORD,
    db_url,
    replica_state,
    status,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import DEFAULT_SECRET, ClusterProcesses

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(cluster_processes: Callable[..., ClusterProcesses]) -> Iterator[ClusterProcesses]:
    made = cluster_processes(3)
    made.start_all()
    wait_all_running_follow(made, wait_for_primary(made))
    yield made


def probe(cluster: ClusterProcesses, index: int, secret: str | None) -> grpc.StatusCode:
    stub = rpb_grpc.ReplicationStub(cluster.channel(index))
    metadata = () if secret is None else ((CLUSTER_SECRET_KEY, secret),)
    try:
        stub.Probe(rpb.ProbeRequest(), metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        assert exc.details(), "a refusal must say why"  # type: ignore[attr-defined]
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_replication_rpcs_need_the_cluster_secret(cluster: ClusterProcesses) -> None:
    assert probe(cluster, 0, None) == grpc.StatusCode.UNAUTHENTICATED
    assert probe(cluster, 0, "not-the-secret") == grpc.StatusCode.PERMISSION_DENIED
    assert probe(cluster, 0, DEFAULT_SECRET) == grpc.StatusCode.OK
    stub = rpb_grpc.ReplicationStub(cluster.channel(wait_for_primary(cluster)))
    hello = rpb.SecondaryMessage(hello=rpb.Hello(secondary_index=1))
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(stub.Replicate(iter([hello]), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_a_replica_with_another_secret_cannot_join(cluster: ClusterProcesses) -> None:
    primary = wait_for_primary(cluster)
    outsider = next(i for i in range(3) if i != primary)
    cluster.kill(outsider)
    cluster.env = {"CHAT_CLUSTER_SECRET": "a-different-secret-of-sufficient-length"}
    cluster.start(outsider)
    cluster.env = None
    with ChatClient(cluster.addresses, ClientSettings(timeout=20)) as client:
        client.register("alice", PASSWORD)
        client.login("alice", PASSWORD)
        for n in range(20):
            client.send("alice", f"message {n}")
    reply = status(cluster, primary)
    assert reply is not None
    assert not next(r for r in reply.replicas if r.index == outsider).in_sync
    assert replica_state(db_url(cluster, outsider))[0] < replica_state(db_url(cluster, primary))[0]
    assert "refused us (PERMISSION_DENIED" in cluster.log_text(outsider)
