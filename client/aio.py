"""AsyncChatClient: the chat API for asyncio programs, on grpc.aio -- with the same settings,
failover, retries, request ids, typed errors and plain results as ChatClient.

Every call is a coroutine that retries across replicas until `settings.timeout`: a replica
that answers "not primary" names the primary (or its ClusterStatus does), a replica that is
down or slow is left for the next, a mutating call keeps one request id through its retries
(so a retry after a failover is applied once). Each try is bounded by
`settings.attempt_timeout`; unlike the threaded client there is no liveness watchdog -- a
replica that stops answering mid-call costs that attempt's timeout. A subscription is an
async iterator that follows the primary across failovers. Sends, acks and subscriptions go
over one Session stream per login (AsyncSessionStream, as ChatClient's) unless
`settings.session_stream` is False or the replica has no Session method.

    async with AsyncChatClient(servers) as chat:
        await chat.login("alice", "correct horse")
        await chat.send("bob", "hello")
        async for item in chat.subscribe():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from client.channels import OWN_SUBCHANNELS
from client.errors import ChatError, ChatUnavailableError, NotLoggedInError
from client.failover import (
    Retries,
    from_service,
    give_up,
    primary_address_in,
    primary_named_by,
    retryable,
)
from client.library import LoginResult, Session
from client.models import ClusterStatus, Message
from client.session import UNARY_CALLS, StreamBroke, request_error, stream_broke
from client.settings import ClientHooks, ClientSettings
from client.subscription import SubscriptionItem, accept
from protos import chat_pb2, chat_pb2_grpc
from protos.wire import MAX_ACK_IDS

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
# The generated stub is untyped; its calls return grpc.aio call objects.
Stub = Any
Attempt = Callable[[Stub, float], Awaitable[Result]]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (the stream's end; not in the stubs)


class _Channels:
    """One grpc.aio channel per replica address, opened on first use."""

    def __init__(self, settings: ClientSettings) -> None:
        self._options = settings.channel_options
        self._credentials = (
            None
            if settings.root_certificates is None
            else grpc.ssl_channel_credentials(root_certificates=settings.root_certificates)
        )
        self._channels: dict[str, tuple[grpc.aio.Channel, Stub]] = {}
        self._renewed: set[str] = set()  # addresses whose channels have subchannels of their own
        self.closed = False

    @property
    def uses_tls(self) -> bool:
        return self._credentials is not None

    def stub(self, address: str) -> Stub:
        if self.closed:
            raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
        entry = self._channels.get(address)
        if entry is None:
            options = self._options + ((OWN_SUBCHANNELS,) if address in self._renewed else ())
            channel = (
                grpc.aio.insecure_channel(address, options=options)
                if self._credentials is None
                else grpc.aio.secure_channel(address, self._credentials, options=options)
            )
            entry = self._channels[address] = (channel, chat_pb2_grpc.ChatStub(channel))  # type: ignore[no-untyped-call]
        return entry[1]

    async def renew(self, address: str, stub: Stub) -> None:
        """As ChannelPool.renew: close the channel behind `stub` if it is still the one kept
        for `address`; the next one connects afresh, on subchannels of its own."""
        self._renewed.add(address)
        entry = self._channels.get(address)
        if entry is not None and entry[1] is stub:
            del self._channels[address]
            await entry[0].close(None)

    async def close(self) -> None:
        self.closed = True
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close(None)


class _Failover:
    """Runs an attempt against replicas until one (the primary) answers; the asyncio twin of
    client.failover.Failover's retry loop (the same rules, without its liveness watchdog)."""

    def __init__(
        self, addresses: Sequence[str], settings: ClientSettings, hooks: ClientHooks
    ) -> None:
        if not addresses:
            raise ValueError("at least one replica address is needed")
        self.addresses = tuple(addresses)
        self.channels = _Channels(settings)
        self._settings = settings
        self._hooks = hooks
        self._preferred = self.addresses[0]
        self.connected: str | None = None
        self._closed = asyncio.Event()

    async def close(self) -> None:
        self._closed.set()
        await self.channels.close()

    async def pause(self, seconds: float) -> None:
        if self._hooks.sleep is not None:
            slept = self._hooks.sleep(seconds)  # (a test's: plain, or a coroutine function)
            if inspect.isawaitable(slept):
                await slept
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    async def call(
        self,
        attempt: Attempt[Result],
        *,
        timeout: float | None = None,
        retries: Retries | None = None,
    ) -> Result:
        """As Failover.call (`retries`: a fresh one to keep what the attempts learn in)."""
        settings, clock = self._settings, self._hooks.clock
        deadline = clock() + (settings.timeout if timeout is None else timeout)
        delays = settings.backoff.delays()
        address = self._preferred
        call = Retries(round_start=address) if retries is None else retries
        call.round_start = address
        while True:
            if self._closed.is_set():
                raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
            remaining = deadline - clock()
            if remaining <= 0 and call.attempts > 0:
                raise call.give_up(self.addresses)
            call.tried.add(address)
            call.attempts += 1
            stub = self.channels.stub(address)
            try:
                result = await attempt(stub, min(remaining, settings.attempt_timeout))
            except asyncio.CancelledError:
                if self._closed.is_set():  # (close() cancelled the call under way)
                    raise ChatError(grpc.StatusCode.CANCELLED, "client closed") from None
                raise
            except grpc.aio.AioRpcError as error:
                if not retryable(error):
                    raise ChatError.from_rpc_error(error) from None
                call.failed(error, address, uses_tls=self.channels.uses_tls)
                hint = await self._primary_hint(error, address, remaining)
            else:
                self._record_success(address, announce=call.told)
                return result
            if hint is not None:
                call.round_start = call.named = hint
            afresh = call.named if hint is not None else address
            if afresh is not None and call.try_afresh(afresh):
                await self.channels.renew(
                    afresh, stub if afresh == address else self.channels.stub(afresh)
                )
                address = afresh
                continue
            following = hint if hint is not None and call.follows(hint) else None
            following = following or self._next_untried(address, call.tried)
            if following is None:
                # Every replica failed this round: pause, then start over.
                remaining = deadline - clock()
                if call.end_round(remaining, self.addresses):
                    self._tell_unreachable(remaining)
                await self.pause(min(next(delays), remaining))
                call.next_round()
                following = call.round_start
            address = following

    async def _primary_hint(
        self, error: grpc.aio.AioRpcError, address: str, remaining: float
    ) -> str | None:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return None
        named = primary_named_by(error)
        if named is not None:
            return named
        try:
            status = await self.channels.stub(address).ClusterStatus(
                chat_pb2.ClusterStatusRequest(),
                timeout=max(0.0, min(remaining, self._settings.attempt_timeout)),
            )
        except grpc.aio.AioRpcError as failed:
            logger.debug("ClusterStatus at %s failed: %s", address, failed.code().name)
            return None
        return primary_address_in(status)

    def follow(self, error: grpc.aio.AioRpcError, address: str | None = None) -> None:
        """As Failover.follow: a stream outside call(), on `address`, ended with `error`."""
        named = primary_named_by(error)
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION and named is not None:
            self._preferred = named
        elif address is not None and not from_service(error) and self._preferred == address:
            self._preferred = self._next_untried(address, {address}) or address

    def _next_untried(self, after: str, tried: set[str]) -> str | None:
        start = self.addresses.index(after) + 1 if after in self.addresses else 0
        order = [
            self.addresses[(start + i) % len(self.addresses)] for i in range(len(self.addresses))
        ]
        return next((a for a in order if a not in tried), None)

    def _record_success(self, address: str, *, announce: bool) -> None:
        self._preferred = address
        changed, self.connected = address != self.connected, address
        if (changed or announce) and self._hooks.on_replica_change is not None:
            self._hooks.on_replica_change(address)

    def _tell_unreachable(self, remaining: float) -> None:
        if self._hooks.on_unreachable is None:
            return
        how_long = "" if remaining == math.inf else f" for up to {max(1, round(remaining))} s"
        self._hooks.on_unreachable(
            f"no replica answers at {', '.join(self.addresses)}; still trying{how_long}"
        )


