"""A MariaDB server of a test's own: `mariadbd` with a datadir, socket and port of its own and
a small buffer pool, listening on one address only. The test administers it over its unix
socket; replicas and checks reach it over TCP. `close()` stops it and removes its datadir.

On loopback (`MariaDBServer(tmp_path)`) it serves tests that need a server set up unlike the
machine's shared one (its durability settings, say); `testsupport.host_mariadb` runs one inside
each test host's network namespace.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from testsupport.harness import free_port, wait_until

SERVER_OPTIONS = [
    "--no-defaults",
    "--user=root",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--skip-name-resolve",
    "--max-connections=200",
]


class MariaDBUnavailable(RuntimeError):
    """This machine cannot run a MariaDB server of the test's own (a tool is missing)."""


class MariaDBServer:
    unavailable: type[Exception] = MariaDBUnavailable

    def __init__(
        self,
        base_dir: Path,
        name: str = "mariadb",
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.base_dir = base_dir
        self.name = name
        self.address = address
        self.port = free_port(address) if port is None else port
        self.options = options  # more mariadbd options (`--sync-binlog=0`, ...)
        self._process: subprocess.Popen[bytes] | None = None

    def prefix(self) -> list[str]:
        """What runs `mariadbd` (a network namespace's `ip netns exec`, say)."""
        return []

    @property
    def datadir(self) -> Path:
        return self.base_dir / self.name

    @property
    def socket(self) -> Path:
        return self.datadir / "mysqld.sock"

    def url(self, database: str = "") -> str:
        return f"mysql+mysqlconnector://root@{self.address}:{self.port}/{database}"

    def install(self) -> None:
        """A fresh datadir, started, and root allowed over TCP (root@localhost only
        otherwise)."""
        for tool in ("mariadb-install-db", "mariadbd", "mariadb"):
            if shutil.which(tool) is None:
                raise self.unavailable(f"a MariaDB of a test's own needs `{tool}` (MariaDB server)")
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
        self.admin(
            "CREATE USER IF NOT EXISTS 'root'@'%'; "
            "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        )

    def admin(self, sql: str) -> str:
        """Run `sql` as root over the unix socket; its output."""
        done = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

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
                *self.prefix(),
                "mariadbd",
                *SERVER_OPTIONS,
                *self.options,
                f"--datadir={self.datadir / 'data'}",
                f"--socket={self.socket}",
                f"--pid-file={self.datadir / 'mysqld.pid'}",
                f"--port={self.port}",
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
                raise self.unavailable(
                    f"mariadbd {self.name} exited with {process.returncode}; see "
                    f"{self.datadir / 'server.log'}"
                )
            return self.answers()

        wait_until(up, timeout, f"mariadbd {self.name} to answer", interval=0.1)

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

    def __enter__(self) -> MariaDBServer:
        try:
            self.install()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
