"""The gRPC servicer for replica-to-replica calls."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
import sqlalchemy as sa

from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from protos.wire import SERVICE_ERROR_KEY
from replica.coordinator import Coordinator
from replica.database import StorageOutageLog, storage_problem
from replica.primary import PrimaryStreams
from replica.protocol import inputs as ins

log = logging.getLogger(__name__)


class ReplicationServicer(rpb_grpc.ReplicationServicer):
    def __init__(self, coordinator: Coordinator, streams: PrimaryStreams) -> None:
        self._coordinator = coordinator
        self._streams = streams
        self._outage = StorageOutageLog(
            log, coordinator.index, "replica-to-replica calls", clock=coordinator.clock
        )

    def _unavailable(self, context: grpc.ServicerContext, exc: sa.exc.DBAPIError) -> NoReturn:
        # A replica that cannot read its own log has nothing to say about it: to its peers it
        # is as good as down until its database answers again.
        self._outage.failed(exc)
        # Told first: a peer may elect without it on this answer, so it stops vouching now.
        self._coordinator.run(ins.DatabaseFailed(storage_problem(exc)))
        # Marks the answer as the replica's own, not a transport failure (see peers.py).
        context.set_trailing_metadata(((SERVICE_ERROR_KEY, "database"),))
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"replica {self._coordinator.index} cannot read its database: {storage_problem(exc)}",
        )

    def Replicate(
        self, request_iterator: Iterator[rpb.SecondaryMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.PrimaryMessage]:
        try:
            yield from self._streams.serve(request_iterator, context)
        except sa.exc.DBAPIError as exc:
            self._unavailable(context, exc)

    def RequestVote(self, request: Any, context: grpc.ServicerContext) -> rpb.VoteReply:
        try:
            return self._coordinator.handle_vote(request)
        except sa.exc.DBAPIError as exc:
            self._unavailable(context, exc)

    def Probe(self, request: Any, context: grpc.ServicerContext) -> rpb.ProbeReply:
        try:
            reply = self._coordinator.handle_probe(request)
        except sa.exc.DBAPIError as exc:
            self._unavailable(context, exc)
        self._outage.succeeded()
        return reply
