"""Hypothesis fuzzing of every Chat RPC against a real replica process, through real gRPC.

A RuleBasedStateMachine keeps a plain in-memory model of accounts, sessions and inboxes beside
the server. Its rules send each RPC with values drawn from valid and hostile strategies (empty,
oversized, NUL bytes, unicode oddities, SQL and LIKE metacharacters, pathological wildcard
patterns, unknown ids, forged/stale/other users' tokens, reused request ids, extreme integers,
bytes that are not a valid message at all). For every call it checks that

- the status is the one the model expects: a refusal is one of the service's own codes, never
  UNKNOWN or INTERNAL, and its details are a short sentence meant for a person;
- a refused command changed nothing (the log's end and every projection row are the same), and
  an accepted one appended exactly the events it should;
- what a user reads (History, Subscribe, Login's count, ListAccounts) is what the model says:
  nobody sees, acks or deletes anyone else's data;
- a "control" user, untouched by the fuzzing, is served normally after every step.
"""

from __future__ import annotations

import itertools
import re
import string
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import MAX_ACK_IDS, MAX_PAGE_SIZE, REPLICA_MAX_MESSAGE_BYTES
from replica.storage.database import make_engine
from tests.inprocess import Snapshot, snapshot
from tests.integration.cluster_checks import db_url, wait_for_primary
from testsupport.harness import ClusterProcesses

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
RPC_TIMEOUT = 15.0
CONTROL_PASSWORD = "control password"
# The codes a refusal may carry; UNKNOWN and INTERNAL mean an unhandled failure.
PROPER_CODES = {
    Code.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.PERMISSION_DENIED,
    Code.FAILED_PRECONDITION,
    Code.RESOURCE_EXHAUSTED,
}
METHODS = (
    "Register",
    "Login",
    "Logout",
    "ListAccounts",
    "Send",
    "Ack",
    "History",
    "DeleteAccount",
    "ClusterStatus",
)
MAX_BODY_BYTES = 4096
MAX_PASSWORD_CHARS = 1024
MAX_PATTERN_CHARS = 64
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
PATTERN_CHARS = set(string.ascii_lowercase + string.digits + "_.-*?")


# -- the server ----------------------------------------------------------------------------


@dataclass
class Control:
    name: str
    token: str


@dataclass
class FuzzServer:
    cluster: ClusterProcesses
    engine: sa.Engine
    control: Control
    runs: Iterator[int] = field(default_factory=itertools.count)
    # (method, status code name) of every fuzzed call, to check what the run covered.
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def channel(self) -> grpc.Channel:
        return self.cluster.channel(0)

    @property
    def stub(self) -> Any:
        return chat_pb2_grpc.ChatStub(self.channel)

    def snapshot(self) -> Snapshot:
        return snapshot(self.engine)

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM events")).scalar())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    # Thousands of registrations and failed logins from one address: the rate limits (tested
    # in tests/replica/test_rate_limits.py) would make outcomes depend on the example's order.
    unlimited = {
        "registrations_per_address": 10**9,
        "failed_logins_per_address": 10**9,
        "failed_logins_per_account": 10**9,
    }
    cluster = ClusterProcesses(tmp_path_factory.mktemp("fuzz"), 1, settings=unlimited)
    engine: sa.Engine | None = None
    try:
        cluster.start(0)
        wait_for_primary(cluster)
        engine = make_engine(db_url(cluster, 0), create_database=False)
        stub = chat_pb2_grpc.ChatStub(cluster.channel(0))
        name = stub.Register(
            chat_pb2.RegisterRequest(
                request_id=uuid.uuid4().hex, username="control", password=CONTROL_PASSWORD
            ),
            timeout=RPC_TIMEOUT,
        ).username
        token = stub.Login(
            chat_pb2.LoginRequest(
                request_id=uuid.uuid4().hex, username=name, password=CONTROL_PASSWORD
            ),
            timeout=RPC_TIMEOUT,
        ).session_token
        yield FuzzServer(cluster, engine, Control(name, token))
    finally:
        if engine is not None:
            engine.dispose()
        cluster.close()


@dataclass(frozen=True)
class Outcome:
    code: Code
    details: str
    reply: Any = None


