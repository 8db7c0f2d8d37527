"""A replica whose database does not answer when it starts -- at boot, MariaDB comes up after
it; during maintenance -- waits for it: it listens, its health check says NOT_SERVING, every
other call is refused UNAVAILABLE saying what it waits for, its log says so once (and then every
10 s), and it serves as soon as the database answers. It exits, in one line, only for what
waiting cannot fix. Each test runs a MariaDB server of its own and stops and starts it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from client import ClientSettings
from client.library import ChatClient
from protos import chat_pb2, chat_pb2_grpc
from replica.config import ClusterConfig, ReplicaAddress, ReplicaSettings
from replica.server import node as node_module
from tests.conftest import own_mariadb
from tests.integration.cluster_checks import (
    HOSTS,
    PASSWORD,
    SETTINGS,
    register_users,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, free_port, wait_until
from testsupport.mariadb import MariaDBServer

pytestmark = [pytest.mark.slow, pytest.mark.mysql]
OUTAGE = 5.0  # seconds MariaDB stays down after the replica started (the fault, not a wait)


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    with own_mariadb(tmp_path / "mariadb") as server:
        yield server


def wait_logged(cluster: ClusterProcesses, index: int, text: str, timeout: float = 30) -> None:
    wait_until(
        lambda: text in cluster.log_text(index),
        timeout,
        lambda: f"replica {index} never logged {text!r}:\n{cluster.log_tail(index)}",
    )


def test_a_replica_waits_for_a_database_that_comes_late_then_serves(
    mariadb: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    mariadb.stop()
    cluster = cluster_processes(1, db_urls=[mariadb.url("chat_late")])
    cluster.start(0, wait=False)
    started = time.monotonic()
    where = f"127.0.0.1:{mariadb.port}/chat_late"
    wait_logged(cluster, 0, f"waiting for the database at {where}")
    assert cluster.health_status(0) == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = chat_pb2_grpc.ChatStub(cluster.channel(0))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Login(chat_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"waiting for the database at {where} since " in (refused.value.details() or "")
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
    assert cluster.is_running(0)

    mariadb.start()
    wait_for_primary(cluster)
    register_users(cluster, ["alice"])
    log = cluster.log_text(0)
    assert log.count("waiting for the database at") == 1, log  # once, not per try
    answered = re.search(rf"the database at {where} answers, after ([0-9.]+)s and (\d+) tries", log)
    assert answered is not None, log
    # Tried again and again meanwhile (0.1 s, twice as long each time, up to 2 s apart).
    assert float(answered[1]) >= OUTAGE - 1 and int(answered[2]) >= 5, answered[0]
    assert cluster.terminate(0) == 0


def test_sigterm_while_waiting_for_the_database_is_a_clean_stop(
    mariadb: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    mariadb.stop()
    cluster = cluster_processes(1, db_urls=[mariadb.url("chat_never")])
    cluster.start(0, wait=False)
    wait_logged(cluster, 0, "waiting for the database at")
    assert cluster.terminate(0, timeout=10) == 0
    assert "replica 0: stopped" in cluster.log_text(0)


def test_a_refused_login_is_not_waited_for(
    mariadb: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    url = mariadb.url("chat_x").replace("root@", "nobody@")
    cluster = cluster_processes(1, db_urls=[url])
    cluster.start(0, wait=False)
    assert cluster.wait_exit(0, 30) == 1
    log = cluster.log_text(0)
    lines = [line for line in log.splitlines() if "cannot open the database" in line]
    assert len(lines) == 1 and "Access denied for user 'nobody'" in lines[0], log
    assert "waiting for the database" not in log


def test_two_replicas_restarted_while_mariadb_is_down_wait_and_nothing_is_lost(
    mariadb: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    """make chaos's overlapping rounds, made deterministic: `kill_two` restarts two replicas
    while `restart_mariadb` has the database down. They wait for it instead of exiting, and
    the cluster acknowledges again once it is back, with every acknowledged send kept."""
    urls = [mariadb.url(f"chat_overlap_{i}") for i in range(len(HOSTS))]
    cluster = cluster_processes(len(HOSTS), hosts=HOSTS, db_urls=urls, settings=SETTINGS)
    cluster.start_all()
    primary = wait_for_primary(cluster)
    register_users(cluster, ["alice", "bob"])
    settings = ClientSettings(timeout=30.0)
    with ChatClient(cluster.addresses, settings) as alice:
        alice.login("alice", PASSWORD)
        before = [alice.send("bob", f"before {n}") for n in range(5)]
    killed = [i for i in range(len(HOSTS)) if i != primary]
    cluster.kill_together(killed)
    mariadb.stop()
    for index in killed:
        cluster.start(index, wait=False)
    for index in killed:
        wait_logged(cluster, index, "waiting for the database at")
        assert cluster.is_running(index)
    mariadb.start()
    with ChatClient(cluster.addresses, settings) as alice:
        alice.login("alice", PASSWORD)
        after = alice.send("bob", "after")
    with ChatClient(cluster.addresses, settings) as bob:
        bob.login("bob", PASSWORD)
        seen = [m.message_id for m in bob.history("alice")]
    assert seen == [*before, after]


def test_a_long_wait_is_logged_again_now_and_then_and_interrupt_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, a MySQL port where nothing listens: the wait is logged once, then again
    every DB_WAIT_LOG_SECONDS (shortened here) with the tries so far; interrupt() (what a
    signal does) ends it, and start() returns without serving."""
    monkeypatch.setattr(node_module, "DB_WAIT_LOG_SECONDS", 0.5)
    port = free_port()  # (nothing listens there: refused at once)
    config = ClusterConfig(
        replicas=(ReplicaAddress(0, f"127.0.0.1:{free_port()}"),),
        cluster_secret="a-test-secret-of-32-characters!!",
    )
    url = f"mysql+mysqlconnector://root@127.0.0.1:{port}/chat_never"
    node = node_module.ReplicaNode(ReplicaSettings(0, config, url, tmp_path))
    starting = threading.Thread(target=node.start, daemon=True)
    starting.start()
    try:
        wait_until(
            lambda: "still waiting for the database" in caplog.text,
            20,
            lambda: f"no second line about the wait: {caplog.text}",
        )
    finally:
        node.interrupt()
        starting.join(10)
        node.stop()
    assert not starting.is_alive()
    said = [r.getMessage() for r in caplog.records if "waiting for the database" in r.getMessage()]
    where = f"127.0.0.1:{port}/chat_never"
    assert said[0].startswith(f"replica 0: waiting for the database at {where} (")
    assert "Can't connect to MySQL server" in said[0]
    again = re.match(rf"replica 0: still waiting for the database at {where}: (\d+) tries", said[1])
    assert again is not None and int(again[1]) >= 3, said[1]
    assert not node._ready.is_set()  # it never served
