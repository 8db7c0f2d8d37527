"""Test hosts: one Linux network namespace per replica, joined by a switch whose faults the
test controls.

    root namespace (clients)        switch namespace             host namespaces
    <tag>c 198.18.K.1 ---veth--- up0 ┐                      ┌ p0 ---veth--- eth0 198.18.K.11
                                     ├─ br0 (bridge) ───────┼ p1 ---veth--- eth0 198.18.K.12
                                     ┘                      └ p2 ---veth--- eth0 198.18.K.13

Every address is in the benchmarking range 198.18.0.0/15 (RFC 2544): a run takes a /24 of its
own (K picked among those no other run holds), and no namespace has a route beyond it, so no
packet can leave the namespaces the run made. Names carry a per-run tag (`ct` + 5 hex digits).

Faults are nftables rules in the switch's bridge table: a packet from one host to another is
dropped *on the wire*, so neither end learns of it from its own kernel (a drop on the sender's
output hook would fail its `connect()` with EPERM at once, which no real partition does). The
client address (the root namespace) is a host of the switch like any other, so "clients still
reach it" and "cut off from everyone" are both rules on the same switch.

Everything is removed by `close()` (also at interpreter exit); a run killed before that leaves
a state file in STATE_DIR naming its owner pid, and the next run removes what it made, killing
the processes still running inside its namespaces first.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
STATE_DIR = Path("/run/chat-test-hosts")
CLIENT = -1  # the root namespace, where the test and its clients run
FAULT_TABLE = "chat_faults"


class HostsUnavailable(RuntimeError):
    """Test hosts cannot be made on this machine (the message says why)."""


def hosts_problem() -> str | None:
    """None if this process can make test hosts, else why not."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, veth pairs, nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"test hosts need `{tool}`: apt-get install {package}"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


