"""A Subscribe stream that follows the primary across failovers."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from typing import TypeAlias

import grpc

from client.channels import ChatStub
from client.errors import ChatError
from client.failover import Failover, retryable
from client.models import CaughtUp, Message
from protos import chat_pb2

logger = logging.getLogger(__name__)

SubscriptionItem = Message | CaughtUp

# grpc.CallIterator exists only in grpc-stubs, so the alias must stay a string at runtime.
_Stream: TypeAlias = "grpc.CallIterator[chat_pb2.SubscribeReply]"
_Replies = Iterator[chat_pb2.SubscribeReply]


class _Cancelled(Exception):
    """Raised inside a reconnect attempt to leave the failover loop after cancel()."""


class Subscription:
    """Iterates Messages and CaughtUp markers; reconnects to the primary when the stream breaks.

    The server re-sends unacked messages after a reconnect; a message already yielded by this
    subscription is not yielded again. A CaughtUp marker is yielded every time the server sends
    one, i.e. once per (re)connection. `cancel()` may be called from any thread and ends the
    iteration; a ChatError ends it for a refused subscription (e.g. UNAUTHENTICATED) or when no
    primary answers within `reconnect_timeout` seconds.
    """

    def __init__(
        self, failover: Failover, session_token: str, *, reconnect_timeout: float | None
    ) -> None:
        self._failover = failover
        self._request = chat_pb2.SubscribeRequest(session_token=session_token, batches=True)
        self._reconnect_timeout = reconnect_timeout
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        # Message ids are the seqs of their events, and a replica sends them in increasing
        # order (the backlog, then each commit's new ones): a message at or below the last one
        # yielded was yielded already (or acked elsewhere). O(1) state for any backlog.
        self._last_yielded_id = 0
        self._items = self._follow()

    def __iter__(self) -> Iterator[SubscriptionItem]:
        return self

    def __next__(self) -> SubscriptionItem:
        return next(self._items)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            _cancel(stream)

    def _follow(self) -> Iterator[SubscriptionItem]:
        while not self._cancelled.is_set():
            try:
                stream, replies = self._failover.call(self._open, timeout=self._reconnect_timeout)
            except _Cancelled:
                return
            except ChatError:
                if self._cancelled.is_set():
                    return
                raise
            try:
                for reply in replies:
                    yield from self._accept(reply)
            except grpc.RpcError as error:
                if self._cancelled.is_set():
                    return
                if not retryable(error):
                    raise ChatError.from_rpc_error(error) from None
                logger.info(
                    "subscription at %s broke (%s); reconnecting",
                    self._failover.connected_address,
                    error.code().name,
                )
            else:
                logger.info("server ended the subscription; reconnecting")
                # An immediately ending stream must not become a busy loop.
                self._failover.pause(0.1)
            finally:
                _cancel(stream)

    def _open(self, stub: ChatStub, attempt_timeout: float) -> tuple[_Stream, _Replies]:
        if self._cancelled.is_set():
            raise _Cancelled
        stream = stub.Subscribe(self._request)
        with self._lock:
            self._stream = stream
        if self._cancelled.is_set():
            _cancel(stream)
            raise _Cancelled
        # A stream has no deadline, but its first item (a message or CaughtUp) must come soon;
        # otherwise the replica is hung and another one should be asked.
        watchdog = threading.Timer(attempt_timeout, _cancel, (stream,))
        watchdog.daemon = True
        watchdog.start()
        replies = iter(stream)
        try:
            first = next(replies, None)
        finally:
            watchdog.cancel()
        if first is None:
            return stream, iter(())
        return stream, itertools.chain((first,), replies)

    def _accept(self, reply: chat_pb2.SubscribeReply) -> list[SubscriptionItem]:
        items, self._last_yielded_id = accept(reply, self._last_yielded_id)
        return items


def accept(
    reply: chat_pb2.SubscribeReply, last_yielded_id: int
) -> tuple[list[SubscriptionItem], int]:
    """What to yield of a reply -- its messages not yielded before (ids only grow), or the
    CaughtUp marker -- and the last id yielded after it."""
    kind = reply.WhichOneof("item")
    if kind == "messages":
        fresh = [
            Message.from_proto(m) for m in reply.messages.messages if m.message_id > last_yielded_id
        ]
        return list(fresh), (fresh[-1].message_id if fresh else last_yielded_id)
    if kind == "message":
        if reply.message.message_id <= last_yielded_id:
            return [], last_yielded_id
        return [Message.from_proto(reply.message)], reply.message.message_id
    if kind == "caught_up":
        return [CaughtUp()], last_yielded_id
    logger.warning("ignoring a subscription item of unknown kind %r", kind)
    return [], last_yielded_id


def _cancel(stream: _Stream) -> None:
    stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() untyped
