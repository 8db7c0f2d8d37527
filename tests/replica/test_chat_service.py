"""ChatService and LogWriter in-process (no gRPC) on both backends.

Every rejected command is checked to append nothing and change no projection row."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

import eventlog
import projections
from projections import EventTypes, messages, sessions
from projections import queries as q
from replica.chat.passwords import verify_password
from replica.chat.service import ChatService
from replica.chat.tokens import SessionTokens
from replica.errors import (
    AlreadyExists,
    ChatError,
    InvalidArgument,
    NotFound,
    NotPrimary,
    Unauthenticated,
)
from replica.storage.role import Role
from replica.storage.writer import NewEvent
from tests.inprocess import (
    ADDRESSES,
    InProcessReplica,
    assert_unchanged,
    fast_hash_password,
    snapshot,
)
from testsupport.harness import wait_until

WRONG_LOGIN = "^wrong username or password$"
SESSION_ENDED = "your session has ended"


def rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def replica(engine: sa.Engine) -> InProcessReplica:
    return InProcessReplica.start(engine)


@pytest.fixture
def chat(replica: InProcessReplica) -> ChatService:
    return replica.service


@pytest.fixture
def login(chat: ChatService) -> Callable[[str], str]:
    """Register (if needed) and log in `name` with password "pw-<name>"; the session token."""

    def make(name: str) -> str:
        with contextlib.suppress(AlreadyExists):
            chat.register(rid(), name, f"pw-{name}")
        return chat.login(rid(), name, f"pw-{name}").session_token

    return make


def log_end(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return eventlog.last_position(conn).seq


def last_event(engine: sa.Engine) -> eventlog.Event:
    with engine.connect() as conn:
        seq = eventlog.last_position(conn).seq
        [event] = eventlog.read_events(conn, seq - 1, 1)
    return event


def rejected(
    engine: sa.Engine, error: type[ChatError], match: str, call: Callable[[], object]
) -> None:
    with assert_unchanged(engine), pytest.raises(error, match=match):
        call()


# -- start-up ------------------------------------------------------------------------------


def test_a_new_primary_writes_its_epoch_marker(
    engine: sa.Engine, replica: InProcessReplica
) -> None:
    event = last_event(engine)
    assert (event.seq, event.epoch, event.type) == (1, 1, EventTypes.EPOCH_STARTED)
    assert replica.commits.committed_seq == 1


# -- register ------------------------------------------------------------------------------


def test_register_stores_a_canonical_name_and_a_password_hash(
    engine: sa.Engine, chat: ChatService
) -> None:
    assert chat.register("r-1", " Alice ", "s3cret") == "alice"
    event = last_event(engine)
    assert (event.type, event.request_id, event.payload["username"]) == (
        EventTypes.ACCOUNT_REGISTERED,
        "r-1",
        "alice",
    )
    assert "s3cret" not in event.payload["password_hash"]
    assert verify_password("s3cret", event.payload["password_hash"])
    assert chat.list_accounts("*", 0, "").items == ["alice"]


def test_register_duplicate_name_in_any_case_is_rejected(
    engine: sa.Engine, chat: ChatService
) -> None:
    chat.register(rid(), "alice", "pw")
    for name in ("alice", "ALICE", " Alice"):
        rejected(
            engine,
            AlreadyExists,
            "^username 'alice' is taken",
            lambda name=name: chat.register(rid(), name, "x"),
        )


@pytest.mark.parametrize(
    ("request_id", "username", "password", "match"),
    [
        ("r", "bad name", "pw", "username 'bad name' is not valid"),
        ("r", "x'; DROP TABLE accounts; --", "pw", "is not valid"),
        ("r", "", "pw", "is not valid"),
        ("r", "alice", "", "password must not be empty"),
        ("r", "alice", "p" * 1025, "longer than 1024"),
        ("", "alice", "pw", "request_id must be"),
        ("has space", "alice", "pw", "request_id must be"),
    ],
)
def test_register_invalid_input_is_rejected(
    engine: sa.Engine, chat: ChatService, request_id: str, username: str, password: str, match: str
) -> None:
    rejected(engine, InvalidArgument, match, lambda: chat.register(request_id, username, password))


def test_register_retry_returns_the_first_result_and_appends_nothing(
    engine: sa.Engine, chat: ChatService
) -> None:
    assert chat.register("r-1", "Alice", "pw") == "alice"
    with assert_unchanged(engine):
        assert chat.register("r-1", "Alice", "pw") == "alice"
        assert chat.register("r-1", "alice", "pw") == "alice"
    # Another password is another request: "success" would leave its sender believing in a
    # password the account does not have.
    rejected(
        engine,
        InvalidArgument,
        "^request_id was already used for a different request",
        lambda: chat.register("r-1", "alice", "other password"),
    )


def test_reusing_a_request_id_for_another_request_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    chat.register("r-1", "alice", "pw")
    token = login("bob")
    reused = "^request_id was already used for a different request"
    rejected(engine, InvalidArgument, reused, lambda: chat.register("r-1", "carol", "pw"))
    rejected(engine, InvalidArgument, reused, lambda: chat.send("r-1", token, "alice", "hi"))
    rejected(engine, InvalidArgument, reused, lambda: chat.login("r-1", "bob", "pw-bob"))
    rejected(engine, InvalidArgument, reused, lambda: chat.logout("r-1", token))
    message_id = chat.send("r-2", token, "alice", "hi")
    rejected(engine, InvalidArgument, reused, lambda: chat.send("r-2", token, "alice", "other"))
    rejected(engine, InvalidArgument, reused, lambda: chat.send("r-2", token, "bob", "hi"))
    alice = chat.login(rid(), "alice", "pw").session_token
    rejected(engine, InvalidArgument, reused, lambda: chat.ack("r-1", alice, [message_id]))
    rejected(engine, InvalidArgument, reused, lambda: chat.delete_account("r-2", alice, "pw"))


# -- login / logout ------------------------------------------------------------------------


def test_login_returns_a_working_token(chat: ChatService) -> None:
    chat.register(rid(), "alice", "pw")
    result = chat.login(rid(), "ALICE", "pw")
    assert result.username == "alice"
    assert result.undelivered_count == 0
    assert chat.authenticate(result.session_token).username == "alice"


def test_login_wrong_password_or_unknown_user_is_rejected_alike(
    engine: sa.Engine, chat: ChatService
) -> None:
    chat.register(rid(), "alice", "pw")
    rejected(engine, Unauthenticated, WRONG_LOGIN, lambda: chat.login(rid(), "alice", "PW"))
    rejected(engine, Unauthenticated, WRONG_LOGIN, lambda: chat.login(rid(), "nobody", "pw"))
    rejected(engine, InvalidArgument, "not valid", lambda: chat.login(rid(), "a b", "pw"))
    rejected(engine, InvalidArgument, "must not be empty", lambda: chat.login(rid(), "alice", ""))


def test_login_retry_returns_the_same_token(engine: sa.Engine, chat: ChatService) -> None:
    chat.register(rid(), "alice", "pw")
    first = chat.login("login-1", "alice", "pw")
    with assert_unchanged(engine):
        assert chat.login("login-1", "alice", "pw") == first
    assert chat.login(rid(), "alice", "pw").session_token != first.session_token


def test_logout_ends_only_that_session(engine: sa.Engine, chat: ChatService) -> None:
    chat.register(rid(), "alice", "pw")
    chat.register(rid(), "bob", "pw")
    one = chat.login(rid(), "alice", "pw").session_token
    two = chat.login(rid(), "alice", "pw").session_token
    chat.logout("out-1", one)
    with assert_unchanged(engine):
        chat.logout("out-1", one)  # a retry
    rejected(engine, Unauthenticated, SESSION_ENDED, lambda: chat.logout(rid(), one))
    rejected(engine, Unauthenticated, SESSION_ENDED, lambda: chat.send(rid(), one, "bob", "x"))
    rejected(engine, Unauthenticated, SESSION_ENDED, lambda: chat.authenticate(one))
    assert chat.authenticate(two).username == "alice"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "0" * 32 + "." + "0" * 64, "x" * 97],
    ids=["empty", "garbage", "forged-mac", "no-dot"],
)
def test_invalid_tokens_are_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str], token: str
) -> None:
    login("bob")
    not_logged_in = "^not logged in: the session token is missing or invalid$"
    rejected(engine, Unauthenticated, not_logged_in, lambda: chat.send(rid(), token, "bob", "x"))
    rejected(engine, Unauthenticated, not_logged_in, lambda: chat.logout(rid(), token))
    rejected(engine, Unauthenticated, not_logged_in, lambda: chat.ack(rid(), token, [1]))
    rejected(engine, Unauthenticated, not_logged_in, lambda: chat.history(token, "bob", 0, ""))
    rejected(
        engine, Unauthenticated, not_logged_in, lambda: chat.delete_account(rid(), token, "pw")
    )


def test_a_token_signed_with_another_secret_is_rejected(
    engine: sa.Engine, replica: InProcessReplica, login: Callable[[str], str]
) -> None:
    token = login("alice")
    session_id = replica.tokens.session_id_of(token)
    assert session_id is not None
    forged = SessionTokens(b"some-other-cluster-secret").token_for(session_id)
    rejected(engine, Unauthenticated, "not logged in", lambda: replica.service.authenticate(forged))


# -- send ----------------------------------------------------------------------------------


def test_send_appends_a_message_event(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice = login("alice")
    login("bob")
    message_id = chat.send("s-1", alice, "BOB", "hello 👋")
    event = last_event(engine)
    assert event.seq == message_id
    assert event.payload == {
        "sender_id": event.payload["sender_id"],
        "sender": "alice",
        "recipient_id": event.payload["recipient_id"],
        "recipient": "bob",
        "body": "hello 👋",
        # So that a retry can be told from another session reusing the request id.
        "session_id": alice.partition(".")[0],
    }
    [message] = chat.undelivered(event.payload["recipient_id"], 0, 10)
    assert (message.message_id, message.sender, message.body) == (message_id, "alice", "hello 👋")
    with assert_unchanged(engine):
        assert chat.send("s-1", alice, "bob", "hello 👋") == message_id


def test_send_bad_input_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice = login("alice")
    login("bob")

    def send(recipient: str, body: str) -> Callable[[], object]:
        return lambda: chat.send(rid(), alice, recipient, body)

    rejected(engine, NotFound, "^user 'nobody' does not exist$", send("nobody", "hi"))
    rejected(engine, InvalidArgument, "^message is 4097 bytes", send("bob", "x" * 4097))
    rejected(engine, InvalidArgument, "^message is 4098 bytes", send("bob", "é" * 2049))
    rejected(engine, InvalidArgument, "must not be empty", send("bob", ""))
    rejected(engine, InvalidArgument, "^recipient 'b ob' is not valid", send("b ob", "hi"))
    rejected(engine, InvalidArgument, "is not valid", send("bob' OR '1'='1", "hi"))
    rejected(engine, InvalidArgument, "request_id", lambda: chat.send("", alice, "bob", "hi"))
    # The limit itself is fine, in bytes.
    assert chat.send(rid(), alice, "bob", "€" * 1365 + "x") > 0


def test_sql_in_a_body_is_stored_verbatim(chat: ChatService, login: Callable[[str], str]) -> None:
    alice, bob = login("alice"), login("bob")
    body = "'); DELETE FROM accounts; -- %_\\"
    chat.send(rid(), alice, "bob", body)
    [message] = chat.history(bob, "alice", 0, "").items
    assert message.body == body
    assert chat.list_accounts("*", 0, "").items == ["alice", "bob"]


# -- ack -----------------------------------------------------------------------------------


def test_ack_marks_own_messages_delivered(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob = login("alice"), login("bob")
    bob_id = chat.authenticate(bob).account_id
    ids = [chat.send(rid(), alice, "bob", f"m{i}") for i in range(3)]
    assert chat.login(rid(), "bob", "pw-bob").undelivered_count == 3
    assert chat.ack("ack-1", bob, [ids[0], ids[2], ids[0]]) == 2
    assert [m.message_id for m in chat.undelivered(bob_id, 0, 10)] == [ids[1]]
    assert chat.login(rid(), "bob", "pw-bob").undelivered_count == 1
    with assert_unchanged(engine):
        assert chat.ack("ack-1", bob, [ids[0], ids[2]]) == 2  # a retry: the first result
        assert chat.ack(rid(), bob, [ids[0]]) == 0  # already acked: nothing to append


def test_ack_of_a_message_not_in_the_inbox_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob = login("alice"), login("bob")
    login("carol")
    to_bob = chat.send(rid(), alice, "bob", "for bob")
    to_carol = chat.send(rid(), alice, "carol", "for carol")
    not_yours = "^message\\(s\\) {} are not in your inbox$"
    # Someone else's message, one's own sent message, a mix, a made-up id, a non-message event.
    rejected(engine, NotFound, not_yours.format(to_carol), lambda: chat.ack(rid(), bob, [to_carol]))
    rejected(engine, NotFound, not_yours.format(to_bob), lambda: chat.ack(rid(), alice, [to_bob]))
    rejected(
        engine,
        NotFound,
        not_yours.format(to_carol),
        lambda: chat.ack(rid(), bob, [to_bob, to_carol]),
    )
    rejected(engine, NotFound, not_yours.format(999), lambda: chat.ack(rid(), bob, [999]))
    rejected(engine, NotFound, not_yours.format(1), lambda: chat.ack(rid(), bob, [1]))
    rejected(engine, InvalidArgument, "must not be empty", lambda: chat.ack(rid(), bob, []))
    rejected(engine, InvalidArgument, "positive", lambda: chat.ack(rid(), bob, [0]))
    assert chat.ack(rid(), bob, [to_bob]) == 1


# -- history -------------------------------------------------------------------------------


def test_history_pages_through_one_conversation(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob = login("alice"), login("bob")
    login("carol")
    sent = []
    for i in range(7):
        sender, to = (alice, "bob") if i % 2 == 0 else (bob, "alice")
        sent.append(chat.send(rid(), sender, to, f"m{i}"))
        chat.send(rid(), alice, "carol", f"not in this conversation {i}")

    pages = []
    token = ""
    while True:
        page = chat.history(alice, "bob", 3, token)
        pages.append([m.message_id for m in page.items])
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert pages == [sent[0:3], sent[3:6], sent[6:7]]
    everything = chat.history(bob, "ALICE", 0, "").items
    assert [m.message_id for m in everything] == sent
    assert [m.body for m in everything] == [f"m{i}" for i in range(7)]
    assert [(m.sender, m.recipient) for m in everything[:2]] == [
        ("alice", "bob"),
        ("bob", "alice"),
    ]
    # An exactly full last page has no next token.
    assert chat.history(alice, "bob", 7, "").next_page_token == ""
    assert chat.history(alice, "bob", 6, "").next_page_token == str(sent[5])

    pages, token = [], ""
    while True:  # newest first, going back page by page
        page = chat.history(alice, "bob", 3, token, newest_first=True)
        pages.append([m.message_id for m in page.items])
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert pages == [sent[6:3:-1], sent[3:0:-1], sent[0:1]]

    rejected(
        engine,
        NotFound,
        "^user 'nobody' does not exist$",
        lambda: chat.history(alice, "nobody", 0, ""),
    )
    rejected(engine, InvalidArgument, "page_token", lambda: chat.history(alice, "bob", 0, "x"))
    rejected(
        engine, InvalidArgument, "above the limit", lambda: chat.history(alice, "bob", 1001, "")
    )


# -- list ----------------------------------------------------------------------------------


def test_list_accounts_patterns_and_pages(engine: sa.Engine, chat: ChatService) -> None:
    names = ["a_b", "axb", "alice", "al", "bob", "user1", "user2", "user10", "u.x", "u-x"]
    for name in names:
        chat.register(rid(), name, "pw")

    def listed(pattern: str, page_size: int = 0) -> list[str]:
        out: list[str] = []
        token = ""
        while True:
            page = chat.list_accounts(pattern, page_size, token)
            assert len(page.items) <= (page_size or 100)
            out += page.items
            if not page.next_page_token:
                return out
            assert page.next_page_token == page.items[-1]
            token = page.next_page_token

    assert listed("*") == sorted(names)
    assert listed("") == sorted(names)
    assert listed("*", 3) == sorted(names)
    assert listed("*", 1) == sorted(names)
    assert chat.list_accounts("*", 3, "").items == sorted(names)[:3]
    assert listed("a_b") == ["a_b"]  # '_' is literal...
    assert listed("a?b") == ["a_b", "axb"]  # ...'?' is one character
    assert listed("al*") == ["al", "alice"]
    assert listed("user?") == ["user1", "user2"]
    assert listed("user*", 2) == ["user1", "user10", "user2"]
    assert listed("U.X") == ["u.x"]  # '.' is literal too
    assert listed("*x") == ["u-x", "u.x"]
    assert listed("*x*") == ["axb", "u-x", "u.x"]
    assert listed("nobody*") == []
    assert chat.list_accounts("*", 0, "bob").items == ["u-x", "u.x", "user1", "user10", "user2"]

    with assert_unchanged(engine):
        for pattern in ("%", "a%", "[a-z]*", "' OR '1'='1", "*; DROP TABLE accounts"):
            with pytest.raises(InvalidArgument, match="usernames only use"):
                chat.list_accounts(pattern, 0, "")
        with pytest.raises(InvalidArgument, match="page_token"):
            chat.list_accounts("*", 0, "' OR 1=1")
        with pytest.raises(InvalidArgument, match="above the limit"):
            chat.list_accounts("*", 1001, "")


# -- delete account ------------------------------------------------------------------------


def test_delete_account_semantics(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, alice_too, bob = login("alice"), login("alice"), login("bob")
    bob_id = chat.authenticate(bob).account_id
    old_alice_id = chat.authenticate(alice).account_id
    from_alice = [chat.send(rid(), alice, "bob", f"from alice {i}") for i in range(2)]
    to_alice = chat.send(rid(), bob, "alice", "to alice")

    rejected(
        engine,
        Unauthenticated,
        "^wrong password: the account was not deleted$",
        lambda: chat.delete_account(rid(), alice, "wrong"),
    )

    before = snapshot(engine)
    chat.delete_account("del-1", alice, "pw-alice")
    event = last_event(engine)
    assert (event.seq, event.type) == (before.log_end.seq + 1, EventTypes.ACCOUNT_DELETED)
    assert event.payload["account_id"] == old_alice_id

    # A retry is answered with the first result, although the session is gone.
    with assert_unchanged(engine):
        chat.delete_account("del-1", alice, "pw-alice")

    assert_sessions_ended(engine, chat, old_alice_id, [alice, alice_too])
    assert_inbox_gone_and_sent_kept(engine, chat, old_alice_id, bob, bob_id, from_alice)
    assert_name_gone(engine, chat, bob)
    assert_name_registers_afresh(engine, chat, old_alice_id, bob, to_alice)


def assert_sessions_ended(
    engine: sa.Engine, chat: ChatService, account_id: int, tokens: list[str]
) -> None:
    """Every session of the deleted account is gone."""
    for token in tokens:
        rejected(
            engine, Unauthenticated, SESSION_ENDED, lambda token=token: chat.authenticate(token)
        )
        rejected(
            engine,
            Unauthenticated,
            SESSION_ENDED,
            lambda token=token: chat.send(rid(), token, "bob", "x"),
        )
        rejected(
            engine,
            Unauthenticated,
            SESSION_ENDED,
            lambda token=token: chat.delete_account(rid(), token, "pw-alice"),
        )
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).where(sessions.c.account_id == account_id)
            ).scalar_one()
            == 0
        )


def assert_inbox_gone_and_sent_kept(
    engine: sa.Engine,
    chat: ChatService,
    account_id: int,
    bob: str,
    bob_id: int,
    sent_to_bob: list[int],
) -> None:
    """The deleted account's inbox is gone; what it sent stays with the recipient, still
    undelivered, and can be acked."""
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(messages.c.message_id).where(messages.c.recipient_id == account_id)
            ).all()
            == []
        )
    assert [m.message_id for m in chat.undelivered(bob_id, 0, 10)] == sent_to_bob
    assert chat.login(rid(), "bob", "pw-bob").undelivered_count == 2
    assert chat.ack(rid(), bob, sent_to_bob) == 2


def assert_name_gone(engine: sa.Engine, chat: ChatService, bob: str) -> None:
    """The deleted name cannot log in or be sent to, and is not listed."""
    rejected(engine, Unauthenticated, WRONG_LOGIN, lambda: chat.login(rid(), "alice", "pw-alice"))
    rejected(
        engine, NotFound, "user 'alice' does not exist", lambda: chat.send(rid(), bob, "alice", "x")
    )
    assert chat.list_accounts("*", 0, "").items == ["bob"]


def assert_name_registers_afresh(
    engine: sa.Engine, chat: ChatService, old_account_id: int, bob: str, sent_to_old: int
) -> None:
    """The deleted name can be registered again: a new account that sees none of the old
    one's history."""
    chat.register(rid(), "alice", "new password")
    new_alice = chat.login(rid(), "alice", "new password")
    assert new_alice.undelivered_count == 0
    assert chat.authenticate(new_alice.session_token).account_id != old_account_id
    assert chat.history(new_alice.session_token, "bob", 0, "").items == []
    assert chat.history(bob, "alice", 0, "").items == []
    assert chat.undelivered(chat.authenticate(new_alice.session_token).account_id, 0, 10) == []
    rejected(
        engine,
        NotFound,
        "not in your inbox",
        lambda: chat.ack(rid(), new_alice.session_token, [sent_to_old]),
    )
    new_message = chat.send(rid(), bob, "alice", "welcome back")
    assert [m.message_id for m in chat.history(new_alice.session_token, "bob", 0, "").items] == [
        new_message
    ]


