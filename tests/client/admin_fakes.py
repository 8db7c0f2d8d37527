"""A scripted, in-process replica serving the Admin service too (for the operator's client
and CLI), recording each call's metadata; canned membership replies."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import PRIMARY_ADDRESS_KEY, SERVICE_ERROR_KEY
from tests.client.chat_fakes import FakeReplica, Handler

SECRET = "s3cret-of-the-cluster"


def refuse(
    code: grpc.StatusCode,
    details: str,
    *,
    service_error: str | None = None,
    primary: str | None = None,
) -> Handler:
    """An error with the trailers a replica sends: its error class, the primary it names."""
    trailers: list[tuple[str, str]] = []
    if service_error is not None:
        trailers.append((SERVICE_ERROR_KEY, service_error))
    if primary is not None:
        trailers.append((PRIMARY_ADDRESS_KEY, primary))

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata(tuple(trailers))
        context.abort(code, details)

    return handler


def member(
    index: int,
    *,
    voter: bool = True,
    role: str = "secondary",
    epoch: int = 3,
    in_sync: bool = True,
    lag: int = 0,
    reachable: bool = True,
    peer_address: str = "",
) -> chat_pb2.Member:
    return chat_pb2.Member(
        index=index,
        address=f"127.0.0.1:5005{index + 1}",
        peer_address=peer_address,
        voter=voter,
        role=role,
        epoch=epoch,
        in_sync=in_sync,
        lag=lag,
        reachable=reachable,
    )


def members_reply(
    members: Sequence[chat_pb2.Member],
    *,
    primary_index: int | None = 0,
    answered_by: int = 0,
    removed: Sequence[int] = (),
    membership_seq: int = 0,
    change_committed: bool = True,
) -> chat_pb2.ListMembersReply:
    return chat_pb2.ListMembersReply(
        answered_by=answered_by,
        primary_known=primary_index is not None,
        primary_index=primary_index or 0,
        members=members,
        removed=removed,
        membership_seq=membership_seq,
        change_committed=change_committed,
    )


def membership_reply(
    seq: int, members: Sequence[chat_pb2.Member], removed: Sequence[int] = ()
) -> chat_pb2.MembershipReply:
    """As a change's reply has them: addresses and voter only."""
    return chat_pb2.MembershipReply(
        seq=seq,
        members=[
            chat_pb2.Member(
                index=m.index, address=m.address, peer_address=m.peer_address, voter=m.voter
            )
            for m in members
        ],
        removed=removed,
    )


class FakeAdminReplica(FakeReplica, chat_pb2_grpc.AdminServicer):
    """A FakeReplica (Chat, ClusterStatus included) that answers Admin calls from its script
    too, and records each Admin call's metadata."""

    def __init__(self) -> None:
        super().__init__()
        self._metadata_lock = threading.Lock()
        self.metadata: list[tuple[str, dict[str, str]]] = []

    def secrets(self) -> list[str | None]:
        """The cluster secret each Admin call carried, in order (None: none)."""
        with self._metadata_lock:
            return [metadata.get("x-chat-cluster-secret") for _, metadata in self.metadata]

    def _admin(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        with self._metadata_lock:
            self.metadata.append((method, {k: str(v) for k, v in context.invocation_metadata()}))
        return self._unary(method, request, context)

    def ListMembers(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._admin("ListMembers", request, context)

    def AddMember(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._admin("AddMember", request, context)

    def PromoteMember(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._admin("PromoteMember", request, context)

    def RemoveMember(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._admin("RemoveMember", request, context)


def start_admin_replica() -> FakeAdminReplica:
    replica = FakeAdminReplica()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    chat_pb2_grpc.add_ChatServicer_to_server(replica, server)
    chat_pb2_grpc.add_AdminServicer_to_server(replica, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    replica.address = f"127.0.0.1:{port}"
    replica.server = server
    return replica
