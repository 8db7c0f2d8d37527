"""Property: whatever commands clients send (valid or not, retried or with reused request ids),
the projections are exactly what replaying the log produces, a rejected command changes
nothing, and a retried request returns its first result and appends nothing.

A plain in-memory model runs beside the real ChatService and predicts every outcome."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import eventlog
from projections import rebuild
from replica.chat.service import LoginResult
from replica.errors import (
    AlreadyExists,
    ChatError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from tests.conftest import DatabaseFactory
from tests.inprocess import InProcessReplica, Snapshot, reset_database, snapshot

NAMES = ["alice", "bob", "Carol", "dave"]  # Carol: the canonical name is lower-case
BAD_NAMES = ["", "bad name", "x'; DROP TABLE accounts; --"]
PASSWORDS = ["pw-1", "pw-2"]
BODIES = ["hi", "'; DELETE FROM messages; --", "é" * 2048]  # the last: exactly 4096 bytes
BAD_BODIES = ["", "x" * 4097]
FORGED_TOKEN = "0" * 32 + "." + "f" * 64
UNKNOWN_MESSAGE_ID = 10**9

EXAMPLES = {"sqlite": 40, "mysql": 25}
STEPS = 30


@dataclass
class Model:
    passwords: dict[str, str] = field(default_factory=dict)  # live accounts
    sessions: dict[str, str] = field(default_factory=dict)  # live token -> username
    tokens: list[str] = field(default_factory=list)  # every token ever issued
    inbox: dict[int, tuple[str, bool]] = field(default_factory=dict)  # id -> (recipient, acked)
    senders: dict[int, str] = field(default_factory=dict)  # message id -> sender's name

    def undelivered(self, name: str) -> list[int]:
        return sorted(i for i, (to, acked) in self.inbox.items() if to == name and not acked)

    def unread_by_sender(self, name: str) -> tuple[tuple[str, int], ...]:
        counts = Counter(self.senders[i] for i in self.undelivered(name))
        return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class Done:
    """A command that appended an event: what to call to retry it, and its first result."""

    request_id: str
    retry: Callable[[], Any]
    result: Any
    expect_on_retry: Callable[[], Any]  # the result a retry must return now (or an error type)


def canonical(name: str) -> str:
    return name.strip().lower()


class ChatMachine(RuleBasedStateMachine):
    """The chat service's commands in any order, each checked against the model's
    prediction; at every step the projections must be what the model holds, and at the end
    a replay of the log (into a fresh database, and in place) must give the same tables.
    The databases and the outcome counter are class attributes: machine_for sets them."""

    engine: ClassVar[sa.Engine]  # where the replica writes
    copy: ClassVar[sa.Engine]  # where the log is replayed at the end
    outcomes: ClassVar[Counter[tuple[str, str]]]  # (command, "ok" or the error) counted

    def __init__(self) -> None:
        super().__init__()
        reset_database(self.engine)
        self.replica = InProcessReplica.start(self.engine)
        self.chat = self.replica.service
        self.model = Model()
        self.done: list[Done] = []
        self.ids = itertools.count(1)

    def new_request_id(self) -> str:
        return f"req-{next(self.ids)}"

    # -- running a command against the model's prediction ----------------------------

    def run(
        self, command: str, call: Callable[[], Any], expected: type[ChatError] | None
    ) -> tuple[bool, Any]:
        """Run `call`; an error must be the expected one and change nothing. Returns
        (appended, result)."""
        before = snapshot(self.engine)
        try:
            result = call()
        except ChatError as exc:
            self.outcomes[(command, exc.__class__.__name__)] += 1
            assert expected is not None and isinstance(exc, expected), (
                f"unexpected {exc.__class__.__name__}: {exc}"
            )
            self.assert_same(before, snapshot(self.engine), "a rejected command")
            return False, None
        assert expected is None, f"expected {expected.__name__}, got {result!r}"
        self.outcomes[(command, "ok")] += 1
        after = snapshot(self.engine)
        appended = after.log_end.seq - before.log_end.seq
        assert appended in (0, 1)
        return appended == 1, result

    @staticmethod
    def assert_same(before: Snapshot, after: Snapshot, what: str) -> None:
        assert after.log_end == before.log_end, f"{what} appended to the log"
        assert after.tables == before.tables, f"{what} changed the projections"

    def remember(
        self,
        request_id: str,
        retry: Callable[[], Any],
        result: Any,
        expect_on_retry: Callable[[], Any] | None = None,
        retry_now: bool = False,
    ) -> None:
        done = Done(request_id, retry, result, expect_on_retry or (lambda: result))
        self.done.append(done)
        if retry_now:
            self.check_retry(done)

    def check_retry(self, done: Done) -> None:
        self.outcomes[("retry", "ok")] += 1
        expected = done.expect_on_retry()
        before = snapshot(self.engine)
        if isinstance(expected, type) and issubclass(expected, ChatError):
            try:
                done.retry()
            except expected:
                pass
            else:
                raise AssertionError(f"a retry of {done.request_id} did not fail")
        else:
            assert done.retry() == expected
        self.assert_same(before, snapshot(self.engine), "a retried request")

    @staticmethod
    def draw(data: st.DataObject, likely: list[Any], anything: list[Any], label: str) -> Any:
        """Mostly one of the `likely` choices (those that can succeed), so that commands
        get past their checks often enough; otherwise anything."""
        if likely and data.draw(st.integers(0, 3), label=f"{label}: likely?") < 3:
            return data.draw(st.sampled_from(likely), label=label)
        return data.draw(st.sampled_from(anything), label=label)

    def draw_token(self, data: st.DataObject) -> str:
        live = list(self.model.sessions)
        return self.draw(data, live, [*self.model.tokens, FORGED_TOKEN], "token")

    # -- rules -----------------------------------------------------------------------

    @initialize(
        names=st.lists(st.sampled_from(NAMES), min_size=2, max_size=3, unique_by=canonical),
        password=st.sampled_from(PASSWORDS),
    )
    def start(self, names: list[str], password: str) -> None:
        """Every example starts with a few users logged in and one message sent, so that
        later commands get past their checks often enough."""
        assert snapshot(self.engine).log_end.seq == 1  # the epoch marker
        for name in names:
            self.register(name, password, retry_now=False)
            self.do_login(name, password, retry_now=False)
        self.do_send(self.model.tokens[0], names[1], "welcome", retry_now=False)

    @rule(
        name=st.sampled_from(NAMES + BAD_NAMES),
        password=st.sampled_from([*PASSWORDS, ""]),
        retry_now=st.booleans(),
    )
    def register(self, name: str, password: str, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        if name in BAD_NAMES or not password:
            expected: type[ChatError] | None = InvalidArgument
        elif canonical(name) in m.passwords:
            expected = AlreadyExists
        else:
            expected = None
        call = lambda: self.chat.register(request_id, name, password)  # noqa: E731
        appended, result = self.run("register", call, expected)
        if expected is None:
            assert appended and result == canonical(name)
            m.passwords[result] = password
            self.remember(request_id, call, result, retry_now=retry_now)

    @rule(data=st.data(), retry_now=st.booleans())
    def login(self, data: st.DataObject, retry_now: bool) -> None:
        name, password = self.draw(
            data,
            list(self.model.passwords.items()),
            [(n, p) for n in NAMES + BAD_NAMES[:2] for p in PASSWORDS],
            "name, password",
        )
        self.do_login(name, password, retry_now)

    def do_login(self, name: str, password: str, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        user = canonical(name)
        if name in BAD_NAMES:
            expected: type[ChatError] | None = InvalidArgument
        elif m.passwords.get(user) != password:
            expected = Unauthenticated
        else:
            expected = None
        call = lambda: self.chat.login(request_id, name, password)  # noqa: E731
        appended, result = self.run("login", call, expected)
        if expected is None:
            assert appended and isinstance(result, LoginResult)
            assert result.username == user
            assert result.undelivered_count == len(m.undelivered(user))
            assert result.unread_by_sender == m.unread_by_sender(user)
            m.sessions[result.session_token] = user
            m.tokens.append(result.session_token)

            def on_retry() -> Any:
                # The password is checked again first; then the first session comes back
                # with the inbox count of now.
                if m.passwords.get(user) != password:
                    return Unauthenticated
                return LoginResult(
                    result.session_token,
                    user,
                    len(m.undelivered(user)),
                    m.unread_by_sender(user),
                )

            self.remember(request_id, call, result, on_retry, retry_now=retry_now)

    @rule(data=st.data(), retry_now=st.booleans())
    def logout(self, data: st.DataObject, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        token = self.draw_token(data)
        expected = None if token in m.sessions else Unauthenticated
        call = lambda: self.chat.logout(request_id, token)  # noqa: E731
        appended, _ = self.run("logout", call, expected)
        if expected is None:
            assert appended
            del m.sessions[token]
            self.remember(request_id, call, None, retry_now=retry_now)

    @rule(data=st.data(), retry_now=st.booleans())
    def send(self, data: st.DataObject, retry_now: bool) -> None:
        token = self.draw_token(data)
        recipient = self.draw(data, list(self.model.passwords), NAMES + BAD_NAMES[1:], "recipient")
        body = self.draw(data, BODIES, BODIES + BAD_BODIES, "body")
        self.do_send(token, recipient, body, retry_now)

    def do_send(self, token: str, recipient: str, body: str, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        expected: type[ChatError] | None
        if token == FORGED_TOKEN:
            expected = Unauthenticated
        elif recipient in BAD_NAMES or body in BAD_BODIES:
            expected = InvalidArgument
        elif token not in m.sessions:
            expected = Unauthenticated
        elif canonical(recipient) not in m.passwords:
            expected = NotFound
        else:
            expected = None
        call = lambda: self.chat.send(request_id, token, recipient, body)  # noqa: E731
        appended, message_id = self.run("send", call, expected)
        if expected is None:
            assert appended
            m.inbox[message_id] = (canonical(recipient), False)
            m.senders[message_id] = m.sessions[token]
            self.remember(request_id, call, message_id, retry_now=retry_now)

    @rule(data=st.data(), retry_now=st.booleans())
    def ack(self, data: st.DataObject, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        with_mail = [t for t, u in m.sessions.items() if m.undelivered(u)]
        token = self.draw(data, with_mail, [*m.tokens, FORGED_TOKEN], "token")
        user = m.sessions.get(token)
        mine = [i for i, (to, _) in m.inbox.items() if to == user]
        ids = self.draw(
            data,
            [[i] for i in mine] + [mine[:3]] if mine else [],
            [[], [UNKNOWN_MESSAGE_ID], *([i] for i in m.inbox), list(m.inbox)[:3]],
            "message_ids",
        )
        expected: type[ChatError] | None
        if token == FORGED_TOKEN:
            expected = Unauthenticated
        elif not ids:
            expected = InvalidArgument
        elif user is None:
            expected = Unauthenticated
        elif any(m.inbox.get(i, ("", False))[0] != user for i in ids):
            expected = NotFound
        else:
            expected = None
        call = lambda: self.chat.ack(request_id, token, ids)  # noqa: E731
        appended, count = self.run("ack", call, expected)
        if expected is None:
            newly = {i for i in ids if not m.inbox[i][1]}
            assert count == len(newly)
            assert appended == bool(newly)
            for i in newly:
                m.inbox[i] = (m.inbox[i][0], True)
            if appended:
                self.remember(request_id, call, count, retry_now=retry_now)

    @rule(data=st.data(), retry_now=st.booleans())
    def delete_account(self, data: st.DataObject, retry_now: bool) -> None:
        request_id = self.new_request_id()
        m = self.model
        token = self.draw_token(data)
        user = m.sessions.get(token)
        right = [m.passwords[user]] if user is not None else []
        password = self.draw(data, right, PASSWORDS, "password")
        if user is None or m.passwords[user] != password:
            expected: type[ChatError] | None = Unauthenticated
        else:
            expected = None
        call = lambda: self.chat.delete_account(request_id, token, password)  # noqa: E731
        appended, _ = self.run("delete_account", call, expected)
        if expected is None:
            assert appended
            del m.passwords[user]
            m.sessions = {t: u for t, u in m.sessions.items() if u != user}
            m.inbox = {i: v for i, v in m.inbox.items() if v[0] != user}
            self.remember(request_id, call, None, retry_now=retry_now)

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def retry_later(self, data: st.DataObject) -> None:
        """Any earlier request, retried with its request_id after other commands."""
        self.check_retry(data.draw(st.sampled_from(self.done), label="retried"))

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def reuse_request_id(self, data: st.DataObject) -> None:
        """An earlier request_id sent with a different request."""
        done = data.draw(st.sampled_from(self.done), label="reused")
        before = snapshot(self.engine)
        try:
            self.chat.register(done.request_id, "reused-id", "pw")
        except InvalidArgument as exc:
            assert "request_id was already used" in str(exc)
        else:
            raise AssertionError(f"reusing {done.request_id} was accepted")
        self.assert_same(before, snapshot(self.engine), "a reused request_id")

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def projections_match_the_model(self) -> None:
        m = self.model
        assert self.chat.list_accounts("*", 0, "").items == sorted(m.passwords)
        tables = snapshot(self.engine).tables
        names = {row[0]: row[1] for row in tables["accounts"]}
        assert {(row[0], names[row[1]]) for row in tables["sessions"]} == {
            (token.partition(".")[0], user) for token, user in m.sessions.items()
        }
        assert {row[0]: (row[4], bool(row[7])) for row in tables["messages"]} == m.inbox

    def teardown(self) -> None:
        live = snapshot(self.engine)
        # Replayed into a fresh database...
        reset_database(self.copy)
        with self.engine.connect() as src, self.copy.begin() as dst:
            eventlog.append_events(dst, eventlog.read_events(src, 0, 1_000_000))
            assert rebuild(dst, batch_size=7) == live.log_end.seq
        assert snapshot(self.copy) == live
        # ...and in place.
        with self.engine.begin() as conn:
            rebuild(conn)
        assert snapshot(self.engine) == live


def machine_for(
    engine: sa.Engine, copy: sa.Engine, outcomes: Counter[tuple[str, str]]
) -> type[RuleBasedStateMachine]:
    """ChatMachine on these databases, counting into `outcomes`."""
    attributes = {"engine": engine, "copy": copy, "outcomes": outcomes}
    return type("ChatMachineOn", (ChatMachine,), attributes)


def test_projections_are_a_replay_of_the_log(backend: str, databases: DatabaseFactory) -> None:
    outcomes: Counter[tuple[str, str]] = Counter()
    machine = machine_for(databases.engine(), databases.engine(), outcomes)
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=EXAMPLES[backend], stateful_step_count=STEPS, deadline=None),
    )
    # Every kind of command succeeded somewhere, so the properties were really exercised.
    commands = {"register", "login", "logout", "send", "ack", "delete_account", "retry"}
    assert {c for c, outcome in outcomes if outcome == "ok"} >= commands, sorted(outcomes.items())


def test_reset_database_leaves_nothing_for_the_next_example(databases: DatabaseFactory) -> None:
    engine = databases.engine()
    InProcessReplica.start(engine).service.register("r-1", "leftover", "pw")
    reset_database(engine)
    emptied = snapshot(engine)
    assert emptied.log_end.seq == 0
    assert emptied.tables == {name: [] for name in emptied.tables}
    assert len(emptied.tables) == 5  # accounts, sessions, messages, position, membership
