"""What the library's calls return: plain frozen dataclasses, not protobuf messages (a caller
needs no generated code to read them, and a type checker sees their fields)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from protos import chat_pb2


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the service committed it; `message_id`s grow in commit order."""

    message_id: int
    sender: str
    recipient: str
    body: str
    sent_at_unix_ms: int  # when its send was committed

    @property
    def sent_at(self) -> dt.datetime:
        """`sent_at_unix_ms` as an aware datetime in UTC."""
        return dt.datetime.fromtimestamp(self.sent_at_unix_ms / 1000, dt.UTC)

    @classmethod
    def from_proto(cls, message: chat_pb2.Message) -> Message:
        return cls(
            int(message.message_id),
            message.sender,
            message.recipient,
            message.body,
            int(message.sent_at_unix_ms),
        )


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """A subscription delivered its backlog: what follows is live (one per connection)."""


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica, as the replica that answered sees it. `in_sync` is the primary's view;
    `knows_in_sync` the replica's own word (only that lets it take over)."""

    index: int
    address: str
    role: str  # "primary", "secondary", "candidate", "unknown"
    epoch: int
    last_seq: int
    applied_seq: int
    lag: int
    in_sync: bool
    reachable: bool
    knows_in_sync: bool

    @classmethod
    def from_proto(cls, status: chat_pb2.ReplicaStatus) -> ReplicaStatus:
        return cls(
            int(status.index),
            status.address,
            status.role,
            int(status.epoch),
            int(status.last_seq),
            int(status.applied_seq),
            int(status.lag),
            bool(status.in_sync),
            bool(status.reachable),
            bool(status.knows_in_sync),
        )


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster as one replica (`answered_by`) sees it; `primary_index` None when it knows
    no primary."""

    answered_by: int
    primary_index: int | None
    replicas: tuple[ReplicaStatus, ...]

    @property
    def primary_known(self) -> bool:
        return self.primary_index is not None

    @classmethod
    def from_proto(cls, reply: chat_pb2.ClusterStatusReply) -> ClusterStatus:
        return cls(
            int(reply.answered_by),
            int(reply.primary_index) if reply.primary_known else None,
            tuple(ReplicaStatus.from_proto(r) for r in reply.replicas),
        )
