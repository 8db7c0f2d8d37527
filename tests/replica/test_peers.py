"""What a probe's failure says of the peer: gone only when its host refuses a connection now,
never on the stale error of a channel in reconnect back-off."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from replica.config import ClusterConfig, ReplicaAddress
from replica.replication.peers import Peers, ProbeResult
from testsupport.harness import free_port

SECRET = b"peers-test-secret-0123456789abcdef"


class AnsweringPeer(rpb_grpc.ReplicationServicer):
    def Probe(self, request: Any, context: grpc.ServicerContext) -> rpb.ProbeReply:
        return rpb.ProbeReply(primary_known=True, primary_index=7)


def start_peer(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpb_grpc.add_ReplicationServicer_to_server(AnsweringPeer(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


@pytest.fixture
def peer_port() -> int:
    return free_port()


@pytest.fixture
def peers(peer_port: int) -> Iterator[Peers]:
    config = ClusterConfig(
        replicas=(ReplicaAddress(0, "127.0.0.1:1"), ReplicaAddress(1, f"127.0.0.1:{peer_port}"))
    )
    made = Peers(0, config, SECRET)
    yield made
    made.close()


def probe(peers: Peers, timeout: float) -> ProbeResult:
    done: queue.SimpleQueue[list[ProbeResult]] = queue.SimpleQueue()
    peers.probe_all(rpb.ProbeRequest(from_index=0, from_epoch=0), timeout, done.put)
    (result,) = done.get(timeout=10)
    return result


def test_nothing_listening_is_a_gone_process(peers: Peers) -> None:
    result = probe(peers, 0.5)
    assert result.reply is None and result.refused and result.process_gone, result


def test_a_channel_in_back_off_does_not_report_a_listening_peer_gone(
    peers: Peers, peer_port: int
) -> None:
    for _ in range(6):  # the channel's reconnect back-off grows to its maximum (500 ms)
        assert probe(peers, 0.5).process_gone
    server = start_peer(peer_port)
    try:
        # The channel still holds "Connection refused" from its last attempt to connect; the
        # peer listens now. Before the fresh check this came back refused and gone.
        result = probe(peers, 1.5)
        assert not result.refused and not result.process_gone, result
        assert result.reply is not None and result.reply.primary_index == 7, result
    finally:
        server.stop(None)


def test_a_renewed_channel_reaches_a_restarted_peer_at_once(peers: Peers, peer_port: int) -> None:
    """A secondary following a new primary renews its channel (FollowStreams.open): the old
    one, idle since its peer went down, fails a call at once with its stale refusal -- even a
    new channel would, sharing gRPC's process-wide subchannel, without a pool of its own."""
    request = rpb.ProbeRequest(from_index=0, from_epoch=0)
    for _ in range(6):  # the channel's reconnect back-off grows to its maximum (500 ms)
        assert probe(peers, 0.5).process_gone
    server = start_peer(peer_port)
    try:
        with pytest.raises(grpc.RpcError) as stale:
            peers.stub(1).Probe(request, timeout=2, metadata=peers.metadata)
        assert stale.value.code() is grpc.StatusCode.UNAVAILABLE  # the old channel's past
        peers.renew(1)
        reply = peers.stub(1).Probe(request, timeout=2, metadata=peers.metadata)
        assert reply.primary_index == 7
    finally:
        server.stop(None)
