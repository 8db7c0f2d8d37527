"""Fail-slow storage with real processes: each replica's MySQL database sits behind a proxy
that can freeze it (no byte forwarded, connections kept open: a stuck disk or server).

With the primary's database frozen and two in-sync secondaries, the primary hands over once
its writes have made no progress for storage_timeout_ms, a secondary takes over, and writes
resume within storage_timeout_ms + 1 s; ClusterStatus answers throughout (from memory, or
UNAVAILABLE with the reason -- never a hang, never UNKNOWN); nothing acknowledged is lost or
duplicated, and once the database answers again the old primary rejoins and converges."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from protos import chat_pb2, chat_pb2_grpc
from tests.conftest import MYSQL_SERVER_URL, require_mysql
from tests.integration.cluster_checks import (
    HOSTS,
    SETTINGS,
    check_exactly_once,
    primary_of,
    read_inbox,
    register_users,
    seen_by,
    sending,
    wait_all_running_follow,
    wait_converged,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until
from testsupport.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STORAGE_TIMEOUT = 2.0  # the default: twice insync_timeout_ms
# How long the primary's database stays frozen: 30 s is the measure; `make test`
# uses less (the hand-over happens within the first few seconds either way).
FREEZE_SECONDS = float(os.environ.get("CHAT_FREEZE_SECONDS", "8"))


@contextmanager
def proxied_cluster(
    cluster_processes: object, min_insync: int
) -> Iterator[tuple[ClusterProcesses, list[TcpProxy]]]:
    server = make_url(MYSQL_SERVER_URL)
    target = (server.host or "127.0.0.1", server.port or 3306)
    tag = os.urandom(4).hex()
    names = [f"chat_failslow_{tag}_{i}" for i in range(len(HOSTS))]
    proxies = [TcpProxy(target) for _ in HOSTS]
    urls = [
        server.set(port=proxy.port, database=name).render_as_string(hide_password=False)
        for proxy, name in zip(proxies, names, strict=True)
    ]
    settings = {**SETTINGS, "min_insync": min_insync}
    cluster = cluster_processes(len(HOSTS), hosts=HOSTS, db_urls=urls, settings=settings)  # type: ignore[operator]
    try:
        cluster.start_all()
        yield cluster, proxies
    finally:
        for proxy in proxies:
            proxy.thaw()
        cluster.close()
        for proxy in proxies:
            proxy.close()
        engine = sa.create_engine(MYSQL_SERVER_URL + "/", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        finally:
            engine.dispose()


class StatusWatcher:
    """Asks every replica for its ClusterStatus every 0.2 s (1 s deadline) and keeps every
    answer's status code: OK or UNAVAILABLE (with a reason) are answers; anything else is
    not."""

    def __init__(self, cluster: ClusterProcesses) -> None:
        self._cluster = cluster
        self.codes: list[tuple[int, grpc.StatusCode, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stubs = {i: chat_pb2_grpc.ChatStub(cluster.channel(i)) for i in range(len(HOSTS))}

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for i, stub in self._stubs.items():
                try:
                    stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=1.0)
                    self.codes.append((i, grpc.StatusCode.OK, ""))
                except grpc.RpcError as exc:
                    self.codes.append((i, exc.code(), exc.details() or ""))

    def __enter__(self) -> StatusWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("min_insync", [1, 2])
def test_a_primary_whose_database_freezes_hands_over_within_the_storage_timeout(
    cluster_processes: object, min_insync: int
) -> None:
    require_mysql()
    with proxied_cluster(cluster_processes, min_insync) as (cluster, proxies):
        primary = wait_for_primary(cluster)
        register_users(cluster, ["alice", "bob", "dave"])
        wait_all_running_follow(cluster, primary)
        with StatusWatcher(cluster) as statuses, sending(cluster, ["alice", "bob"], "dave") as load:
            load.wait_for_acks(40)
            frozen_at, new_primary = freeze_until_taken_over(cluster, proxies, primary)
            acked = load.acknowledged_count()
            load.wait_for_acks(acked + 20, timeout=10)
            # Its health says so while its database is stalled.
            wait_until(
                lambda: cluster.health_status(primary) == NOT_SERVING,
                5,
                f"replica {primary}'s health to say NOT_SERVING",
            )
            time.sleep(max(0.0, frozen_at + FREEZE_SECONDS - time.monotonic()))  # (the fault)
            proxies[primary].thaw()
            thawed_at = time.monotonic()
            load.wait_for_acks(load.acknowledged_count() + 40, timeout=20)
            wait_until(
                lambda: cluster.health_status(primary) == SERVING,
                10,
                f"replica {primary}'s health to say SERVING again",
            )
        log = load.log
        assert new_primary != primary
        gaps = [
            (b - a, a - frozen_at)
            for a, b in zip(log.ack_times, log.ack_times[1:], strict=False)
            if b > frozen_at
        ]
        worst, at = max(gaps)
        assert worst <= STORAGE_TIMEOUT + 1.0, (
            f"no send was acknowledged for {worst:.2f}s ({at:.2f}s into the freeze); "
            f"storage timeout {STORAGE_TIMEOUT}s"
        )
        assert len(statuses.codes) >= 3 * FREEZE_SECONDS, "ClusterStatus was asked throughout"
        bad = [(i, code, d) for i, code, d in statuses.codes if code not in _ANSWERS]
        assert not bad, f"ClusterStatus did not answer: {bad[:5]}"
        during = [c for c in statuses.codes if c[1] is grpc.StatusCode.UNAVAILABLE]
        assert all("database stalled since" in d for _, _, d in during), during[:3]
        log_text = cluster.log_text(primary)
        assert "its database has made no progress" in log_text, cluster.log_tail(primary)
        assert "its database answers again" in log_text, cluster.log_tail(primary)
        # Once its database answers again, the old primary follows and converges.
        wait_converged(cluster, timeout=30)
        check_exactly_once(log, read_inbox(cluster, "dave"))
        print(
            f"min_insync={min_insync}: worst gap {worst:.2f}s at {at:.2f}s into a "
            f"{thawed_at - frozen_at:.1f}s freeze; {len(log.acknowledged)} acknowledged"
        )


_ANSWERS = (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)


def freeze_until_taken_over(
    cluster: ClusterProcesses, proxies: list[TcpProxy], primary: int
) -> tuple[float, int]:
    """Freeze the primary's database; when, and the replica that took over."""
    frozen_at = time.monotonic()
    proxies[primary].freeze()
    (successor,) = wait_until(
        lambda: _primary_now(cluster, primary),
        STORAGE_TIMEOUT + 10,
        "another replica to take over from the frozen primary",
    )
    return frozen_at, successor


