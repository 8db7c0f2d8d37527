"""One MariaDB server per test host: `mariadbd` started inside the host's network namespace
with a datadir, socket and port of its own and a small buffer pool, listening on the host's
address only -- so a replica's database lives and dies with its host, as in production.

The harness administers it over its unix socket (a path, which network namespaces do not
separate); replicas and checks reach it over TCP at the host's address.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from testsupport.harness import wait_until
from testsupport.netns import HostsUnavailable, TestHosts

PORT = 3306
SERVER_OPTIONS = [
    "--no-defaults",
    "--user=root",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--skip-name-resolve",
    "--max-connections=200",
]


@dataclass(eq=False)
class HostMariaDB:
    hosts: TestHosts
    index: int
    base_dir: Path
    _process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    @property
    def datadir(self) -> Path:
        return self.base_dir / f"mariadb-{self.index}"

    @property
    def socket(self) -> Path:
        return self.datadir / "mysqld.sock"

    @property
    def address(self) -> str:
        return self.hosts.address(self.index)

    def url(self, database: str = "") -> str:
        return f"mysql+mysqlconnector://root@{self.address}:{PORT}/{database}"

    def install(self) -> None:
        """A fresh datadir, and root allowed from the host's address (root@localhost only
        otherwise)."""
        for tool in ("mariadb-install-db", "mariadbd", "mariadb"):
            if shutil.which(tool) is None:
                raise HostsUnavailable(f"a MariaDB per host needs `{tool}` (MariaDB server)")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir.mkdir(parents=True)
        subprocess.run(
            [
                "mariadb-install-db",
                *SERVER_OPTIONS,
                f"--datadir={self.datadir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.start()
        self._admin(
            "CREATE USER IF NOT EXISTS 'root'@'%'; "
            "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        )

    def _admin(self, sql: str) -> None:
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql],
            check=True,
            capture_output=True,
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def answers(self) -> bool:
        done = subprocess.run(
            ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
            capture_output=True,
        )
        return done.returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        if self.is_running():
            return
        log = open(self.datadir / "server.log", "ab")  # noqa: SIM115 -- the child holds it
        self._process = subprocess.Popen(
            [
                *self.hosts.exec_prefix(self.index),
                "mariadbd",
                *SERVER_OPTIONS,
                f"--datadir={self.datadir / 'data'}",
                f"--socket={self.socket}",
                f"--pid-file={self.datadir / 'mysqld.pid'}",
                f"--port={PORT}",
                f"--bind-address={self.address}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        process = self._process

        def up() -> bool:
            if process.poll() is not None:
                raise HostsUnavailable(
                    f"mariadbd on host {self.index} exited with {process.returncode}; see "
                    f"{self.datadir / 'server.log'}"
                )
            return self.answers()

        wait_until(up, timeout, f"mariadbd on host {self.index} to answer", interval=0.1)

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown (SIGTERM), waited for."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def close(self, *, keep: bool = False) -> None:
        self.kill()
        if not keep:
            shutil.rmtree(self.datadir, ignore_errors=True)


def start_host_servers(hosts: TestHosts, base_dir: Path) -> list[HostMariaDB]:
    """One MariaDB per host, installed and answering."""
    servers = [HostMariaDB(hosts, i, base_dir) for i in range(hosts.count)]
    try:
        for server in servers:
            server.install()
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
