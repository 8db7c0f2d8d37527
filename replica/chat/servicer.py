"""The gRPC servicer: a thin adapter between the proto and ChatService. Domain errors become
status codes here, in one place."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message

from projections.queries import Account, StoredMessage
from protos import chat_pb2, chat_pb2_grpc
from protos.wire import PRIMARY_ADDRESS_KEY, RETRY_AFTER_KEY, SERVICE_ERROR_KEY
from replica import errors
from replica.chat.ratelimit import TokenBuckets, client_address, retry_text
from replica.chat.service import ChatService, sent_at_unix_ms
from replica.chat.session import RequestWorkers, SessionStream
from replica.replication.status import ClusterView
from replica.storage.database import storage_problem
from replica.storage.notifier import InboxNotifier
from replica.storage.role import Role, RoleState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimits:
    """Token buckets (replica/chat/ratelimit.py): `burst` tries, then one per `interval` seconds.
    Failed logins per account (5, then one per 10 s: at most ~8,600 guesses a day) and per
    client address (50, then one a second); registrations per address (100, then one a
    second: a classroom behind one NAT registers at once, a squatter crawls)."""

    login_burst: int = 5
    login_interval: float = 10.0
    address_login_burst: int = 50
    address_login_interval: float = 1.0
    register_burst: int = 100
    register_interval: float = 1.0


CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["Chat"]
_BACKLOG_BATCH = 100
# A client that reads batches gets each page as one reply: bodies are at most 4 KiB, so a
# page stays near 1 MiB, well under gRPC's 4 MiB message limit.
_BACKLOG_BATCH_BATCHED = 256

_STATUS: dict[type[errors.ChatError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NotPrimary: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Refused: grpc.StatusCode.FAILED_PRECONDITION,
}


def abort_with(context: grpc.ServicerContext, error: errors.ChatError) -> NoReturn:
    # Marks the status as the service's own answer (not a transport failure), so a client
    # that gives up can repeat the reason, e.g. "too few replicas in sync".
    metadata = [(SERVICE_ERROR_KEY, type(error).__name__)]
    if isinstance(error, errors.NotPrimary) and error.primary_address:
        metadata.append((PRIMARY_ADDRESS_KEY, error.primary_address))
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        # (never "0.000": a wait shorter than a millisecond is still a wait)
        metadata.append((RETRY_AFTER_KEY, f"{max(error.retry_after, 0.001):.3f}"))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(_STATUS.get(type(error), grpc.StatusCode.UNKNOWN), str(error))
    raise AssertionError("ServicerContext.abort returned instead of raising")  # (it raises)


R = TypeVar("R")


def database_unavailable(exc: sa.exc.DBAPIError) -> errors.Unavailable:
    """What a client is told when a read of the replica's database failed (the server went
    away, a lost connection): UNAVAILABLE with the driver's own message, not a traceback."""
    return errors.Unavailable(
        f"the replica cannot read its database ({storage_problem(exc)}); retry shortly"
    )


def maps_errors(method: Callable[..., R]) -> Callable[..., R]:
    """A servicer method whose domain errors (and database failures) become statuses."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except errors.ChatError as exc:
            abort_with(context, exc)
            raise  # abort() raises; this line is never reached
        except sa.exc.DBAPIError as exc:
            abort_with(context, database_unavailable(exc))
            raise

    return wrapper


def waits_for_primary(method: Callable[..., R]) -> Callable[..., R]:
    """A servicer method that writes: on a replica that knows no primary (an election under
    way), it first waits a moment for one (ChatServicer._await_primary)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        self._await_primary(context)
        return method(self, request, context)

    return wrapper


def request_error(error: errors.ChatError) -> chat_pb2.RequestError:
    """A refused request's answer on a Session stream: what abort_with would have said."""
    code = _STATUS.get(type(error), grpc.StatusCode.UNKNOWN)
    retry_after = 0.0
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        retry_after = max(error.retry_after, 0.001)
    return chat_pb2.RequestError(
        code=code.value[0],
        message=str(error),
        error=type(error).__name__,
        retry_after_seconds=retry_after,
    )