class AsyncSubscription:
    """Messages and CaughtUp markers as they come (`async for`), reconnecting to the primary
    when the stream breaks; a message already yielded is not yielded again. `cancel()` ends
    it; a ChatError ends it for a refused subscription or when no primary answers within
    `reconnect_timeout` seconds."""

    def __init__(
        self, failover: _Failover, session_token: str, *, reconnect_timeout: float | None
    ) -> None:
        self._failover = failover
        self._request = chat_pb2.SubscribeRequest(session_token=session_token, batches=True)
        self._reconnect_timeout = reconnect_timeout
        self._cancelled = False
        self._call: Any = None
        self._last_yielded_id = 0
        self._items = self._follow()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> SubscriptionItem:
        return await self._items.__anext__()

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def _follow(self) -> AsyncIterator[SubscriptionItem]:
        while not self._cancelled:
            try:
                call, first = await self._failover.call(self._open, timeout=self._reconnect_timeout)
            except (ChatError, asyncio.CancelledError):
                if self._cancelled:  # (cancel() ended the stream being opened)
                    return
                raise
            try:
                reply = first
                while reply is not _EOF:
                    items, self._last_yielded_id = accept(reply, self._last_yielded_id)
                    for item in items:
                        yield item
                    reply = await call.read()
            except grpc.aio.AioRpcError as error:
                if self._cancelled:
                    return
                if not retryable(error):
                    raise ChatError.from_rpc_error(error) from None
                logger.info("subscription broke (%s); reconnecting", error.code().name)
            except asyncio.CancelledError:
                if self._cancelled:
                    return
                raise
            else:
                logger.info("server ended the subscription; reconnecting")
                await self._failover.pause(0.1)  # (an at once ending stream is no busy loop)
            finally:
                call.cancel()

    async def _open(self, stub: Stub, attempt_timeout: float) -> tuple[Any, Any]:
        """Open the stream; its first item (a message or CaughtUp) must come within the
        attempt's timeout, or the replica is hung and another one is asked."""
        if self._cancelled:
            raise ChatError(grpc.StatusCode.CANCELLED, "subscription cancelled")
        call = stub.Subscribe(self._request)
        self._call = call
        try:
            first = await asyncio.wait_for(call.read(), attempt_timeout)
        except TimeoutError:
            call.cancel()
            raise _Hung() from None
        except BaseException:
            call.cancel()
            raise
        return call, first


