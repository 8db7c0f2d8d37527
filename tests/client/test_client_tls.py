"""The client over TLS against scripted in-process replicas: the happy path, and a TLS
mismatch answered at once in one line instead of retried until the timeout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import ChatClient, ChatUnavailableError, ClientHooks, ClientSettings
from client.cli import main
from client.failover import MISMATCH_ROUNDS
from protos import chat_pb2
from replica.config import TlsConfig
from tests.certs import cluster_tls, make_authority, require_openssl
from tests.client.chat_fakes import FakeReplica, FakeTime, answer, start_replica, stop_replica

REGISTERED = answer(chat_pb2.RegisterReply(username="alice"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    require_openssl()
    return cluster_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_replica(tls: TlsConfig) -> Iterator[FakeReplica]:
    credentials = grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())]
    )
    replica = start_replica(credentials)
    yield replica
    stop_replica(replica)


def client(
    addresses: list[str], fake_time: FakeTime, ca: Path | None, timeout: float = 30.0
) -> ChatClient:
    return ChatClient(
        addresses,
        ClientSettings(timeout=timeout, root_certificates=None if ca is None else ca.read_bytes()),
        hooks=ClientHooks(clock=fake_time.clock, sleep=fake_time.sleep),
    )


def test_a_client_with_the_ca_talks_tls(
    tls_replica: FakeReplica, tls: TlsConfig, fake_time: FakeTime
) -> None:
    tls_replica.script("Register", REGISTERED)
    with client([tls_replica.address], fake_time, tls.ca_file) as alice:
        assert alice.register("alice", "pw") == "alice"
    assert [r.username for r in tls_replica.requests("Register")] == ["alice"]


def test_a_plaintext_client_is_told_to_use_tls_without_waiting(
    tls_replica: FakeReplica, fake_time: FakeTime
) -> None:
    with (
        client([tls_replica.address], fake_time, None) as alice,
        pytest.raises(ChatUnavailableError) as refused,
    ):
        alice.register("alice", "pw")
    assert str(refused.value).startswith(f"the replica at {tls_replica.address} closed")
    assert "requires TLS" in str(refused.value) and "--tls-ca" in str(refused.value)
    assert len(fake_time.sleeps) == MISMATCH_ROUNDS - 1
    assert tls_replica.requests("Register") == []


def test_a_tls_client_is_told_the_replica_does_not_speak_tls(
    replicas: list[FakeReplica], tls: TlsConfig, fake_time: FakeTime
) -> None:
    with (
        client([replicas[0].address], fake_time, tls.ca_file) as alice,
        pytest.raises(ChatUnavailableError, match="does not speak TLS"),
    ):
        alice.register("alice", "pw")
    assert len(fake_time.sleeps) == MISMATCH_ROUNDS - 1


def test_a_ca_that_did_not_sign_the_replica_is_named(
    tls_replica: FakeReplica, fake_time: FakeTime, tmp_path: Path
) -> None:
    other = make_authority(tmp_path, "other")
    with (
        client([tls_replica.address], fake_time, other.cert_file) as alice,
        pytest.raises(ChatUnavailableError, match="certificate not signed by the CA"),
    ):
        alice.register("alice", "pw")


def test_one_mismatched_replica_does_not_stop_failover(
    tls_replica: FakeReplica, tls: TlsConfig, fake_time: FakeTime, tmp_path: Path
) -> None:
    # The first address is a plaintext replica; the TLS one answers.
    plain = start_replica()
    try:
        tls_replica.script("Register", REGISTERED)
        with client([plain.address, tls_replica.address], fake_time, tls.ca_file) as alice:
            assert alice.register("alice", "pw") == "alice"
        assert alice.connected_address == tls_replica.address
    finally:
        stop_replica(plain)


def test_a_mismatch_that_persists_is_the_message_at_the_deadline(
    tls_replica: FakeReplica, fake_time: FakeTime, dead_address: str
) -> None:
    # A dead replica in every round keeps the early answer off; the mismatch is still named.
    with (
        client([tls_replica.address, dead_address], fake_time, None, timeout=1.0) as alice,
        pytest.raises(ChatUnavailableError, match="requires TLS"),
    ):
        alice.register("alice", "pw")
    assert sum(fake_time.sleeps) >= 1.0 - 1e-9


def test_cli_tls_ca_problems_are_one_line(
    capsys: pytest.CaptureFixture[str], tls: TlsConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    assert main(["--tls-ca", str(missing), "status"], environ={}) == 1
    assert capsys.readouterr().err == (
        f"error: cannot read the TLS CA file {missing}: No such file or directory\n"
    )
    assert main(["status"], environ={"CHAT_TLS_CA": str(tls.key_file)}) == 1
    assert capsys.readouterr().err == (
        f"error: the TLS CA file {tls.key_file} holds no PEM certificate\n"
    )


def test_cli_uses_the_ca_from_the_environment(
    capsys: pytest.CaptureFixture[str], tls_replica: FakeReplica, tls: TlsConfig
) -> None:
    tls_replica.script("Register", REGISTERED)
    environ = {
        "CHAT_SERVERS": tls_replica.address,
        "CHAT_TLS_CA": str(tls.ca_file),
        "CHAT_PASSWORD": "pw",
    }
    assert main(["register", "alice"], environ=environ) == 0
    assert capsys.readouterr().out == "alice\n"