def _run(*args: str, input_text: str | None = None, check: bool = True) -> str:
    done = subprocess.run(list(args), input=input_text, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HostsUnavailable(f"`{' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _existing_namespaces() -> set[str]:
    out = _run("ip", "netns", "list", check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@dataclass(frozen=True)
class LinkFault:
    """Packets from `source` to `target` (host indexes, or CLIENT) are dropped; with
    `percent` < 100 each packet is dropped with that chance (a flaky link: TCP turns the
    losses into retransmission delays)."""

    source: int
    target: int
    percent: int = 100


@dataclass(eq=False)
class TestHosts:
    """`count` hosts on one switch; a context manager (close() removes everything)."""

    __test__ = False  # not a pytest test class, despite its name

    count: int
    tag: str = field(default_factory=lambda: "ct" + os.urandom(3).hex()[:5])
    subnet: ipaddress.IPv4Network = field(init=False)
    faults: frozenset[LinkFault] = field(init=False, default=frozenset())
    slowed: set[int] = field(init=False, default_factory=set)  # hosts with a rate limit
    _root_link: str = field(init=False)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        problem = hosts_problem()
        if problem is not None:
            raise HostsUnavailable(problem)
        if not 1 <= self.count <= 200:
            raise ValueError("between 1 and 200 test hosts")
        self._root_link = f"{self.tag}c"
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with _state_lock():
            reap_stale()
            self.subnet = self._free_subnet()
            self._write_state()
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- names and addresses -----------------------------------------------------------

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def namespace(self, index: int) -> str:
        return f"{self.tag}-h{index}"

    def address(self, index: int) -> str:
        """Host `index`'s address (CLIENT: the root namespace's)."""
        offset = 1 if index == CLIENT else 11 + index
        return str(self.subnet.network_address + offset)

    @property
    def client_address(self) -> str:
        return self.address(CLIENT)

    def exec_prefix(self, index: int) -> list[str]:
        """Prefix a command with this to run it on host `index`."""
        return ["ip", "netns", "exec", self.namespace(index)]

    def run_on(self, index: int, *args: str, check: bool = True) -> str:
        return _run(*self.exec_prefix(index), *args, check=check)

    # -- construction and removal ------------------------------------------------------

    def _free_subnet(self) -> ipaddress.IPv4Network:
        taken = {ipaddress.ip_network(s["subnet"]) for s in _read_states()}
        out = _run("ip", "-o", "-4", "addr", "show") + _run("ip", "-4", "route", "show")
        for word in out.split():
            try:
                taken.add(ipaddress.ip_network(word.split("/")[0] + "/24", strict=False))
            except ValueError:
                continue
        subnets = list(BENCHMARK_RANGE.subnets(new_prefix=24))
        random.SystemRandom().shuffle(subnets)
        for subnet in subnets:
            if subnet not in taken:
                return subnet
        raise HostsUnavailable("every /24 of 198.18.0.0/15 is in use")

    def _state_path(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "subnet": str(self.subnet),
            "namespaces": self._all_names(),
            "root_link": self._root_link,
        }
        self._state_path().write_text(json.dumps(state))

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        prefix = self.subnet.prefixlen
        sw = self.switch
        self._add_namespace(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        # The switch filters only what the tests ask; bridged packets skip iptables.
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            _run("ip", "netns", "exec", sw, "sysctl", "-qw", f"net.bridge.{key}=0", check=False)
        _run(
            "ip", "link", "add", self._root_link, "type", "veth", "peer", "name", "up0",
            "netns", sw,
        )  # fmt: skip
        _run("ip", "-n", sw, "link", "set", "up0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.client_address}/{prefix}", "dev", self._root_link)
        _run("ip", "link", "set", self._root_link, "up")
        for index in range(self.count):
            ns = self.namespace(index)
            self._add_namespace(ns)
            _run(
                "ip", "-n", sw, "link", "add", f"p{index}", "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            )  # fmt: skip
            _run("ip", "-n", sw, "link", "set", f"p{index}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(index)}/{prefix}", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        self.set_faults(())

    def close(self) -> None:
        """Remove every namespace and link this run made (processes inside them must be gone
        first: a namespace with a process in it lives on, unnamed, until that process ends)."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        _remove(self._all_names()[::-1], self._root_link)  # those that exist
        self._state_path().unlink(missing_ok=True)

    def _all_names(self) -> list[str]:
        return [self.switch, *(self.namespace(i) for i in range(self.count))]

    def __enter__(self) -> TestHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------

    def set_faults(self, faults: Iterable[LinkFault]) -> None:
        """Replace every fault on the switch at once (one nft transaction)."""
        chosen = frozenset(faults)
        rules = []
        for fault in sorted(chosen, key=lambda f: (f.source, f.target)):
            match = f"ip saddr {self.address(fault.source)} ip daddr {self.address(fault.target)}"
            chance = "" if fault.percent >= 100 else f" numgen random mod 100 < {fault.percent}"
            rules.append(f"    {match}{chance} drop")
        script = "\n".join(
            [
                f"table bridge {FAULT_TABLE}",
                f"delete table bridge {FAULT_TABLE}",
                f"table bridge {FAULT_TABLE} {{",
                "  chain forward {",
                "    type filter hook forward priority 0; policy accept;",
                *rules,
                "  }",
                "}",
            ]
        )
        _run("ip", "netns", "exec", self.switch, "nft", "-f", "-", input_text=script + "\n")
        self.faults = chosen

    def heal(self) -> None:
        """Remove every drop rule and every rate limit."""
        self.set_faults(())
        for index in sorted(self.slowed):
            self.set_rate(index, None)

    def set_rate(self, index: int, kbit: int | None, *, latency_ms: int = 300) -> None:
        """Limit host `index`'s link to the switch to `kbit` each way (None: no limit), with
        a queue of up to `latency_ms`: a slow link, whose packets wait and, once the queue is
        full, are dropped. (This kernel has no netem for a plain delay; a token bucket gives
        one that grows with the traffic.)"""
        ends = [(self.namespace(index), "eth0"), (self.switch, f"p{index}")]
        for namespace, device in ends:
            if kbit is None:
                _run("tc", "-n", namespace, "qdisc", "del", "dev", device, "root", check=False)
            else:
                _run(
                    "tc", "-n", namespace, "qdisc", "replace", "dev", device, "root", "tbf",
                    "rate", f"{kbit}kbit", "burst", "16kb", "latency", f"{latency_ms}ms",
                )  # fmt: skip
        if kbit is None:
            self.slowed.discard(index)
        else:
            self.slowed.add(index)

    def cut(self, a: int, b: int, *, percent: int = 100) -> list[LinkFault]:
        """Both directions between `a` and `b`."""
        return [LinkFault(a, b, percent), LinkFault(b, a, percent)]

    def isolate(self, index: int, *, from_clients: bool = True) -> list[LinkFault]:
        """Host `index` cut off from every other host (and from the clients)."""
        others = [i for i in range(self.count) if i != index]
        if from_clients:
            others.append(CLIENT)
        return [f for other in others for f in self.cut(index, other)]

    def fault_rules(self) -> str:
        """The switch's rule set as nft lists it (for reports)."""
        return _run(
            "ip", "netns", "exec", self.switch, "nft", "list", "table", "bridge", FAULT_TABLE
        )


# -- leftovers of runs that did not close --------------------------------------------------


class _state_lock:
    def __enter__(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._file = open(STATE_DIR / ".lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _read_states() -> list[dict[str, object]]:
    states = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        state["path"] = str(path)
        states.append(state)
    return states


def _remove(namespaces: Sequence[str], root_link: str) -> None:
    """Kill what still runs on these hosts (a run killed before it could: its replicas and
    servers live on in their namespace, unnamed, after `ip netns del`), then remove them."""
    existing = _existing_namespaces()
    for name in namespaces:
        if name not in existing:
            continue
        for pid in _run("ip", "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", name, check=False)
    # The root end of a veth pair goes with its peer; this is for a half-built switch.
    _run("ip", "link", "del", root_link, check=False)


def reap_stale() -> list[str]:
    """Remove the hosts of runs whose process is gone; the tags removed."""
    reaped = []
    for state in _read_states():
        pid = state.get("pid")
        if isinstance(pid, int) and _pid_alive(pid):
            continue
        names = state.get("namespaces")
        link = state.get("root_link")
        if isinstance(names, list) and isinstance(link, str):
            _remove([str(n) for n in names], link)
        Path(str(state["path"])).unlink(missing_ok=True)
        reaped.append(Path(str(state["path"])).stem)
    return reaped


_LIVE: weakref.WeakSet[TestHosts] = weakref.WeakSet()


@atexit.register
def _remove_leftovers() -> None:
    for hosts in list(_LIVE):
        hosts.close()
