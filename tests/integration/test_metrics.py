"""Prometheus metrics scraped from real replica processes over HTTP and parsed with
prometheus-client's own parser: they say what the cluster did."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import ClientSettings
from client.errors import ChatError
from client.library import ChatClient
from client.models import CaughtUp, Message
from tests.integration.cluster_checks import (
    PASSWORD,
    SETTINGS,
    register_users,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, free_port, wait_until

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# Sends and the subscription over Session streams (asked for: unary is the client's default),
# whose per-request metrics these tests read.
STREAMING = ClientSettings(timeout=20.0, session_stream=True)


def scrape(cluster: ClusterProcesses, index: int) -> Samples:
    address = cluster.specs[index].metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


SESSION_RPC = {"grpc_type": "bidi_stream", "grpc_service": "chat.v1.Chat", "grpc_method": "Session"}


HANDLED = "grpc_server_handled_total"


def sessions_handled(samples: Samples) -> float:
    """Session RPCs that ended, whatever their code."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == HANDLED and SESSION_RPC.items() <= dict(labels).items()
    )


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_scrape_shows_roles_seqs_rpcs_latencies_and_in_sync_changes(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    cluster = cluster_processes(3, metrics=True, settings=SETTINGS)
    cluster.start_all()
    primary = wait_for_primary(cluster)
    wait_all_running_follow(cluster, primary)
    register_users(cluster, ["alice", "bob"])
    samples = send_five_to_a_subscriber_and_scrape(cluster, primary)
    assert_rpcs_and_latencies(samples)
    assert_primary_role_and_seqs(samples)
    secondaries = [i for i in range(3) if i != primary]
    for index in secondaries:
        theirs = scrape(cluster, index)
        assert value(theirs, "chat_role", role="secondary") == 1
        assert value(theirs, "chat_role", role="primary") == 0
        assert (value(theirs, "chat_replication_streams_opened_total") or 0) >= 1
        assert value(theirs, "chat_has_primary") == 1
    assert value(samples, "chat_in_sync_expands_total") == 0  # voters start in the set
    assert_in_sync_shrinks_then_expands(cluster, primary, secondaries[0])


def send_five_to_a_subscriber_and_scrape(cluster: ClusterProcesses, primary: int) -> Samples:
    """alice sends bob, who is subscribed, five messages and one to nobody; the primary's
    samples once bob has the five, scraped while his subscription is still open."""
    received: list[Message] = []
    subscribed = threading.Event()
    with ChatClient(cluster.addresses, STREAMING) as bob:
        bob.login("bob", PASSWORD)
        subscription = bob.subscribe()

        def listen() -> None:
            for item in subscription:
                if isinstance(item, CaughtUp):
                    subscribed.set()
                else:
                    received.append(item)

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert subscribed.wait(20)
        with ChatClient(cluster.addresses, STREAMING) as alice:
            alice.login("alice", PASSWORD)
            for n in range(5):
                alice.send("bob", f"m{n}")
            with pytest.raises(ChatError):
                alice.send("nobody", "refused")
        wait_until(lambda: len(received) == 5, 20, "the live messages did not arrive")
        # bob's Session stream (alice's, closed, may take the server a moment to see go: the
        # subscription gauge drops in the handler, its RPC is counted handled once the handler
        # returned -- a moment later).
        samples = wait_until(
            lambda: (
                (s := scrape(cluster, primary))
                and value(s, "chat_open_subscriptions") == 1
                and sessions_handled(s) == 1
                and s
            ),
            10,
            "alice's stream did not end",
        )
        subscription.cancel()
        listener.join(10)
    return samples


def assert_rpcs_and_latencies(samples: Samples) -> None:
    """The five sends and the refused one (over alice's Session stream, counted per request),
    by gRPC code, and their latencies; the streams themselves counted as RPCs."""
    assert value(samples, "chat_session_requests_total", request="send", grpc_code="OK") == 5
    assert value(samples, "chat_session_requests_total", request="send", grpc_code="NOT_FOUND") == 1
    assert value(samples, "grpc_server_started_total", **SESSION_RPC) == 2  # alice's and bob's
    # alice's, ended by her client's close: CANCELLED, or OK when the server read the end of
    # her requests before the cancellation.
    assert sessions_handled(samples) == 1
    ended = [c for c in ("CANCELLED", "OK") if value(samples, HANDLED, **SESSION_RPC, grpc_code=c)]
    assert len(ended) == 1, ended
    assert value(samples, "chat_send_latency_seconds_count") == 5
    assert (value(samples, "chat_delivery_latency_seconds_count") or 0) >= 5


def assert_primary_role_and_seqs(samples: Samples) -> None:
    """The primary's role, its one election, its seqs level, every replica in sync."""
    assert value(samples, "chat_role", role="primary") == 1
    assert value(samples, "chat_elections_won_total") == 1
    last = value(samples, "chat_last_seq")
    assert last is not None and last >= 5 + 4  # epoch, 2 registrations, 2 logins, 5 sends
    assert value(samples, "chat_committed_seq") == last
    assert value(samples, "chat_applied_seq") == last
    assert value(samples, "chat_unsafe_durability") == 0
    for index in range(3):
        assert value(samples, "chat_replica_in_sync", replica=str(index)) == 1
        assert value(samples, "chat_replica_lag_events", replica=str(index)) == 0


def assert_in_sync_shrinks_then_expands(
    cluster: ClusterProcesses, primary: int, secondary: int
) -> None:
    """Killing `secondary` shows on the primary as a shrink of the in-sync set (without a step
    down); restarting it, as an expand."""
    cluster.kill(secondary)

    def shrunk() -> Samples | None:
        now = scrape(cluster, primary)
        gone = value(now, "chat_replica_in_sync", replica=str(secondary)) == 0
        return now if gone and value(now, "chat_in_sync_shrinks_total") == 1 else None

    after = wait_until(shrunk, 20, "the primary's metrics never showed the secondary leave")
    assert value(after, "chat_step_downs_total") == 0
    cluster.start(secondary)

    def expanded() -> Samples | None:
        now = scrape(cluster, primary)
        back = value(now, "chat_replica_in_sync", replica=str(secondary)) == 1
        return now if back and value(now, "chat_in_sync_expands_total") == 1 else None

    wait_until(expanded, 20, "the primary's metrics never showed the secondary rejoin")


def test_a_taken_metrics_port_is_a_clear_start_up_error(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    import socket

    cluster = cluster_processes(1, metrics=True)
    holder = socket.socket()
    holder.bind(("127.0.0.1", cluster.specs[0].metrics_port or free_port("127.0.0.1")))
    holder.listen()
    try:
        cluster.start(0, wait=False)
        assert cluster.wait_exit(0, 30) == 1
    finally:
        holder.close()
    assert "cannot serve metrics on 127.0.0.1:" in cluster.log_text(0)