def call(server: FuzzServer, method: str, request: Any) -> Outcome:
    try:
        reply = getattr(server.stub, method)(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        error: Any = exc
        return Outcome(error.code(), error.details() or "")
    return Outcome(Code.OK, "", reply)


def raw_call(server: FuzzServer, method: str, payload: bytes) -> Outcome:
    """A request whose bytes are sent as they are (no client-side serialization)."""
    multicallable = server.channel.unary_unary(f"/chat.v1.Chat/{method}")
    try:
        reply = multicallable(payload, timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        error: Any = exc
        return Outcome(error.code(), error.details() or "")
    return Outcome(Code.OK, "", reply)


def check_refusal(outcome: Outcome, allowed: set[Code], what: str) -> None:
    assert outcome.code in allowed, (
        f"{what}: expected one of {sorted(c.name for c in allowed)}, "
        f"got {outcome.code.name}: {outcome.details!r}"
    )
    assert outcome.code in PROPER_CODES, f"{what}: {outcome.code.name} is not a proper refusal"
    check_sentence(outcome.details, what)


def check_sentence(details: str, what: str) -> None:
    """A message for a person: a few words, short, no stack trace or exception name."""
    assert details and details == details.strip(), f"{what}: details {details!r}"
    assert re.search(r"[A-Za-z]{2,} [A-Za-z]{2,}", details), f"{what}: details {details!r}"
    assert len(details) <= 600, f"{what}: details are {len(details)} characters long"
    for leak in ("Traceback", "Exception", "Error(", "sqlalchemy", "SELECT ", "INSERT "):
        assert leak not in details, f"{what}: details leak internals: {details!r}"


def rid() -> str:
    return uuid.uuid4().hex


# -- the model -----------------------------------------------------------------------------


@dataclass(eq=False)
class ModelAccount:
    name: str
    password: str
    alive: bool = True


@dataclass(eq=False)
class ModelMessage:
    message_id: int
    sender: ModelAccount
    recipient: ModelAccount
    body: str
    acked: bool = False
    gone: bool = False  # its recipient deleted the account


@dataclass(eq=False)
class ModelSession:
    token: str
    account: ModelAccount
    open: bool = True


@dataclass(frozen=True)
class Done:
    """A request that succeeded, kept to be repeated."""

    method: str
    request: Any
    reply: Any
    session: ModelSession | None


def canonical(name: str) -> str:
    return name.strip().lower() if name.isascii() else name


def valid_username(name: str) -> bool:
    return USERNAME_RE.fullmatch(canonical(name)) is not None


def valid_password(password: str) -> bool:
    return 0 < len(password) <= MAX_PASSWORD_CHARS


def valid_body(body: str) -> bool:
    return 0 < len(body.encode("utf-8")) <= MAX_BODY_BYTES and bool(body.strip())


def glob_matches(pattern: str, name: str) -> bool:
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in (pattern or "*").lower()
    )
    return re.fullmatch(regex, name, re.DOTALL) is not None


# -- strategies ----------------------------------------------------------------------------

POOL = ("ann", "bob", "cy")
SQL_TEXT = ("'; DROP TABLE accounts; --", "x' OR '1'='1", "%", "_", "\\", "\\%", '"', "`")
ODD_TEXT = (
    "\x00",
    "a\x00b",
    "\u202eevil",  # right-to-left override
    "\ufeff",
    "e\u0301",  # combining accent
    "\U0001f600",
    "\uffff",
    "\U0010ffff",
    "\u212a",  # KELVIN SIGN, lower-cases to ASCII 'k'
    "\uff41\uff4e\uff4e",  # full-width "ann"
    " \t\n",
)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SQL_TEXT + ODD_TEXT),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "é", "\x00", "*", "?"]), st.integers(0, 3000)
    ),
)

