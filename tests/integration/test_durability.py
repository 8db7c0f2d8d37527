"""A replica refuses a MySQL server that may acknowledge commits it has not flushed
(`innodb_flush_log_at_trx_commit` other than 1, or binary logging with `sync_binlog` other
than 1) -- one line naming the setting and the fix, and nothing written -- unless the cluster
config says `allow_unsafe_durability = true`: then it runs, warns at start and says so in its
metrics. The unsafe server is a MariaDB of the test's own; the machine's stays as it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from replica.storage.database import durability_risks, make_engine
from tests.conftest import MYSQL_SERVER_URL, own_mariadb, require_mysql
from tests.integration.cluster_checks import wait_for_primary
from tests.integration.test_metrics import scrape, value
from testsupport.harness import ClusterProcesses
from testsupport.mariadb import MariaDBServer

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

UNSAFE = (
    "--innodb-flush-log-at-trx-commit=2",
    "--log-bin=binlog",
    "--server-id=1",
    "--sync-binlog=0",
)


@pytest.fixture(scope="module")
def unsafe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    with own_mariadb(tmp_path_factory.mktemp("unsafe-mariadb"), UNSAFE) as server:
        yield server


def risks_of(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return durability_risks(engine)
    finally:
        engine.dispose()


def test_the_risks_name_each_unsafe_setting_and_its_fix(unsafe_server: MariaDBServer) -> None:
    url = unsafe_server.url()
    first, second = risks_of(url)
    assert first.startswith("innodb_flush_log_at_trx_commit = 2 ") and "set it to 1" in first
    assert second.startswith("sync_binlog = 0 with binary logging on") and "set it to 1" in second
    try:
        unsafe_server.admin("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        assert [r.split(" ")[0] for r in risks_of(url)] == ["sync_binlog"]
        unsafe_server.admin("SET GLOBAL sync_binlog = 1")
        assert risks_of(url) == []
    finally:
        unsafe_server.admin(
            "SET GLOBAL innodb_flush_log_at_trx_commit = 2; SET GLOBAL sync_binlog = 0"
        )


def test_the_test_servers_and_sqlite_are_safe(tmp_path: Path) -> None:
    """Every other test's replicas run on the machine's MariaDB or on SQLite: were either
    unsafe, every replica there would refuse to start."""
    require_mysql()
    assert risks_of(MYSQL_SERVER_URL + "/") == []
    engine = make_engine(f"sqlite:///{tmp_path / 'chat.db'}")
    try:
        assert durability_risks(engine) == []
    finally:
        engine.dispose()


def test_a_replica_refuses_an_unsafe_server_in_one_line_and_writes_nothing(
    unsafe_server: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    url = unsafe_server.url("chat_refused")
    cluster = cluster_processes(1, db_urls=[url])
    cluster.start(0, wait=False)
    assert cluster.wait_exit(0, 60) == 1
    log = cluster.log_text(0)
    lines = [line for line in log.splitlines() if "may acknowledge commits" in line]
    assert len(lines) == 1, log
    assert "innodb_flush_log_at_trx_commit = 2" in lines[0]
    assert "sync_binlog = 0" in lines[0]
    assert "allow_unsafe_durability = true" in lines[0]
    assert "Traceback" not in log
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        assert sa.inspect(engine).get_table_names() == []  # no schema, no event
    finally:
        engine.dispose()


def test_allowed_unsafe_durability_runs_warns_and_shows_in_metrics(
    unsafe_server: MariaDBServer, cluster_processes: Callable[..., ClusterProcesses]
) -> None:
    cluster = cluster_processes(
        1,
        db_urls=[unsafe_server.url("chat_allowed")],
        settings={"allow_unsafe_durability": True},
        metrics=True,
    )
    cluster.start_all()
    wait_for_primary(cluster)
    assert value(scrape(cluster, 0), "chat_unsafe_durability") == 1
    warnings = [
        line for line in cluster.log_text(0).splitlines() if "UNSAFE DURABILITY ALLOWED" in line
    ]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    assert "innodb_flush_log_at_trx_commit = 2" in warnings[0]
