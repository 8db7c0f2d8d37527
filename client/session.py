"""The Session stream (chat.v1.Chat/Session) that follows the primary across failovers: a
client's sends and acks, pipelined, and the messages pushed to it, on one stream.

Callers on any thread submit requests and wait for their results; a reader thread per
stream opens it (through Failover, as any call finds the primary), takes the replies and hands
each result to the request it answers by correlation id.

The stream is the fast path, never the only one. The first requests go right behind its first
`open`; but once an attempt to open it failed or it broke (a replica down, not the primary any
more, silent), a request waiting on it carries on as the unary call (Send, Ack), with the
same request id -- the primary's deduplication makes it apply once, whichever way it reached
it -- and a request that finds it closed goes unary too while the reader opens it again. So a
failover costs a stream's requests what it costs unary calls, finding the primary, and not
also an `open` on a just-elected primary before the request (docs/bench.md). The reader opens
a broken stream again at once only if a subscriber listens; an idle one is opened again when
its next request comes (which meanwhile goes unary): no herd of reconnections when the
primary dies. At most `max_in_flight` requests (or the replica's own bound, if lower)
await results on the stream at once: a caller beyond waits for a place."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import grpc

from client.channels import ChatStub
from client.errors import ChatError, ChatUnavailableError, service_error
from client.failover import Backoff, Failover, Liveness, give_up, retryable
from client.models import CaughtUp, Message
from client.subscription import accept
from protos import chat_pb2

logger = logging.getLogger(__name__)

SubscriptionItem = Message | CaughtUp
CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# grpc.CallIterator exists only in grpc-stubs, so the alias must stay a string at runtime.
_Call: TypeAlias = "grpc.CallIterator[chat_pb2.SessionReply]"
_Outbox: TypeAlias = "queue.SimpleQueue[chat_pb2.SessionRequest | None]"
_CLOSE = None  # ends a stream's request side


class _Cancelled(Exception):
    """Raised inside an open attempt to leave the failover loop after close()."""


class _ChannelClosed(grpc.RpcError):
    """A stream started or read on a channel closed under it (Failover abandoned its replica):
    handled as that replica being unavailable."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the channel to the replica was closed"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class StreamBroke(Exception):
    """Given to a request whose stream failed before its result came: it carries on as a unary
    call."""


# The unary call that carries a stream request of each kind, and that call's request type.
UNARY_CALLS: dict[str, tuple[str, type[Any]]] = {
    "send": ("Send", chat_pb2.SendRequest),
    "ack": ("Ack", chat_pb2.AckRequest),
}


class _Pending:
    """One request awaiting its result; `done` is released once `reply` or `error` is set."""

    __slots__ = ("done", "error", "reply", "request")

    def __init__(self, request: chat_pb2.SessionRequest) -> None:
        self.request = request
        self.done = threading.Lock()
        self.done.acquire()
        self.reply: chat_pb2.SessionReply | None = None
        self.error: ChatError | StreamBroke | None = None


def stream_broke(error: grpc.RpcError) -> bool:
    """Whether a session stream ended by a transport failure to retry elsewhere, beyond the
    retryable codes: gRPC ends a stream whose connection broke under a write with INTERNAL
    ("Internal error from Core", a failed SendMessageOperation; seen with grpc.aio), which a
    replica never answers itself (it names its error class). Sending the unanswered requests
    again is safe: their request ids make each apply once."""
    return error.code() == grpc.StatusCode.INTERNAL and service_error(error) is None


def request_error(error: chat_pb2.RequestError) -> ChatError:
    """The exception for a request the replica refused on the stream, as for a unary call."""
    code = CODE_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
    retry_after = error.retry_after_seconds or None
    return ChatError.from_status(code, error.message, error.error or None, retry_after)


