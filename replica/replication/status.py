"""The cluster as one replica sees it, for ClusterStatus: its own state, what its last probes
said of the others, and the primary's view of who is in sync."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos import replication_pb2
from replica.config import ReplicaAddress
from replica.protocol import Role
from replica.protocol.effects import MemberStatus, ReplicaStatus
from replica.replication.peers import ProbeResult
from replica.replication.ports import LogFacts
from replica.storage.role import RoleSnapshot


@dataclass(frozen=True)
class ReplicaStatusView:
    index: int
    address: str
    role: str
    epoch: int
    last_seq: int
    applied_seq: int
    lag: int
    in_sync: bool
    reachable: bool
    knows_in_sync: bool
    learner: bool = False


@dataclass(frozen=True)
class ClusterView:
    answered_by: int
    primary_index: int | None
    replicas: list[ReplicaStatusView]


def cluster_view(
    replicas: Sequence[ReplicaAddress],
    index: int,
    facts: LogFacts,
    snap: RoleSnapshot,
    status: ReplicaStatus,
    last_round: list[ProbeResult],
    learners: frozenset[int] = frozenset(),
) -> ClusterView:
    """`facts`: this replica's log as of its last commit (kept in memory: a status never
    waits on the database); `status`: the executor's (its core's view of itself, and as
    primary of its secondaries); `last_round`: what the peers said in the latest probe rounds that
    asked them (lately: a peer whose stream is alive is not probed, and its stream tells)."""
    last, applied = facts.last, facts.applied_seq
    probes = {p.peer.index: p.reply for p in last_round}
    primary_reply = probes.get(snap.primary_index) if snap.primary_index is not None else None
    # In-sync and lag come from the primary's view of its secondaries.
    primary_view: dict[int, MemberStatus | replication_pb2.PeerState] = {}
    if snap.role is Role.PRIMARY:
        primary_view = {s.index: s for s in status.secondaries}
    elif primary_reply is not None:
        primary_view = {s.index: s for s in primary_reply.secondaries}
    primary_last = last.seq if snap.role is Role.PRIMARY else 0
    if primary_reply is not None:
        primary_last = primary_reply.self.position.seq
    views = []
    for replica in replicas:
        if replica.index == index:
            role, epoch, last_seq, applied_seq, reachable = (
                snap.role.value,
                status.epoch,
                last.seq,
                applied,
                True,
            )
            knows = status.claim is not None
        else:
            reply = probes.get(replica.index)
            knows = reply is not None and reply.claims
            streamed = primary_view.get(replica.index) if snap.role is Role.PRIMARY else None
            if isinstance(streamed, MemberStatus) and streamed.streaming:
                # Not probed while its stream is alive: the stream says what a probe would (a
                # secondary applies what it stores in the same transaction, and acks it).
                role, epoch, reachable = Role.SECONDARY.value, status.epoch, True
                last_seq = applied_seq = streamed.acked_seq
                knows = streamed.knows_in_sync and streamed.voter
            elif replica.index == snap.primary_index and status.following_live_primary:
                # Its primary, heard on the stream (not probed while the stream is alive): its
                # log ends about where this replica's does (the stream keeps them a batch apart).
                role, epoch, reachable = Role.PRIMARY.value, status.epoch, True
                last_seq = reply.self.position.seq if reply is not None else last.seq
                applied_seq = reply.self.applied_seq if reply is not None else applied
            elif reply is None:
                role, epoch, last_seq, applied_seq, reachable = "unknown", 0, 0, 0, False
            else:
                role, epoch = reply.self.role, reply.self.epoch
                last_seq, applied_seq = reply.self.position.seq, reply.self.applied_seq
                reachable = True
        is_primary = replica.index == snap.primary_index
        in_view = primary_view.get(replica.index)
        views.append(
            ReplicaStatusView(
                index=replica.index,
                address=replica.address,
                role=role,
                epoch=epoch,
                last_seq=last_seq,
                applied_seq=applied_seq,
                lag=0 if is_primary or not reachable else max(0, primary_last - last_seq),
                in_sync=is_primary or bool(in_view and in_view.in_sync),
                reachable=reachable,
                knows_in_sync=knows,
                learner=replica.index in learners,
            )
        )
    return ClusterView(index, snap.primary_index, views)