class _Hung(grpc.aio.AioRpcError):
    """A stream whose first item did not come in time: retried like a deadline."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "no first item in time",
            "",
        )


class AsyncSessionStream:
    """The asyncio twin of client.session.SessionStream: one logged-in client's Session
    stream, its sends and acks pipelined (each awaiting its result by correlation id), the
    pushed messages handed to its subscriptions. The same fast path, never the only one: once
    an attempt to open it failed or it broke, a request waiting on it carries on as its unary
    call (same request id), and so does one that finds it closed while it opens again (at once
    if a subscriber listens, else by the next request). Used from one event loop."""

    def __init__(
        self, failover: _Failover, session_token: str, settings: ClientSettings, hooks: ClientHooks
    ) -> None:
        self.session_token = session_token
        self._failover = failover
        self._settings = settings
        self._clock = hooks.clock
        self._pending: dict[int, tuple[chat_pb2.SessionRequest, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self._limit = 1  # until the replica has said its bound
        self._room = asyncio.Event()  # set whenever a place may have come free
        self._wanted = asyncio.Event()  # set whenever the stream may be needed (see _follow)
        self._want_open = False  # a request found the stream closed: open it
        self._fresh = True  # until an attempt to open it fails or it breaks (SessionStream's)
        self._outbox: asyncio.Queue[chat_pb2.SessionRequest | None] | None = None
        self._call: Any = None
        self._error: ChatError | None = None
        self._closed = False
        self._subscribers: list[AsyncSessionSubscription] = []
        self._reader = asyncio.get_running_loop().create_task(self._run())

    @property
    def ended(self) -> bool:
        return self._error is not None

    async def close(self) -> None:
        self._closed = True
        self._wanted.set()
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChatError):
            await self._reader
        self._end(ChatError(grpc.StatusCode.CANCELLED, "client closed"))

    async def request(self, kind: str, message: Any) -> chat_pb2.SessionReply:
        """As SessionStream.request: the result, or the ChatError a unary call would raise."""
        deadline = self._clock() + self._settings.timeout
        delays = self._settings.backoff.delays()
        while True:
            reply = await self._once(kind, message, deadline)
            if reply is None:
                return await self._unary(kind, message, deadline)
            if reply.WhichOneof("item") != "error":
                return reply
            error = request_error(reply.error)
            remaining = deadline - self._clock()
            if error.code is not grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                raise error
            await self._failover.pause(min(next(delays), remaining))

    async def _once(self, kind: str, message: Any, deadline: float) -> chat_pb2.SessionReply | None:
        """The request's reply on the stream, or None if it is to go unary (the stream failed
        under it, or is closed after a failure)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._outbox is None:
                self._want_open = True
                self._wanted.set()
                if not self._fresh:
                    return None
            if len(self._pending) < self._limit:
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._unavailable()
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
        request = chat_pb2.SessionRequest(correlation_id=next(self._ids), **{kind: message})
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request.correlation_id] = (request, answered)
        if self._outbox is not None:
            self._outbox.put_nowait(request)
        self._wanted.set()
        try:
            return await asyncio.wait_for(asyncio.shield(answered), deadline - self._clock())
        except StreamBroke:
            return None
        except TimeoutError:
            self._pending.pop(request.correlation_id, None)
            self._room.set()
            raise self._unavailable() from None

    async def _unary(self, kind: str, message: Any, deadline: float) -> chat_pb2.SessionReply:
        """As SessionStream's: the request as its unary call, within what is left of its
        deadline."""
        method, request_type = UNARY_CALLS[kind]
        request = request_type()
        request.CopyFrom(message)
        request.session_token = self.session_token

        def attempt(stub: Stub, timeout: float) -> Awaitable[Any]:
            call: Awaitable[Any] = getattr(stub, method)(request, timeout=timeout)
            return call

        reply = await self._failover.call(attempt, timeout=max(0.0, deadline - self._clock()))
        return chat_pb2.SessionReply(**{kind: reply})

    def _unavailable(self) -> ChatUnavailableError:
        """As SessionStream's: the error a request on an open stream that did not answer ends
        with at its deadline."""
        return give_up(self._failover.addresses, False, None, {})

    def subscribe(
        self, reconnect_timeout: float | None, fallback: Callable[[], AsyncSubscription]
    ) -> AsyncSessionSubscription:
        subscription = AsyncSessionSubscription(self, reconnect_timeout, fallback)
        if self._error is not None:
            subscription.fail(self._error)
            return subscription
        self._subscribers.append(subscription)
        if len(self._subscribers) == 1 and self._outbox is not None:
            self._outbox.put_nowait(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=True)))
        self._wanted.set()
        return subscription

    def unsubscribe(self, subscription: AsyncSessionSubscription) -> None:
        if subscription not in self._subscribers:
            return
        self._subscribers.remove(subscription)
        if not self._subscribers and self._outbox is not None:
            self._outbox.put_nowait(chat_pb2.SessionRequest(pushes=chat_pb2.SetPushes(on=False)))

    async def _run(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never leave callers waiting on a dead reader
            logger.exception("the session stream's reader failed")
            self._end(ChatError(grpc.StatusCode.UNKNOWN, f"the session stream failed: {exc!r}"))
            raise

    async def _follow(self) -> None:
        while not self._closed:
            # As SessionStream's: an idle stream is opened again only by its next request.
            while not (self._closed or self._want_open or self._pending or self._subscribers):
                self._wanted.clear()
                await self._wanted.wait()
            if self._closed:
                return
            self._want_open = False
            waits = [s.reconnect_timeout for s in self._subscribers]
            reconnect = max(
                (self._settings.timeout if w is None else w for w in waits), default=None
            )
            try:
                call = await self._failover.call(self._open, timeout=reconnect)
            except ChatError as error:
                self._end(error)
                return
            address = self._failover.connected
            try:
                while (reply := await call.read()) is not _EOF:
                    self._accept(reply)
            except grpc.aio.AioRpcError as error:
                if self._closed:
                    return
                if not (retryable(error) or stream_broke(error)):
                    self._end(ChatError.from_rpc_error(error))
                    return
                self._failover.follow(error, address)
                logger.info(
                    "session stream broke (%s); %d requests go on as unary calls",
                    error.code().name,
                    len(self._pending),
                )
            else:
                logger.info("the replica ended the session stream")
                await self._failover.pause(0.1)
            finally:
                if self._outbox is not None:
                    self._outbox.put_nowait(None)
                self._outbox = None
                self._call = None
                self._hand_over_to_unary()
                call.cancel()

    def _hand_over_to_unary(self) -> None:
        """As SessionStream's: every request waiting on the failed stream goes on as its unary
        call, and so do later ones until it is open again."""
        self._fresh = False
        pending, self._pending = list(self._pending.values()), {}
        self._room.set()
        for _request, answered in pending:
            if not answered.done():
                answered.set_exception(StreamBroke())

    async def _open(self, stub: Stub, attempt_timeout: float) -> Any:
        try:
            return await self._open_on(stub, attempt_timeout)
        except BaseException:
            self._hand_over_to_unary()
            raise

    async def _open_on(self, stub: Stub, attempt_timeout: float) -> Any:
        if self._closed:
            raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
        outbox: asyncio.Queue[chat_pb2.SessionRequest | None] = asyncio.Queue()
        push = bool(self._subscribers)
        outbox.put_nowait(
            chat_pb2.SessionRequest(
                open=chat_pb2.SessionOpen(session_token=self.session_token, push=push)
            )
        )
        early = sorted(self._pending)  # the first ones right behind `open`, as SessionStream's
        for correlation_id in early:
            outbox.put_nowait(self._pending[correlation_id][0])

        async def requests() -> AsyncIterator[chat_pb2.SessionRequest]:
            while (request := await outbox.get()) is not None:
                yield request

        call = stub.Session(requests())
        self._call = call
        try:
            first = await asyncio.wait_for(call.read(), attempt_timeout)
        except TimeoutError:
            call.cancel()
            outbox.put_nowait(None)
            raise _Hung() from None
        except BaseException:
            call.cancel()
            outbox.put_nowait(None)
            raise
        if first is _EOF:
            outbox.put_nowait(None)
            raise _Hung()
        announced = first.opened.max_in_flight or self._settings.max_in_flight
        self._limit = min(self._settings.max_in_flight, announced)
        self._outbox = outbox
        self._want_open = False
        if bool(self._subscribers) != push:  # subscribed or cancelled while opening
            pushes = chat_pb2.SetPushes(on=bool(self._subscribers))
            outbox.put_nowait(chat_pb2.SessionRequest(pushes=pushes))
        for correlation_id in sorted(self._pending.keys() - early):  # came meanwhile
            outbox.put_nowait(self._pending[correlation_id][0])
        self._room.set()
        return call

    def _accept(self, reply: chat_pb2.SessionReply) -> None:
        if reply.correlation_id:
            entry = self._pending.pop(reply.correlation_id, None)
            self._room.set()
            if entry is not None and not entry[1].done():
                entry[1].set_result(reply)
            return
        if reply.HasField("push"):
            for subscription in list(self._subscribers):
                subscription.deliver(reply.push)

    def _end(self, error: ChatError) -> None:
        if self._error is None:
            self._error = error
        pending, self._pending = list(self._pending.values()), {}
        subscribers, self._subscribers = self._subscribers, []
        self._room.set()
        for _request, answered in pending:
            if not answered.done():
                answered.set_exception(error)
        for subscription in subscribers:
            subscription.fail(error)


_END: Any = object()


class AsyncSessionSubscription:
    """AsyncSubscription's items from a Session stream's pushes (see SessionSubscription);
    with a replica that has no Session method it carries on as `fallback()`."""

    def __init__(
        self,
        session: AsyncSessionStream,
        reconnect_timeout: float | None,
        fallback: Callable[[], AsyncSubscription],
    ) -> None:
        self.reconnect_timeout = reconnect_timeout
        self._session = session
        self._fallback = fallback
        self._instead: AsyncSubscription | None = None
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._last_yielded_id = 0
        self._finished = False

    def __aiter__(self) -> AsyncSessionSubscription:
        return self

    async def __anext__(self) -> SubscriptionItem:
        if self._instead is not None:
            return await self._instead.__anext__()
        if self._finished:
            raise StopAsyncIteration
        item = await self._items.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, ChatError):
            if item.code is grpc.StatusCode.UNIMPLEMENTED:
                self._instead = self._fallback()
                return await self._instead.__anext__()
            self._finished = True
            if item.code is grpc.StatusCode.CANCELLED:  # the client was closed
                raise StopAsyncIteration
            raise item
        return item  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._session.unsubscribe(self)
        if self._instead is not None:
            self._instead.cancel()
        self._items.put_nowait(_END)

    def deliver(self, push: chat_pb2.SubscribeReply) -> None:
        items, self._last_yielded_id = accept(push, self._last_yielded_id)
        for item in items:
            self._items.put_nowait(item)

    def fail(self, error: ChatError) -> None:
        self._items.put_nowait(error)


