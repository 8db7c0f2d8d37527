"""A replica whose projections lag its log (restored from a log-only backup, or rebuilt by a
migration) listens at once, says NOT_SERVING and why while it replays, and serves once caught
up -- instead of being silent for the whole replay."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2

import eventlog
from client import ClientSettings
from client.library import ChatClient
from eventlog import Event
from projections import EventTypes, MessageSent
from protos import chat_pb2, chat_pb2_grpc
from replica.storage.database import make_engine
from tests.integration.cluster_checks import PASSWORD, db_url, register_users, wait_for_primary
from testsupport.harness import ClusterProcesses, wait_until

pytestmark = pytest.mark.slow
UNAPPLIED = 150_000  # a second or more of replay (~100k events/s): long enough to be seen


def append_unapplied_messages(url: str, sender: tuple[int, str], recipient: tuple[int, str]) -> int:
    """Messages written to the log only, as a log-only restore leaves them; the last seq."""
    engine = make_engine(url, create_database=False)
    try:
        with engine.begin() as conn:
            last = eventlog.last_position(conn)
            now = dt.datetime(2030, 1, 1)
            for start in range(0, UNAPPLIED, 10_000):
                batch = [
                    Event(
                        last.seq + i + 1,
                        last.epoch,
                        EventTypes.MESSAGE_SENT,
                        {
                            "sender_id": sender[0],
                            "sender": sender[1],
                            "recipient_id": recipient[0],
                            "recipient": recipient[1],
                            "body": f"restored {i}",
                        },
                        f"restore-{i}",
                        now,
                    )
                    for i in range(start, min(start + 10_000, UNAPPLIED))
                ]
                eventlog.append_events(conn, batch)
            return last.seq + UNAPPLIED
    finally:
        engine.dispose()


def account_ids(url: str) -> dict[str, int]:
    engine = make_engine(url, create_database=False)
    try:
        with engine.connect() as conn:
            events = eventlog.read_events(conn, 0, 100)
        return {
            e.payload["username"]: e.seq for e in events if e.type == EventTypes.ACCOUNT_REGISTERED
        }
    finally:
        engine.dispose()


def test_a_replica_replaying_its_log_says_not_serving_and_why_then_serves(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    cluster = cluster_processes(1)
    cluster.start_all()
    wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob"])
    cluster.terminate(0)
    url = db_url(cluster, 0)
    ids = account_ids(url)
    last = append_unapplied_messages(url, (ids["alice"], "alice"), (ids["bob"], "bob"))

    cluster.start(0, wait=False)
    seen: set[int] = set()

    def answering() -> bool:
        status = cluster.health_status(0)
        if status is not None:
            seen.add(status)
        return status == health_pb2.HealthCheckResponse.NOT_SERVING

    wait_until(answering, 30, lambda: f"health NOT_SERVING while replaying (saw {seen})")
    with pytest.raises(grpc.RpcError) as refused:
        chat_pb2_grpc.ChatStub(cluster.channel(0)).ClusterStatus(
            chat_pb2.ClusterStatusRequest(), timeout=2
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert re.search(rf"replica is starting: replayed \d+ of {UNAPPLIED}", refused.value.details())
    cluster.wait_healthy(0, timeout=60)
    log = cluster.log_text(0)
    assert f"replaying {UNAPPLIED} logged events into the projections" in log
    assert f"replayed {UNAPPLIED} events in" in log
    wait_for_primary(cluster)
    with ChatClient(cluster.addresses, ClientSettings(timeout=10.0)) as client:
        client.login("bob", PASSWORD)
        history = list(client.history("alice", page_size=1000))
    assert len(history) == UNAPPLIED
    assert history[-1].message_id == last


def test_a_log_event_it_cannot_read_stops_the_replica_with_one_line_naming_its_seq(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    """A logged event this code cannot read (a newer version's type, a damaged payload) is
    never skipped: the replica does not serve, and says which seq -- no traceback."""
    cluster = cluster_processes(1)
    cluster.start_all()
    wait_for_primary(cluster)
    register_users(cluster, ["alice"])
    cluster.terminate(0)
    url = db_url(cluster, 0)
    engine = make_engine(url, create_database=False)
    try:
        with engine.begin() as conn:
            last = eventlog.last_position(conn)
            # A send without its recipient, written to the log only (as a restore would).
            damaged = {"sender_id": 2, "sender": "alice", "body": "to nobody"}
            eventlog.append_events(
                conn,
                [
                    Event(
                        last.seq + 1,
                        last.epoch,
                        MessageSent.TYPE,
                        damaged,
                        "bad",
                        dt.datetime.now(),
                    )
                ],
            )
    finally:
        engine.dispose()

    cluster.start(0, wait=False)
    assert cluster.wait_exit(0, 60) == 1
    log = cluster.log_text(0)
    assert (
        f"cannot replay the log: the message_sent event at seq {last.seq + 1}: "
        "Object missing required field `recipient_id`"
    ) in log
    assert "Traceback" not in log
