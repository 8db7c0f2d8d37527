"""AdminClient: the cluster's membership for its operator -- list the members, add a replica
as a learner, promote it to voter, remove one -- over the same failover as ChatClient."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from client.library import connect
from client.models import Membership, MembershipChange
from client.settings import ClientHooks, ClientSettings
from protos import chat_pb2
from protos.wire import CLUSTER_SECRET_KEY


class AdminClient:
    """The Admin service of the cluster at `servers`, with the replicas' `cluster_secret`
    (every call carries it; a missing or wrong one raises Unauthenticated or PermissionDenied).

    list_members() is answered by any replica. A change goes to the primary -- followed across
    failovers as ChatClient's writes are, with one request_id through all its retries, so it is
    applied at most once -- and returns once committed. A change the membership rules refuse
    as things stand (another change in progress, a learner still catching up) raises Refused
    at once with the replica's reason; a bad index or address InvalidArgument, an unknown
    member NotFound, an index in use (or once used) AlreadyExists. Thread-safe.
    """

    def __init__(
        self,
        servers: Sequence[str],
        cluster_secret: str,
        settings: ClientSettings | None = None,
        *,
        hooks: ClientHooks | None = None,
    ) -> None:
        if not cluster_secret:
            raise ValueError("no cluster secret")
        # gRPC metadata carries printable ASCII only; anything else would fail every call
        # with an opaque "Invalid metadata".
        if not all(" " <= c <= "~" for c in cluster_secret):
            raise ValueError("the cluster secret holds characters other than printable ASCII")
        settings = settings if settings is not None else ClientSettings()
        hooks = hooks if hooks is not None else ClientHooks()
        self.settings = settings
        self._pool, self._failover = connect(servers, settings, hooks)
        self._request_ids = hooks.request_ids
        self._metadata = ((CLUSTER_SECRET_KEY, cluster_secret),)

    @property
    def servers(self) -> tuple[str, ...]:
        return self._failover.addresses

    @property
    def connected_address(self) -> str | None:
        return self._failover.connected_address

    def close(self) -> None:
        self._failover.close()
        self._pool.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def list_members(self) -> Membership:
        """The members as the replica that answered sees them (any replica: no primary
        needed)."""
        request = chat_pb2.ListMembersRequest()
        reply = self._failover.call_admin(
            lambda stub, timeout: stub.ListMembers(
                request, timeout=timeout, metadata=self._metadata
            )
        )
        return Membership.from_proto(reply)

    def add_member(
        self, index: int, address: str, peer_address: str | None = None
    ) -> MembershipChange:
        """Adds replica `index` as a learner: clients reach it at `address`, replicas at
        `peer_address` (default: `address`; required in a TLS cluster). It counts for nothing
        until promoted."""
        request = chat_pb2.AddMemberRequest(
            request_id=self._request_ids(),
            index=index,
            address=address,
            peer_address=peer_address or "",
        )
        reply = self._failover.call_admin(
            lambda stub, timeout: stub.AddMember(request, timeout=timeout, metadata=self._metadata)
        )
        return MembershipChange.from_proto(reply)

    def promote_member(self, index: int) -> MembershipChange:
        """Makes learner `index` a voter; Refused while it still lags the log's end."""
        request = chat_pb2.PromoteMemberRequest(request_id=self._request_ids(), index=index)
        reply = self._failover.call_admin(
            lambda stub, timeout: stub.PromoteMember(
                request, timeout=timeout, metadata=self._metadata
            )
        )
        return MembershipChange.from_proto(reply)

    def remove_member(self, index: int) -> MembershipChange:
        """Removes replica `index` for good (its index is never used again); its process stops
        by itself once it hears the removal is committed."""
        request = chat_pb2.RemoveMemberRequest(request_id=self._request_ids(), index=index)
        reply = self._failover.call_admin(
            lambda stub, timeout: stub.RemoveMember(
                request, timeout=timeout, metadata=self._metadata
            )
        )
        return MembershipChange.from_proto(reply)