# -- role ----------------------------------------------------------------------------------


def test_a_replica_that_is_not_primary_refuses_writes(
    engine: sa.Engine, replica: InProcessReplica
) -> None:
    chat = replica.service
    chat.register(rid(), "alice", "pw")
    replica.role.set(Role.SECONDARY, 1, 2)
    with (
        assert_unchanged(engine),
        pytest.raises(NotPrimary, match="replica 0 is not the primary") as info,
    ):
        chat.register(rid(), "bob", "pw")
    assert info.value.primary_address == ADDRESSES[2]
    # Reads still work.
    assert chat.list_accounts("*", 0, "").items == ["alice"]
    assert log_end(engine) == 2


def test_an_ack_request_id_reused_by_another_user_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob, carol = login("alice"), login("bob"), login("carol")
    to_bob = chat.send(rid(), alice, "bob", "for bob")
    chat.send(rid(), alice, "carol", "for carol")
    assert chat.ack("ack-1", bob, [to_bob]) == 1
    rejected(engine, InvalidArgument, "request_id", lambda: chat.ack("ack-1", carol, [to_bob]))
    assert chat.ack("ack-1", bob, [to_bob]) == 1  # the owner's retry still gets its result


def test_a_send_request_id_reused_by_another_session_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob = login("alice"), login("bob")
    login("carol")
    message_id = chat.send("send-1", alice, "carol", "hi")
    # Same recipient and body: before, bob got alice's message id as if he had sent it.
    rejected(engine, InvalidArgument, "request_id", lambda: chat.send("send-1", bob, "carol", "hi"))
    # Alice in another session is another sender too (a retry reuses its request, token and all).
    other_alice = chat.login(rid(), "alice", "pw-alice").session_token
    rejected(
        engine,
        InvalidArgument,
        "request_id",
        lambda: chat.send("send-1", other_alice, "carol", "hi"),
    )
    chat.logout(rid(), bob)
    rejected(engine, InvalidArgument, "request_id", lambda: chat.send("send-1", bob, "carol", "hi"))
    chat.logout(rid(), alice)
    with assert_unchanged(engine):
        assert chat.send("send-1", alice, "carol", "hi") == message_id  # the owner's retry


