"""AsyncChatClient: the chat API for asyncio programs, on grpc.aio -- with the same settings,
failover, retries, request ids, typed errors and plain results as ChatClient.

Every call is a coroutine that retries across replicas until `settings.timeout`: a replica
that answers "not primary" names the primary (or its ClusterStatus does), a replica that is
down or slow is left for the next, a mutating call keeps one request id through its retries
(so a retry after a failover is applied once). Each try is bounded by
`settings.attempt_timeout`; unlike the threaded client there is no liveness watchdog -- a
replica that stops answering mid-call costs that attempt's timeout. A subscription is an
async iterator that follows the primary across failovers.

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
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from client.errors import ChatError, ChatUnavailableError, NotLoggedInError
from client.failover import (
    Retries,
    primary_address_in,
    primary_named_by,
    retryable,
)
from client.library import LoginResult, Session
from client.models import ClusterStatus, Message
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
        self.closed = False

    @property
    def uses_tls(self) -> bool:
        return self._credentials is not None

    def stub(self, address: str) -> Stub:
        if self.closed:
            raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
        entry = self._channels.get(address)
        if entry is None:
            channel = (
                grpc.aio.insecure_channel(address, options=self._options)
                if self._credentials is None
                else grpc.aio.secure_channel(address, self._credentials, options=self._options)
            )
            entry = self._channels[address] = (channel, chat_pb2_grpc.ChatStub(channel))  # type: ignore[no-untyped-call]
        return entry[1]

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

    async def call(self, attempt: Attempt[Result], *, timeout: float | None = None) -> Result:
        settings, clock = self._settings, self._hooks.clock
        deadline = clock() + (settings.timeout if timeout is None else timeout)
        delays = settings.backoff.delays()
        address = self._preferred
        call = Retries(round_start=address)
        while True:
            if self._closed.is_set():
                raise ChatError(grpc.StatusCode.CANCELLED, "client closed")
            remaining = deadline - clock()
            if remaining <= 0 and call.attempts > 0:
                raise call.give_up(self.addresses)
            call.tried.add(address)
            call.attempts += 1
            try:
                result = await attempt(
                    self.channels.stub(address), min(remaining, settings.attempt_timeout)
                )
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
                call.round_start = hint
            following = hint if hint is not None and hint not in call.tried else None
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

    @property
    def connected_address(self) -> str | None:
        return self._failover.connected

    @property
    def session(self) -> Session | None:
        return self._session

    async def close(self) -> None:
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
        return LoginResult(
            reply.username,
            reply.undelivered_count,
            tuple((s.sender, s.count) for s in reply.unread_by_sender),
        )

    async def logout(self) -> None:
        session, self._session = self._session, None
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
        request = chat_pb2.SendRequest(
            request_id=self._hooks.request_ids(),
            session_token=self._token(),
            recipient=recipient,
            body=body,
        )
        reply = await self._call("Send", request)
        return int(reply.message_id)

    def subscribe(self, *, reconnect_timeout: float | None = None) -> AsyncSubscription:
        return AsyncSubscription(self._failover, self._token(), reconnect_timeout=reconnect_timeout)

    async def ack(self, message_ids: Iterable[int]) -> int:
        ids = list(message_ids)
        acked = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            request = chat_pb2.AckRequest(
                request_id=self._hooks.request_ids(),
                session_token=self._token(),
                message_ids=ids[start : start + MAX_ACK_IDS],
            )
            reply = await self._call("Ack", request)
            acked += int(reply.acked_count)
        return acked

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


__all__ = ["AsyncChatClient", "AsyncSubscription", "ChatUnavailableError"]
