"""One real replica process (through the harness) on SQLite and MySQL, driven through real gRPC
stubs: health, reflection, every RPC, every error kind, and a clean SIGTERM and restart."""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import eventlog
from protos import chat_pb2, chat_pb2_grpc
from replica.storage.database import make_engine
from tests.conftest import MYSQL_SERVER_URL, require_mysql
from tests.integration.cluster_checks import db_url, wait_for_primary
from testsupport.databases import drop_mysql_database, iter_table_rows
from testsupport.harness import ClusterProcesses, ReplicaProcessError

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
RPC_TIMEOUT = 10.0
STREAM_TIMEOUT = 10.0
Code = grpc.StatusCode


def rid() -> str:
    return uuid.uuid4().hex


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:8]}"


@dataclass
class Server:
    cluster: ClusterProcesses

    @property
    def stub(self) -> chat_pb2_grpc.ChatStub:
        return chat_pb2_grpc.ChatStub(self.cluster.channel(0))

    def last_seq(self) -> int:
        reply = self.stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
        [me] = reply.replicas
        return int(me.last_seq)

    def register(self, name: str, password: str = PASSWORD) -> str:
        request = chat_pb2.RegisterRequest(request_id=rid(), username=name, password=password)
        return str(self.stub.Register(request, timeout=RPC_TIMEOUT).username)

    def login(self, name: str, password: str = PASSWORD) -> chat_pb2.LoginReply:
        request = chat_pb2.LoginRequest(request_id=rid(), username=name, password=password)
        return self.stub.Login(request, timeout=RPC_TIMEOUT)

    def send(self, token: str, to: str, body: str) -> int:
        request = chat_pb2.SendRequest(
            request_id=rid(), session_token=token, recipient=to, body=body
        )
        return int(self.stub.Send(request, timeout=RPC_TIMEOUT).message_id)

    def ack(self, token: str, ids: list[int]) -> int:
        request = chat_pb2.AckRequest(request_id=rid(), session_token=token, message_ids=ids)
        return int(self.stub.Ack(request, timeout=RPC_TIMEOUT).acked_count)

    def history(self, token: str, other: str, page_size: int = 0, page_token: str = "") -> Any:
        request = chat_pb2.HistoryRequest(
            session_token=token, other_user=other, page_size=page_size, page_token=page_token
        )
        return self.stub.History(request, timeout=RPC_TIMEOUT)

    def list_accounts(self, pattern: str, page_size: int = 0, page_token: str = "") -> Any:
        request = chat_pb2.ListAccountsRequest(
            pattern=pattern, page_size=page_size, page_token=page_token
        )
        return self.stub.ListAccounts(request, timeout=RPC_TIMEOUT)

    def subscribe(self, token: str) -> Subscription:
        return Subscription(self.stub.Subscribe(chat_pb2.SubscribeRequest(session_token=token)))


class Subscription:
    """A Subscribe stream read by a thread into a queue, so that a test can wait for the next
    item with a deadline."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: queue.Queue[chat_pb2.SubscribeReply | grpc.RpcError | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.items.put(reply)
        except grpc.RpcError as exc:
            self.items.put(exc)
            return
        self.items.put(None)

    def next(self, timeout: float = STREAM_TIMEOUT) -> chat_pb2.SubscribeReply:
        item = self.items.get(timeout=timeout)
        if not isinstance(item, chat_pb2.SubscribeReply):
            raise AssertionError(f"the stream ended: {item!r}")
        return item

    def messages_until_caught_up(self) -> list[chat_pb2.Message]:
        out = []
        while True:
            reply = self.next()
            if reply.WhichOneof("item") == "caught_up":
                return out
            out.append(reply.message)

    def next_message(self) -> chat_pb2.Message:
        reply = self.next()
        assert reply.WhichOneof("item") == "message", reply
        return reply.message

    def end(self, timeout: float = STREAM_TIMEOUT) -> grpc.RpcError | None:
        """Wait for the stream to end by itself: its error, or None for a clean end."""
        item = self.items.get(timeout=timeout)
        assert not isinstance(item, chat_pb2.SubscribeReply), f"unexpected item {item}"
        return item

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(STREAM_TIMEOUT)


@pytest.fixture
def subscriptions() -> Iterator[list[Subscription]]:
    """Streams to cancel at the end of a test, whatever happens."""
    made: list[Subscription] = []
    yield made
    for subscription in made:
        subscription.cancel()


def start_server(base: Path, backend: str) -> tuple[ClusterProcesses, str | None]:
    url = None
    if backend == "mysql":
        require_mysql()
        url = f"{MYSQL_SERVER_URL}/chat_server_{uuid.uuid4().hex[:12]}"
    cluster = ClusterProcesses(base, 1, db_urls=[url])
    try:
        cluster.start(0)
        wait_for_primary(cluster)
    except BaseException:
        cluster.close()
        if url is not None:
            drop_mysql_database(url)
        raise
    return cluster, url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per backend for the whole module; tests use their own user names."""
    cluster, url = start_server(tmp_path_factory.mktemp(f"server-{request.param}"), request.param)
    try:
        yield Server(cluster)
    finally:
        cluster.close()
        if url is not None:
            drop_mysql_database(url)