# ("pool", index, variant) names one of the run's own names, ("raw", text) is any text.
name_specs = st.one_of(
    st.tuples(
        st.just("pool"),
        st.integers(0, len(POOL) - 1),
        st.sampled_from(["exact", "upper", "padded", "unknown"]),
    ),
    st.tuples(st.just("raw"), hostile_text),
)
passwords = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["", "p" * MAX_PASSWORD_CHARS, "p" * (MAX_PASSWORD_CHARS + 1), "\x00"]),
    st.sampled_from(SQL_TEXT + ODD_TEXT),
)
bodies = st.one_of(
    st.text(min_size=0, max_size=30),
    st.sampled_from(SQL_TEXT + ODD_TEXT),
    st.sampled_from(
        [
            "x" * MAX_BODY_BYTES,
            "x" * (MAX_BODY_BYTES + 1),
            "é" * (MAX_BODY_BYTES // 2),
            "é" * (MAX_BODY_BYTES // 2 + 1),
            "\U0001f600" * (MAX_BODY_BYTES // 4 + 1),
            "y" * 1_000_000,
        ]
    ),
)
# ("session", n) is the n-th session the model knows (open or not); ("forged", kind, text).
FORGED_KINDS = (
    "empty",
    "text",
    "flipped-mac",
    "other-mac",
    "non-ascii-mac",
    "non-hex-id",
    "huge",
    "nul",
)
token_specs = st.one_of(
    st.tuples(st.just("session"), st.integers(0, 30)),
    st.tuples(st.just("forged"), st.sampled_from(FORGED_KINDS), hostile_text),
)
uint32s = st.one_of(
    st.integers(0, 12), st.sampled_from([MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1, 2**32 - 1])
)
# "valid" and "longest" become fresh ids (64 characters is the longest valid one).
request_ids = st.one_of(
    st.sampled_from(["valid", "longest"]),
    st.sampled_from(["", " ", "x" * 65, "a b", "é", "\x00", "'; --", "id\n"]),
)


# -- the state machine ---------------------------------------------------------------------


class ChatFuzz(RuleBasedStateMachine):
    server: FuzzServer  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        # The same length in every run: whether a name fits must not depend on the run.
        self.prefix = f"f{next(self.server.runs):06d}-"
        self.accounts: dict[str, ModelAccount] = {}  # alive ones, by name
        self.sessions: list[ModelSession] = []
        self.messages: list[ModelMessage] = []
        self.done: list[Done] = []

    # -- helpers -------------------------------------------------------------------------

    def resolve_name(self, spec: tuple[Any, ...]) -> str:
        if spec[0] == "as-is":
            return str(spec[1])
        if spec[0] == "raw":
            # A valid name is made this run's own: the server outlives the run, and the model
            # must know every account its names can reach.
            text = str(spec[1])
            return self.prefix + canonical(text) if valid_username(text) else text
        _, index, variant = spec
        name = self.prefix + POOL[index]
        if variant == "upper":
            return name.upper()
        if variant == "padded":
            return f"  {name} "
        if variant == "unknown":
            return name + "-nobody"
        return name

    def resolve_token(self, spec: tuple[Any, ...]) -> tuple[str, ModelSession | None]:
        """The token and, for a token the server issued, its model session."""
        if spec[0] == "session" and self.sessions:
            session = self.sessions[spec[1] % len(self.sessions)]
            return session.token, session
        real = self.sessions[0].token if self.sessions else self.server.control.token
        session_id, _, mac = real.partition(".")
        kind, text = (spec[1], spec[2]) if spec[0] == "forged" else ("text", "forged")
        forged = {
            "empty": "",
            "text": text,
            "flipped-mac": f"{session_id}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
            "other-mac": f"{'0' * 32}.{mac}",
            "non-ascii-mac": f"{session_id}.{'é' * 64}",
            "non-hex-id": f"{'é' * 32}.{mac}",
            "huge": f"{session_id}.{mac}" * 10_000,
            "nul": f"{session_id}.{mac[:-1]}\x00",
        }[kind]
        return forged, None

    def resolve_request_id(self, spec: str) -> str:
        if spec == "longest":
            return (rid() * 2)[:64]
        return rid() if spec == "valid" else spec

    def live_account(self, name: str) -> ModelAccount | None:
        return self.accounts.get(canonical(name)) if valid_username(name) else None

    def inbox(self, account: ModelAccount) -> list[ModelMessage]:
        return [m for m in self.messages if m.recipient is account and not m.gone]

    def conversation(self, me: ModelAccount, them: ModelAccount) -> list[ModelMessage]:
        return [
            m
            for m in self.messages
            if not m.gone
            and (
                (m.sender is me and m.recipient is them) or (m.sender is them and m.recipient is me)
            )
        ]

    def token_faults(self, session: ModelSession | None) -> set[Code]:
        """Every token problem is UNAUTHENTICATED: not issued by us, or its session ended."""
        return {Code.UNAUTHENTICATED} if session is None or not session.open else set()

    def expect(
        self, method: str, request: Any, faults: set[Code], events: int | None = None
    ) -> Outcome:
        """Call; with `faults`, expect a refusal with one of those codes that changes nothing;
        otherwise success appending `events` events (None: check elsewhere)."""
        what = f"{method}({_describe(request)})"
        before = self.server.snapshot()
        outcome = call(self.server, method, request)
        self.server.seen[method, outcome.code.name] += 1
        if faults:
            check_refusal(outcome, faults, what)
            after = self.server.snapshot()
            assert after.log_end == before.log_end, f"{what} was refused but appended to the log"
            assert after.tables == before.tables, f"{what} was refused but changed projections"
            return outcome
        assert outcome.code is Code.OK, f"{what}: {outcome.code.name}: {outcome.details!r}"
        if events is not None:
            appended = self.server.last_seq() - before.log_end.seq
            assert appended == events, f"{what} appended {appended} events, not {events}"
        return outcome

    # -- well-formed calls, so that the hostile ones meet accounts, sessions and messages ----

    def open_session(self, pick: int) -> tuple[Any, ...]:
        """The token spec of an open session (or of any, when none is open)."""
        open_ones = [i for i, s in enumerate(self.sessions) if s.open]
        return ("session", open_ones[pick % len(open_ones)] if open_ones else pick)

    @rule(index=st.integers(0, len(POOL) - 1), password=st.text(min_size=1, max_size=20))
    def register_a_pool_name(self, index: int, password: str) -> None:
        self.register(("pool", index, "exact"), password, "valid")

    @rule(index=st.integers(0, len(POOL) - 1), variant=st.sampled_from(["exact", "upper"]))
    def login_with_the_password(self, index: int, variant: str) -> None:
        self.login(("pool", index, variant), True, "not the password", "valid")

    @precondition(lambda self: bool(self.sessions))
    @rule(pick=st.integers(0, 100), to=st.integers(0, 100), body=st.text(min_size=1))
    def send_to_someone_logged_in(self, pick: int, to: int, body: str) -> None:
        """Mostly to an account with an open session (which can then read and ack it)."""
        names = sorted({s.account.name for s in self.sessions if s.open}) or [
            self.prefix + name for name in POOL
        ]
        self.send(self.open_session(pick), ("as-is", names[to % len(names)]), body, "valid")

    def sessions_with_mail(self) -> list[int]:
        return [i for i, s in enumerate(self.sessions) if s.open and self.inbox(s.account)]

    @precondition(lambda self: bool(self.sessions_with_mail()))
    @rule(pick=st.integers(0, 100), picks=st.lists(st.integers(0, 100), min_size=1, max_size=4))
    def ack_own_messages(self, pick: int, picks: list[int]) -> None:
        candidates = self.sessions_with_mail()
        index = candidates[pick % len(candidates)]
        inbox = [m.message_id for m in self.inbox(self.sessions[index].account)]
        self.ack_ids(("session", index), [inbox[p % len(inbox)] for p in picks], "valid")

    @precondition(lambda self: bool(self.messages) and any(s.open for s in self.sessions))
    @rule(pick=st.integers(0, 100), message=st.integers(0, 1000))
    def ack_someone_elses_message(self, pick: int, message: int) -> None:
        """Only the recipient can ack: for anyone else the message is not there."""
        spec = self.open_session(pick)
        _, session = self.resolve_token(spec)
        assert session is not None
        others = [m for m in self.messages if m.recipient is not session.account or m.gone]
        if others:
            self.ack_ids(spec, [others[message % len(others)].message_id], "valid")

    @precondition(lambda self: any(s.open for s in self.sessions))
    @rule(pick=st.integers(0, 100), other=st.integers(0, len(POOL) - 1))
    def write_to_a_name_nobody_has(self, pick: int, other: int) -> None:
        self.send(self.open_session(pick), ("pool", other, "unknown"), "hello?", "valid")
        self.history(self.open_session(pick), ("pool", other, "unknown"), 0, "", False)

    @rule(pattern=st.text(alphabet="abnoy*?-", max_size=6), size=st.integers(0, 3))
    def list_this_runs_accounts(self, pattern: str, size: int) -> None:
        """Page by page: exactly the run's live accounts that match, in order."""
        names: list[str] = []
        page_token = ""
        for _ in range(50):
            outcome = self.expect(
                "ListAccounts",
                chat_pb2.ListAccountsRequest(
                    pattern=self.prefix + pattern, page_size=size, page_token=page_token
                ),
                set(),
                events=0,
            )
            names += outcome.reply.usernames
            page_token = outcome.reply.next_page_token
            if not page_token:
                break
        assert names == sorted(n for n in self.accounts if glob_matches(self.prefix + pattern, n))

    @precondition(lambda self: bool(self.sessions))
    @rule(pick=st.integers(0, 100), other=st.integers(0, len(POOL) - 1), size=st.integers(0, 3))
    def read_a_whole_history(self, pick: int, other: int, size: int) -> None:
        """Page by page: the pages join up to the whole conversation."""
        page_token = ""
        for _ in range(50):
            outcome = self.check_history(
                self.open_session(pick), ("pool", other, "exact"), size, page_token
            )
            page_token = outcome.reply.next_page_token if outcome.code is Code.OK else ""
            if not page_token:
                return
        raise AssertionError("History kept returning pages")

    @precondition(lambda self: bool(self.sessions))
    @rule(pick=st.integers(0, 100))
    def subscribe_to_own_inbox(self, pick: int) -> None:
        self.subscribe(self.open_session(pick))

    @precondition(lambda self: bool(self.sessions))
    @rule(pick=st.integers(0, 100))
    def logout_a_session(self, pick: int) -> None:
        self.logout(self.open_session(pick), "valid")

    @precondition(lambda self: any(s.open for s in self.sessions))
    @rule(pick=st.integers(0, 100))
    def delete_an_account(self, pick: int) -> None:
        self.delete_account(self.open_session(pick), "own", "not the password", "valid")

    # -- rules ---------------------------------------------------------------------------

    @initialize(
        passwords=st.lists(
            st.text(min_size=1, max_size=10), min_size=len(POOL), max_size=len(POOL)
        ),
        logged_in=st.sets(st.integers(0, len(POOL) - 1), min_size=1),
        bodies=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4),
    )
    def start_with_accounts(
        self, passwords: list[str], logged_in: set[int], bodies: list[str]
    ) -> None:
        """Accounts, sessions and some mail, so that every rule has something to work on."""
        for index, password in enumerate(passwords):
            self.register(("pool", index, "exact"), password, "valid")
        for index in sorted(logged_in):
            self.login(("pool", index, "exact"), True, "", "valid")
        for n, body in enumerate(bodies):
            sender = self.sessions[n % len(self.sessions)]
            recipient = self.sessions[(n + 1) % len(self.sessions)].account.name
            self.send(("session", self.sessions.index(sender)), ("as-is", recipient), body, "valid")

    @rule(name=name_specs, password=passwords, request_id=request_ids)
    def register(self, name: tuple[Any, ...], password: str, request_id: str) -> None:
        username = self.resolve_name(name)
        request = chat_pb2.RegisterRequest(
            request_id=self.resolve_request_id(request_id), username=username, password=password
        )
        faults = set()
        if (
            request_id not in ("valid", "longest")
            or not valid_username(username)
            or not valid_password(password)
        ):
            faults.add(Code.INVALID_ARGUMENT)
        elif self.live_account(username) is not None:
            faults.add(Code.ALREADY_EXISTS)
        outcome = self.expect("Register", request, faults, events=1)
        if not faults:
            assert outcome.reply.username == canonical(username)
            account = ModelAccount(canonical(username), password)
            self.accounts[account.name] = account
            self.done.append(Done("Register", request, outcome.reply, None))

    @rule(name=name_specs, right_password=st.booleans(), password=passwords, request_id=request_ids)
    def login(
        self, name: tuple[Any, ...], right_password: bool, password: str, request_id: str
    ) -> None:
        username = self.resolve_name(name)
        account = self.live_account(username)
        if right_password and account is not None:
            password = account.password
        request = chat_pb2.LoginRequest(
            request_id=self.resolve_request_id(request_id), username=username, password=password
        )
        faults = set()
        if (
            request_id not in ("valid", "longest")
            or not valid_username(username)
            or not valid_password(password)
        ):
            faults.add(Code.INVALID_ARGUMENT)
        elif account is None or password != account.password:
            faults.add(Code.UNAUTHENTICATED)
        outcome = self.expect("Login", request, faults, events=1)
        if faults:
            if Code.UNAUTHENTICATED in faults and outcome.code is Code.UNAUTHENTICATED:
                # The same answer for an unknown name and a wrong password.
                assert outcome.details == "wrong username or password"
            return
        assert account is not None
        reply = outcome.reply
        assert reply.username == account.name
        assert reply.undelivered_count == sum(not m.acked for m in self.inbox(account))
        session = ModelSession(reply.session_token, account)
        self.sessions.append(session)
        self.done.append(Done("Login", request, reply, session))

    @rule(token=token_specs, request_id=request_ids)
    def logout(self, token: tuple[Any, ...], request_id: str) -> None:
        text, session = self.resolve_token(token)
        request = chat_pb2.LogoutRequest(
            request_id=self.resolve_request_id(request_id), session_token=text
        )
        faults = self.token_faults(session)
        if request_id not in ("valid", "longest"):
            faults.add(Code.INVALID_ARGUMENT)
        outcome = self.expect("Logout", request, faults, events=1)
        if not faults:
            assert session is not None
            session.open = False
            self.done.append(Done("Logout", request, outcome.reply, session))

    @rule(token=token_specs, recipient=name_specs, body=bodies, request_id=request_ids)
    def send(
        self, token: tuple[Any, ...], recipient: tuple[Any, ...], body: str, request_id: str
    ) -> None:
        text, session = self.resolve_token(token)
        to = self.resolve_name(recipient)
        request = chat_pb2.SendRequest(
            request_id=self.resolve_request_id(request_id),
            session_token=text,
            recipient=to,
            body=body,
        )
        faults = self.token_faults(session)
        if request_id not in ("valid", "longest") or not valid_username(to) or not valid_body(body):
            faults.add(Code.INVALID_ARGUMENT)
        target = self.live_account(to)
        if not faults and target is None:
            faults.add(Code.NOT_FOUND)
        before = self.server.last_seq()
        outcome = self.expect("Send", request, faults, events=1)
        if faults:
            return
        assert session is not None and target is not None
        assert outcome.reply.message_id == before + 1, "message ids are log positions"
        self.messages.append(ModelMessage(outcome.reply.message_id, session.account, target, body))
        self.done.append(Done("Send", request, outcome.reply, session))

    @rule(
        token=token_specs,
        picks=st.lists(st.integers(0, 10_000), max_size=6),
        extra=st.lists(st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1, 10**12]), max_size=2),
        oversized=st.booleans(),
        request_id=request_ids,
    )
    def ack(
        self,
        token: tuple[Any, ...],
        picks: list[int],
        extra: list[int],
        oversized: bool,
        request_id: str,
    ) -> None:
        # Mostly ids of real messages (the caller's own or anyone's), some that exist nowhere.
        known = [m.message_id for m in self.messages]
        ids = [known[p % len(known)] for p in picks] if known else []
        ids += extra
        if oversized:
            ids = list(range(1, MAX_ACK_IDS + 2))
        self.ack_ids(token, ids, request_id)

    def ack_ids(self, token: tuple[Any, ...], ids: list[int], request_id: str) -> None:
        text, session = self.resolve_token(token)
        request = chat_pb2.AckRequest(
            request_id=self.resolve_request_id(request_id), session_token=text, message_ids=ids
        )
        faults = self.token_faults(session)
        if (
            request_id not in ("valid", "longest")
            or not ids
            or len(ids) > MAX_ACK_IDS
            or any(i <= 0 or i >= 2**63 for i in ids)
        ):
            faults.add(Code.INVALID_ARGUMENT)
        mine: dict[int, ModelMessage] = {}
        if session is not None:
            mine = {m.message_id: m for m in self.inbox(session.account)}
        if not faults and any(i not in mine for i in ids):
            faults.add(Code.NOT_FOUND)  # someone else's, or no message at all
        newly = sorted({i for i in ids if i in mine and not mine[i].acked})
        outcome = self.expect("Ack", request, faults, events=1 if newly else 0)
        if faults:
            if outcome.code is Code.NOT_FOUND:
                assert outcome.details.endswith("are not in your inbox")
            return
        assert outcome.reply.acked_count == len(newly)
        for i in newly:
            mine[i].acked = True
        if newly:
            # An ack that changes nothing appends no event, so its request id is not kept: the
            # same id again is a new request.
            self.done.append(Done("Ack", request, outcome.reply, session))

    @rule(
        token=token_specs,
        other=name_specs,
        page_size=uint32s,
        page_token=st.one_of(
            st.just(""),
            st.sampled_from(["0", "-1", "²", "1" * 19, "9" * 20, str(2**63), str(2**63 - 1)]),
            hostile_text,
        ),
        newest_first=st.booleans(),
    )
    def history(
        self,
        token: tuple[Any, ...],
        other: tuple[Any, ...],
        page_size: int,
        page_token: str,
        newest_first: bool,
    ) -> None:
        self.check_history(token, other, page_size, page_token, newest_first)

    def check_history(
        self,
        token: tuple[Any, ...],
        other: tuple[Any, ...],
        page_size: int,
        page_token: str,
        newest_first: bool = False,
    ) -> Outcome:
        text, session = self.resolve_token(token)
        other_name = self.resolve_name(other)
        request = chat_pb2.HistoryRequest(
            session_token=text,
            other_user=other_name,
            page_size=page_size,
            page_token=page_token,
            newest_first=newest_first,
        )
        faults = self.token_faults(session)
        token_ok = page_token == "" or (
            page_token.isascii()
            and page_token.isdigit()
            and len(page_token) <= 19
            and int(page_token) < 2**63
        )
        if not valid_username(other_name) or page_size > MAX_PAGE_SIZE or not token_ok:
            faults.add(Code.INVALID_ARGUMENT)
        them = self.live_account(other_name)
        if not faults and them is None:
            faults.add(Code.NOT_FOUND)
        outcome = self.expect("History", request, faults, events=0)
        if faults:
            return outcome
        assert session is not None and them is not None
        mark = int(page_token or "0")
        size = page_size or 100
        conversation = self.conversation(session.account, them)
        if newest_first:  # from the newest back, before the token's message
            expected = [m for m in reversed(conversation) if not mark or m.message_id < mark]
        else:
            expected = [m for m in conversation if m.message_id > mark]
        got = [(m.message_id, m.sender, m.recipient, m.body) for m in outcome.reply.messages]
        assert got == [
            (m.message_id, m.sender.name, m.recipient.name, m.body) for m in expected[:size]
        ]
        more = len(expected) > size
        assert outcome.reply.next_page_token == (str(expected[size - 1].message_id) if more else "")
        return outcome

    @rule(
        scoped=st.booleans(),
        pattern=st.one_of(
            st.text(alphabet="abcny*?-_.", max_size=12),
            st.sampled_from(
                [
                    "*" * 64,
                    "*" * 63 + "a",
                    "*a" * 32,
                    "?" * 64,
                    "?" * 65,
                    "*?" * 32,
                    "a" * 65,
                    "[a-z]*",
                    "%",
                    "_%",
                    "\\",
                    "\\%",
                    "*\x00",
                ]
            ),
            hostile_text,
        ),
        page_size=uint32s,
        page_token=st.one_of(st.just(""), st.sampled_from(["a", "zzz", "-"]), hostile_text),
    )
    def list_accounts(self, scoped: bool, pattern: str, page_size: int, page_token: str) -> None:
        if scoped:
            pattern = self.prefix + pattern
        request = chat_pb2.ListAccountsRequest(
            pattern=pattern, page_size=page_size, page_token=page_token
        )
        faults = set()
        if (
            len(pattern or "*") > MAX_PATTERN_CHARS
            or any(c not in PATTERN_CHARS for c in pattern.lower())
            or page_size > MAX_PAGE_SIZE
            or (page_token and USERNAME_RE.fullmatch(page_token) is None)
        ):
            faults.add(Code.INVALID_ARGUMENT)
        outcome = self.expect("ListAccounts", request, faults, events=0)
        if faults:
            if "pattern" in outcome.details:
                assert len(outcome.details) < 300  # a long pattern is not echoed in full
            return
        names = list(outcome.reply.usernames)
        size = page_size or 100
        assert len(names) <= size
        assert names == sorted(names)
        assert all(glob_matches(pattern, n) and n > page_token for n in names), names
        if scoped and not outcome.reply.next_page_token:
            # Every live account of this run that matches, after the page token.
            ours = sorted(n for n in self.accounts if glob_matches(pattern, n) and n > page_token)
            assert [n for n in names if n.startswith(self.prefix)] == ours

    @rule(
        token=token_specs,
        whose=st.sampled_from(["own", "someone else's", "drawn"]),
        password=passwords,
        request_id=request_ids,
    )
    def delete_account(
        self, token: tuple[Any, ...], whose: str, password: str, request_id: str
    ) -> None:
        """Only the session's own account, and only with its password."""
        text, session = self.resolve_token(token)
        others = [a for a in self.accounts.values() if session is None or a is not session.account]
        if whose == "own" and session is not None:
            password = session.account.password
        elif whose == "someone else's" and others:
            password = others[0].password
        request = chat_pb2.DeleteAccountRequest(
            request_id=self.resolve_request_id(request_id), session_token=text, password=password
        )
        faults = self.token_faults(session)
        if request_id not in ("valid", "longest"):
            faults.add(Code.INVALID_ARGUMENT)
        if session is not None and password != session.account.password:
            faults.add(Code.UNAUTHENTICATED)
        if len(password) > MAX_PASSWORD_CHARS:
            faults.add(Code.INVALID_ARGUMENT)
        outcome = self.expect("DeleteAccount", request, faults, events=1)
        if faults:
            return
        assert session is not None
        account = session.account
        account.alive = False
        del self.accounts[account.name]
        for s in self.sessions:
            if s.account is account:
                s.open = False
        for m in self.messages:
            if m.recipient is account:
                m.gone = True
        self.done.append(Done("DeleteAccount", request, outcome.reply, session))

    @rule(token=token_specs)
    def subscribe(self, token: tuple[Any, ...]) -> None:
        """The backlog up to the caught-up marker is exactly the caller's unacked inbox."""
        text, session = self.resolve_token(token)
        faults = self.token_faults(session)
        stream = self.server.stub.Subscribe(
            chat_pb2.SubscribeRequest(session_token=text), timeout=RPC_TIMEOUT
        )
        got: list[chat_pb2.Message] = []
        outcome = Outcome(Code.OK, "")
        try:
            for item in stream:
                if item.WhichOneof("item") == "caught_up":
                    break
                got.append(item.message)
        except grpc.RpcError as exc:
            error: Any = exc
            outcome = Outcome(error.code(), error.details() or "")
        finally:
            stream.cancel()
        self.server.seen["Subscribe", outcome.code.name] += 1
        if faults:
            check_refusal(outcome, faults, "Subscribe")
            return
        assert outcome.code is Code.OK, outcome
        assert session is not None
        expected = [m for m in self.inbox(session.account) if not m.acked]
        assert [(m.message_id, m.sender, m.recipient, m.body) for m in got] == [
            (m.message_id, m.sender.name, m.recipient.name, m.body) for m in expected
        ]

    @precondition(lambda self: bool(self.done))
    @rule(pick=st.integers(0, 1000))
    def repeat_a_request(self, pick: int) -> None:
        """The same request again: the first result, nothing appended (even after a logout or
        the account's deletion)."""
        done = self.done[pick % len(self.done)]
        if done.method == "Login":
            # Login checks the password of the account that has the name now.
            account = self.accounts.get(done.reply.username)
            if account is None or account.password != done.request.password:
                self.expect(done.method, done.request, {Code.UNAUTHENTICATED})
                return
        outcome = self.expect(done.method, done.request, set(), events=0)
        if done.method == "Login":
            assert (outcome.reply.session_token, outcome.reply.username) == (
                done.reply.session_token,
                done.reply.username,
            )
        elif done.method == "Ack":
            assert outcome.reply.acked_count == done.reply.acked_count
        else:
            assert outcome.reply == done.reply

    def reuses(self) -> list[tuple[Done, str]]:
        """Every (request done, way to change it) that applies now."""
        out = []
        for done in self.done:
            if hasattr(done.request, "session_token") and self.other_sessions(done):
                out.append((done, "token"))
            if done.method in ("Send", "Ack"):
                out.append((done, "body"))
            if done.method in ("Register", "Login"):
                out.append((done, "name"))
            if done.method == "Register":
                out.append((done, "password"))
        return out

    def other_sessions(self, done: Done) -> list[ModelSession]:
        """Sessions other than the request's own: other users', and the same user's others."""
        return [s for s in self.sessions if s is not done.session]

    @precondition(lambda self: bool(self.reuses()))
    @rule(kind=st.integers(0, 1000), pick=st.integers(0, 10_000))
    def reuse_a_request_id(self, kind: int, pick: int) -> None:
        """A used request id with a different request (another session's token, another body,
        name or password) is refused and changes nothing; it never returns the first
        request's result."""
        # Each kind of change to each RPC is as likely as any other, however many of each
        # request were made.
        by_kind: dict[tuple[str, str], list[Done]] = {}
        for done, change in self.reuses():
            by_kind.setdefault((done.method, change), []).append(done)
        kinds = sorted(by_kind)
        method, change = kinds[kind % len(kinds)]
        done = by_kind[method, change][pick % len(by_kind[method, change])]
        request = type(done.request)()
        request.CopyFrom(done.request)
        if change == "token":
            others = self.other_sessions(done)
            request.session_token = others[pick % len(others)].token
        elif change == "body" and done.method == "Send":
            request.body = request.body + "!" if len(request.body) < MAX_BODY_BYTES else "short"
        elif change == "body":
            request.message_ids.append(max(request.message_ids) + 1)
        elif change == "name":
            request.username = canonical(request.username) + "x"
        else:
            request.password = request.password + "x"
        refusals = {Code.INVALID_ARGUMENT}
        if done.method in ("Login", "DeleteAccount"):
            # Their password is checked before the request id is looked up.
            refusals.add(Code.UNAUTHENTICATED)
        self.expect(done.method, request, refusals)

    @rule(
        method=st.sampled_from((*METHODS, "Subscribe")),
        payload=st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    b"\x0a\x02\xff\xfe",  # field 1, a string of invalid UTF-8
                    b"\x12\x03\xc3\x28\x41",  # field 2, likewise
                    b"\x1a\x01\x80",  # field 3
                    b"\x0a\x04\xed\xa0\x80\x61",  # an encoded surrogate
                    b"\x10\xff\xff",  # a truncated varint
                    b"\x18" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
                    b"\x1a\x0b" + b"\xff" * 10 + b"\x01",  # packed, overlong
                    b"\x10" + b"\xff" * 9 + b"\x01",  # a varint of -1 in a uint32 field
                    b"\x0d\x00\x00\x00\x00",  # field 1 with the wrong wire type
                    b"\xff" * 12,
                ]
            ),
        ),
    )
    def raw_bytes(self, method: str, payload: bytes) -> None:
        """Bytes that may not be a valid message at all: a proper status, never INTERNAL."""
        before = self.server.snapshot()
        if method == "Subscribe":
            stream = self.server.channel.unary_stream("/chat.v1.Chat/Subscribe")(
                payload, timeout=RPC_TIMEOUT
            )
            try:
                next(iter(stream))
                outcome = Outcome(Code.OK, "")
            except grpc.RpcError as exc:
                error: Any = exc
                outcome = Outcome(error.code(), error.details() or "")
            finally:
                stream.cancel()
        else:
            outcome = raw_call(self.server, method, payload)
        self.server.seen[f"raw {method}", outcome.code.name] += 1
        if outcome.code is not Code.OK:
            check_refusal(outcome, PROPER_CODES, f"{method}(raw {payload!r})")
            assert self.server.snapshot() == before

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def control_is_served(self) -> None:
        control = self.server.control
        stub = self.server.stub
        status = stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
        assert status.primary_known and status.replicas[0].role == "primary"
        reply = stub.ListAccounts(
            chat_pb2.ListAccountsRequest(pattern=control.name), timeout=RPC_TIMEOUT
        )
        assert list(reply.usernames) == [control.name]
        history = stub.History(
            chat_pb2.HistoryRequest(session_token=control.token, other_user=control.name),
            timeout=RPC_TIMEOUT,
        )
        assert list(history.messages) == []


