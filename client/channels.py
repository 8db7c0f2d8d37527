"""One long-lived gRPC channel (and stub) per replica address, created on first use."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import grpc

from client.errors import ChatError
from protos import chat_pb2, chat_pb2_grpc

_MIB = 1024 * 1024

DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 16 * _MIB),
    ("grpc.max_receive_message_length", 16 * _MIB),
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
    History: grpc.UnaryUnaryMultiCallable[chat_pb2.HistoryRequest, chat_pb2.HistoryReply]
    DeleteAccount: grpc.UnaryUnaryMultiCallable[
        chat_pb2.DeleteAccountRequest, chat_pb2.DeleteAccountReply
    ]
    ClusterStatus: grpc.UnaryUnaryMultiCallable[
        chat_pb2.ClusterStatusRequest, chat_pb2.ClusterStatusReply
    ]


class ChannelPool:
    """Channels keyed by "host:port"; thread-safe; closing it ends every open call."""

    def __init__(self, options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS) -> None:
        self._options = tuple(options)
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, ChatStub]] = {}
        self._closed = False

    def stub(self, address: str) -> ChatStub:
        with self._lock:
            if self._closed:
                raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
            entry = self._channels.get(address)
            if entry is None:
                channel = grpc.insecure_channel(address, options=self._options)
                stub: ChatStub = chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
                entry = (channel, stub)
                self._channels[address] = entry
            return entry[1]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = [channel for channel, _ in self._channels.values()]
            self._channels.clear()
        for channel in channels:
            channel.close()
