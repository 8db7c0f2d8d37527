"""One long-lived gRPC channel (and its stubs) per replica address, created on first use; TLS
when the pool is given the cluster's CA certificate."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from client.errors import ChatError
from protos import chat_pb2, chat_pb2_grpc
from protos.wire import CLIENT_MAX_MESSAGE_BYTES

DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
    # Keepalive notices within ~10 s a primary that vanished without closing its connections
    # (a partition, a frozen process) under a quiet Subscribe stream. Pings are sent only while
    # a call is open; the server must accept pings without data every 5 s.
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's default reconnect backoff (1 s growing to 120 s) would keep a restarted replica
    # looking dead long after it is back; failover wants to notice within a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
# A renewed channel's subchannels are its own: from gRPC's process-wide pool it would take the
# old channel's connection state, back-off and stale failure included (renew()).
OWN_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)


class ChatStub(Protocol):
    """The typed shape of the generated (untyped) `chat_pb2_grpc.ChatStub`."""

    Register: grpc.UnaryUnaryMultiCallable[chat_pb2.RegisterRequest, chat_pb2.RegisterReply]
    Login: grpc.UnaryUnaryMultiCallable[chat_pb2.LoginRequest, chat_pb2.LoginReply]
    Logout: grpc.UnaryUnaryMultiCallable[chat_pb2.LogoutRequest, chat_pb2.LogoutReply]
    ListAccounts: grpc.UnaryUnaryMultiCallable[
        chat_pb2.ListAccountsRequest, chat_pb2.ListAccountsReply
    ]
    Send: grpc.UnaryUnaryMultiCallable[chat_pb2.SendRequest, chat_pb2.SendReply]
    Subscribe: grpc.UnaryStreamMultiCallable[chat_pb2.SubscribeRequest, chat_pb2.SubscribeReply]
    Ack: grpc.UnaryUnaryMultiCallable[chat_pb2.AckRequest, chat_pb2.AckReply]
    Session: grpc.StreamStreamMultiCallable[chat_pb2.SessionRequest, chat_pb2.SessionReply]
    History: grpc.UnaryUnaryMultiCallable[chat_pb2.HistoryRequest, chat_pb2.HistoryReply]
    DeleteAccount: grpc.UnaryUnaryMultiCallable[
        chat_pb2.DeleteAccountRequest, chat_pb2.DeleteAccountReply
    ]
    ClusterStatus: grpc.UnaryUnaryMultiCallable[
        chat_pb2.ClusterStatusRequest, chat_pb2.ClusterStatusReply
    ]


class AdminStub(Protocol):
    """The typed shape of the generated (untyped) `chat_pb2_grpc.AdminStub`."""

    ListMembers: grpc.UnaryUnaryMultiCallable[
        chat_pb2.ListMembersRequest, chat_pb2.ListMembersReply
    ]
    AddMember: grpc.UnaryUnaryMultiCallable[chat_pb2.AddMemberRequest, chat_pb2.MembershipReply]
    PromoteMember: grpc.UnaryUnaryMultiCallable[
        chat_pb2.PromoteMemberRequest, chat_pb2.MembershipReply
    ]
    RemoveMember: grpc.UnaryUnaryMultiCallable[
        chat_pb2.RemoveMemberRequest, chat_pb2.MembershipReply
    ]


@dataclass
class _Channel:
    """A channel and the stubs on it; the Admin stub only once asked for (most clients never
    administer)."""

    channel: grpc.Channel
    chat: ChatStub
    admin: AdminStub | None = None


class ChannelPool:
    """Channels keyed by "host:port"; thread-safe; closing it ends every open call. With
    `root_certificates` (PEM: the CA that signed the replicas' certificates) they use TLS."""

    def __init__(
        self,
        options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
        *,
        root_certificates: bytes | None = None,
    ) -> None:
        self._options = tuple(options)
        self._credentials = (
            None
            if root_certificates is None
            else grpc.ssl_channel_credentials(root_certificates=root_certificates)
        )
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._renewed: set[str] = set()  # addresses whose channels have subchannels of their own
        self._closed = False

    def stub(self, address: str) -> ChatStub:
        with self._lock:
            return self._entry(address).chat

    def admin_stub(self, address: str) -> AdminStub:
        """The Admin service's stub on the same channel as stub(address) (both replaced
        together when discard() closes it)."""
        with self._lock:
            entry = self._entry(address)
            if entry.admin is None:
                entry.admin = chat_pb2_grpc.AdminStub(entry.channel)  # type: ignore[no-untyped-call]
            return entry.admin

    def _entry(self, address: str) -> _Channel:
        if self._closed:
            raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
        entry = self._channels.get(address)
        if entry is None:
            options = self._options + ((OWN_SUBCHANNELS,) if address in self._renewed else ())
            if self._credentials is None:
                channel = grpc.insecure_channel(address, options=options)
            else:
                channel = grpc.secure_channel(address, self._credentials, options)
            stub: ChatStub = chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
            entry = _Channel(channel, stub)
            self._channels[address] = entry
        return entry

    def discard(self, address: str, stub: ChatStub) -> None:
        """Close the channel behind `stub` (every call on it ends CANCELLED, the Admin stub's
        too) if it is still the one kept for `address`; the next stub(address) or
        admin_stub(address) opens a new one."""
        with self._lock:
            entry = self._channels.get(address)
            if entry is None or entry.chat is not stub:
                return
            del self._channels[address]
        entry.channel.close()

    def renew(self, address: str, stub: ChatStub) -> None:
        """discard(), and the next channel to `address` connects afresh: its subchannels are
        its own, not the ones gRPC shares between a process's channels to one address (still
        in reconnect back-off after failing to connect to a replica that was down)."""
        with self._lock:
            self._renewed.add(address)
        self.discard(address, stub)

    @property
    def uses_tls(self) -> bool:
        return self._credentials is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = [entry.channel for entry in self._channels.values()]
            self._channels.clear()
        for channel in channels:
            channel.close()


def security_mismatch(error: grpc.RpcError, address: str, *, uses_tls: bool) -> str | None:
    """What to do about a failed connection that looks like a TLS mismatch between this client
    and the replica at `address` (None: it does not)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = error.details() or ""
    if not uses_tls:
        # A TLS server closes a plaintext HTTP/2 connection at once, before any reply.
        if details.endswith("Socket closed"):
            return (
                f"the replica at {address} closed the connection at once: it probably "
                "requires TLS; give the client the cluster's CA certificate (--tls-ca FILE "
                "or CHAT_TLS_CA)"
            )
        return None
    if "WRONG_VERSION_NUMBER" in details:
        return (
            f"the replica at {address} does not speak TLS; connect without --tls-ca "
            "(and CHAT_TLS_CA), or turn TLS on in the cluster config"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"the replica at {address} presented a certificate not signed by the CA given "
            "with --tls-ca (or CHAT_TLS_CA); is it the cluster's ca_file?"
        )
    if "Hostname Verification" in details:
        return (
            f"the replica at {address} presented a certificate that is not valid for that "
            "host; connect by a name or IP address in its subjectAltName"
        )
    if "Tls handshake failed" in details:
        reason = details.rpartition("Tls handshake failed")[2].strip(" :")
        return f"the TLS handshake with the replica at {address} failed: {reason}"
    return None
