"""Shared fixtures: a database per backend (SQLite file, MySQL database) with the schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from hypothesis import settings

from replica.storage.database import make_engine, upgrade_schema
from testsupport.databases import drop_mysql_database
from testsupport.harness import ClusterProcesses, live_clusters
from testsupport.mariadb import MariaDBServer, MariaDBUnavailable
from testsupport.netns import hosts_problem
from testsupport.prometheus import tool as prometheus_tool

MYSQL_SERVER_URL = os.environ.get(
    "CHAT_TEST_MYSQL_URL", "mysql+mysqlconnector://root@127.0.0.1:3306"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Database round trips make example durations vary too much for a deadline; CI replays the
# same examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _mysql_reachable() -> str | None:
    """None if the server answers, else why not."""
    engine = sa.create_engine(MYSQL_SERVER_URL + "/", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any driver error means "not reachable"
        return f"MySQL at {MYSQL_SERVER_URL} is not reachable: {exc.__class__.__name__}: {exc}"
    finally:
        engine.dispose()


_MYSQL_PROBLEM: list[str | None] = []


def skip_unless_ci(problem: str, what: str = "this test") -> NoReturn:
    """Skip for `problem` -- but fail under CI=true, where every test must run."""
    if IN_CI:
        pytest.fail(f"{problem} (CI=true: {what} must run, not skip)")
    pytest.skip(problem)


def require_mysql() -> None:
    if not _MYSQL_PROBLEM:
        _MYSQL_PROBLEM.append(_mysql_reachable())
    problem = _MYSQL_PROBLEM[0]
    if problem is not None:
        skip_unless_ci(problem, "MySQL tests")


def require_test_hosts() -> None:
    """Skip (fail under CI=true) where test hosts cannot be made (testsupport/netns.py)."""
    problem = hosts_problem()
    if problem is not None:
        skip_unless_ci(problem, "the test-host tests")


def require_prometheus_tool(name: str) -> str:
    """The path of `prometheus` or `promtool` (testsupport/prometheus.py); skips (fails under
    CI=true) where there is none."""
    found = prometheus_tool(name)
    if found is not None:
        return found
    skip_unless_ci(f"{name} is missing: `make prometheus-tools` unpacks it under .venv")


@contextmanager
def own_mariadb(base_dir: Path, options: tuple[str, ...] = ()) -> Iterator[MariaDBServer]:
    """A MariaDB server of the test's own on loopback (testsupport/mariadb.py), installed and
    answering; stopped and removed afterwards. Skips (fails under CI=true) where this machine
    cannot run one."""
    server = MariaDBServer(base_dir, options=options)
    try:
        server.install()
    except MariaDBUnavailable as exc:
        server.close()
        skip_unless_ci(str(exc))
    except BaseException:
        server.close()
        raise
    try:
        yield server
    finally:
        server.close()


class DatabaseFactory:
    """Makes fresh, migrated databases of one backend and removes them afterwards."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._made: list[tuple[str, sa.Engine]] = []
        # Every MySQL database named here, also those only a subprocess created (a replica,
        # `rebuild --into`): each is dropped at cleanup, whoever made it.
        self._named: list[str] = []

    def url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self._tmp_path / f'db-{uuid.uuid4().hex[:8]}.db'}"
        url = f"{MYSQL_SERVER_URL}/chat_test_{uuid.uuid4().hex[:12]}"
        self._named.append(url)
        return url

    def engine(self, url: str | None = None, *, migrate: bool = True) -> sa.Engine:
        url = url or self.url()
        engine = make_engine(url)
        if migrate:
            upgrade_schema(engine)
        self._made.append((url, engine))
        return engine

    def cleanup(self) -> None:
        for _url, engine in self._made:
            engine.dispose()
        if self.backend == "mysql":
            for url in dict.fromkeys([*self._named, *(url for url, _ in self._made)]):
                drop_mysql_database(url)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "mysql":
        require_mysql()
    return str(request.param)


@pytest.fixture
def databases(backend: str, tmp_path: Path) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(backend, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def engine(databases: DatabaseFactory) -> sa.Engine:
    return databases.engine()


@pytest.fixture
def cluster_processes(tmp_path: Path) -> Iterator[Callable[..., ClusterProcesses]]:
    """A factory of ClusterProcesses (see testsupport/harness.py) under tmp_path:
    `cluster_processes(3, hosts=[...], settings={...})`. Every process they started is killed
    at teardown, pass or fail."""
    made: list[ClusterProcesses] = []

    def make(replicas: int = 1, **kwargs: Any) -> ClusterProcesses:
        cluster = ClusterProcesses(tmp_path / f"cluster-{len(made)}", replicas, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report shows the log tail of every replica process still around."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        for cluster in live_clusters():
            for spec in cluster.specs:
                if spec.log_path.exists():
                    title = f"replica {spec.index} log ({cluster.base_dir.name})"
                    report.sections.append((title, cluster.log_tail(spec.index, 60)))
    return report
