"""ChatClient: the chat API over a replicated cluster, with failover and idempotent retries."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from client.channels import ChannelPool
from client.errors import ChatError, NotLoggedInError
from client.failover import Failover
from client.models import ClusterStatus, Message
from client.session import SessionStream, SessionSubscription
from client.settings import ClientHooks, ClientSettings
from client.subscription import Subscription
from protos import chat_pb2
from protos.wire import MAX_ACK_IDS


@dataclass(frozen=True)
class Session:
    username: str
    session_token: str


@dataclass(frozen=True)
class LoginResult:
    username: str
    undelivered_count: int
    unread_by_sender: tuple[tuple[str, int], ...] = ()  # most first


def connect(
    servers: Sequence[str], settings: ClientSettings, hooks: ClientHooks
) -> tuple[ChannelPool, Failover]:
    """The channels to `servers` and the failover over them, as `settings` and `hooks` say
    (one place for every client built on them: ChatClient, AdminClient)."""
    pool = ChannelPool(settings.channel_options, root_certificates=settings.root_certificates)
    failover = Failover(
        servers,
        pool,
        timeout=settings.timeout,
        attempt_timeout=settings.attempt_timeout,
        backoff=settings.backoff,
        clock=hooks.clock,
        sleep=hooks.sleep,
        on_replica_change=hooks.on_replica_change,
        liveness=settings.liveness,
        on_unreachable=hooks.on_unreachable,
    )
    return pool, failover


class ChatClient:
    """A client for the chat cluster at `servers` ("host:port" of every replica), configured
    by `settings` (ClientSettings: timeouts, TLS, ...) and `hooks` (ClientHooks: callbacks,
    request ids, a test's clock).

    Every call retries across replicas until `settings.timeout` seconds have passed (see
    client.failover); a mutating call keeps one request_id through all its retries. Domain errors
    raise the ChatError subclass that names them (client.errors: NotFound, AlreadyExists,
    RateLimited, ...); no answer in time raises ChatUnavailableError. After `login` the client holds
    the session and uses it for the calls that need one. Thread-safe.

    Sends, acks and subscriptions go over one Session stream per login (client.session), on
    which several threads' sends are pipelined; unary calls and a Subscribe stream where
    `settings.session_stream` is False, while the stream is not open (after a failover: the
    request carries on as its unary call), or with a replica that has no Session method.
    """

    def __init__(
        self,
        servers: Sequence[str],
        settings: ClientSettings | None = None,
        *,
        hooks: ClientHooks | None = None,
    ) -> None:
        settings = settings if settings is not None else ClientSettings()
        hooks = hooks if hooks is not None else ClientHooks()
        self.settings = settings
        self._pool, self._failover = connect(servers, settings, hooks)
        self._request_ids = hooks.request_ids
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._hooks = hooks
        self._unary = not settings.session_stream
        self._stream: SessionStream | None = None

    @property
    def servers(self) -> tuple[str, ...]:
        return self._failover.addresses

    @property
    def connected_address(self) -> str | None:
        return self._failover.connected_address

    @property
    def session(self) -> Session | None:
        with self._lock:
            return self._session

    def close(self) -> None:
        """Ends every open call (a running subscription included) and releases the channels."""
        self._end_stream()
        self._failover.close()
        self._pool.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def register(self, username: str, password: str) -> str:
        """Creates an account; returns its canonical (lower-case) username."""
        request = chat_pb2.RegisterRequest(
            request_id=self._request_ids(), username=username, password=password
        )
        reply = self._failover.call_unary(
            lambda stub, timeout: stub.Register(request, timeout=timeout)
        )
        return reply.username

    def login(self, username: str, password: str) -> LoginResult:
        request = chat_pb2.LoginRequest(
            request_id=self._request_ids(), username=username, password=password
        )
        reply = self._failover.call_unary(
            lambda stub, timeout: stub.Login(request, timeout=timeout)
        )
        with self._lock:
            self._session = Session(reply.username, reply.session_token)
        self._end_stream()
        return LoginResult(
            reply.username,
            reply.undelivered_count,
            tuple((s.sender, s.count) for s in reply.unread_by_sender),
        )

    def logout(self) -> None:
        """Revokes the session; the client forgets it even if the server could not be told."""
        with self._lock:
            session, self._session = self._session, None
        self._end_stream()
        if session is None:
            return
        request = chat_pb2.LogoutRequest(
            request_id=self._request_ids(), session_token=session.session_token
        )
        self._failover.call_unary(lambda stub, timeout: stub.Logout(request, timeout=timeout))

    def list_accounts(self, pattern: str = "", *, page_size: int = 0) -> Iterator[str]:
        """Usernames matching a shell-style pattern, fetching page after page as iterated."""
        page_token = ""
        while True:
            page = self._accounts_page(pattern, page_size, page_token)
            yield from page.usernames
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def send(self, recipient: str, body: str) -> int:
        """Sends a message; returns its message_id."""
        request_id = self._request_ids()
        stream = self._session_stream()
        if stream is not None:
            # The stream's session token is the request's: none is carried.
            sent = chat_pb2.SendRequest(request_id=request_id, recipient=recipient, body=body)
            try:
                return int(stream.request("send", sent).send.message_id)
            except ChatError as exc:
                if not self._no_session_method(exc):
                    raise
        request = chat_pb2.SendRequest(
            request_id=request_id,
            session_token=self._token(),
            recipient=recipient,
            body=body,
        )
        reply = self._failover.call_unary(lambda stub, timeout: stub.Send(request, timeout=timeout))
        return reply.message_id

    def subscribe(
        self, *, reconnect_timeout: float | None = None
    ) -> Subscription | SessionSubscription:
        """Undelivered messages, a CaughtUp marker, then new messages live (see Subscription).

        `reconnect_timeout` bounds each reconnect (default: the client's timeout; pass
        math.inf to keep trying until cancelled).
        """
        token = self._token()
        stream = self._session_stream()

        def unary() -> Subscription:
            return Subscription(self._failover, token, reconnect_timeout=reconnect_timeout)

        if stream is None:
            return unary()
        return stream.subscribe(reconnect_timeout, fallback=self._unary_subscription(unary))

    def _unary_subscription(self, make: Callable[[], Subscription]) -> Callable[[], Subscription]:
        def fallback() -> Subscription:
            with self._lock:
                self._unary = True
            return make()

        return fallback

    def ack(self, message_ids: Iterable[int]) -> int:
        """Marks messages delivered so they are not sent again; returns how many were acked.
        Any number of ids: they go in requests of at most MAX_ACK_IDS, in order (should one
        fail, those before it stay acked)."""
        ids = list(message_ids)
        acked = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            request = chat_pb2.AckRequest(
                request_id=self._request_ids(),
                session_token=self._token(),
                message_ids=ids[start : start + MAX_ACK_IDS],
            )
            acked += self._ack_once(request)
        return acked

    def _ack_once(self, request: chat_pb2.AckRequest) -> int:
        stream = self._session_stream()
        if stream is not None:
            acked = chat_pb2.AckRequest(
                request_id=request.request_id, message_ids=request.message_ids
            )
            try:
                return int(stream.request("ack", acked).ack.acked_count)
            except ChatError as exc:
                if not self._no_session_method(exc):
                    raise
        reply = self._failover.call_unary(lambda stub, timeout: stub.Ack(request, timeout=timeout))
        return int(reply.acked_count)

    def _session_stream(self) -> SessionStream | None:
        """The logged-in session's stream (opened now if none is open, or the last one
        ended), or None where calls go unary."""
        with self._lock:
            if self._unary:
                return None
            if self._session is None:
                raise NotLoggedInError
            token = self._session.session_token
            stream = self._stream
            if stream is not None and not stream.ended and stream.session_token == token:
                return stream
            self._stream = SessionStream(
                self._failover,
                token,
                max_in_flight=self.settings.max_in_flight,
                timeout=self.settings.timeout,
                backoff=self.settings.backoff,
                liveness=self.settings.liveness,
                clock=self._hooks.clock,
            )
        if stream is not None:
            stream.close()
        return self._stream

    def _no_session_method(self, error: ChatError) -> bool:
        """Whether `error` says the replica has no Session method (an older server): the
        client goes unary from now on, and the request (never applied) is made so."""
        if error.code is not grpc.StatusCode.UNIMPLEMENTED:
            return False
        with self._lock:
            self._unary = True
        return True

    def _end_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def history(
        self, other_user: str, *, page_size: int = 0, newest_first: bool = False
    ) -> Iterator[Message]:
        """Messages exchanged with `other_user`, oldest first (or newest first, going back),
        fetching each page only as the one before has been iterated: a whole history of any
        length in O(page) memory, its first lines at once."""
        token = self._token()
        page_token = ""
        while True:
            page = self._history_page(token, other_user, page_size, page_token, newest_first)
            yield from map(Message.from_proto, page.messages)
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def delete_account(self, password: str) -> None:
        """Deletes the logged-in account (the password confirms it) and forgets the session."""
        request = chat_pb2.DeleteAccountRequest(
            request_id=self._request_ids(), session_token=self._token(), password=password
        )
        self._failover.call_unary(
            lambda stub, timeout: stub.DeleteAccount(request, timeout=timeout)
        )
        with self._lock:
            self._session = None
        self._end_stream()

    def cluster_status(self) -> ClusterStatus:
        """The cluster as the replica that answered sees it (any replica: no primary needed)."""
        request = chat_pb2.ClusterStatusRequest()
        reply = self._failover.call_unary(
            lambda stub, timeout: stub.ClusterStatus(request, timeout=timeout)
        )
        return ClusterStatus.from_proto(reply)

    def _token(self) -> str:
        with self._lock:
            if self._session is None:
                raise NotLoggedInError
            return self._session.session_token

    def _accounts_page(
        self, pattern: str, page_size: int, page_token: str
    ) -> chat_pb2.ListAccountsReply:
        request = chat_pb2.ListAccountsRequest(
            pattern=pattern, page_size=page_size, page_token=page_token
        )
        return self._failover.call_unary(
            lambda stub, timeout: stub.ListAccounts(request, timeout=timeout)
        )

    def _history_page(
        self, token: str, other_user: str, page_size: int, page_token: str, newest_first: bool
    ) -> chat_pb2.HistoryReply:
        request = chat_pb2.HistoryRequest(
            session_token=token,
            other_user=other_user,
            page_size=page_size,
            page_token=page_token,
            newest_first=newest_first,
        )
        return self._failover.call_unary(
            lambda stub, timeout: stub.History(request, timeout=timeout)
        )