class SessionStream:
    """One logged-in client's Session stream, for `session_token`; thread-safe. `request()`
    sends and waits; `subscribe()` adds a consumer of pushed messages. Once it ends for good
    (`ended`: the session refused, no primary within the timeout, closed) every call on it
    raises that error; the owner opens a new one."""

    def __init__(
        self,
        failover: Failover,
        session_token: str,
        *,
        max_in_flight: int,
        timeout: float,
        backoff: Backoff,
        liveness: Liveness,
        clock: Callable[[], float],
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.session_token = session_token
        self._failover = failover
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._backoff = backoff
        self._liveness = liveness
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        # Until the replica has said its bound, one request at a time (it may be below ours).
        self._limit = 1
        self._outbox: _Outbox | None = None  # the open stream's request side
        self._wanted = False  # a request found the stream closed: open it
        # Until an attempt to open it fails or it breaks, requests wait behind its `open`.
        self._fresh = True
        self._call: _Call | None = None
        self._address: str | None = None  # where the open stream is
        self._error: ChatError | None = None
        self._closed = False
        self._subscribers: list[SessionSubscription] = []
        self._next_probe = 0.0
        self._probing = False
        self._reader = threading.Thread(target=self._run, name="chat-session", daemon=True)
        self._reader.start()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._error is not None

    @property
    def is_open(self) -> bool:
        """Whether requests go on the stream now (else they go as unary calls)."""
        with self._cond:
            return self._outbox is not None

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            call, outbox = self._call, self._outbox
            self._cond.notify_all()
        if outbox is not None:
            outbox.put(_CLOSE)
        if call is not None:
            _cancel(call)
        self._end(ChatError(grpc.StatusCode.CANCELLED, "client closed"))

    # -- requests --------------------------------------------------------------------------

    def request(self, kind: str, message: Any) -> chat_pb2.SessionReply:
        """Sends `message` as the request `kind` ("send", "ack") and waits for its result,
        retrying it (same request id) while the service answers UNAVAILABLE, until the
        client's timeout; on the stream while it is open, else (or once it breaks) as the
        unary call. Raises the ChatError a unary call would raise."""
        deadline = self._clock() + self._timeout
        delays = self._backoff.delays()
        while True:
            pending = self._submit(kind, message, deadline)
            try:
                if pending is None:
                    raise StreamBroke
                reply = self._wait(pending, deadline)
            except StreamBroke:
                return self._unary(kind, message, deadline)
            if reply.WhichOneof("item") != "error":
                return reply
            error = request_error(reply.error)
            remaining = deadline - self._clock()
            if error.code is not grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                raise error
            logger.debug("the primary could not answer now (%s); trying again", error)
            self._failover.pause(min(next(delays), remaining))

    def _submit(self, kind: str, message: Any, deadline: float) -> _Pending | None:
        """The request, sent on the open stream (or queued behind its first `open`); None if
        it is to go unary: the stream is closed after a failure (the reader is told to open it
        again)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._outbox is None:
                    self._wanted = True
                    self._cond.notify_all()
                    if not self._fresh:
                        return None
                if len(self._pending) < self._limit:
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise self._unavailable_locked()
                self._cond.wait(remaining)
            request = chat_pb2.SessionRequest(correlation_id=next(self._ids), **{kind: message})
            pending = _Pending(request)
            self._pending[request.correlation_id] = pending
            if self._outbox is not None:
                self._outbox.put(request)
        return pending

    def _unary(self, kind: str, message: Any, deadline: float) -> chat_pb2.SessionReply:
        """The request as its unary call, with its request id and this stream's session, within
        what is left of its deadline."""
        method, request_type = UNARY_CALLS[kind]
        request = request_type()
        request.CopyFrom(message)
        request.session_token = self.session_token
        reply = self._failover.call_unary(
            lambda stub, timeout: getattr(stub, method)(request, timeout=timeout),
            timeout=max(0.0, deadline - self._clock()),
        )
        return chat_pb2.SessionReply(**{kind: reply})

    def _wait(self, pending: _Pending, deadline: float) -> chat_pb2.SessionReply:
        check_after = self._liveness.check_after
        while True:
            remaining = deadline - self._clock()
            if remaining > 0 and not pending.done.acquire(timeout=min(check_after, remaining)):
                self._check_liveness()
                continue
            if remaining <= 0 and not pending.done.acquire(blocking=False):
                with self._cond:
                    gave_up = self._pending.pop(pending.request.correlation_id, None) is not None
                    self._cond.notify()
                    unavailable = self._unavailable_locked()
                if gave_up:
                    raise unavailable
                pending.done.acquire()  # answered meanwhile
            if pending.error is not None:
                raise pending.error  # (a StreamBroke: request() goes on as a unary call)
            assert pending.reply is not None
            return pending.reply

    def _unavailable_locked(self) -> ChatUnavailableError:
        """A request's deadline passed on an open stream that did not answer: "no replica
        reachable", as a unary call whose every attempt timed out would say."""
        return give_up(self._failover.addresses, False, None, {})

    def _check_liveness(self) -> None:
        """A request waited long: ask its replica whether it answers at all (a frozen process
        keeps its connections open); if not, abandon it, which breaks the stream, and the
        reader reopens it elsewhere. One probe at a time per stream."""
        with self._cond:
            address = self._address if self._outbox is not None else None
            now = self._clock()
            if address is None or self._probing or now < self._next_probe or not self._pending:
                return
            self._probing = True
        try:
            alive = self._failover.answers(address)
        finally:
            with self._cond:
                self._probing = False
                self._next_probe = self._clock() + self._liveness.check_after
        if not alive:
            logger.info("replica at %s stopped answering; moving the session stream", address)
            self._failover.abandon(address)

    # -- pushes ----------------------------------------------------------------------------

    def subscribe(
        self,
        reconnect_timeout: float | None,
        fallback: Callable[[], Iterator[SubscriptionItem]] | None = None,
    ) -> SessionSubscription:
        subscription = SessionSubscription(self, reconnect_timeout, fallback)
        with self._cond:
            if self._error is not None:
                subscription.fail(self._error)
                return subscription
            self._subscribers.append(subscription)
            first = len(self._subscribers) == 1
            if first and self._outbox is not None:
                self._outbox.put(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=True)))
            self._cond.notify_all()
        return subscription

    def unsubscribe(self, subscription: SessionSubscription) -> None:
        with self._cond:
            if subscription not in self._subscribers:
                return
            self._subscribers.remove(subscription)
            if not self._subscribers and self._outbox is not None:
                self._outbox.put(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=False)))

    # -- the reader thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # never leave callers waiting on a dead reader
            logger.exception("the session stream's reader failed")
            self._end(ChatError(grpc.StatusCode.UNKNOWN, f"the session stream failed: {exc!r}"))
            raise

    def _follow(self) -> None:
        while True:
            with self._cond:
                # Opened only while needed: by a subscriber, or by a request that found it
                # closed (and went unary meanwhile). Reopening every idle client's stream at
                # once when the primary dies is a herd that slows the election's winner and
                # the clients' own sends (docs/bench.md).
                while not (self._closed or self._wanted or self._subscribers):
                    self._cond.wait()
                if self._closed:
                    return
                self._wanted = False
                # A subscriber that asked to wait longer for a primary keeps the stream trying.
                waits = [s.reconnect_timeout for s in self._subscribers]
            reconnect = max((self._timeout if w is None else w for w in waits), default=None)
            try:
                call, replies, outbox = self._failover.call(self._open, timeout=reconnect)
            except _Cancelled:
                return
            except ChatError as error:
                self._end(error)
                return
            with self._cond:
                self._address = self._failover.connected_address
            try:
                for reply in replies:
                    self._accept(reply)
            except (grpc.RpcError, ValueError) as caught:
                if self._is_closed():
                    return
                broken = caught if isinstance(caught, grpc.RpcError) else _ChannelClosed()
                if not (retryable(broken) or stream_broke(broken)):
                    self._end(ChatError.from_rpc_error(broken))
                    return
                self._failover.follow(broken, self._address)
                logger.info(
                    "session stream at %s broke (%s); %d requests go on as unary calls",
                    self._failover.connected_address,
                    broken.code().name,
                    self.in_flight,
                )
            else:
                logger.info("the replica ended the session stream")
                self._failover.pause(0.1)  # an immediately ending stream is no busy loop
            finally:
                with self._cond:
                    self._outbox = None
                    self._call = None
                self._hand_over_to_unary()
                outbox.put(_CLOSE)
                _cancel(call)

    def _hand_over_to_unary(self) -> None:
        """The stream failed (an attempt to open it, or it broke): every request waiting on it
        carries on as its unary call, and so do later ones until it is open again."""
        with self._cond:
            self._fresh = False
            broke = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for pending in broke:
            pending.error = StreamBroke()
            pending.done.release()

    def _is_closed(self) -> bool:
        with self._cond:
            return self._closed

    def _open(
        self, stub: ChatStub, attempt_timeout: float
    ) -> tuple[_Call, Iterator[chat_pb2.SessionReply], _Outbox]:
        try:
            return self._open_on(stub, attempt_timeout)
        except BaseException:
            self._hand_over_to_unary()
            raise

    def _open_on(
        self, stub: ChatStub, attempt_timeout: float
    ) -> tuple[_Call, Iterator[chat_pb2.SessionReply], _Outbox]:
        outbox: _Outbox = queue.SimpleQueue()
        with self._cond:
            if self._closed:
                raise _Cancelled
            push = bool(self._subscribers)
            # The first requests go right behind the first `open`, not a round trip after its
            # answer (after a failure there are none: they went unary).
            early = sorted(self._pending)
            outbox.put(
                chat_pb2.SessionRequest(
                    open=chat_pb2.SessionOpen(session_token=self.session_token, push=push)
                )
            )
            for correlation_id in early:
                outbox.put(self._pending[correlation_id].request)
        try:
            call: _Call = stub.Session(iter(outbox.get, _CLOSE))
        except ValueError:  # its channel was closed under it: try elsewhere
            raise _ChannelClosed() from None
        replies = iter(call)
        with self._cond:
            self._call = call
            closed = self._closed
        # The first reply (`opened`) must come soon, or the replica is hung: ask another.
        watchdog = threading.Timer(attempt_timeout, _cancel, (call,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if closed:
                raise _Cancelled
            first = next(replies)
        except ValueError:
            outbox.put(_CLOSE)
            raise _ChannelClosed() from None
        except BaseException:
            outbox.put(_CLOSE)
            _cancel(call)
            raise
        finally:
            watchdog.cancel()
        with self._cond:
            announced = first.opened.max_in_flight or self._max_in_flight
            self._limit = min(self._max_in_flight, announced)
            self._outbox = outbox
            self._wanted = False  # (whoever found it closed while it opened: it is open now)
            if bool(self._subscribers) != push:  # subscribed or cancelled while opening
                pushes = chat_pb2.SetPushes(on=bool(self._subscribers))
                outbox.put(chat_pb2.SessionRequest(pushes=pushes))
            for correlation_id in sorted(self._pending.keys() - early):  # came meanwhile
                outbox.put(self._pending[correlation_id].request)
            self._cond.notify_all()
        return call, replies, outbox

    def _accept(self, reply: chat_pb2.SessionReply) -> None:
        correlation_id = reply.correlation_id
        if correlation_id:
            with self._cond:
                pending = self._pending.pop(correlation_id, None)
                self._cond.notify()
            if pending is not None:  # (else its caller gave up on it)
                pending.reply = reply
                pending.done.release()
            return
        if reply.HasField("push"):
            with self._cond:
                subscribers = list(self._subscribers)
            for subscription in subscribers:
                subscription.deliver(reply.push)

    def _end(self, error: ChatError) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            pending = list(self._pending.values())
            self._pending.clear()
            subscribers, self._subscribers = self._subscribers, []
            self._cond.notify_all()
        for p in pending:
            p.error = error
            p.done.release()
        for subscription in subscribers:
            subscription.fail(error)


_END = object()


class SessionSubscription:
    """Messages pushed on a Session stream and a CaughtUp marker per (re)connection, as a
    Subscription yields them (a message yielded once, however often the replica sends it
    again). `cancel()` (any thread) ends the iteration; a ChatError ends it when the stream
    ends for good. If the replica has no Session method (UNIMPLEMENTED), it carries on with
    `fallback()` (a Subscribe stream)."""

    def __init__(
        self,
        session: SessionStream,
        reconnect_timeout: float | None,
        fallback: Callable[[], Iterator[SubscriptionItem]] | None,
    ) -> None:
        self.reconnect_timeout = reconnect_timeout
        self._session = session
        self._fallback = fallback
        self._instead: Iterator[SubscriptionItem] | None = None
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._last_yielded_id = 0
        self._finished = False

    def __iter__(self) -> Iterator[SubscriptionItem]:
        return self

    def __next__(self) -> SubscriptionItem:
        if self._instead is not None:
            return next(self._instead)
        if self._finished:
            raise StopIteration
        item = self._items.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, ChatError):
            if item.code is grpc.StatusCode.UNIMPLEMENTED and self._fallback is not None:
                self._instead = self._fallback()
                return next(self._instead)
            self._finished = True
            if item.code is grpc.StatusCode.CANCELLED:  # the client was closed
                raise StopIteration
            raise item
        return item  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._session.unsubscribe(self)
        instead = self._instead
        if instead is not None and hasattr(instead, "cancel"):
            instead.cancel()
        self._items.put(_END)

    def deliver(self, push: chat_pb2.SubscribeReply) -> None:
        items, self._last_yielded_id = accept(push, self._last_yielded_id)
        for item in items:
            self._items.put(item)

    def fail(self, error: ChatError) -> None:
        self._items.put(error)


def _cancel(call: _Call) -> None:
    call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() untyped
