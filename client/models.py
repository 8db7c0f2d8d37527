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
    learner: bool = False  # added, catching up, counted for nothing (admin member promote)

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
            bool(status.learner),
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


@dataclass(frozen=True, slots=True)
class Member:
    """One replica of the membership. `voter` False: a learner (catching up, counted for
    nothing). `peer_address` is where replicas reach it ("" when the same as `address`). The
    rest is the answering replica's view (the primary's when it answered), as in ReplicaStatus."""

    index: int
    address: str
    peer_address: str
    voter: bool
    role: str  # "primary", "secondary", "candidate", "unknown"
    epoch: int
    in_sync: bool
    lag: int  # events behind the primary's log
    reachable: bool

    @classmethod
    def from_proto(cls, member: chat_pb2.Member) -> Member:
        return cls(
            int(member.index),
            member.address,
            member.peer_address,
            bool(member.voter),
            member.role,
            int(member.epoch),
            bool(member.in_sync),
            int(member.lag),
            bool(member.reachable),
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """The cluster's members as one replica (`answered_by`) sees them. `membership_seq`: the
    log event that set them (0: the cluster config's); until `change_committed`, that change
    is in progress and no other is accepted. `removed`: indexes never to be used again."""

    answered_by: int
    primary_index: int | None
    members: tuple[Member, ...]
    removed: tuple[int, ...]
    membership_seq: int
    change_committed: bool

    @classmethod
    def from_proto(cls, reply: chat_pb2.ListMembersReply) -> Membership:
        return cls(
            int(reply.answered_by),
            int(reply.primary_index) if reply.primary_known else None,
            tuple(Member.from_proto(m) for m in reply.members),
            tuple(int(i) for i in reply.removed),
            int(reply.membership_seq),
            bool(reply.change_committed),
        )


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A committed membership change: its event's `seq` in the log, and the members after it
    (their index, addresses and `voter` only: the primary sends no view of their state with a
    change; list_members() has it)."""

    seq: int
    members: tuple[Member, ...]
    removed: tuple[int, ...]

    def member(self, index: int) -> Member | None:
        return next((m for m in self.members if m.index == index), None)

    @classmethod
    def from_proto(cls, reply: chat_pb2.MembershipReply) -> MembershipChange:
        return cls(
            int(reply.seq),
            tuple(Member.from_proto(m) for m in reply.members),
            tuple(int(i) for i in reply.removed),
        )
