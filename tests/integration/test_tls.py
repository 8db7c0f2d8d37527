"""A real three-replica cluster with TLS on: clients over TLS, replicas over mutual TLS on their
peer_address, and every way in without the right certificate refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import AdminClient, ChatError, ClientSettings, Refused
from client.errors import ChatUnavailableError
from client.library import ChatClient
from client.models import Message
from protos import chat_pb2, chat_pb2_grpc
from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from protos.wire import CLUSTER_SECRET_KEY
from replica.config import TlsConfig
from tests.certs import Authority, cluster_tls, issue, make_authority, require_openssl
from tests.integration.cluster_checks import (
    PASSWORD,
    status,
    wait_all_running_follow,
    wait_converged,
    wait_for_primary,
)
from testsupport.harness import DEFAULT_SECRET, REPO_ROOT, ClusterProcesses, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    require_openssl()
    return cluster_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def outsider(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Path, Path]:
    """Another CA, and a certificate it signed that is otherwise fit for a replica."""
    require_openssl()
    directory = tmp_path_factory.mktemp("outsider")
    authority = make_authority(directory, "other-ca")
    cert, key = issue(authority, directory, "intruder")
    return authority, cert, key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls: TlsConfig) -> Iterator[ClusterProcesses]:
    """One cluster for the tests that do not kill anything."""
    with ClusterProcesses(tmp_path_factory.mktemp("cluster"), 3, tls=tls) as made:
        made.start_all()
        wait_all_running_follow(made, wait_for_primary(made))
        yield made


def tls_client(cluster: ClusterProcesses, tls: TlsConfig, timeout: float = 20.0) -> ChatClient:
    return ChatClient(
        cluster.addresses,
        ClientSettings(timeout=timeout, root_certificates=tls.ca_file.read_bytes()),
    )


def test_a_tls_client_registers_logs_in_sends_and_receives(
    cluster: ClusterProcesses, tls: TlsConfig
) -> None:
    with tls_client(cluster, tls) as alice, tls_client(cluster, tls) as bob:
        alice.register("alice", PASSWORD)
        bob.register("bob", PASSWORD)
        alice.login("alice", PASSWORD)
        bob.login("bob", PASSWORD)
        sent = alice.send("bob", "over tls")
        subscription = bob.subscribe()
        try:
            received = next(item for item in subscription if isinstance(item, Message))
        finally:
            subscription.cancel()
        assert (received.message_id, received.sender, received.body) == (
            sent,
            "alice",
            "over tls",
        )
        assert [m.body for m in alice.history("bob")] == ["over tls"]


def test_secondaries_replicate_over_mutual_tls(cluster: ClusterProcesses, tls: TlsConfig) -> None:
    primary = wait_for_primary(cluster)
    with tls_client(cluster, tls) as client:
        client.register("carol", PASSWORD)
        client.login("carol", PASSWORD)
        for n in range(5):
            client.send("carol", f"note {n}")
    wait_converged(cluster)  # every replica's own database holds the same log and tables

    def all_in_sync_without_lag() -> bool:
        # The primary learns its secondaries' positions from its next probes.
        reply = status(cluster, primary)
        return reply is not None and all(
            r.reachable and r.in_sync and r.lag == 0 and r.last_seq >= 7 for r in reply.replicas
        )

    wait_until(all_in_sync_without_lag, 10, lambda: f"not all in sync: {status(cluster, primary)}")


def test_a_plaintext_client_is_told_to_use_tls(cluster: ClusterProcesses) -> None:
    started = time.monotonic()
    with (
        ChatClient(cluster.addresses, ClientSettings(timeout=20.0)) as client,
        pytest.raises(ChatUnavailableError) as refused,
    ):
        client.register("mallory", PASSWORD)
    assert time.monotonic() - started < 10, "a TLS mismatch must not wait out the timeout"
    assert "requires TLS" in str(refused.value)
    assert "--tls-ca" in str(refused.value)


def cli(cluster: ClusterProcesses, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m client ARGS` against `cluster`, with no CHAT_* or GRPC_* from this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "GRPC_"))}
    env["CHAT_SERVERS"] = ",".join(cluster.addresses)
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_without_tls_ca_fails_in_one_line(
    cluster: ClusterProcesses, tls: TlsConfig
) -> None:
    plain = cli(cluster, "status")
    assert plain.returncode == 1
    assert plain.stderr.count("\n") == 1, plain.stderr
    assert plain.stderr.startswith("error: ") and "--tls-ca" in plain.stderr
    with_ca = cli(cluster, "--tls-ca", str(tls.ca_file), "status")
    assert with_ca.returncode == 0, with_ca.stderr
    assert "primary" in with_ca.stdout


def probe(address: str, credentials: grpc.ChannelCredentials, secret: str | None) -> grpc.Call:
    """Calls Replication.Probe; the finished call (its code and details)."""
    metadata = () if secret is None else ((CLUSTER_SECRET_KEY, secret),)
    with grpc.secure_channel(address, credentials) as channel:
        stub = rpb_grpc.ReplicationStub(channel)
        try:
            _, call = stub.Probe.with_call(rpb.ProbeRequest(), metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc
    return call  # type: ignore[no-any-return]


def test_replication_rpcs_need_a_certificate_from_the_cluster_ca(
    cluster: ClusterProcesses, tls: TlsConfig, outsider: tuple[Authority, Path, Path]
) -> None:
    _, intruder_cert, intruder_key = outsider
    ca = tls.ca_file.read_bytes()
    replica_cert = tls.cert_file.read_bytes()
    replica_key = tls.key_file.read_bytes()
    no_certificate = grpc.ssl_channel_credentials(ca)
    other_ca_certificate = grpc.ssl_channel_credentials(
        ca, intruder_key.read_bytes(), intruder_cert.read_bytes()
    )
    cluster_certificate = grpc.ssl_channel_credentials(ca, replica_key, replica_cert)
    spec = cluster.specs[0]
    assert spec.peer_address is not None

    # The client port never asks for a certificate: even with the secret, Replication refuses.
    for credentials in (no_certificate, other_ca_certificate):
        call = probe(spec.address, credentials, DEFAULT_SECRET)
        assert call.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "mutual TLS" in call.details()
    # The peer port refuses the TLS handshake itself without a certificate from the CA.
    for credentials in (no_certificate, other_ca_certificate):
        call = probe(spec.peer_address, credentials, DEFAULT_SECRET)
        assert call.code() == grpc.StatusCode.UNAVAILABLE
    # The certificate alone is not enough either: the cluster secret is still checked.
    assert probe(spec.peer_address, cluster_certificate, None).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert probe(spec.peer_address, cluster_certificate, "not-the-secret").code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert probe(spec.peer_address, cluster_certificate, DEFAULT_SECRET).code() == (
        grpc.StatusCode.OK
    )


def test_after_the_primary_is_killed_the_new_one_serves_tls_with_history_intact(
    tmp_path: Path, tls: TlsConfig
) -> None:
    with ClusterProcesses(tmp_path / "cluster", 3, tls=tls) as cluster:
        cluster.start_all()
        primary = wait_for_primary(cluster)
        wait_all_running_follow(cluster, primary)
        with tls_client(cluster, tls) as client:
            client.register("dave", PASSWORD)
            client.register("erin", PASSWORD)
            client.login("dave", PASSWORD)
            before = [client.send("erin", f"before {n}") for n in range(3)]
            cluster.kill(primary)
            successor = wait_for_primary(cluster, [i for i in range(3) if i != primary])
            after = client.send("erin", "after")
            assert client.connected_address == cluster.address(successor)
            history = [(m.message_id, m.body) for m in client.history("erin")]
        assert history == [
            *zip(before, ["before 0", "before 1", "before 2"], strict=True),
            (after, "after"),
        ]


def test_a_replica_with_an_unusable_key_exits_with_one_line(
    tmp_path: Path, tls: TlsConfig, outsider: tuple[Authority, Path, Path]
) -> None:
    _, _, intruder_key = outsider
    broken = TlsConfig(cert_file=tls.cert_file, key_file=intruder_key, ca_file=tls.ca_file)
    with ClusterProcesses(tmp_path / "cluster", 1, tls=broken) as cluster:
        cluster.start(0, wait=False)
        assert cluster.wait_exit(0, timeout=30) == 1
        log = cluster.log_text(0)
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log
    assert f"key_file {intruder_key} does not belong to cert_file" in errors[0]


def test_a_tls_client_is_told_when_the_cluster_does_not_speak_tls(
    tmp_path: Path, tls: TlsConfig
) -> None:
    with ClusterProcesses(tmp_path / "cluster", 1) as plain:
        plain.start_all()
        started = time.monotonic()
        with (
            tls_client(plain, tls) as client,
            pytest.raises(ChatUnavailableError) as refused,
        ):
            client.register("frank", PASSWORD)
        assert time.monotonic() - started < 10
        assert "does not speak TLS" in str(refused.value)
        # gRPC's own handshake log lines must not surround the CLI's one line.
        with_ca = cli(plain, "--tls-ca", str(tls.ca_file), "status")
        assert with_ca.returncode == 1
        assert with_ca.stderr.count("\n") == 1, with_ca.stderr
        assert with_ca.stderr.startswith("error: the replica at ")
        assert "does not speak TLS" in with_ca.stderr


def test_repeated_handshake_failures_are_logged_once_a_minute(
    tmp_path: Path, tls: TlsConfig
) -> None:
    """A plaintext client retrying against a TLS replica: gRPC logs each failed handshake;
    the replica's log gets the first of the minute, the rest summed up later."""
    # As a replica runs by hand, whatever GRPC_VERBOSITY this test process was given.
    verbose = {"GRPC_VERBOSITY": "INFO"}
    with ClusterProcesses(tmp_path / "one", 1, tls=tls, env=verbose) as one:
        one.start_all()
        for _ in range(20):  # a fresh channel each time: a handshake each time
            channel = grpc.insecure_channel(
                one.address(0), options=[("grpc.use_local_subchannel_pool", 1)]
            )
            with contextlib.suppress(grpc.RpcError):
                chat_pb2_grpc.ChatStub(channel).ClusterStatus(  # type: ignore[no-untyped-call]
                    chat_pb2.ClusterStatusRequest(), timeout=1
                )
            channel.close()
        # Still serving, and the replica's own lines still reach its log.
        assert one.health_status(0) is not None
        one.terminate(0)
        log = one.log_text(0)
    assert log.count("Handshake failed") == 1, log
    assert "shutting down" in log or "stopped" in log, log[-2000:]