# Refusals that are the stream's, not one request's: the client must go elsewhere (or log in
# again) for every request, so the stream ends with the status.
_ENDS_STREAM = (errors.NotPrimary, errors.Unauthenticated)


def _message(m: StoredMessage) -> chat_pb2.Message:
    return chat_pb2.Message(
        message_id=m.message_id,
        sender=m.sender,
        recipient=m.recipient,
        body=m.body,
        sent_at_unix_ms=sent_at_unix_ms(m.sent_at),
    )


@dataclass(frozen=True)
class MalformedRequest:
    """Request bytes that do not parse as the method's message (e.g. a string field that is
    not UTF-8): handed to the method handler, which refuses them with the reason."""

    message_type: str
    reason: str


def _lenient_decoder(message_class: type[Message]) -> Callable[[bytes], Any]:
    # gRPC answers a request its deserializer cannot parse with INTERNAL ("Exception
    # deserializing request!"), as if the server were broken; it is the client's mistake.
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            reason = str(exc).rpartition(": ")[2] or "the bytes do not parse"
            return MalformedRequest(message_class.DESCRIPTOR.full_name, reason)

    return decode


def _refusing_malformed(behavior: Callable[[Any, grpc.ServicerContext], R]) -> Callable[..., R]:
    @functools.wraps(behavior)
    def handle(request: Any, context: grpc.ServicerContext) -> R:
        if isinstance(request, MalformedRequest):
            hint = "; strings must be UTF-8" if "UTF-8" in request.reason else ""
            abort_with(
                context,
                errors.InvalidArgument(
                    f"the request is not a valid {request.message_type} message "
                    f"({request.reason}){hint}"
                ),
            )
        return behavior(request, context)

    return handle