@dataclass
class People:
    alice: str
    bob: str
    alice_token: str
    bob_token: str
    to_alice: int  # a message from bob to alice


def make_people(server: Server) -> People:
    alice, bob = server.register(unique("alice")), server.register(unique("bob"))
    alice_token = server.login(alice).session_token
    bob_token = server.login(bob).session_token
    to_alice = server.send(bob_token, alice, "hello alice")
    return People(alice, bob, alice_token, bob_token, to_alice)


@pytest.fixture
def people(server: Server) -> People:
    return make_people(server)


@pytest.fixture(scope="module")
def unchanging_people(server: Server) -> People:
    """For tests whose requests must all fail: they change nothing, so they can share."""
    return make_people(server)


def expect_error(server: Server, call: Callable[[], object], code: Code, pattern: str) -> str:
    """`call` fails with `code` and a message matching `pattern`, and appends nothing."""
    before = server.last_seq()
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert re.search(pattern, error.details()), error.details()
    assert server.last_seq() == before, "a failed request appended to the log"
    return str(error.details())


# -- service plumbing ----------------------------------------------------------------------


def test_health_check_is_serving(server: Server) -> None:
    stub = health_pb2_grpc.HealthStub(server.cluster.channel(0))
    for service in ("", "chat.v1.Chat"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT)
    assert info.value.code() == Code.NOT_FOUND  # type: ignore[attr-defined]


def test_reflection_lists_the_chat_service(server: Server) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.cluster.channel(0))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    names = {s.name for s in reply.list_services_response.service}
    assert {"chat.v1.Chat", "grpc.health.v1.Health"} <= names
    # And it describes the service's methods.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="chat.v1.Chat")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    assert reply.file_descriptor_response.file_descriptor_proto


def test_cluster_status_of_a_lone_replica(server: Server) -> None:
    reply = server.stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)
    assert (reply.answered_by, reply.primary_known, reply.primary_index) == (0, True, 0)
    [me] = reply.replicas
    assert (me.role, me.address, me.reachable, me.in_sync) == (
        "primary",
        server.cluster.address(0),
        True,
        True,
    )
    assert me.epoch >= 1
    assert me.last_seq == me.applied_seq >= 1


# -- the chat API --------------------------------------------------------------------------


