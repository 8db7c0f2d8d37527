"""`python -m client admin member ...`: the cluster secret, the table and the confirming lines,
one-line errors with their exit status, and arguments checked before anything is sent."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from client.cli import main
from tests.client.admin_fakes import (
    SECRET,
    FakeAdminReplica,
    member,
    members_reply,
    membership_reply,
    refuse,
)
from tests.client.chat_fakes import answer

ENV = {"CHAT_CLUSTER_SECRET": SECRET}
THREE = [member(0, role="primary"), member(1), member(2)]


def run(
    capsys: pytest.CaptureFixture[str],
    replicas: list[FakeAdminReplica],
    *argv: str,
    environ: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    servers = ",".join(replica.address for replica in replicas)
    # (a short timeout: a refusal that were retried would fail the test, not hang it)
    status = main(
        ["--servers", servers, "--timeout", "2", *argv], environ=ENV if environ is None else environ
    )
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1
    assert "Traceback" not in err
    return err.removeprefix("error: ").removesuffix("\n")


def test_list_prints_a_table_and_the_membership_state(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    learner = member(3, voter=False, in_sync=False, lag=1200)
    admin_replicas[0].script(
        "ListMembers", answer(members_reply([*THREE, learner], removed=[5, 4], membership_seq=77))
    )

    status, out, err = run(capsys, admin_replicas, "admin", "member", "list")

    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "index  address          member   role       in-sync  lag   reachable  epoch",
        "0      127.0.0.1:50051  voter    primary    yes      0     yes        3",
        "1      127.0.0.1:50052  voter    secondary  yes      0     yes        3",
        "2      127.0.0.1:50053  voter    secondary  yes      0     yes        3",
        "3      127.0.0.1:50054  learner  secondary  no       1200  yes        3",
        "membership: seq 77, committed",
        "removed: 4, 5",
        "primary: replica 0 (answered by replica 0)",
    ]
    assert admin_replicas[0].secrets() == [SECRET]


def test_list_says_a_change_is_in_progress_and_what_it_does_not_know(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    members = [
        member(0, role="secondary"),
        member(1, reachable=False, peer_address="10.0.0.2:50061"),
    ]
    admin_replicas[0].script(
        "ListMembers",
        answer(
            members_reply(members, primary_index=None, membership_seq=9, change_committed=False)
        ),
    )

    status, out, _ = run(capsys, admin_replicas, "admin", "member", "list")

    lines = out.splitlines()
    assert status == 0
    assert lines[:3] == [
        "index  address          member  role       in-sync  lag  reachable  epoch  peer address",
        "0      127.0.0.1:50051  voter   secondary  -        -    yes        3      -",
        "1      127.0.0.1:50052  voter   -          -        -    no         -      10.0.0.2:50061",
    ]
    assert lines[3] == (
        "membership: seq 9, a change in progress (not committed yet; no other change is"
        " accepted until it is)"
    )
    assert lines[4:] == ["removed: none", "primary: unknown (answered by replica 0)"]


def test_add_prints_one_line_with_what_to_do_next(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    admin_replicas[0].script(
        "AddMember", answer(membership_reply(1234, [*THREE, member(3, voter=False)]))
    )

    status, out, err = run(
        capsys,
        admin_replicas,
        "admin",
        "member",
        "add",
        "--index",
        "3",
        "--address",
        "127.0.0.1:50054",
        "--peer-address",
        "127.0.0.1:50064",
    )

    assert (status, err) == (0, "")
    assert out == (
        "replica 3 added as a learner at 127.0.0.1:50054 (seq 1234); promote it once it has"
        " caught up: python -m client admin member promote 3\n"
    )
    (request,) = admin_replicas[0].requests("AddMember")
    assert (request.index, request.address, request.peer_address) == (
        3,
        "127.0.0.1:50054",
        "127.0.0.1:50064",
    )


@pytest.mark.parametrize(
    ("command", "method", "expected"),
    [
        ("promote", "PromoteMember", "replica 3 promoted to voter (seq 1240)"),
        (
            "remove",
            "RemoveMember",
            "replica 3 removed (seq 1240); its index is never used again, and its process"
            " stops by itself",
        ),
    ],
)
def test_promote_and_remove_print_one_line(
    capsys: pytest.CaptureFixture[str],
    admin_replicas: list[FakeAdminReplica],
    command: str,
    method: str,
    expected: str,
) -> None:
    admin_replicas[0].script(method, answer(membership_reply(1240, THREE)))

    status, out, _ = run(capsys, admin_replicas, "admin", "member", command, "3")

    assert (status, out) == (0, expected + "\n")
    assert [request.index for request in admin_replicas[0].requests(method)] == [3]


def test_quiet_leaves_out_the_confirming_line(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    admin_replicas[0].script("PromoteMember", answer(membership_reply(1240, THREE)))

    status, out, err = run(capsys, admin_replicas, "--quiet", "admin", "member", "promote", "3")

    assert (status, out, err) == (0, "", "")


def test_a_change_refused_by_the_rules_is_one_line_and_not_retried(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    r0, r1 = admin_replicas
    reason = "replica 3 is catching up: 1200 event(s) behind; promote it once it has caught up"
    r0.script(
        "PromoteMember",
        refuse(grpc.StatusCode.FAILED_PRECONDITION, reason, service_error="Refused"),
    )

    status, out, err = run(capsys, admin_replicas, "admin", "member", "promote", "3")

    assert (status, out) == (1, "")
    assert one_error_line(err) == f"{reason} (FAILED_PRECONDITION)"
    assert len(r0.metadata) == 1 and r1.received == []


def test_a_change_goes_on_to_the_primary_named(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    r0, r1 = admin_replicas
    r0.script(
        "RemoveMember",
        refuse(
            grpc.StatusCode.FAILED_PRECONDITION,
            "not the primary",
            service_error="NotPrimary",
            primary=r1.address,
        ),
    )
    r1.script("RemoveMember", answer(membership_reply(1250, THREE[:2], removed=[2])))

    status, out, _ = run(capsys, admin_replicas, "admin", "member", "remove", "2")

    assert status == 0 and out.startswith("replica 2 removed (seq 1250)")
    assert r0.requests("RemoveMember")[0].request_id == r1.requests("RemoveMember")[0].request_id


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "no cluster secret given"),
        (grpc.StatusCode.PERMISSION_DENIED, "the caller's cluster secret differs"),
    ],
)
def test_a_refused_secret_says_to_check_it(
    capsys: pytest.CaptureFixture[str],
    admin_replicas: list[FakeAdminReplica],
    code: grpc.StatusCode,
    details: str,
) -> None:
    admin_replicas[0].script("ListMembers", refuse(code, details))

    status, _, err = run(capsys, admin_replicas, "admin", "member", "list")

    assert status == 1
    assert one_error_line(err) == (
        f"{details} ({code.name}); check the cluster secret (this one came from"
        " CHAT_CLUSTER_SECRET)"
    )
    assert len(admin_replicas[0].metadata) == 1


def test_without_a_secret_nothing_is_sent(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    status, out, err = run(capsys, admin_replicas, "admin", "member", "list", environ={})

    assert (status, out) == (1, "")
    assert one_error_line(err) == (
        "no cluster secret: set CHAT_CLUSTER_SECRET or give --cluster-secret-file FILE"
    )
    assert admin_replicas[0].received == []


def test_the_secret_file_is_read_stripped_and_wins_over_the_environment(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica], tmp_path: Path
) -> None:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text("  from-the-file\n")
    admin_replicas[0].script("ListMembers", answer(members_reply(THREE)))

    status, _, _ = run(
        capsys,
        admin_replicas,
        "admin",
        "member",
        "list",
        "--cluster-secret-file",
        str(secret_file),
    )

    assert status == 0
    assert admin_replicas[0].secrets() == ["from-the-file"]

    admin_replicas[0].script(
        "ListMembers", refuse(grpc.StatusCode.PERMISSION_DENIED, "the secret differs")
    )
    status, _, err = run(
        capsys, admin_replicas, "admin", "member", "list", "--cluster-secret-file", str(secret_file)
    )

    assert status == 1
    assert one_error_line(err).endswith(f"(this one came from --cluster-secret-file {secret_file})")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (" \n", "the cluster secret file {path} is empty"),
        (None, "cannot read the cluster secret file {path}: No such file or directory"),
        ("héllo", "the cluster secret holds characters other than printable ASCII"),
    ],
)
def test_a_secret_file_that_will_not_do_is_one_line(
    capsys: pytest.CaptureFixture[str],
    admin_replicas: list[FakeAdminReplica],
    tmp_path: Path,
    content: str | None,
    expected: str,
) -> None:
    path = tmp_path / "cluster.secret"
    if content is not None:
        path.write_text(content)

    status, _, err = run(
        capsys, admin_replicas, "admin", "member", "list", "--cluster-secret-file", str(path)
    )

    assert status == 1
    assert one_error_line(err) == expected.format(path=path)
    assert admin_replicas[0].received == []


@pytest.mark.parametrize(
    "argv",
    [
        ["admin"],
        ["admin", "member"],
        ["admin", "member", "frobnicate"],
        ["admin", "member", "add", "--index", "3"],
        ["admin", "member", "add", "--index", "-1", "--address", "h:1"],
        ["admin", "member", "add", "--index", "x", "--address", "h:1"],
        ["admin", "member", "add", "--index", "3", "--address", "nohost"],
        ["admin", "member", "add", "--index", "3", "--address", "h:99999"],
        ["admin", "member", "add", "--index", "3", "--address", "h:1", "--peer-address", ":1"],
        ["admin", "member", "promote"],
        ["admin", "member", "promote", "three"],
        ["admin", "member", "remove", "4294967296"],
    ],
)
def test_usage_errors_are_one_line_exit_2_and_send_nothing(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica], argv: list[str]
) -> None:
    status, out, err = run(capsys, admin_replicas, *argv)

    assert (status, out) == (2, "")
    one_error_line(err)
    assert admin_replicas[0].received == []


def test_help_lists_the_member_commands(
    capsys: pytest.CaptureFixture[str], admin_replicas: list[FakeAdminReplica]
) -> None:
    status, out, _ = run(capsys, admin_replicas, "admin", "member", "--help")

    assert status == 0
    assert all(word in out for word in ("list", "add", "promote", "remove"))
