"""The operator's membership commands (chat.v1.Admin): list the members; add a replica as a
learner, promote a learner, remove a member -- each a membership event written by the
primary's writer like a client's command, answered once it is committed.

A change is checked in the writer's transaction, under its lock, against the latest membership
in the log (what an earlier change wrote and this replica committed locally: the core may not
have heard yet), first for what the membership alone forbids (an index in use, a member that
is not one), then by the protocol core for the rules of single-server changes (primary only,
its epoch's start committed, one change at a time, never below min_insync, a learner promoted
only once it keeps up: ReplicaCore.membership_change_refusal). Changes are made one at a time
here too, so that no two are decided in one batch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa

from eventlog import Event
from projections.events import (
    MemberAdded,
    MemberPromoted,
    MemberRecord,
    MemberRemoved,
    MembershipEvent,
    decode,
    encode,
)
from protos import chat_pb2, chat_pb2_grpc
from replica import errors
from replica.chat import validation as v
from replica.chat.servicer import maps_errors
from replica.config import ClusterConfig, ConfigError, parse_host_port
from replica.protocol.membership import ChangeKind, Membership, MembershipChange
from replica.replication.addresses import AddressBook
from replica.replication.executor import Executor
from replica.replication.status import ClusterView
from replica.replication.storage_worker import DatabaseStorage
from replica.storage.commit import CommitTracker
from replica.storage.membership import members_in_log, membership_in_log
from replica.storage.writer import LogWriter, NewEvent

ADMIN_SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
RULES_TIMEOUT = 2.0  # how long a change waits for the core's word on its rules


@dataclass(frozen=True)
class MembershipChanged:
    event: Event
    typed: MembershipEvent


class MembershipCommands:
    def __init__(
        self,
        writer: LogWriter,
        executor: Executor,
        addresses: AddressBook,
        initial_voters: tuple[int, ...],
        *,
        tls: bool,
    ) -> None:
        self._writer = writer
        self._executor = executor
        self._addresses = addresses
        self._initial_voters = initial_voters
        self._tls = tls
        self._one_at_a_time = threading.Lock()

    def add(
        self, request_id: str, index: int, address: str, peer_address: str | None
    ) -> MembershipChanged:
        address = _host_port(address, "address")
        peer_address = _host_port(peer_address, "peer_address") if peer_address else None
        if self._tls and peer_address is None:
            raise errors.InvalidArgument(
                "this cluster talks TLS: a new replica needs a peer_address (its mutual-TLS port)"
            )
        return self._change(
            request_id, MembershipChange(ChangeKind.ADD, index), address, peer_address
        )

    def promote(self, request_id: str, index: int) -> MembershipChanged:
        return self._change(request_id, MembershipChange(ChangeKind.PROMOTE, index))

    def remove(self, request_id: str, index: int) -> MembershipChanged:
        return self._change(request_id, MembershipChange(ChangeKind.REMOVE, index))

    def _change(
        self,
        request_id: str,
        change: MembershipChange,
        address: str | None = None,
        peer_address: str | None = None,
    ) -> MembershipChanged:
        request_id = v.request_id(request_id)

        def decide(conn: sa.Connection) -> NewEvent:
            membership = membership_in_log(conn, self._initial_voters)
            members = members_in_log(conn) or self._initial_members()
            _check(change, membership, members, address, peer_address)
            try:
                refusal = self._executor.membership_change_refusal(change, membership).result(
                    RULES_TIMEOUT
                )
            except FutureTimeout:
                raise errors.Unavailable("the replica is busy; retry") from None
            if refusal == "this replica is not the primary":
                raise errors.Unavailable("this replica is no longer the primary; retry")
            if refusal is not None:
                raise errors.Refused(refusal)
            event = _event(change, membership, members, address, peer_address)
            return NewEvent(*encode(event))

        with self._one_at_a_time:
            outcome = self._writer.execute(request_id, decide, reads_inboxes=False)
        if outcome.event is None:
            raise errors.Unavailable("the change produced no event")
        typed = decode(outcome.event)
        if outcome.duplicate and not _same_change(typed, change):
            raise errors.InvalidArgument(
                "request_id was already used for a different request; generate a new one"
            )
        assert isinstance(typed, MemberAdded | MemberPromoted | MemberRemoved)
        return MembershipChanged(outcome.event, typed)

    def _initial_members(self) -> tuple[MemberRecord, ...]:
        """The config's replicas as members (before any membership event)."""
        records = []
        for index in sorted(self._initial_voters):
            known = self._addresses.get(index)
            if known is None:
                raise errors.Unavailable(f"no address is known for replica {index}")
            records.append(
                MemberRecord(
                    index=index, address=known.address, peer_address=known.peer_address, voter=True
                )
            )
        return tuple(records)


def _host_port(value: str, what: str) -> str:
    try:
        parse_host_port(value, what)
    except ConfigError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    return value