def test_register_login_send_history_and_list(server: Server) -> None:
    tag = uuid.uuid4().hex[:6]
    alice = server.register(f"Alice-{tag}")
    assert alice == f"alice-{tag}"
    bob = server.register(f"bob-{tag}")
    carol = server.register(f"carol-{tag}")
    alice_login = server.login(alice.upper())
    assert alice_login.username == alice
    assert alice_login.undelivered_count == 0
    bob_token = server.login(bob).session_token

    before = server.last_seq()
    ids = [server.send(alice_login.session_token, bob, f"message {i}") for i in range(5)]
    assert ids == list(range(before + 1, before + 6))  # message ids are log positions
    server.send(alice_login.session_token, carol, "not for bob")
    assert server.login(bob).undelivered_count == 5

    # History, both ways, in pages.
    first = server.history(bob_token, alice, page_size=2)
    assert [m.message_id for m in first.messages] == ids[:2]
    assert first.next_page_token == str(ids[1])
    rest = server.history(bob_token, alice, page_size=10, page_token=first.next_page_token)
    assert [m.body for m in rest.messages] == ["message 2", "message 3", "message 4"]
    assert rest.next_page_token == ""
    [m0] = server.history(alice_login.session_token, bob, page_size=1).messages
    assert (m0.sender, m0.recipient, m0.body) == (alice, bob, "message 0")
    assert m0.sent_at_unix_ms > 1_600_000_000_000

    # Listing with a pattern, in pages.
    assert list(server.list_accounts(f"*-{tag}").usernames) == [alice, bob, carol]
    page = server.list_accounts(f"*-{tag}", page_size=2)
    assert list(page.usernames) == [alice, bob]
    page = server.list_accounts(f"*-{tag}", page_size=2, page_token=page.next_page_token)
    assert (list(page.usernames), page.next_page_token) == ([carol], "")
    assert list(server.list_accounts(f"?ob-{tag}").usernames) == [bob]


def test_request_retry_returns_the_first_result(server: Server, people: People) -> None:
    request = chat_pb2.SendRequest(
        request_id=rid(), session_token=people.alice_token, recipient=people.bob, body="once"
    )
    first = server.stub.Send(request, timeout=RPC_TIMEOUT)
    before = server.last_seq()
    assert server.stub.Send(request, timeout=RPC_TIMEOUT) == first
    assert server.last_seq() == before
    reused = chat_pb2.SendRequest(
        request_id=request.request_id,
        session_token=people.alice_token,
        recipient=people.bob,
        body="something else",
    )
    expect_error(
        server,
        lambda: server.stub.Send(reused, timeout=RPC_TIMEOUT),
        Code.INVALID_ARGUMENT,
        "^request_id was already used for a different request",
    )


def test_subscribe_backlog_then_caught_up_then_live(
    server: Server, people: People, subscriptions: list[Subscription]
) -> None:
    second = server.send(people.bob_token, people.alice, "second")
    subscription = server.subscribe(people.alice_token)
    subscriptions.append(subscription)
    backlog = subscription.messages_until_caught_up()
    assert [(m.message_id, m.sender, m.body) for m in backlog] == [
        (people.to_alice, people.bob, "hello alice"),
        (second, people.bob, "second"),
    ]
    # A message sent now is pushed on the open stream.
    live = server.send(people.bob_token, people.alice, "live")
    pushed = subscription.next_message()
    assert (pushed.message_id, pushed.body, pushed.recipient) == (live, "live", people.alice)
    # Someone else's message is not.
    other = server.register(unique("carol"))
    server.send(people.bob_token, other, "for carol")
    again = server.send(people.bob_token, people.alice, "again")
    assert subscription.next_message().message_id == again


def test_acked_messages_are_not_resent_unacked_ones_are(
    server: Server, people: People, subscriptions: list[Subscription]
) -> None:
    ids = [people.to_alice] + [
        server.send(people.bob_token, people.alice, f"m{i}") for i in range(3)
    ]
    first = server.subscribe(people.alice_token)
    subscriptions.append(first)
    assert [m.message_id for m in first.messages_until_caught_up()] == ids
    assert server.ack(people.alice_token, [ids[0], ids[2]]) == 2
    first.cancel()

    second = server.subscribe(people.alice_token)
    subscriptions.append(second)
    assert [m.message_id for m in second.messages_until_caught_up()] == [ids[1], ids[3]]
    assert server.login(people.alice).undelivered_count == 2
    # Acking the same ids again changes nothing.
    before = server.last_seq()
    assert server.ack(people.alice_token, [ids[0]]) == 0
    assert server.last_seq() == before


