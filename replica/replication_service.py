"""The gRPC servicer for replica-to-replica calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from replica.election import Coordinator
from replica.leader import LeaderStream


class ReplicationServicer(rpb_grpc.ReplicationServicer):
    def __init__(self, coordinator: Coordinator, stream: LeaderStream) -> None:
        self._coordinator = coordinator
        self._stream = stream

    def Replicate(
        self, request_iterator: Iterator[rpb.FollowerMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.LeaderMessage]:
        yield from self._stream.serve(request_iterator, context)

    def RequestVote(self, request: Any, context: grpc.ServicerContext) -> rpb.VoteReply:
        return self._coordinator.handle_vote(request)

    def Probe(self, request: Any, context: grpc.ServicerContext) -> rpb.ProbeReply:
        return self._coordinator.handle_probe(request)
