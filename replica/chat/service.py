"""Chat commands and queries: validated input in, events out, replies derived from events.

A reply is always computed from the event that was stored, so a retried request (same
request_id) gets the first result even on another replica after a failover."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from eventlog import Event
from projections import queries as q
from projections.events import (
    AccountDeleted,
    AccountRegistered,
    ChatEvent,
    MessagesAcked,
    MessageSent,
    SessionClosed,
    SessionOpened,
    decode,
    encode,
)
from protos.wire import UNDELIVERED_COUNT_CAP
from replica.chat import validation as v
from replica.chat.passwords import hash_password, verify_password
from replica.chat.tokens import SessionTokens
from replica.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from replica.storage.writer import LogWriter, NewEvent

# Each check runs in the writer's transaction, after the request was validated.
_WRONG_LOGIN = "wrong username or password"
_SESSION_ENDED = "your session has ended (logged out or account deleted); log in"
# A scrypt hash takes 16 MiB and releases the GIL: without a bound, a burst of logins on a
# thousand gRPC threads would take gigabytes. More than the cores gain nothing anyway.
DEFAULT_PASSWORD_WORKERS = 4
DEFAULT_MAX_SESSIONS_PER_ACCOUNT = 100


@dataclass(frozen=True)
class LoginResult:
    session_token: str
    username: str
    undelivered_count: int
    unread_by_sender: tuple[tuple[str, int], ...] = ()  # most first


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str


class ChatService:
    def __init__(
        self,
        engine: sa.Engine,
        writer: LogWriter,
        tokens: SessionTokens,
        committed_seq: Callable[[], int],
        *,
        hash_password: Callable[[str], str] = hash_password,
        password_workers: int = DEFAULT_PASSWORD_WORKERS,
        max_sessions_per_account: int = DEFAULT_MAX_SESSIONS_PER_ACCOUNT,
        min_password_length: int = v.MIN_PASSWORD_CHARS,
    ) -> None:
        if max_sessions_per_account < 1:
            raise ValueError("max_sessions_per_account must be at least 1")
        self._min_password = min_password_length
        self._engine = engine
        self._writer = writer
        self._tokens = tokens
        self._committed_seq = committed_seq
        self._hash_password = hash_password
        self._password_slots = threading.BoundedSemaphore(password_workers)
        self._max_sessions = max_sessions_per_account

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        # Watched like every other operation on the database: a primary whose clients' reads
        # are all stuck (a frozen database) must notice it as well as when a write is.
        with self._writer.watch.operation(), self._engine.connect() as conn:
            yield conn

    # -- commands ------------------------------------------------------------------------

    def register(self, request_id: str, username: str, password: str) -> str:
        request_id = v.request_id(request_id)
        name = v.username(username)
        v.password(password)
        if len(password) < self._min_password:
            # Only new passwords: accounts registered under an older rule still log in.
            raise InvalidArgument(
                f"password is {len(password)} characters; at least {self._min_password} please"
            )
        with self._password_slots:
            password_hash = self._hash_password(password)

        def decide(conn: sa.Connection) -> NewEvent:
            if self._writer.directory.account(conn, name) is not None:
                raise AlreadyExists(f"username {name!r} is taken; choose another")
            return _new(AccountRegistered(name, password_hash))

        _, registered = self._write(
            request_id,
            decide,
            AccountRegistered,
            {"username": name},
            # A retry repeats the password too; another password is another request.
            same_request=lambda first: (
                isinstance(first, AccountRegistered) and self._verify(password, first.password_hash)
            ),
        )
        assert isinstance(registered, AccountRegistered)
        return registered.username

    def login(self, request_id: str, username: str, password: str) -> LoginResult:
        request_id = v.request_id(request_id)
        name = v.username(username)
        v.password(password)
        with self._read() as conn:
            account = q.find_account(conn, name)
        # Same message for an unknown user and a wrong password: names are not probed here.
        if account is None or not self._verify(password, account.password_hash):
            raise Unauthenticated(_WRONG_LOGIN)
        session_id = self._tokens.new_session_id()

        def decide(conn: sa.Connection) -> NewEvent:
            current = self._writer.directory.account(conn, name)
            if current is None or current.account_id != account.account_id:
                raise Unauthenticated(_WRONG_LOGIN)
            # Sessions never expire, and a client that lost its token cannot log it out: at
            # the cap the oldest sessions end (refusing the login would lock the user out).
            open_ids = q.open_session_ids(conn, account.account_id)
            excess = len(open_ids) + 1 - self._max_sessions
            closes = tuple(open_ids[:excess]) if excess > 0 else ()
            return _new(SessionOpened(session_id, account.account_id, name, closes))

        _, opened = self._write(request_id, decide, SessionOpened, {"username": name})
        assert isinstance(opened, SessionOpened)
        with self._read() as conn:
            senders = q.unread_by_sender(
                conn, account.account_id, self._committed_seq(), UNDELIVERED_COUNT_CAP
            )
        return LoginResult(
            self._tokens.token_for(opened.session_id),
            name,
            sum(senders.values()),
            tuple(senders.items()),
        )

    def logout(self, request_id: str, token: str) -> None:
        request_id = v.request_id(request_id)
        session_id = self._session_id(token)

        def decide(conn: sa.Connection) -> NewEvent:
            account = self._writer_account_in(conn, session_id)
            return _new(SessionClosed(session_id, account.account_id))

        self._write(request_id, decide, SessionClosed, {"session_id": session_id})

    def send(self, request_id: str, token: str, recipient: str, body: str) -> int:
        request_id = v.request_id(request_id)
        session_id = self._session_id(token)
        to = v.username(recipient, "recipient")
        text = v.body(body)

        def decide(conn: sa.Connection) -> NewEvent:
            sender = self._writer_account_in(conn, session_id)
            target = self._writer.directory.account(conn, to)
            if target is None:
                raise NotFound(f"user {to!r} does not exist")
            return _new(
                MessageSent(
                    sender.account_id,
                    sender.username,
                    target.account_id,
                    target.username,
                    text,
                    session_id,
                )
            )

        event, _ = self._write(
            request_id,
            decide,
            MessageSent,
            {"recipient": to, "body": text},
            session_id=session_id,
            reads_inboxes=False,  # sessions and accounts only
        )
        return event.seq

    def ack(self, request_id: str, token: str, message_ids: list[int]) -> int:
        request_id = v.request_id(request_id)
        session_id = self._session_id(token)
        ids = v.message_ids(message_ids)
        # The count of newly acked ids; recomputed here for a duplicate request.
        newly: list[int] = []

        def decide(conn: sa.Connection) -> NewEvent | None:
            account = self._writer_account_in(conn, session_id)
            found = q.inbox_ids(conn, account.account_id, ids)
            missing = [i for i in ids if i not in found or i > self._committed_seq()]
            if missing:
                shown = ", ".join(str(i) for i in missing[:5])
                raise NotFound(f"message(s) {shown} are not in your inbox")
            newly.extend(i for i in ids if not found[i])
            if not newly:
                return None
            return _new(MessagesAcked(account.account_id, tuple(newly), tuple(ids), session_id))

        outcome = self._writer.execute(request_id, decide)
        if outcome.event is None:
            return 0
        first = self._check_same_request(outcome.event, MessagesAcked, {})
        assert isinstance(first, MessagesAcked)
        if outcome.duplicate:
            # A retry is the same session's (its token still names the session after a
            # logout) with the same ids; message_ids holds only those newly acked, so older
            # events without requested_ids are checked against it as a subset.
            same_ids = (
                list(first.requested_ids) == ids
                if first.requested_ids is not None
                else set(first.message_ids) <= set(ids)
            )
            if first.session_id != session_id or not same_ids:
                raise InvalidArgument(_REUSED_ID)
        return len(first.message_ids)

    def delete_account(self, request_id: str, token: str, password: str) -> None:
        request_id = v.request_id(request_id)
        session_id = self._session_id(token)
        with self._read() as conn:
            account = q.find_session_account(conn, session_id)
        # No account: the session is gone, possibly with the account this very request deleted;
        # then the writer finds the request_id and returns the first result (decide() is not
        # called for a logged request_id), otherwise decide() reports the ended session.
        if account is not None and not self._verify(password, account.password_hash):
            raise Unauthenticated("wrong password: the account was not deleted")

        def decide(conn: sa.Connection) -> NewEvent:
            current = self._writer_account_in(conn, session_id)
            if account is None or current.account_id != account.account_id:
                raise Unauthenticated("session expired; log in again")
            return _new(AccountDeleted(account.account_id, account.username, session_id))

        self._write(request_id, decide, AccountDeleted, {"session_id": session_id})

    # -- queries -------------------------------------------------------------------------

    def authenticate(self, token: str) -> q.Account:
        session_id = self._session_id(token)
        with self._read() as conn:
            return self._account_in(conn, session_id)

    def list_accounts(self, pattern: str, page_size: int, page_token: str) -> Page:
        like = v.like_pattern(pattern)
        size = v.page_size(page_size)
        after = v.username_page_token(page_token)
        with self._read() as conn:
            names = q.list_usernames(conn, like, after, size + 1)
        more = len(names) > size
        names = names[:size]
        return Page(names, names[-1] if more else "")

    def history(
        self,
        token: str,
        other_user: str,
        page_size: int,
        page_token: str,
        *,
        newest_first: bool = False,
    ) -> Page:
        """A page of the conversation: oldest first after the token's message, or newest
        first before it."""
        other = v.username(other_user, "other_user")
        size = v.page_size(page_size)
        mark = v.message_page_token(page_token)
        session_id = self._session_id(token)
        with self._read() as conn:
            me = self._account_in(conn, session_id)
            them = q.find_account(conn, other)
            if them is None:
                raise NotFound(f"user {other!r} does not exist")
            committed = self._committed_seq()
            if newest_first:  # going back from before the page token's message
                after, up_to = 0, min(committed, mark - 1) if mark else committed
            else:
                after, up_to = mark, committed
            found = q.conversation(
                conn,
                me.account_id,
                them.account_id,
                after,
                up_to,
                size + 1,
                newest_first=newest_first,
            )
        more = len(found) > size
        found = found[:size]
        return Page(found, str(found[-1].message_id) if more else "")

    def committed_seq(self) -> int:
        return self._committed_seq()

    def undelivered(self, account_id: int, after_id: int, limit: int) -> list[q.StoredMessage]:
        return self.undelivered_through(account_id, after_id, limit)[0]

    def undelivered_through(
        self, account_id: int, after_id: int, limit: int
    ) -> tuple[list[q.StoredMessage], int]:
        """undelivered(), and the commit point it read up to: a page shorter than `limit`
        holds every undelivered message after `after_id` up to that seq."""
        committed = self._committed_seq()
        with self._read() as conn:
            return q.undelivered(conn, account_id, after_id, committed, limit), committed

    def session_valid(self, session_id: str) -> bool:
        with self._read() as conn:
            return q.find_session_account(conn, session_id) is not None

    # -- helpers -------------------------------------------------------------------------

    def _session_id(self, token: str) -> str:
        session_id = self._tokens.session_id_of(token) if token else None
        if session_id is None:
            raise Unauthenticated("not logged in: the session token is missing or invalid")
        return session_id

    @staticmethod
    def _account_in(conn: sa.Connection, session_id: str) -> q.Account:
        account = q.find_session_account(conn, session_id)
        if account is None:
            raise Unauthenticated(_SESSION_ENDED)
        return account

    def _writer_account_in(self, conn: sa.Connection, session_id: str) -> q.Account:
        """_account_in for a decide (in the writer's transaction): through its directory."""
        account = self._writer.directory.session_account(conn, session_id)
        if account is None:
            raise Unauthenticated(_SESSION_ENDED)
        return account

    def _verify(self, password: str, password_hash: str) -> bool:
        with self._password_slots:
            return verify_password(password, password_hash)

    def _write(
        self,
        request_id: str,
        decide: Callable[[sa.Connection], NewEvent | None],
        kind: type[ChatEvent],
        expected: dict[str, Any],
        *,
        session_id: str | None = None,
        same_request: Callable[[ChatEvent], bool] | None = None,
        reads_inboxes: bool = True,
    ) -> tuple[Event, ChatEvent]:
        """Run the command; for a request_id already in the log, its first result, provided
        the request is the same (a `kind` event whose fields match `expected`, the same
        session, and whatever `same_request` checks). The logged event, and it typed."""
        outcome = self._writer.execute(request_id, decide, reads_inboxes=reads_inboxes)
        if outcome.event is None:
            raise Unavailable("the command produced no event")  # decide() never returns None here
        if not outcome.duplicate:
            return outcome.event, decode(outcome.event)
        typed = self._check_same_request(outcome.event, kind, expected)
        # Events logged before they carried the session are taken to be the same session's.
        first_session = getattr(typed, "session_id", None)
        if session_id is not None and first_session not in (None, session_id):
            raise InvalidArgument(_REUSED_ID)
        if same_request is not None and not same_request(typed):
            raise InvalidArgument(_REUSED_ID)
        return outcome.event, typed

    @staticmethod
    def _check_same_request(
        event: Event, kind: type[ChatEvent], expected: dict[str, Any]
    ) -> ChatEvent:
        """The logged event, typed -- InvalidArgument unless it is a `kind` whose fields
        match `expected` (a request id reused for another request)."""
        typed = decode(event)
        if not isinstance(typed, kind) or any(
            getattr(typed, k) != val for k, val in expected.items()
        ):
            raise InvalidArgument(_REUSED_ID)
        return typed


def _new(event: ChatEvent) -> NewEvent:
    return NewEvent(*encode(event))


_REUSED_ID = "request_id was already used for a different request; generate a new one"


def sent_at_unix_ms(when: dt.datetime) -> int:
    return int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


__all__ = ["ChatService", "LoginResult", "Page", "sent_at_unix_ms"]