def _describe(request: Any) -> str:
    text = str(request).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


# Passing takes ~30 s; a failure is shrunk for up to 5 minutes (Hypothesis's own limit) first.
@pytest.mark.timeout(600)
def test_every_rpc_survives_hostile_input(fuzz_server: FuzzServer) -> None:
    ChatFuzz.server = fuzz_server
    run_state_machine_as_test(
        ChatFuzz,
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
    # The run reached every RPC's success and refusals, not only its input checks.
    seen = fuzz_server.seen
    for method in (*METHODS, "Subscribe"):
        refused = {code for (m, code), n in seen.items() if m == method and code != "OK"}
        assert method == "ClusterStatus" or seen[method, "OK"] > 0, f"{method} never OK: {seen}"
        assert refused or method == "ClusterStatus", f"{method} was never refused: {seen}"
    for code in ("ALREADY_EXISTS", "NOT_FOUND", "UNAUTHENTICATED", "INVALID_ARGUMENT"):
        assert any(c == code for _, c in seen), f"no call was refused with {code}"


@pytest.mark.parametrize(
    ("size", "code", "details"),
    [
        (MAX_BODY_BYTES + 1, Code.INVALID_ARGUMENT, r"^message is 4097 bytes; the limit is 4096"),
        (8 * 1024 * 1024, Code.INVALID_ARGUMENT, r"^message is 8388608 bytes; the limit is 4096"),
        # Past the replica's gRPC limit, gRPC itself refuses the request before it is parsed.
        (REPLICA_MAX_MESSAGE_BYTES, Code.RESOURCE_EXHAUSTED, r"larger than max"),
    ],
    ids=["over-the-body-limit", "megabytes", "over-the-grpc-limit"],
)
def test_oversized_requests_are_refused_and_the_server_goes_on(
    fuzz_server: FuzzServer, size: int, code: Code, details: str
) -> None:
    control = fuzz_server.control
    request = chat_pb2.SendRequest(
        request_id=rid(), session_token=control.token, recipient=control.name, body="x" * size
    )
    before = fuzz_server.snapshot()
    outcome = call(fuzz_server, "Send", request)
    assert outcome.code == code, outcome
    assert re.search(details, outcome.details), outcome.details
    check_sentence(outcome.details, f"Send of {size} bytes")
    assert fuzz_server.snapshot() == before
    # The same connection serves the next request.
    listed = call(fuzz_server, "ListAccounts", chat_pb2.ListAccountsRequest(pattern=control.name))
    assert list(listed.reply.usernames) == [control.name]