def test_an_ack_request_id_reused_for_other_ids_is_rejected(
    engine: sa.Engine, chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, bob = login("alice"), login("bob")
    first, second, third = (chat.send(rid(), alice, "bob", f"m{i}") for i in range(3))
    assert chat.ack(rid(), bob, [first]) == 1
    assert chat.ack("ack-1", bob, [first, second]) == 1  # the event holds only `second`
    with assert_unchanged(engine):
        assert chat.ack("ack-1", bob, [second, first, second]) == 1  # the same ids: a retry
    # Before, any superset of the newly acked ids passed as a retry: `third` stayed unacked
    # while the caller was told its ack went through.
    for other_ids in ([second, third], [second], [first, second, third]):
        rejected(
            engine, InvalidArgument, "request_id", lambda ids=other_ids: chat.ack("ack-1", bob, ids)
        )
    assert [m.message_id for m in chat.undelivered(login_account(chat, bob), 0, 10)] == [third]


def login_account(chat: ChatService, token: str) -> int:
    return chat.authenticate(token).account_id


def test_an_old_ack_event_without_the_requested_ids_is_still_a_retry(
    engine: sa.Engine, replica: InProcessReplica, login: Callable[[str], str]
) -> None:
    """Events logged before "requested_ids" existed: a retry is any superset of the ids."""
    chat = replica.service
    alice, bob = login("alice"), login("bob")
    message_id = chat.send(rid(), alice, "bob", "hi")
    account_id = login_account(chat, bob)
    session_id = replica.tokens.session_id_of(bob)
    replica.writer.execute(
        "old-ack",
        lambda conn: NewEvent(
            EventTypes.MESSAGES_ACKED,
            {"account_id": account_id, "message_ids": [message_id], "session_id": session_id},
        ),
    )
    with assert_unchanged(engine):
        assert chat.ack("old-ack", bob, [message_id]) == 1


class SessionCap:
    def __init__(self, replica: InProcessReplica, cap: int) -> None:
        self.chat = ChatService(
            replica.engine,
            replica.writer,
            replica.tokens,
            lambda: replica.commits.committed_seq,
            hash_password=fast_hash_password,
            min_password_length=1,
            max_sessions_per_account=cap,
        )


def test_a_login_beyond_the_session_cap_ends_the_oldest_session(
    engine: sa.Engine, replica: InProcessReplica
) -> None:
    chat = SessionCap(replica, 3).chat
    chat.register(rid(), "alice", "pw")
    chat.register(rid(), "bob", "pw")
    bob = chat.login(rid(), "bob", "pw").session_token
    tokens = [chat.login(rid(), "alice", "pw").session_token for _ in range(3)]
    assert last_event(engine).payload.get("closes") is None
    fourth = chat.login(rid(), "alice", "pw").session_token
    event = last_event(engine)
    assert event.payload["closes"] == [replica.tokens.session_id_of(tokens[0])]
    rejected(engine, Unauthenticated, SESSION_ENDED, lambda: chat.authenticate(tokens[0]))
    for token in (*tokens[1:], fourth, bob):
        assert chat.authenticate(token).username in ("alice", "bob")
    with engine.connect() as conn:
        alice_id = chat.authenticate(fourth).account_id
        assert len(q.open_session_ids(conn, alice_id)) == 3
    # Logins keep the account at the cap, oldest out first, whatever the number.
    more = [chat.login(rid(), "alice", "pw").session_token for _ in range(5)]
    for token in (*tokens, fourth, *more[:2]):
        rejected(engine, Unauthenticated, SESSION_ENDED, lambda t=token: chat.authenticate(t))
    for token in more[2:]:
        assert chat.authenticate(token).username == "alice"
    # The log says which sessions ended: replaying it gives the same sessions.
    before = snapshot(engine)
    with engine.begin() as conn:
        projections.rebuild(conn)
    assert snapshot(engine) == before


def test_the_session_cap_must_be_positive(replica: InProcessReplica) -> None:
    with pytest.raises(ValueError, match="max_sessions_per_account"):
        SessionCap(replica, 0)


def test_password_hashing_runs_at_most_password_workers_at_once(
    replica: InProcessReplica,
) -> None:
    """Each scrypt takes 16 MiB outside the GIL: a burst of registrations must queue."""
    active = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def slow_hash(password: str) -> str:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        release.wait(30)
        with lock:
            active -= 1
        return fast_hash_password(password)

    chat = ChatService(
        replica.engine,
        replica.writer,
        replica.tokens,
        lambda: replica.commits.committed_seq,
        hash_password=slow_hash,
        password_workers=2,
        min_password_length=1,
    )
    threads = [
        threading.Thread(target=chat.register, args=(rid(), f"user{i}", "pw")) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: active == 2, 10, "two hashes running")
    release.set()
    for thread in threads:
        thread.join(30)
    assert most == 2
    assert len(chat.list_accounts("user*", 0, "").items) == 6


def test_a_new_password_needs_the_minimum_length_an_old_one_still_logs_in(
    engine: sa.Engine,
) -> None:
    replica = InProcessReplica.start(engine)
    lenient = replica.service  # the tests' replica: min_password_length=1
    lenient.register("r-1", "old_timer", "short")
    strict = ChatService(
        replica.engine,
        replica.writer,
        replica.tokens,
        lambda: replica.commits.committed_seq,
        hash_password=fast_hash_password,
    )  # the product's default: 8
    with assert_unchanged(engine), pytest.raises(InvalidArgument) as refused:
        strict.register("r-2", "newcomer", "seven77")
    assert str(refused.value) == "password is 7 characters; at least 8 please"
    assert strict.register("r-3", "newcomer", "eight888") == "newcomer"
    assert strict.login("l-1", "old_timer", "short").username == "old_timer"


def test_login_says_who_the_unread_messages_are_from(
    chat: ChatService, login: Callable[[str], str]
) -> None:
    alice, carol = login("alice"), login("carol")
    login("bob")
    for token, n in ((alice, 1), (carol, 3)):
        for i in range(n):
            chat.send(rid(), token, "bob", f"m{i}")
    result = chat.login(rid(), "bob", "pw-bob")
    assert result.undelivered_count == 4
    assert result.unread_by_sender == (("carol", 3), ("alice", 1))  # most first
    assert chat.login(rid(), "alice", "pw-alice").unread_by_sender == ()


def test_a_clients_read_is_watched_like_every_operation_on_the_database(
    replica: InProcessReplica, login: Callable[[str], str]
) -> None:
    """A primary whose clients' reads are all stuck (a frozen database) must see it as it sees
    a stuck write: the storage watch counts the read while it waits."""
    token = login("watched")
    seen: list[float | None] = []
    real_connect = replica.engine.connect

    def connect() -> sa.Connection:
        seen.append(replica.writer.watch.busy_since())
        return real_connect()

    replica.engine.connect = connect  # type: ignore[method-assign]
    try:
        replica.service.authenticate(token)
    finally:
        replica.engine.connect = real_connect  # type: ignore[method-assign]
    assert seen and seen[0] is not None, "the read began outside the watch"
    assert replica.writer.watch.busy_since() is None