def add_chat_servicer(servicer: ChatServicer, server: grpc.Server) -> None:
    """Serve chat.v1.Chat, like the generated add_ChatServicer_to_server, except that a request
    whose bytes do not parse is refused with INVALID_ARGUMENT and the reason."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in CHAT_SERVICE.methods:
        request_class = getattr(chat_pb2, method.input_type.name)
        reply_class = getattr(chat_pb2, method.output_type.name)
        if method.client_streaming:  # Session: each request is checked as it arrives
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=_lenient_decoder(request_class),
                response_serializer=reply_class.SerializeToString,
            )
            continue
        behavior = _refusing_malformed(getattr(servicer, method.name))
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behavior,
            request_deserializer=_lenient_decoder(request_class),
            response_serializer=reply_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(CHAT_SERVICE.full_name, handlers),)
    )


class _Inbox(Protocol):
    def committed_seq(self) -> int: ...

    def undelivered_through(
        self, account_id: int, after_id: int, limit: int
    ) -> tuple[list[StoredMessage], int]: ...


def next_page(
    inbox: _Inbox,
    notifier: InboxNotifier,
    account_id: int,
    last_id: int,
    seen_through: int,
    page: int,
    *,
    live: bool,
) -> tuple[list[StoredMessage], int]:
    """A subscription's next messages (ids after `last_id`, at most `page`) and the seq
    through which, once they are yielded, it has yielded every undelivered message. `live`
    (caught up): from the notifier when it covers them, without querying the inbox."""
    found = None
    if live:
        found = notifier.live_after(account_id, seen_through, inbox.committed_seq())
    if found is not None:
        batch, through = found  # (after seen_through, which is never below last_id)
        batch = batch[:page]
    else:
        batch, through = inbox.undelivered_through(account_id, last_id, page)
    if len(batch) == page:  # more may follow it
        through = batch[-1].message_id
    return batch, through


class ChatServicer(chat_pb2_grpc.ChatServicer):
    def __init__(
        self,
        service: ChatService,
        role: RoleState,
        notifier: InboxNotifier,
        cluster_view: Callable[[], ClusterView],
        *,
        max_subscriptions: int,
        max_in_flight_per_session: int = 64,
        request_workers: int = 64,
        recheck_interval: float = 1.0,
        limits: RateLimits | None = None,
        primary_wait: float = 0.0,
    ) -> None:
        """`primary_wait`: how long a write or a stream waits, on a replica that knows no
        primary, for an election to name one before it is handled (0: not at all)."""
        self._service = service
        self._role = role
        self._notifier = notifier
        self._cluster_view = cluster_view
        self._subscriptions = threading.BoundedSemaphore(max_subscriptions)
        self._max_subscriptions = max_subscriptions
        self._recheck_interval = recheck_interval
        self._primary_wait = primary_wait
        self._stopping = threading.Event()
        limits = limits or RateLimits()
        self._failed_logins = TokenBuckets(limits.login_burst, limits.login_interval)
        self._failed_logins_by_address = TokenBuckets(
            limits.address_login_burst, limits.address_login_interval
        )
        self._registrations = TokenBuckets(limits.register_burst, limits.register_interval)
        self._open = 0
        self._open_lock = threading.Lock()
        # Called with the seconds from a message's sent_at to its push, for live messages.
        self.on_delivered: Callable[[float], None] | None = None
        # Called for each send or ack answered on a Session stream ("send" or "ack", its status
        # code's name, its seconds); unary calls are counted by the metrics interceptor.
        self.on_session_answer: Callable[[str, str, float], None] | None = None
        self._max_in_flight = max_in_flight_per_session
        self._workers = RequestWorkers(self._carry_out, request_workers)
        self._sessions: set[SessionStream] = set()

    @property
    def open_subscriptions(self) -> int:
        return self._open

    def stop(self) -> None:
        self._stopping.set()
        with self._open_lock:
            sessions = list(self._sessions)
        for stream in sessions:
            stream.end(errors.Unavailable("the replica is shutting down; reconnect"))
        self._workers.stop()
        self._notifier.close()

    @maps_errors
    @waits_for_primary
    def Register(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.RegisterReply:
        address = client_address(context.peer())
        wait = self._registrations.wait(address)
        if wait:
            raise errors.ResourceExhausted(
                f"too many registrations from {address}; {retry_text(wait)}", retry_after=wait
            )
        self._registrations.take(address)
        name = self._service.register(request.request_id, request.username, request.password)
        return chat_pb2.RegisterReply(username=name)

    @maps_errors
    @waits_for_primary
    def Login(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.LoginReply:
        address = client_address(context.peer())
        account = str(request.username).strip().lower()[:64]
        wait = max(
            self._failed_logins.wait(f"account:{account}"),
            self._failed_logins_by_address.wait(address),
        )
        if wait:
            raise errors.ResourceExhausted(
                f"too many failed logins for {account!r} or from {address}; {retry_text(wait)}",
                retry_after=wait,
            )
        try:
            result = self._service.login(request.request_id, request.username, request.password)
        except errors.Unauthenticated:
            self._failed_logins.take(f"account:{account}")
            self._failed_logins_by_address.take(address)
            raise
        self._failed_logins.forget(f"account:{account}")
        return chat_pb2.LoginReply(
            session_token=result.session_token,
            username=result.username,
            undelivered_count=result.undelivered_count,
            unread_by_sender=[
                chat_pb2.SenderCount(sender=sender, count=count)
                for sender, count in result.unread_by_sender
            ],
        )

    @maps_errors
    @waits_for_primary
    def Logout(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.LogoutReply:
        self._service.logout(request.request_id, request.session_token)
        return chat_pb2.LogoutReply()

    @maps_errors
    def ListAccounts(
        self, request: Any, context: grpc.ServicerContext
    ) -> chat_pb2.ListAccountsReply:
        page = self._service.list_accounts(request.pattern, request.page_size, request.page_token)
        return chat_pb2.ListAccountsReply(
            usernames=page.items, next_page_token=page.next_page_token
        )

    @maps_errors
    @waits_for_primary
    def Send(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.SendReply:
        message_id = self._service.send(
            request.request_id, request.session_token, request.recipient, request.body
        )
        return chat_pb2.SendReply(message_id=message_id)

    @maps_errors
    @waits_for_primary
    def Ack(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.AckReply:
        count = self._service.ack(
            request.request_id, request.session_token, list(request.message_ids)
        )
        return chat_pb2.AckReply(acked_count=count)

    @maps_errors
    def History(self, request: Any, context: grpc.ServicerContext) -> chat_pb2.HistoryReply:
        page = self._service.history(
            request.session_token,
            request.other_user,
            request.page_size,
            request.page_token,
            newest_first=request.newest_first,
        )
        return chat_pb2.HistoryReply(
            messages=[_message(m) for m in page.items], next_page_token=page.next_page_token
        )

    @maps_errors
    @waits_for_primary
    def DeleteAccount(
        self, request: Any, context: grpc.ServicerContext
    ) -> chat_pb2.DeleteAccountReply:
        self._service.delete_account(request.request_id, request.session_token, request.password)
        return chat_pb2.DeleteAccountReply()

    @maps_errors
    def ClusterStatus(
        self, request: Any, context: grpc.ServicerContext
    ) -> chat_pb2.ClusterStatusReply:
        view = self._cluster_view()
        return chat_pb2.ClusterStatusReply(
            answered_by=view.answered_by,
            primary_index=view.primary_index or 0,
            primary_known=view.primary_index is not None,
            replicas=[chat_pb2.ReplicaStatus(**vars(r)) for r in view.replicas],
        )

    def _await_primary(self, context: grpc.ServicerContext) -> None:
        """On a replica that knows no primary (an election under way, or the primary it names
        went silent a moment ago: its stream from it ended), wait up to `primary_wait`
        (within the call's deadline) for one to be known, so that the request is then served
        here (elected) or refused naming the new primary: the client goes straight there,
        instead of to a dead one, or pausing between rounds of asking every replica and
        finding out a back-off later. Not longer: a replica cut off from the others knows no
        primary for as long as the cut lasts."""
        if self._primary_wait <= 0 or self._role.primary_known():
            return
        remaining = context.time_remaining()
        wait = self._primary_wait if remaining is None else min(self._primary_wait, remaining / 2)
        if wait > 0:
            self._role.await_primary(wait)

    def _open_stream(self, token: str, context: grpc.ServicerContext) -> Account:
        """What a Subscribe or Session stream does first: on the primary only (waiting for an
        election under way, as a write does), for a valid session, and holding one of
        max_subscriptions places (each stream holds a server thread), counted open; else the
        call ends with why. The caller gives the place back with _stream_closed()."""
        self._await_primary(context)
        try:
            self._role.require_primary()
            account = self._service.authenticate(token)
        except errors.ChatError as exc:
            abort_with(context, exc)
        except sa.exc.DBAPIError as exc:
            abort_with(context, database_unavailable(exc))
        if not self._subscriptions.acquire(blocking=False):
            abort_with(context, self._subscriptions_full())
        with self._open_lock:
            self._open += 1
        return account

    def _stream_closed(self) -> None:
        with self._open_lock:
            self._open -= 1
        self._subscriptions.release()

    def Subscribe(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[chat_pb2.SubscribeReply]:
        account = self._open_stream(request.session_token, context)
        try:
            with self._notifier.watching(account.account_id):
                yield from self._deliver(
                    account.account_id, request.session_token, context.is_active, request.batches
                )
        except errors.ChatError as exc:
            abort_with(context, exc)
        except sa.exc.DBAPIError as exc:
            abort_with(context, database_unavailable(exc))
        finally:
            self._stream_closed()

    def _subscriptions_full(self) -> errors.ResourceExhausted:
        return errors.ResourceExhausted(
            f"this replica already serves {self._max_subscriptions} subscriptions; retry later"
        )

    def _deliver(
        self, account_id: int, token: str, active: Callable[[], bool], batches: bool
    ) -> Iterator[chat_pb2.SubscribeReply]:
        last_id = 0
        caught_up = False
        page = _BACKLOG_BATCH_BATCHED if batches else _BACKLOG_BATCH
        # Read before the stream's first query, so that an end after it is seen.
        checked_ends, checked_at = self._notifier.session_ends(account_id), time.monotonic()
        # Every undelivered message up to this seq has been yielded (once caught up, woken
        # subscriptions take new messages from the notifier while it covers them).
        seen_through = 0
        while active() and not self._stopping.is_set():
            version = self._notifier.version(account_id)
            batch, through = next_page(
                self._service,
                self._notifier,
                account_id,
                last_id,
                seen_through,
                page,
                live=caught_up,
            )
            if caught_up and batch and self.on_delivered is not None:
                now = time.time()
                for m in batch:  # live, not a backlog: how long since it was committed
                    self.on_delivered(max(0.0, now - sent_at_unix_ms(m.sent_at) / 1000))
            if batch and batches:
                # One reply per page: per-message replies cost a thread hand-off each.
                yield chat_pb2.SubscribeReply(
                    messages=chat_pb2.MessageBatch(messages=[_message(m) for m in batch])
                )
                last_id = batch[-1].message_id
            else:
                for m in batch:
                    yield chat_pb2.SubscribeReply(message=_message(m))
                    last_id = m.message_id
            seen_through = max(seen_through, through)
            if len(batch) == page:
                continue
            if not caught_up:
                caught_up = True
                yield chat_pb2.SubscribeReply(caught_up=chat_pb2.CaughtUp())
            self._notifier.wait(account_id, version, self._recheck_interval)
            # A logout, a deleted account or a lost primary role ends the stream. The session
            # is looked up again when an event may have ended it, and at least once per
            # recheck interval -- not for every message (two queries per push would slow
            # every send on a primary with live subscribers).
            ends = self._notifier.session_ends(account_id)
            now = time.monotonic()
            if ends != checked_ends or now - checked_at >= self._recheck_interval:
                self._service.authenticate(token)
                checked_ends, checked_at = ends, now
            if self._role.snapshot.role is not Role.PRIMARY:
                self._role.require_primary()
        if self._stopping.is_set():
            raise errors.Unavailable("the replica is shutting down; reconnect")

    # -- Session streams (replica/chat/session.py) -------------------------------------------

    def Session(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[chat_pb2.SessionReply]:
        try:
            first = next(requests, None)
        except grpc.RpcError:  # the client left before its first request
            return
        if first is None:
            return
        if isinstance(first, MalformedRequest) or first.WhichOneof("item") != "open":
            abort_with(
                context,
                errors.InvalidArgument(
                    "a Session stream begins with an `open` request (the session token)"
                ),
            )
        token = first.open.session_token
        # (A session replaces a Subscribe stream, and holds a server thread as one does.)
        account = self._open_stream(token, context)
        stream = SessionStream(token, account.account_id, self._max_in_flight)
        with self._open_lock:
            self._sessions.add(stream)
        try:
            context.add_callback(functools.partial(stream.end, None))
            yield chat_pb2.SessionReply(
                opened=chat_pb2.SessionOpened(max_in_flight=self._max_in_flight)
            )
            if first.open.push:
                self._start_pushes(stream)
            threading.Thread(
                target=self._read_session,
                args=(stream, requests),
                name=f"session-reader-{account.account_id}",
                daemon=True,
            ).start()
            yield from self._session_replies(stream, context)
        finally:
            stream.ended.set()
            if stream.pushes is not None:
                stream.pushes.set()
            with self._open_lock:
                self._sessions.discard(stream)
            self._stream_closed()

    def _session_replies(
        self, stream: SessionStream, context: grpc.ServicerContext
    ) -> Iterator[chat_pb2.SessionReply]:
        replies = stream.replies
        while True:
            try:
                item = replies.get(timeout=self._recheck_interval)
            except queue.Empty:
                # A quiet stream still ends when its replica stops being the primary.
                if self._role.snapshot.role is not Role.PRIMARY:
                    try:
                        self._role.require_primary()
                    except errors.ChatError as exc:
                        abort_with(context, exc)
                continue
            if isinstance(item, chat_pb2.SessionReply):
                yield item
            elif item is None:
                if not context.is_active():  # cancelled, rather than closed by the client
                    context.set_code(grpc.StatusCode.CANCELLED)
                return
            else:
                abort_with(context, item)

    def _read_session(self, stream: SessionStream, requests: Iterator[Any]) -> None:
        """The stream's reader thread: each request to a worker (or refused at once)."""
        try:
            for request in requests:
                if stream.ended.is_set():
                    return
                kind = None if isinstance(request, MalformedRequest) else request.WhichOneof("item")
                if kind == "send" or kind == "ack":
                    if stream.admit():
                        self._workers.submit(stream, request)
                    else:
                        stream.replies.put(self._too_many_in_flight(stream, request))
                elif kind == "pushes":
                    if request.pushes.on:
                        self._start_pushes(stream)
                    elif stream.pushes is not None:
                        stream.pushes.set()
                        stream.pushes = None
                else:
                    reason = (
                        f"the request is not a valid {request.message_type} message "
                        f"({request.reason})"
                        if isinstance(request, MalformedRequest)
                        else "a Session stream takes `open` once, first, then sends, acks "
                        "and pushes"
                    )
                    stream.end(errors.InvalidArgument(reason))
                    return
        except grpc.RpcError:
            return  # the stream was cancelled: its callback ended it
        stream.client_done()

    def _too_many_in_flight(self, stream: SessionStream, request: Any) -> chat_pb2.SessionReply:
        error = errors.ResourceExhausted(
            f"more than {stream.max_in_flight} requests in flight on this Session stream; "
            "wait for a result before sending more"
        )
        return chat_pb2.SessionReply(
            correlation_id=request.correlation_id, error=request_error(error)
        )

    def _carry_out(self, stream: SessionStream, request: Any) -> None:
        """A worker: one send or ack of `stream`, answered on it."""
        reply = chat_pb2.SessionReply(correlation_id=request.correlation_id)
        kind = "send" if request.HasField("send") else "ack"
        began = time.perf_counter()
        code = "OK"
        try:
            if kind == "send":
                send = request.send
                self._check_token(stream, send.session_token)
                reply.send.message_id = self._service.send(
                    send.request_id, stream.token, send.recipient, send.body
                )
            else:
                ack = request.ack
                self._check_token(stream, ack.session_token)
                reply.ack.acked_count = self._service.ack(
                    ack.request_id, stream.token, list(ack.message_ids)
                )
        except _ENDS_STREAM as exc:
            # No answer: the client sends it again, same request id, wherever it reconnects.
            stream.end(exc)
            stream.answered(None)
            code = _STATUS[type(exc)].name
        except errors.ChatError as exc:
            reply.error.CopyFrom(request_error(exc))
            code = _STATUS.get(type(exc), grpc.StatusCode.UNKNOWN).name
        except sa.exc.DBAPIError as exc:
            reply.error.CopyFrom(request_error(database_unavailable(exc)))
            code = grpc.StatusCode.UNAVAILABLE.name
        if code == "OK" or reply.HasField("error"):
            stream.answered(reply)
        if self.on_session_answer is not None:
            self.on_session_answer(kind, code, time.perf_counter() - began)

    @staticmethod
    def _check_token(stream: SessionStream, token: str) -> None:
        if token and token != stream.token:
            raise errors.InvalidArgument(
                "a request on a Session stream carries the stream's session token or none"
            )

    def _start_pushes(self, stream: SessionStream) -> None:
        if stream.pushes is not None:
            return  # already pushing
        stop = threading.Event()
        stream.pushes = stop
        threading.Thread(
            target=self._push,
            args=(stream, stop),
            name=f"session-pusher-{stream.account_id}",
            daemon=True,
        ).start()

    def _push(self, stream: SessionStream, stop: threading.Event) -> None:
        """A pusher thread: what a Subscribe stream would yield, onto the session's queue."""

        def active() -> bool:
            return not (stop.is_set() or stream.ended.is_set())

        try:
            with self._notifier.watching(stream.account_id):
                for item in self._deliver(stream.account_id, stream.token, active, True):
                    if not active():  # stopped meanwhile: a new pusher sends the backlog anew
                        return
                    stream.replies.put(chat_pb2.SessionReply(push=item))
        except errors.ChatError as exc:
            stream.end(exc)
        except sa.exc.DBAPIError as exc:
            stream.end(database_unavailable(exc))
