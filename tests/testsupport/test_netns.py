"""The test hosts themselves: reachable on their own addresses, faults that are silent and
one-way where asked, and nothing left behind -- also after a run killed with SIGKILL."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import require_test_hosts
from testsupport.harness import wait_until
from testsupport.netns import (
    BENCHMARK_RANGE,
    CLIENT,
    STATE_DIR,
    LinkFault,
    TestHosts,
    reap_stale,
)

pytestmark = pytest.mark.hosts
PORT = 7100
LISTEN = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print('ready', flush=True)\n"
    "while True: s.accept()[0].close()\n"
)
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()\n"
    "    print('connected')\n"
    "except OSError as exc:\n"
    "    print(type(exc).__name__)\n"
)


@pytest.fixture
def hosts() -> Iterator[TestHosts]:
    require_test_hosts()
    with TestHosts(3) as made:
        listeners = []
        for i in range(3):
            cmd = [*made.exec_prefix(i), sys.executable, "-c", LISTEN, made.address(i), str(PORT)]
            listener = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
            listeners.append(listener)
        try:
            yield made
        finally:
            for listener in listeners:
                listener.kill()
                listener.wait(10)


def connect(hosts: TestHosts, source: int, target: int) -> str:
    """'connected', or the exception a connection attempt from `source` to `target` met."""
    prefix = [] if source == CLIENT else hosts.exec_prefix(source)
    cmd = [*prefix, sys.executable, "-c", CONNECT, hosts.address(target), str(PORT)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_each_host_has_an_address_of_its_own_in_the_benchmarking_range(hosts: TestHosts) -> None:
    addresses = {hosts.address(i) for i in (CLIENT, 0, 1, 2)}
    assert len(addresses) == 4
    assert all(ipaddress.ip_address(a) in BENCHMARK_RANGE for a in addresses)
    for source in (CLIENT, 0, 1, 2):
        for target in (0, 1, 2):
            if source != target:
                assert connect(hosts, source, target) == "connected", (source, target)


def test_no_host_has_a_route_beyond_its_subnet(hosts: TestHosts) -> None:
    for i in range(3):
        routes = hosts.run_on(i, "ip", "-4", "route", "show").splitlines()
        assert routes and all(r.startswith(str(hosts.subnet)) for r in routes), routes


def test_a_cut_is_silent_both_ways_and_leaves_the_other_links(hosts: TestHosts) -> None:
    hosts.set_faults(hosts.cut(0, 1))
    # A timeout, as on a real partition: no refusal, no EPERM from the sender's own kernel.
    assert connect(hosts, 0, 1) == "TimeoutError"
    assert connect(hosts, 1, 0) == "TimeoutError"
    assert connect(hosts, 0, 2) == "connected"
    assert connect(hosts, CLIENT, 1) == "connected"
    hosts.heal()
    assert connect(hosts, 0, 1) == "connected"


def test_isolation_cuts_the_clients_too_unless_asked_not_to(hosts: TestHosts) -> None:
    hosts.set_faults(hosts.isolate(2))
    assert connect(hosts, CLIENT, 2) == "TimeoutError"
    assert connect(hosts, 0, 2) == "TimeoutError"
    assert connect(hosts, 0, 1) == "connected"
    hosts.set_faults(hosts.isolate(2, from_clients=False))
    assert connect(hosts, CLIENT, 2) == "connected"
    assert connect(hosts, 1, 2) == "TimeoutError"


def test_a_one_way_drop_is_one_way(hosts: TestHosts) -> None:
    hosts.set_faults([LinkFault(0, 1)])
    rules = hosts.fault_rules()
    assert f"ip saddr {hosts.address(0)} ip daddr {hosts.address(1)} drop" in rules
    assert f"ip saddr {hosts.address(1)}" not in rules
    # TCP needs both ways: 0 -> 1 loses the SYN, 1 -> 0 the SYN-ACK; both time out.
    assert connect(hosts, 0, 1) == "TimeoutError"
    assert connect(hosts, 1, 0) == "TimeoutError"
    assert connect(hosts, 1, 2) == "connected"


def test_a_flaky_link_is_a_rule_dropping_that_share_of_packets_at_random(
    hosts: TestHosts,
) -> None:
    hosts.set_faults(hosts.cut(0, 1, percent=50))
    assert "numgen random mod 100 < 50 drop" in hosts.fault_rules()


def test_everything_made_is_removed_on_close() -> None:
    require_test_hosts()
    with TestHosts(2) as made:
        names = {made.switch, made.namespace(0), made.namespace(1)}
        assert names <= namespaces()
        assert f"{made.tag}c" in links()
        assert (STATE_DIR / f"{made.tag}.json").exists()
    assert not names & namespaces()
    assert f"{made.tag}c" not in links()
    assert not (STATE_DIR / f"{made.tag}.json").exists()


def test_the_hosts_of_a_killed_run_are_removed_by_the_next() -> None:
    require_test_hosts()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from testsupport.netns import TestHosts\n"
            "h = TestHosts(2)\n"
            "p = subprocess.Popen([*h.exec_prefix(0), 'sleep', '60'], start_new_session=True)\n"
            "print(h.tag, p.pid, flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None
        tag, pid = child.stdout.readline().split()
        assert tag, "the child made no hosts"
        state = json.loads((STATE_DIR / f"{tag}.json").read_text())
        assert set(state["namespaces"]) <= namespaces()
    finally:
        child.send_signal(signal.SIGKILL)  # no atexit, no close()
        child.wait(10)
    assert set(state["namespaces"]) <= namespaces(), "left behind, as a killed run would"
    assert _alive(int(pid)), "the process on the killed run's host should outlive it"
    assert tag in reap_stale()
    wait_until(lambda: not set(state["namespaces"]) & namespaces(), 5, "namespaces removed")
    assert f"{tag}c" not in links()
    wait_until(lambda: not _alive(int(pid)), 5, "the process left on its host killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    )
    return state != "Z"


def test_a_slow_link_is_rate_limited_both_ways_until_healed(hosts: TestHosts) -> None:
    hosts.set_rate(1, 256)
    on_host = hosts.run_on(1, "tc", "qdisc", "show", "dev", "eth0")
    on_switch = subprocess.run(
        ["tc", "-n", hosts.switch, "qdisc", "show", "dev", "p1"], capture_output=True, text=True
    ).stdout
    assert "tbf" in on_host and "256Kbit" in on_host, on_host
    assert "tbf" in on_switch and "256Kbit" in on_switch, on_switch
    assert connect(hosts, 0, 1) == "connected"
    hosts.heal()
    assert "tbf" not in hosts.run_on(1, "tc", "qdisc", "show", "dev", "eth0")
    assert not hosts.slowed


def test_a_host_has_a_mariadb_of_its_own_that_dies_with_it(tmp_path: Path) -> None:
    """Listening on the host's address only, reachable from the clients' side, and gone --
    process and data -- once closed."""
    require_test_hosts()
    from testsupport.host_mariadb import start_host_servers

    with TestHosts(2) as made:
        servers = start_host_servers(made, tmp_path)
        try:
            for server in servers:
                engine = sa.create_engine(server.url(), poolclass=sa.pool.NullPool)
                with engine.connect() as conn:
                    assert conn.execute(sa.text("SELECT 1")).scalar() == 1
                engine.dispose()
            listening = made.run_on(0, "ss", "-ltnH")
            assert f"{made.address(0)}:3306" in listening, listening
            assert f"{made.address(1)}:3306" not in listening  # each on its own host
        finally:
            pids = [s.pid for s in servers if s.pid is not None]
            for server in servers:
                server.close()
        assert all(not _alive(pid) for pid in pids)
        assert not any(s.datadir.exists() for s in servers)