def test_a_subscription_ends_when_its_session_does(
    server: Server, people: People, subscriptions: list[Subscription]
) -> None:
    subscription = server.subscribe(people.alice_token)
    subscriptions.append(subscription)
    subscription.messages_until_caught_up()
    server.stub.Logout(
        chat_pb2.LogoutRequest(request_id=rid(), session_token=people.alice_token),
        timeout=RPC_TIMEOUT,
    )
    error = subscription.end()
    assert error is not None and error.code() == Code.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_subscribe_with_an_invalid_token(server: Server) -> None:
    call = server.stub.Subscribe(chat_pb2.SubscribeRequest(session_token="forged"))
    with pytest.raises(grpc.RpcError) as info:
        next(iter(call))
    error: Any = info.value
    assert error.code() == Code.UNAUTHENTICATED
    assert "not logged in" in error.details()


def test_logout_ends_the_session(server: Server, people: People) -> None:
    server.stub.Logout(
        chat_pb2.LogoutRequest(request_id=rid(), session_token=people.alice_token),
        timeout=RPC_TIMEOUT,
    )
    expect_error(
        server,
        lambda: server.send(people.alice_token, people.bob, "x"),
        Code.UNAUTHENTICATED,
        "your session has ended",
    )


def test_delete_account(server: Server, people: People) -> None:
    to_bob = server.send(people.alice_token, people.bob, "from alice")
    delete = chat_pb2.DeleteAccountRequest(
        request_id=rid(), session_token=people.alice_token, password="wrong"
    )
    expect_error(
        server,
        lambda: server.stub.DeleteAccount(delete, timeout=RPC_TIMEOUT),
        Code.UNAUTHENTICATED,
        "^wrong password: the account was not deleted$",
    )
    delete.password = PASSWORD
    server.stub.DeleteAccount(delete, timeout=RPC_TIMEOUT)
    before = server.last_seq()
    server.stub.DeleteAccount(delete, timeout=RPC_TIMEOUT)  # a retry succeeds, appends nothing
    assert server.last_seq() == before

    expect_error(
        server,
        lambda: server.send(people.alice_token, people.bob, "x"),
        Code.UNAUTHENTICATED,
        "session has ended",
    )
    expect_error(server, lambda: server.login(people.alice), Code.UNAUTHENTICATED, "wrong")
    assert list(server.list_accounts(people.alice).usernames) == []
    expect_error(
        server,
        lambda: server.history(people.bob_token, people.alice),
        Code.NOT_FOUND,
        f"^user '{people.alice}' does not exist$",
    )
    # What alice sent is still bob's to read and ack.
    inbox = server.subscribe(people.bob_token)
    try:
        assert [m.message_id for m in inbox.messages_until_caught_up()] == [to_bob]
    finally:
        inbox.cancel()
    assert server.ack(people.bob_token, [to_bob]) == 1
    # The name can be taken again, by an account with no past.
    assert server.register(people.alice) == people.alice
    fresh = server.login(people.alice)
    assert fresh.undelivered_count == 0
    assert list(server.history(fresh.session_token, people.bob).messages) == []


# -- errors --------------------------------------------------------------------------------

SQL = "x' OR '1'='1"