def _primary_now(cluster: ClusterProcesses, old: int) -> tuple[int] | None:
    """A replica other than `old` that says it is primary (asked directly)."""
    for i in range(len(HOSTS)):
        if i != old and primary_of(cluster, i) == i:
            return (i,)
    return None


def test_a_secondary_whose_database_freezes_answers_unavailable_and_leaves_the_in_sync_set(
    cluster_processes: object,
) -> None:
    """min_insync = 2: the other secondary carries the writes once the frozen one is out of
    the in-sync set; the frozen one answers its peers UNAVAILABLE ("database stalled since"),
    says NOT_SERVING, and its executor keeps running (no "was paused": nothing it does waits
    on the database). Thawed, it catches up and everything converges."""
    require_mysql()
    with proxied_cluster(cluster_processes, 2) as (cluster, proxies):
        primary = wait_for_primary(cluster)
        register_users(cluster, ["alice", "dave"])
        wait_all_running_follow(cluster, primary)
        frozen = next(i for i in range(len(HOSTS)) if i != primary)
        with StatusWatcher(cluster) as statuses, sending(cluster, ["alice"], "dave") as load:
            load.wait_for_acks(20)
            frozen_at = time.monotonic()
            proxies[frozen].freeze()
            wait_until(
                lambda: (
                    (seen := seen_by(cluster, primary, frozen)) is not None and not seen.in_sync
                ),
                10,
                f"replica {frozen} to leave the in-sync set",
            )
            load.wait_for_acks(load.acknowledged_count() + 20, timeout=10)
            wait_until(
                lambda: cluster.health_status(frozen) == NOT_SERVING,
                5,
                f"replica {frozen}'s health to say NOT_SERVING",
            )
            time.sleep(max(0.0, frozen_at + 4.0 - time.monotonic()))  # (the fault)
            proxies[frozen].thaw()
            load.wait_for_acks(load.acknowledged_count() + 20, timeout=20)
        log = load.log
        answers = [d for i, code, d in statuses.codes if i == frozen and code != grpc.StatusCode.OK]
        assert answers and all("database stalled since" in d for d in answers), answers[:3]
        assert "was paused" not in cluster.log_text(frozen), cluster.log_tail(frozen)
        wait_converged(cluster, timeout=30)
        check_exactly_once(log, read_inbox(cluster, "dave"))


def test_a_primary_thawed_onto_a_slow_database_does_not_depose_its_successor(
    cluster_processes: object,
) -> None:
    """Found by `make chaos` (stall_db, then slow_db on the same replica): the old primary's
    database answers again, slowly; the probe round it took during the freeze was heard only
    once its position's read got through the queue, and it elected itself on those stale
    views -- a newer epoch that deposed its healthy successor, whose next elections then
    waited on the slow replica's votes: 11 s without an acknowledged send. A round heard long
    after it ended elects no one now."""
    require_mysql()
    with proxied_cluster(cluster_processes, 1) as (cluster, proxies):
        primary = wait_for_primary(cluster)
        register_users(cluster, ["alice", "bob", "dave"])
        wait_all_running_follow(cluster, primary)
        with sending(cluster, ["alice", "bob"], "dave") as load:
            load.wait_for_acks(40)
            frozen_at, successor = freeze_until_taken_over(cluster, proxies, primary)
            time.sleep(max(0.0, frozen_at + 5.0 - time.monotonic()))  # (the fault)
            proxies[primary].thaw()
            proxies[primary].delay(0.05)  # 100 ms more per round trip
            time.sleep(8.0)  # (the fault)
            proxies[primary].delay(0.0)
            load.wait_for_acks(load.acknowledged_count() + 40, timeout=20)
        times = [t for t in load.log.ack_times if t > frozen_at]
        worst = max(b - a for a, b in itertools.pairwise(times))
        assert worst <= STORAGE_TIMEOUT + 1.0, f"no send acknowledged for {worst:.2f}s"
        assert "a newer epoch" not in cluster.log_text(successor), cluster.log_tail(successor)
        wait_converged(cluster, timeout=30)
        check_exactly_once(load.log, read_inbox(cluster, "dave"))
