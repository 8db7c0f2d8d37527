"""`python -m client` scripted commands: output, exit status, one-line errors."""

from __future__ import annotations

import io

import grpc
import pytest

from client.cli import main
from protos import chat_pb2
from protos.wire import MAX_ACK_IDS
from tests.client.chat_fakes import (
    CAUGHT_UP,
    T0_MS,
    FakeReplica,
    answer,
    at,
    fail,
    message,
    stream,
)

ENV = {"CHAT_PASSWORD": "secret"}
LOGGED_IN = answer(chat_pb2.LoginReply(session_token="token-1", username="bob"))
LOGGED_OUT = answer(chat_pb2.LogoutReply())


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    status = main(list(argv), environ=ENV if environ is None else environ)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(err: str, expected: str | None = None) -> None:
    assert err.startswith("error: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err
    if expected is not None:
        assert err == f"error: {expected}\n"


def servers(*replicas: FakeReplica) -> str:
    return ",".join(replica.address for replica in replicas)


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["send", "--user", "bob", "hello"],
        ["read", "--user", "bob", "--wait", "soon"],
        ["--timeout", "-1", "status"],
        ["--servers", "localhost", "status"],
        ["--servers", ",", "status"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run(capsys, *argv)

    assert status == 2
    assert out == ""
    assert_one_error_line(err)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")

    assert status == 0
    assert "delete-account" in out


def test_domain_error_is_one_line_with_the_code(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    replicas[0].script(
        "Register", fail(grpc.StatusCode.ALREADY_EXISTS, 'user "bob" already exists')
    )

    status, out, err = run(capsys, "--servers", servers(replicas[0]), "register", "bob")

    assert status == 1
    assert out == ""
    assert_one_error_line(err, 'user "bob" already exists (ALREADY_EXISTS)')


def test_no_replica_reachable(capsys: pytest.CaptureFixture[str], dead_address: str) -> None:
    status, _, err = run(capsys, "--servers", dead_address, "--timeout", "0.3", "status")

    assert status == 1
    assert_one_error_line(err, f"no replica reachable at {dead_address} (UNAVAILABLE)")


def test_servers_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], dead_address: str
) -> None:
    status, _, err = run(capsys, "--timeout", "0.3", "list", environ={"CHAT_SERVERS": dead_address})

    assert status == 1
    assert dead_address in err


def test_register_prints_the_canonical_name(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    replicas[0].script("Register", answer(chat_pb2.RegisterReply(username="bob")))

    status, out, err = run(capsys, "--servers", servers(replicas[0]), "register", "Bob")

    assert (status, out, err) == (0, "bob\n", "")
    assert replicas[0].requests("Register")[0].password == "secret"


def test_send_logs_in_sends_and_logs_out(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script("Send", answer(chat_pb2.SendReply(message_id=42)))
    r0.script("Logout", LOGGED_OUT)

    status, out, _ = run(
        capsys, "--servers", servers(r0), "send", "--user", "bob", "--to", "alice", "hi there"
    )

    assert (status, out) == (0, "42\n")
    (sent,) = r0.requests("Send")
    assert (sent.recipient, sent.body, sent.session_token) == ("alice", "hi there", "token-1")
    assert r0.requests("Logout")[0].session_token == "token-1"


def test_failed_command_still_logs_out(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script("Send", fail(grpc.StatusCode.NOT_FOUND, 'user "zed" does not exist'))
    r0.script("Logout", LOGGED_OUT)

    status, _, err = run(
        capsys, "--servers", servers(r0), "send", "--user", "bob", "--to", "zed", "hi"
    )

    assert status == 1
    assert_one_error_line(err, 'user "zed" does not exist (NOT_FOUND)')
    assert len(r0.requests("Logout")) == 1


def test_read_prints_the_backlog_then_acks_it(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script(
        "Subscribe", stream(message(1, body="hello"), message(2, body="tab\there"), CAUGHT_UP)
    )
    r0.script("Ack", answer(chat_pb2.AckReply(acked_count=2)))
    r0.script("Logout", LOGGED_OUT)

    status, out, _ = run(capsys, "--servers", servers(r0), "read", "--user", "bob")

    assert status == 0
    assert out == f"1\t{at(1)}\talice\thello\n2\t{at(2)}\talice\ttab\\there\n"
    assert [list(ack.message_ids) for ack in r0.requests("Ack")] == [[1, 2]]


def test_read_clears_a_backlog_larger_than_one_ack_request(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    """The server takes at most MAX_ACK_IDS ids per ack: a backlog of 2,500 once ended in a
    refused ack, exit 1 and the same backlog delivered again by every later `read`."""
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    backlog = [message(i, body=f"m{i}") for i in range(1, 2501)]
    r0.script("Subscribe", stream(*backlog, CAUGHT_UP))
    for count in (MAX_ACK_IDS, MAX_ACK_IDS, 500):
        r0.script("Ack", answer(chat_pb2.AckReply(acked_count=count)))
    r0.script("Logout", LOGGED_OUT)

    status, out, err = run(capsys, "--servers", servers(r0), "read", "--user", "bob")

    assert status == 0, err
    assert out.count("\n") == 2500
    acks = [list(ack.message_ids) for ack in r0.requests("Ack")]
    assert [len(a) for a in acks] == [MAX_ACK_IDS, MAX_ACK_IDS, 500]
    assert [i for a in acks for i in a] == list(range(1, 2501))


def test_read_with_wait_prints_live_messages(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script("Subscribe", stream(message(1), CAUGHT_UP, message(2)))
    r0.script("Ack", answer(chat_pb2.AckReply(acked_count=1)))
    r0.script("Logout", LOGGED_OUT)

    status, out, _ = run(capsys, "--servers", servers(r0), "read", "--user", "bob", "--wait", "0.3")

    assert status == 0
    assert out == f"1\t{at(1)}\talice\thi\n2\t{at(2)}\talice\thi\n"
    assert [list(ack.message_ids) for ack in r0.requests("Ack")] == [[1], [2]]


def test_list_prints_one_name_per_line(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    replicas[0].script(
        "ListAccounts", answer(chat_pb2.ListAccountsReply(usernames=["alice", "albert"]))
    )

    status, out, _ = run(capsys, "--servers", servers(replicas[0]), "list", "al*")

    assert (status, out) == (0, "alice\nalbert\n")
    assert replicas[0].requests("ListAccounts")[0].pattern == "al*"


def test_history_prints_tab_separated_lines(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script(
        "History",
        answer(
            chat_pb2.HistoryReply(
                messages=[
                    chat_pb2.Message(
                        message_id=3,
                        sender="bob",
                        recipient="al",
                        body="a\nb",
                        sent_at_unix_ms=T0_MS + 3000,
                    )
                ]
            )
        ),
    )
    r0.script("Logout", LOGGED_OUT)

    status, out, _ = run(
        capsys, "--servers", servers(r0), "history", "--user", "bob", "--with", "al"
    )

    assert (status, out) == (0, f"3\t{at(3)}\tbob\tal\ta\\nb\n")


def test_history_last_asks_for_the_newest_and_prints_them_oldest_first(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    newest = [
        chat_pb2.Message(
            message_id=i,
            sender="bob",
            recipient="al",
            body=f"m{i}",
            sent_at_unix_ms=T0_MS + 1000 * i,
        )
        for i in (9, 7)
    ]
    r0.script(
        "History",
        answer(chat_pb2.HistoryReply(messages=newest, next_page_token="7")),
    )
    r0.script("Logout", LOGGED_OUT)

    status, out, _ = run(
        capsys, "--servers", servers(r0), "history", "--user", "bob", "--with", "al", "--last", "2"
    )

    assert (status, out) == (0, f"7\t{at(7)}\tbob\tal\tm7\n9\t{at(9)}\tbob\tal\tm9\n")
    (request,) = r0.requests("History")
    assert request.newest_first and request.page_size == 2, "one page, and no more asked"


def test_delete_account_confirms_with_the_password(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    r0 = replicas[0]
    r0.script("Login", LOGGED_IN)
    r0.script("DeleteAccount", answer(chat_pb2.DeleteAccountReply()))

    status, _, _ = run(capsys, "--servers", servers(r0), "delete-account", "--user", "bob")

    assert status == 0
    assert r0.requests("DeleteAccount")[0].password == "secret"
    assert r0.requests("Logout") == []


def test_status_prints_a_table(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    replicas[0].script(
        "ClusterStatus",
        answer(
            chat_pb2.ClusterStatusReply(
                primary_known=True,
                replicas=[
                    chat_pb2.ReplicaStatus(
                        index=0,
                        address="h:1",
                        role="primary",
                        last_seq=9,
                        in_sync=True,
                        reachable=True,
                    ),
                    chat_pb2.ReplicaStatus(index=1, address="h:2", role="secondary", lag=2),
                ],
            )
        ),
    )

    status, out, _ = run(capsys, "--servers", servers(replicas[0]), "status")

    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "index",
        "address",
        "role",
        "epoch",
        "last",
        "seq",
        "applied",
        "seq",
        "lag",
        "in-sync",
        "knows",
        "it",
        "reachable",
    ]
    assert lines[1].split() == ["0", "h:1", "primary", "0", "9", "0", "0", "yes", "no", "yes"]
    # Replica 1 did not answer the last probe: what is not known shows as "-", not as 0.
    assert lines[2].split() == ["1", "h:2", "-", "-", "-", "-", "-", "no", "-", "no"]
    assert lines[3] == "primary: replica 0 (answered by replica 0)"


def test_missing_password_without_a_terminal(
    capsys: pytest.CaptureFixture[str],
    replicas: list[FakeReplica],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    status, _, err = run(
        capsys,
        "--servers",
        servers(replicas[0]),
        "send",
        "--user",
        "b",
        "--to",
        "a",
        "x",
        environ={},
    )

    assert status == 1
    assert_one_error_line(err, "no password: set CHAT_PASSWORD or run on a terminal")
    assert replicas[0].received == []


def test_keyboard_interrupt_is_one_line(
    capsys: pytest.CaptureFixture[str],
    replicas: list[FakeReplica],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("client.library.ChatClient.register", interrupted)

    status, _, err = run(capsys, "--servers", servers(replicas[0]), "register", "bob")

    assert status == 1
    assert_one_error_line(err, "interrupted")


def test_read_and_history_neutralise_control_characters(
    capsys: pytest.CaptureFixture[str], replicas: list[FakeReplica]
) -> None:
    """A sender cannot drive the reader's terminal: ESC sequences, BEL, NUL, DEL and C1
    controls print as \\xNN; tab, newline and backslash as before."""
    r0 = replicas[0]
    nasty = "\x1b[2J\x1b]0;owned\x07bell\x00nul\x7fdel\x9bcsi\ttab\\"
    r0.script("Login", LOGGED_IN)
    r0.script("Subscribe", stream(message(1, body=nasty), CAUGHT_UP))
    r0.script("Ack", answer(chat_pb2.AckReply(acked_count=1)))
    r0.script(
        "History",
        answer(
            chat_pb2.HistoryReply(
                messages=[
                    chat_pb2.Message(message_id=1, sender="alice", recipient="bob", body=nasty)
                ]
            )
        ),
    )
    r0.script("Logout", LOGGED_OUT)
    escaped = "\\x1b[2J\\x1b]0;owned\\x07bell\\x00nul\\x7fdel\\x9bcsi\\ttab\\\\"
    for argv in (["read", "--user", "bob"], ["history", "--user", "bob", "--with", "alice"]):
        status, out, _ = run(capsys, "--servers", servers(r0), *argv)
        assert status == 0
        assert out.endswith("\t" + escaped + "\n"), out
        assert not any(ord(c) < 0x20 and c not in "\t\n" for c in out), repr(out)
        assert not any(0x7F <= ord(c) < 0xA0 for c in out), repr(out)
