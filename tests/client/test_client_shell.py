"""The interactive chat's commands and login flow, without a terminal."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from client import ChatClient, ClientSettings
from client.cli.interactive import ChatShell, local_time, log_in, receive
from protos import chat_pb2
from tests.client.chat_fakes import CAUGHT_UP, FakeReplica, answer, fail, message, stream

LOGGED_IN = answer(chat_pb2.LoginReply(session_token="token-1", username="bob"))


@pytest.fixture
def replica(replicas: list[FakeReplica]) -> FakeReplica:
    replicas[0].script("Login", LOGGED_IN)
    replicas[0].script("Send", answer(chat_pb2.SendReply(message_id=1)))
    return replicas[0]


@pytest.fixture
def client(replica: FakeReplica) -> Iterator[ChatClient]:
    with ChatClient([replica.address], ClientSettings(timeout=2.0)) as client:
        yield client


def make_shell(client: ChatClient, output: list[str]) -> ChatShell:
    client.login("bob", "secret")
    return ChatShell(client, emit=output.append, ask_password=lambda prompt: "secret")


def test_plain_text_goes_to_the_chosen_recipient(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=["alice"])))
    output: list[str] = []
    shell = make_shell(client, output)

    assert shell.handle("hello?")
    assert shell.handle("/to Alice")
    assert shell.handle("hi alice")
    assert shell.handle("//slash")
    assert shell.handle("/msg carol hi carol")

    assert output == ["error: no recipient yet; choose one with /to USER"]
    assert [(r.recipient, r.body) for r in replica.requests("Send")] == [
        ("alice", "hi alice"),
        ("alice", "/slash"),
        ("carol", "hi carol"),
    ]
    assert shell.prompt_text() == "bob -> alice> "


def test_list_feeds_the_completer(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=["al", "alf"])))
    output: list[str] = []
    shell = make_shell(client, output)

    shell.handle("/list al*")

    assert output == ["al\nalf"]
    assert {"/to", "al", "alf"} <= set(shell.completions())


def test_errors_are_shown_and_the_shell_goes_on(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("Send", fail(grpc.StatusCode.NOT_FOUND, 'user "zed" does not exist'))
    output: list[str] = []
    shell = make_shell(client, output)

    assert shell.handle("/msg zed hi")
    assert shell.handle("/frob")
    assert shell.handle("/to")

    assert output == [
        'error: user "zed" does not exist (NOT_FOUND)',
        "error: unknown command /frob; /help lists them",
        "error: /to needs more; /help shows how",
    ]


def test_quit_and_delete_end_the_shell(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("DeleteAccount", answer(chat_pb2.DeleteAccountReply()))
    output: list[str] = []
    shell = make_shell(client, output)

    assert not shell.handle("/quit")
    assert not shell.handle("/delete")
    assert replica.requests("DeleteAccount")[0].password == "secret"
    assert client.session is None


def test_log_in_offers_to_register_an_unknown_user(
    client: ChatClient, replica: FakeReplica
) -> None:
    replica.script("Login", fail(grpc.StatusCode.NOT_FOUND, 'user "bob" does not exist'), LOGGED_IN)
    replica.script("Register", answer(chat_pb2.RegisterReply(username="bob")))
    replica.script("ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=[])))
    answers = iter(["bob", "y"])
    output: list[str] = []

    result = log_in(
        client, ask=lambda prompt: next(answers), ask_password=lambda p: "pw", emit=output.append
    )

    assert result.username == "bob"
    assert output[1:] == ["there is no account 'bob' yet", "registered bob"]
    assert client.session is not None


def test_log_in_never_offers_to_register_a_name_that_exists(
    client: ChatClient, replica: FakeReplica
) -> None:
    replica.script(
        "Login", fail(grpc.StatusCode.UNAUTHENTICATED, "wrong username or password"), LOGGED_IN
    )
    replica.script("ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=["bob"])))
    asked: list[str] = []
    answers = iter(["bob", "bob"])

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return next(answers)

    output: list[str] = []
    result = log_in(client, ask=ask, ask_password=lambda p: "pw", emit=output.append)

    assert result.username == "bob"
    assert output[1:] == ["error: wrong username or password"]
    assert asked == ["username: ", "username: "], "it offered to register an existing name"
    assert not replica.requests("Register")


def test_receive_prints_and_acks_each_message(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("Subscribe", stream(message(5, "alice", "yo"), CAUGHT_UP))
    replica.script("Ack", answer(chat_pb2.AckReply(acked_count=1)))
    client.login("bob", "secret")
    subscription = client.subscribe()
    output: list[str] = []

    def emit(line: str) -> None:
        output.append(line)
        subscription.cancel()  # the first line is all this test needs

    receive(client, subscription, emit)

    assert output == [f"[{local_time(message(5).message)}] <alice> yo"]
    assert [list(ack.message_ids) for ack in replica.requests("Ack")] == [[5]]


def test_history_shows_the_newest_page_and_more_goes_back(
    client: ChatClient, replica: FakeReplica
) -> None:
    from client.cli.interactive import HISTORY_LINES

    def page(ids: range, token: str) -> chat_pb2.HistoryReply:
        items = [
            chat_pb2.Message(message_id=i, sender="al", recipient="bob", body=f"m{i}") for i in ids
        ]
        return chat_pb2.HistoryReply(messages=items, next_page_token=token)

    newest = range(100, 100 - HISTORY_LINES, -1)
    older = range(100 - HISTORY_LINES, 100 - HISTORY_LINES - 3, -1)
    replica.script("History", answer(page(newest, str(newest[-1]))), answer(page(older, "")))
    output: list[str] = []
    shell = make_shell(client, output)

    shell.handle("/history al")
    first = output[-1].splitlines()
    assert first[0] == "(older messages with al: /more)"
    assert f"] #{newest[-1]} " in first[1] and first[-1].endswith("] #100 al -> bob: m100")
    assert len(replica.requests("History")) == 1, "one page asked, not the whole history"
    shell.handle("/more")
    assert [line.split("] ", 1)[1] for line in output[-1].splitlines()] == [
        f"#{i} al -> bob: m{i}" for i in reversed(older)
    ]
    shell.handle("/more")
    assert output[-1] == "(nothing more: /history USER first)"
    assert all(r.newest_first for r in replica.requests("History"))


def test_to_refuses_a_user_that_does_not_exist(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=[])))
    output: list[str] = []
    shell = make_shell(client, output)

    shell.handle("/to nobody")

    assert output == ["error: there is no user 'nobody'; /list shows who there is"]
    assert shell.recipient is None


def test_reply_answers_the_last_sender_and_history_defaults_to_the_recipient(
    client: ChatClient, replica: FakeReplica
) -> None:
    replica.script("History", answer(chat_pb2.HistoryReply()))
    output: list[str] = []
    shell = make_shell(client, output)
    shell.handle("/reply too early")
    shell.last_sender = "carol"  # what the receiver sets as messages arrive
    shell.handle("/reply hi carol")
    shell.handle("/history")

    assert output[0] == "error: nobody has written to you yet"
    assert shell.recipient == "carol"
    assert [(r.recipient, r.body) for r in replica.requests("Send")] == [("carol", "hi carol")]
    assert [r.other_user for r in replica.requests("History")] == ["carol"]
    assert output[-1] == "(no messages with carol)"


def test_receive_escapes_control_characters_and_says_when_it_gives_up(
    client: ChatClient, replica: FakeReplica
) -> None:
    replica.script(
        "Subscribe",
        stream(
            message(5, "alice", "\x1b[2Jbell\x07"),
            then=fail(grpc.StatusCode.UNAUTHENTICATED, "your session has ended\n(logged out)"),
        ),
    )
    replica.script("Ack", answer(chat_pb2.AckReply(acked_count=1)))
    client.login("bob", "secret")
    output: list[str] = []
    lost: list[bool] = []
    shell = make_shell(client, [])

    receive(client, client.subscribe(), output.append, shell, lambda: lost.append(True))

    assert output[0].endswith("<alice> \\x1b[2Jbell\\x07")
    assert shell.last_sender == "alice"
    assert output[1].startswith("error: no longer receiving messages (your session has ended")
    assert "\n" not in output[1] and output[1].endswith("; quitting")
    assert lost == [True], "a chat that no longer receives must end"


def test_the_login_line_names_the_senders_of_unread_messages() -> None:
    from client.cli.interactive import unread_summary

    assert unread_summary(()) == ""
    assert unread_summary((("carol", 3), ("alice", 1))) == " (carol 3, alice 1)"
    many = tuple((f"u{i}", 1) for i in range(7))
    assert unread_summary(many) == " (u0 1, u1 1, u2 1, u3 1, u4 1, and 2 more senders)"


class _Tty:
    def __init__(self, tty: bool) -> None:
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_colours_only_on_a_terminal_and_never_with_no_color() -> None:
    from client.cli.interactive import colour_wanted, style_of

    assert colour_wanted(_Tty(True), {"TERM": "xterm"})
    assert not colour_wanted(_Tty(True), {"TERM": "xterm", "NO_COLOR": ""})
    assert not colour_wanted(_Tty(True), {"TERM": "dumb"})
    assert not colour_wanted(_Tty(False), {"TERM": "xterm"})
    assert style_of("error: wrong username or password") == "ansired"
    assert style_of("[12:00:01] <alice> hi") == "ansicyan"
    assert style_of("-- connected to replica at h:1") == "ansiyellow"
    assert style_of("reconnecting... (no replica answers)") == "ansiyellow"
    assert style_of("alice\nbob") == ""


def test_register_is_a_first_screen_choice(client: ChatClient, replica: FakeReplica) -> None:
    replica.script("Register", answer(chat_pb2.RegisterReply(username="bob")))
    answers = iter(["/register", "/register bob"])
    output: list[str] = []

    result = log_in(
        client, ask=lambda prompt: next(answers), ask_password=lambda p: "pw", emit=output.append
    )

    assert result.username == "bob"
    assert output == [
        "log in, or type /register NAME to create an account",
        "error: /register needs a name, e.g. /register alice",
        "registered bob",
    ]
    assert [r.username for r in replica.requests("Register")] == ["bob"]
    assert not replica.requests("ListAccounts")