ERROR_CASES: list[tuple[str, Callable[[Server, People], object], Code, str]] = [
    (
        "duplicate-name",
        lambda s, p: s.register(p.alice.upper()),
        Code.ALREADY_EXISTS,
        r"^username '[^']+' is taken; choose another$",
    ),
    (
        "wrong-password",
        lambda s, p: s.login(p.alice, "not the password"),
        Code.UNAUTHENTICATED,
        "^wrong username or password$",
    ),
    (
        "unknown-user-login",
        lambda s, p: s.login("nobody-" + p.alice[-8:]),
        Code.UNAUTHENTICATED,
        "^wrong username or password$",
    ),
    (
        "unknown-recipient",
        lambda s, p: s.send(p.alice_token, "nobody-x", "hi"),
        Code.NOT_FOUND,
        "^user 'nobody-x' does not exist$",
    ),
    (
        "unknown-history-user",
        lambda s, p: s.history(p.alice_token, "nobody-x"),
        Code.NOT_FOUND,
        "^user 'nobody-x' does not exist$",
    ),
    (
        "oversize-message",
        lambda s, p: s.send(p.alice_token, p.bob, "x" * 4097),
        Code.INVALID_ARGUMENT,
        "^message is 4097 bytes; the limit is 4096 bytes$",
    ),
    (
        "oversize-multibyte-message",
        lambda s, p: s.send(p.alice_token, p.bob, "ü" * 2049),
        Code.INVALID_ARGUMENT,
        "^message is 4098 bytes; the limit is 4096 bytes$",
    ),
    (
        "empty-message",
        lambda s, p: s.send(p.alice_token, p.bob, ""),
        Code.INVALID_ARGUMENT,
        "empty",
    ),
    (
        "malformed-pattern",
        lambda s, p: s.list_accounts("[a-z]*"),
        Code.INVALID_ARGUMENT,
        r"^pattern '\[a-z\]\*' contains '\[\]'",
    ),
    (
        "like-wildcard-pattern",
        lambda s, p: s.list_accounts("%"),
        Code.INVALID_ARGUMENT,
        "contains '%'",
    ),
    ("sql-in-pattern", lambda s, p: s.list_accounts(SQL), Code.INVALID_ARGUMENT, "contains"),
    ("sql-in-username", lambda s, p: s.register(SQL), Code.INVALID_ARGUMENT, "is not valid"),
    ("sql-in-login", lambda s, p: s.login(SQL), Code.INVALID_ARGUMENT, "is not valid"),
    (
        "sql-in-recipient",
        lambda s, p: s.send(p.alice_token, SQL, "hi"),
        Code.INVALID_ARGUMENT,
        "^recipient .* is not valid",
    ),
    (
        "sql-in-page-token",
        lambda s, p: s.list_accounts("*", page_token=SQL),
        Code.INVALID_ARGUMENT,
        "page_token is not one this server returned",
    ),
    (
        "bad-history-page-token",
        lambda s, p: s.history(p.alice_token, p.bob, page_token="-1"),
        Code.INVALID_ARGUMENT,
        "page_token is not one this server returned",
    ),
    (
        "page-size-too-big",
        lambda s, p: s.list_accounts("*", page_size=1001),
        Code.INVALID_ARGUMENT,
        "above the limit of 1000",
    ),
    (
        "invalid-token-send",
        lambda s, p: s.send("forged", p.bob, "hi"),
        Code.UNAUTHENTICATED,
        "^not logged in: the session token is missing or invalid$",
    ),
    (
        "invalid-token-history",
        lambda s, p: s.history(p.alice_token.split(".")[0] + "." + "0" * 64, p.bob),
        Code.UNAUTHENTICATED,
        "not logged in",
    ),
    ("invalid-token-ack", lambda s, p: s.ack("", [1]), Code.UNAUTHENTICATED, "not logged in"),
    (
        "ack-someone-elses-message",
        lambda s, p: s.ack(p.bob_token, [p.to_alice]),
        Code.NOT_FOUND,
        r"^message\(s\) \d+ are not in your inbox$",
    ),
    ("ack-nothing", lambda s, p: s.ack(p.alice_token, []), Code.INVALID_ARGUMENT, "empty"),
    (
        "missing-request-id",
        lambda s, p: s.stub.Register(
            chat_pb2.RegisterRequest(username="x", password="y"), timeout=RPC_TIMEOUT
        ),
        Code.INVALID_ARGUMENT,
        "^request_id must be 1-64 printable ASCII",
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "pattern"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_status_and_message_and_nothing_changes(
    server: Server,
    unchanging_people: People,
    call: Callable[[Server, People], object],
    code: Code,
    pattern: str,
) -> None:
    people = unchanging_people
    accounts_before = list(server.list_accounts("*", page_size=1000).usernames)
    expect_error(server, lambda: call(server, people), code, pattern)
    assert list(server.list_accounts("*", page_size=1000).usernames) == accounts_before
    [message] = server.history(people.alice_token, people.bob).messages
    assert message.message_id == people.to_alice


def test_unicode_digit_page_token_is_invalid_argument(server: Server, people: People) -> None:
    expect_error(
        server,
        lambda: server.history(people.alice_token, people.bob, page_token="²"),
        Code.INVALID_ARGUMENT,
        "page_token",
    )


# -- shutdown and restart ------------------------------------------------------------------


def read_log(url: str) -> list[eventlog.Event]:
    engine = make_engine(url, create_database=False)
    try:
        with engine.connect() as conn:
            return eventlog.read_events(conn, 0, 1_000_000)
    finally:
        engine.dispose()


def read_tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(url, create_database=False)
    try:
        with engine.connect() as conn:
            return dict(iter_table_rows(conn))
    finally:
        engine.dispose()


def test_sigterm_stops_cleanly_and_a_restart_keeps_everything(
    backend: str, tmp_path: Path, subscriptions: list[Subscription]
) -> None:
    cluster, url = start_server(tmp_path / "server", backend)
    try:
        server = Server(cluster)
        alice, bob = server.register("alice"), server.register("bob")
        alice_token = server.login(alice).session_token
        bob_token = server.login(bob).session_token
        ids = [server.send(alice_token, bob, f"before restart {i}") for i in range(3)]
        server.ack(bob_token, ids[:1])
        open_stream = server.subscribe(bob_token)
        subscriptions.append(open_stream)
        assert len(open_stream.messages_until_caught_up()) == 2
        epoch_before = server.stub.ClusterStatus(chat_pb2.ClusterStatusRequest()).replicas[0].epoch

        assert cluster.terminate(0) == 0
        log = cluster.log_text(0)
        assert "SIGTERM, shutting down" in log
        assert "replica 0: stopped" in log
        assert "Traceback" not in log
        # The open subscription was told to reconnect, not cut off silently.
        error = open_stream.end()
        assert error is not None
        assert error.code() == Code.UNAVAILABLE  # type: ignore[attr-defined]

        database = url or db_url(cluster, 0)
        log_before, tables_before = read_log(database), read_tables(database)
        assert log_before[-1].seq == ids[-1] + 1  # the ack was the last write

        cluster.start(0)
        wait_for_primary(cluster)
        # The log is kept as it was; the new primary only adds its epoch marker.
        log_after = read_log(database)
        assert log_after[: len(log_before)] == log_before
        assert [e.type for e in log_after[len(log_before) :]] == ["epoch_started"]
        assert log_after[-1].epoch > epoch_before
        tables_after = read_tables(database)
        assert tables_after["accounts"] == tables_before["accounts"]
        assert tables_after["messages"] == tables_before["messages"]
        assert tables_after["sessions"] == tables_before["sessions"]

        # Sessions survive a restart; so do inboxes and history.
        assert server.login(bob).undelivered_count == 2
        history = server.history(alice_token, bob).messages
        assert [m.message_id for m in history] == ids
        stream = server.subscribe(bob_token)
        subscriptions.append(stream)
        assert [m.message_id for m in stream.messages_until_caught_up()] == ids[1:]
        next_seq = server.last_seq() + 1
        assert server.send(alice_token, bob, "after restart") == next_seq
    finally:
        cluster.close()
        if url is not None:
            drop_mysql_database(url)


def test_harness_reports_a_replica_that_cannot_start(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    cluster = cluster_processes(1, settings={"no_such_setting": 1})
    with pytest.raises(
        ReplicaProcessError, match="exited with code 1 before it was healthy"
    ) as info:
        cluster.start(0)
    assert "unknown setting 'no_such_setting'" in str(info.value)
    assert not cluster.is_running(0)


def test_harness_kill_and_restart(cluster_processes: Callable[..., ClusterProcesses]) -> None:
    cluster = cluster_processes(1, hosts=["127.0.0.11"])
    cluster.start(0)
    assert cluster.address(0).startswith("127.0.0.11:")
    pid = cluster.process(0).pid
    assert cluster.kill(0) == -9
    assert cluster.health_status(0) is None
    cluster.start(0)
    assert cluster.process(0).pid != pid
    assert cluster.health_status(0) == health_pb2.HealthCheckResponse.SERVING
    assert cluster.log_text(0).count("==== harness: start #") == 2
