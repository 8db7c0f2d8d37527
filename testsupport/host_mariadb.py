"""One MariaDB server per test host: `mariadbd` started inside the host's network namespace
(testsupport.mariadb's server, with a datadir, socket and port of its own and a small buffer
pool), listening on the host's address only -- so a replica's database lives and dies with its
host, as in production.

The harness administers it over its unix socket (a path, which network namespaces do not
separate); replicas and checks reach it over TCP at the host's address.
"""

from __future__ import annotations

from pathlib import Path

from testsupport.mariadb import MariaDBServer
from testsupport.netns import HostsUnavailable, TestHosts

PORT = 3306


class HostMariaDB(MariaDBServer):
    unavailable = HostsUnavailable

    def __init__(self, hosts: TestHosts, index: int, base_dir: Path) -> None:
        super().__init__(base_dir, f"mariadb-{index}", address=hosts.address(index), port=PORT)
        self.hosts = hosts
        self.index = index

    def prefix(self) -> list[str]:
        return list(self.hosts.exec_prefix(self.index))


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
