"""The gRPC servicer for replica-to-replica calls: each call becomes an input for the executor
(replica/replication/executor.py), and the handler waits for the decision on a future."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NoReturn

import grpc
import sqlalchemy as sa

from eventlog import Position
from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from protos.wire import SERVICE_ERROR_KEY
from replica.errors import Unavailable
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.rules import LogPosition
from replica.replication.executor import Executor, StorageUnavailable
from replica.replication.ports import Answer
from replica.replication.primary import PrimaryStreams
from replica.storage.database import StorageOutageLog, storage_problem

log = logging.getLogger(__name__)

# How long a handler waits for the executor when its caller set no deadline.
DEFAULT_WAIT = 5.0


def wait_for(remaining: float | None) -> float:
    """How long to wait for the executor within a call's remaining time. A stream has no
    deadline, and gRPC then reports a time remaining too large for a lock's timeout (an
    OverflowError on a Replicate stream when the database failed): DEFAULT_WAIT at most."""
    return DEFAULT_WAIT if remaining is None else min(remaining, DEFAULT_WAIT)


class ReplicationServicer(rpb_grpc.ReplicationServicer):
    def __init__(self, executor: Executor, streams: PrimaryStreams) -> None:
        self._executor = executor
        self._streams = streams
        self._index = executor.config.index
        self._outage = StorageOutageLog(log, self._index, "replica-to-replica calls")

    def _storage_failed(self, context: grpc.ServicerContext, reason: str) -> NoReturn:
        # A replica that cannot read its own log has nothing to say about it: to its peers it
        # is as good as down until its database answers again. (Its core stopped vouching
        # before this answer: the peer may elect without it on it.) Marked as the replica's
        # own answer, not a transport failure (see peers.py).
        context.set_trailing_metadata(((SERVICE_ERROR_KEY, "database"),))
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"replica {self._index} cannot use its database: {reason}",
        )

    def _decision(self, context: grpc.ServicerContext, pending: Any) -> Answer:
        """Wait for the executor's answer within the caller's deadline. No answer in time is
        no answer at all (DEADLINE_EXCEEDED, not the replica's own error)."""
        try:
            answer: Answer = pending.result(wait_for(context.time_remaining()))
        except StorageUnavailable as exc:
            self._storage_failed(context, str(exc))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FutureTimeout:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"replica {self._index} is busy")
        return answer

    def Replicate(
        self, request_iterator: Iterator[rpb.SecondaryMessage], context: grpc.ServicerContext
    ) -> Iterator[rpb.PrimaryMessage]:
        try:
            yield from self._streams.serve(request_iterator, context)
        except sa.exc.DBAPIError as exc:
            self._outage.failed(exc)
            self._decision(context, self._executor.database_failed(storage_problem(exc)))

    def RequestVote(self, request: Any, context: grpc.ServicerContext) -> rpb.VoteReply:
        theirs = Position(request.position.epoch, request.position.seq)
        answer = self._decision(
            context,
            self._executor.vote_requested(request.candidate_index, request.epoch, theirs),
        )
        (reply,) = (r for r in answer.replies if isinstance(r, fx.ReplyVote))
        return rpb.VoteReply(granted=reply.granted, epoch=reply.epoch, reason=reply.reason)

    def Probe(self, request: Any, context: grpc.ServicerContext) -> rpb.ProbeReply:
        # Answered from memory -- the log's end as of the last commit -- or, while the
        # database is stalled, UNAVAILABLE: a probe never waits on the database.
        answer = self._decision(
            context,
            self._executor.probe(
                ins.ProbeReceived(request.from_index, request.from_epoch, request.from_primary)
            ),
        )
        (reply,) = (r for r in answer.replies if isinstance(r, fx.ReplyProbe))
        assert answer.facts is not None
        return probe_reply(reply.status, answer.facts.last, answer.facts.applied_seq)


def probe_reply(status: fx.ReplicaStatus, position: LogPosition, applied: int) -> rpb.ProbeReply:
    reply = rpb.ProbeReply(
        self=rpb.PeerState(
            index=status.index,
            role=status.role.value,
            epoch=status.epoch,
            position=rpb.LogPosition(epoch=position.epoch, seq=position.seq),
            applied_seq=applied,
            in_sync=status.in_sync,
            reachable=True,
        ),
        primary_known=status.primary_index is not None,
        primary_index=status.primary_index or 0,
        trusted=status.vouches,  # (the wire's name for the vouch)
        following_live_primary=status.following_live_primary,
        claims=status.claim is not None,
        claim_primary=status.claim or 0,
    )
    for member in status.secondaries:
        reply.secondaries.append(
            rpb.PeerState(
                index=member.index,
                in_sync=member.in_sync,
                reachable=member.connected,
                position=rpb.LogPosition(seq=member.acked_seq),
                lag=member.lag,
            )
        )
    return reply