def test_handshake_lines_are_summed_up_when_the_minute_ends() -> None:
    from replica.server.stderr_filter import HandshakeLines

    now = [0.0]
    lines = HandshakeLines(60.0, clock=lambda: now[0])
    failed = b"E ssl_transport_security.cc] Handshake failed with error SSL_ERROR_SSL\n"
    assert lines.line(b"INFO replica: serving\n") == [b"INFO replica: serving\n"]
    assert lines.line(failed) == [failed]
    assert [lines.line(failed) for _ in range(4)] == [[]] * 4
    assert lines.line(b"other\n") == [b"other\n"]  # everything else passes at once
    assert lines.tick() == []
    now[0] = 61.0
    (summary,) = lines.tick()
    assert summary.startswith(b"... and 4 more TLS handshake failure(s) in the last 60 s")
    assert lines.line(failed) == [failed]  # a new minute: the first passes again


def test_a_replica_joins_a_tls_cluster_and_becomes_a_voter(tmp_path: Path, tls: TlsConfig) -> None:
    """--join with --peer-address and the cluster's certificate (the [tls] of a config whose
    replicas it ignores): added over the client port with the secret, caught up over mutual
    TLS, promoted; refused without a peer address."""
    with ClusterProcesses(tmp_path / "cluster", 3, tls=tls) as cluster:
        cluster.start_all()
        primary = wait_for_primary(cluster)
        new = cluster.add_joiner()
        cluster.start(new)
        spec = cluster.specs[new]
        settings = ClientSettings(timeout=20, root_certificates=tls.ca_file.read_bytes())
        with AdminClient(cluster.addresses[:3], DEFAULT_SECRET, settings) as admin:
            with pytest.raises(ChatError, match="needs a peer_address"):
                admin.add_member(new, spec.address)
            admin.add_member(new, spec.address, spec.peer_address)

            def promoted() -> bool:
                try:
                    admin.promote_member(new)
                except Refused:
                    return False
                return True

            wait_until(promoted, 30, lambda: cluster.log_tail(new))
            voters = [m.index for m in admin.list_members().members if m.voter]
        assert voters == [0, 1, 2, new]
        with tls_client(cluster, tls) as client:
            client.register("dave", PASSWORD)
        cluster.kill(primary)
        survivors = [i for i in range(4) if i != primary]
        wait_for_primary(cluster, survivors)
        with tls_client(cluster, tls) as client:
            client.login("dave", PASSWORD)