class AsyncChatClient:
    """ChatClient's API as coroutines, on grpc.aio (see the module's docstring). Not
    thread-safe: use it from one event loop."""

    def __init__(
        self,
        servers: Sequence[str],
        settings: ClientSettings | None = None,
        *,
        hooks: ClientHooks | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ClientSettings()
        self._hooks = hooks if hooks is not None else ClientHooks()
        self._failover = _Failover(servers, self.settings, self._hooks)
        self._session: Session | None = None
        self._unary = not self.settings.session_stream
        self._stream: AsyncSessionStream | None = None

    @property
    def connected_address(self) -> str | None:
        return self._failover.connected

    @property
    def session(self) -> Session | None:
        return self._session

    async def close(self) -> None:
        await self._end_stream()
        await self._failover.close()

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def register(self, username: str, password: str) -> str:
        request = chat_pb2.RegisterRequest(
            request_id=self._hooks.request_ids(), username=username, password=password
        )
        reply = await self._call("Register", request)
        return str(reply.username)

    async def login(self, username: str, password: str) -> LoginResult:
        request = chat_pb2.LoginRequest(
            request_id=self._hooks.request_ids(), username=username, password=password
        )
        reply = await self._call("Login", request)
        self._session = Session(reply.username, reply.session_token)
        await self._end_stream()
        return LoginResult(
            reply.username,
            reply.undelivered_count,
            tuple((s.sender, s.count) for s in reply.unread_by_sender),
        )

    async def logout(self) -> None:
        session, self._session = self._session, None
        await self._end_stream()
        if session is None:
            return
        request = chat_pb2.LogoutRequest(
            request_id=self._hooks.request_ids(), session_token=session.session_token
        )
        await self._call("Logout", request)

    async def list_accounts(self, pattern: str = "", *, page_size: int = 0) -> AsyncIterator[str]:
        page_token = ""
        while True:
            request = chat_pb2.ListAccountsRequest(
                pattern=pattern, page_size=page_size, page_token=page_token
            )
            page = await self._call("ListAccounts", request)
            for name in page.usernames:
                yield name
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def send(self, recipient: str, body: str) -> int:
        request_id = self._hooks.request_ids()
        stream = self._session_stream()
        if stream is not None:
            sent = chat_pb2.SendRequest(request_id=request_id, recipient=recipient, body=body)
            try:
                return int((await stream.request("send", sent)).send.message_id)
            except ChatError as exc:
                if not self._no_session_method(exc):
                    raise
        request = chat_pb2.SendRequest(
            request_id=request_id,
            session_token=self._token(),
            recipient=recipient,
            body=body,
        )
        reply = await self._call("Send", request)
        return int(reply.message_id)

    def subscribe(
        self, *, reconnect_timeout: float | None = None
    ) -> AsyncSubscription | AsyncSessionSubscription:
        token = self._token()
        stream = self._session_stream()

        def unary() -> AsyncSubscription:
            self._unary = True
            return AsyncSubscription(self._failover, token, reconnect_timeout=reconnect_timeout)

        if stream is None:
            return unary()
        return stream.subscribe(reconnect_timeout, unary)

    async def ack(self, message_ids: Iterable[int]) -> int:
        ids = list(message_ids)
        acked = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            request = chat_pb2.AckRequest(
                request_id=self._hooks.request_ids(),
                session_token=self._token(),
                message_ids=ids[start : start + MAX_ACK_IDS],
            )
            acked += await self._ack_once(request)
        return acked

    async def _ack_once(self, request: chat_pb2.AckRequest) -> int:
        stream = self._session_stream()
        if stream is not None:
            acked = chat_pb2.AckRequest(
                request_id=request.request_id, message_ids=request.message_ids
            )
            try:
                return int((await stream.request("ack", acked)).ack.acked_count)
            except ChatError as exc:
                if not self._no_session_method(exc):
                    raise
        reply = await self._call("Ack", request)
        return int(reply.acked_count)

    def _session_stream(self) -> AsyncSessionStream | None:
        """As ChatClient's: the session's stream, opened now if needed; None when unary."""
        if self._unary:
            return None
        token = self._token()
        stream = self._stream
        if stream is not None and not stream.ended and stream.session_token == token:
            return stream
        # (One that ended has no reader left; login and logout close theirs.)
        self._stream = AsyncSessionStream(self._failover, token, self.settings, self._hooks)
        return self._stream

    def _no_session_method(self, error: ChatError) -> bool:
        if error.code is not grpc.StatusCode.UNIMPLEMENTED:
            return False
        self._unary = True
        return True

    async def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def history(
        self, other_user: str, *, page_size: int = 0, newest_first: bool = False
    ) -> AsyncIterator[Message]:
        token, page_token = self._token(), ""
        while True:
            request = chat_pb2.HistoryRequest(
                session_token=token,
                other_user=other_user,
                page_size=page_size,
                page_token=page_token,
                newest_first=newest_first,
            )
            page = await self._call("History", request)
            for message in page.messages:
                yield Message.from_proto(message)
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def delete_account(self, password: str) -> None:
        request = chat_pb2.DeleteAccountRequest(
            request_id=self._hooks.request_ids(), session_token=self._token(), password=password
        )
        await self._call("DeleteAccount", request)
        self._session = None
        await self._end_stream()

    async def cluster_status(self) -> ClusterStatus:
        request = chat_pb2.ClusterStatusRequest()
        reply = await self._call("ClusterStatus", request)
        return ClusterStatus.from_proto(reply)

    async def _call(self, method: str, request: Any) -> Any:
        """The unary `method` with `request`, through failover."""

        def attempt(stub: Stub, timeout: float) -> Awaitable[Any]:
            call: Awaitable[Any] = getattr(stub, method)(request, timeout=timeout)
            return call

        return await self._failover.call(attempt)

    def _token(self) -> str:
        if self._session is None:
            raise NotLoggedInError
        return self._session.session_token


__all__ = [
    "AsyncChatClient",
    "AsyncSessionStream",
    "AsyncSessionSubscription",
    "AsyncSubscription",
    "ChatUnavailableError",
]