def _check(
    change: MembershipChange,
    membership: Membership,
    members: tuple[MemberRecord, ...],
    address: str | None,
    peer_address: str | None,
) -> None:
    """What the membership alone forbids, as the status code it deserves."""
    i = change.index
    refusal = membership.refusal(change)
    match change.kind:
        case ChangeKind.ADD:
            if membership.is_member(i) or i in membership.removed:
                raise errors.AlreadyExists(refusal or f"index {i} is in use")
            for member in members:
                taken = {member.address, member.peer_address} - {None}
                for mine in (address, peer_address):
                    if mine in taken:
                        raise errors.AlreadyExists(
                            f"{mine} is where replica {member.index} is reached"
                        )
        case ChangeKind.PROMOTE:
            if membership.is_voter(i):
                raise errors.AlreadyExists(refusal or f"replica {i} is a voter already")
            if not membership.is_member(i):
                raise errors.NotFound(refusal or f"replica {i} is not a member")
        case ChangeKind.REMOVE:
            if not membership.is_member(i):
                raise errors.NotFound(refusal or f"replica {i} is not a member")
    if refusal is not None:
        raise errors.Refused(refusal)


def _event(
    change: MembershipChange,
    membership: Membership,
    members: tuple[MemberRecord, ...],
    address: str | None,
    peer_address: str | None,
) -> MembershipEvent:
    """The event that makes `change`, carrying the whole membership after it."""
    i = change.index
    removed = tuple(sorted(membership.removed))
    match change.kind:
        case ChangeKind.ADD:
            assert address is not None
            new = MemberRecord(index=i, address=address, peer_address=peer_address, voter=False)
            after = tuple(sorted((*members, new), key=lambda m: m.index))
            return MemberAdded(
                index=i, address=address, peer_address=peer_address, members=after, removed=removed
            )
        case ChangeKind.PROMOTE:
            after = tuple(
                MemberRecord(
                    index=m.index, address=m.address, peer_address=m.peer_address, voter=True
                )
                if m.index == i
                else m
                for m in members
            )
            return MemberPromoted(index=i, members=after, removed=removed)
        case ChangeKind.REMOVE:
            after = tuple(m for m in members if m.index != i)
            return MemberRemoved(index=i, members=after, removed=tuple(sorted({*removed, i})))


def _same_change(typed: Any, change: MembershipChange) -> bool:
    kind = {
        ChangeKind.ADD: MemberAdded,
        ChangeKind.PROMOTE: MemberPromoted,
        ChangeKind.REMOVE: MemberRemoved,
    }[change.kind]
    return isinstance(typed, kind) and typed.index == change.index


def _member(record: MemberRecord) -> chat_pb2.Member:
    return chat_pb2.Member(
        index=record.index,
        address=record.address,
        peer_address=record.peer_address or "",
        voter=record.voter,
    )


class AdminServicer(chat_pb2_grpc.AdminServicer):
    def __init__(
        self,
        index: int,
        commands: MembershipCommands,
        storage: DatabaseStorage,
        addresses: AddressBook,
        commits: CommitTracker,
        cluster: ClusterConfig,
        cluster_view: Callable[[], ClusterView],
    ) -> None:
        self._index = index
        self._commands = commands
        self._storage = storage
        self._addresses = addresses
        self._commits = commits
        self._cluster = cluster
        self._cluster_view = cluster_view

    @maps_errors
    def ListMembers(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.ListMembersReply:
        membership = self._storage.membership
        if membership is None:
            raise errors.Unavailable(f"replica {self._index} is starting; retry shortly")
        view = self._cluster_view()
        status = {r.index: r for r in view.replicas}
        members = []
        for index in sorted(membership.members):
            known = self._addresses.get(index)
            seen = status.get(index)
            members.append(
                chat_pb2.Member(
                    index=index,
                    address=known.address if known else "",
                    peer_address=(known.peer_address or "") if known else "",
                    voter=membership.is_voter(index),
                    role=seen.role if seen else "unknown",
                    epoch=seen.epoch if seen else 0,
                    in_sync=seen.in_sync if seen else False,
                    lag=seen.lag if seen else 0,
                    reachable=seen.reachable if seen else False,
                )
            )
        c = self._cluster
        return chat_pb2.ListMembersReply(
            answered_by=self._index,
            primary_known=view.primary_index is not None,
            primary_index=view.primary_index or 0,
            members=members,
            removed=sorted(membership.removed),
            membership_seq=membership.seq,
            change_committed=membership.seq <= self._commits.committed_seq,
            settings=chat_pb2.ClusterSettings(
                min_insync=c.min_insync,
                heartbeat_interval_ms=c.heartbeat_interval_ms,
                peer_timeout_ms=c.peer_timeout_ms,
                insync_timeout_ms=c.insync_timeout_ms,
                storage_timeout_ms=c.storage_timeout_ms,
            ),
        )

    @maps_errors
    def AddMember(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.MembershipReply:
        return _reply(
            self._commands.add(
                request.request_id, request.index, request.address, request.peer_address or None
            )
        )

    @maps_errors
    def PromoteMember(
        self, request: Any, context: grpc.ServicerContext
    ) -> chat_pb2.MembershipReply:
        return _reply(self._commands.promote(request.request_id, request.index))

    @maps_errors
    def RemoveMember(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.MembershipReply:
        return _reply(self._commands.remove(request.request_id, request.index))


def _reply(changed: MembershipChanged) -> chat_pb2.MembershipReply:
    return chat_pb2.MembershipReply(
        seq=changed.event.seq,
        members=[_member(m) for m in changed.typed.members],
        removed=list(changed.typed.removed),
    )
