"""The faults a chaos round injects into a running three-replica cluster.

Each fault breaks something, waits until the cluster has visibly kept (or resumed) taking
acknowledged sends, and returns how long that took; the runner then heals whatever is still
broken (restarts killed replicas) and, in most rounds, waits for every replica to be back in
sync before the next round. Network faults (on test hosts, `--hosts netns`) are rules on the
switch between the hosts (testsupport/netns.py): packets dropped silently, as in a real
partition; each fault heals its network itself after a random time.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.integration.cluster_checks import (
    Senders,
    primary_of,
    seen_by,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, wait_until
from testsupport.host_mariadb import HostMariaDB
from testsupport.netns import LinkFault, TestHosts
from testsupport.tcpproxy import TcpProxy

PROGRESS_TIMEOUT = 45.0  # a fault after which no send is acknowledged for this long is a failure
STEP_DOWN_TIMEOUT = 15.0


class ChaosFailure(AssertionError):
    """The cluster broke a promise during a round (no progress, two primaries, no step-down)."""


@dataclass
class ChaosContext:
    cluster: ClusterProcesses
    load: Senders
    rng: random.Random
    backend: str
    hosts: TestHosts | None = None  # each replica on its own test host (network faults)
    databases: list[HostMariaDB] = field(default_factory=list)  # a MariaDB per test host
    # On loopback with MySQL: each replica reaches its database through a proxy of its own,
    # which can freeze or slow it (stall_db, slow_db).
    proxies: list[TcpProxy] = field(default_factory=list)
    max_fault_seconds: float = 30.0  # how long a stall or a slow database may last
    recovery: float | None = None  # seconds from the last fault to its first acknowledged send

    def acked(self) -> int:
        return self.load.acknowledged_count()

    def wait_progress(
        self, since: int, count: int, what: str, fault_at: float | None = None
    ) -> None:
        """Until `count` more sends than `since` are acknowledged; `recovery` becomes the
        seconds from `fault_at` (default: now) to the first one."""
        start = time.monotonic() if fault_at is None else fault_at
        first: list[float] = []

        def progressed() -> bool:
            now = self.acked()
            if now > since and not first:
                first.append(time.monotonic() - start)
            return now >= since + count

        try:
            wait_until(progressed, PROGRESS_TIMEOUT, f"acknowledged sends after {what}")
        except TimeoutError as exc:
            raise ChaosFailure(f"no progress after {what}: {exc}") from None
        self.recovery = first[0] if first else 0.0

    def running(self) -> list[int]:
        return [s.index for s in self.cluster.specs if self.cluster.is_running(s.index)]

    def current_primary(self) -> int:
        try:
            return wait_for_primary(self.cluster, self.running(), timeout=PROGRESS_TIMEOUT)
        except TimeoutError as exc:
            raise ChaosFailure(str(exc)) from None

    def wait_for_a_successor(self) -> int:
        """Until a secondary is in the primary's in-sync set; the primary. A fault that needs
        the others to take over waits for it after a round that let it come at once: with no
        secondary in sync, no one but the primary can show it holds every acknowledged write,
        and the protocol rightly waits for the primary (docs/replication.md, min_insync)."""
        primary = self.current_primary()

        def successor() -> bool:
            return any(self._knows_in_sync(i) for i in self.running() if i != primary)

        try:
            wait_until(successor, PROGRESS_TIMEOUT, f"a secondary in sync with {primary}")
        except TimeoutError as exc:
            raise ChaosFailure(str(exc)) from None
        return primary

    def _knows_in_sync(self, index: int) -> bool:
        """Replica `index`'s own word, not its primary's: it may take over only once it has
        heard that it is in sync."""
        me = seen_by(self.cluster, index, index)
        return me is not None and me.knows_in_sync

    def wait_stepped_down(self, index: int, what: str) -> None:
        """Until replica `index` no longer says it is primary."""
        try:
            wait_until(lambda: primary_of(self.cluster, index) is None, STEP_DOWN_TIMEOUT, what)
        except TimeoutError as exc:
            raise ChaosFailure(str(exc)) from None

    def wait_in_sync(self) -> None:
        """Until every running replica is in the primary's in-sync set and knows it (after a
        round that let the next fault come at once). Its own word counts, as in
        wait_for_a_successor: a secondary the primary has just counted but that has not heard
        it yet cannot show it holds every acknowledged write, and rightly does not carry on
        alone."""
        primary = self.current_primary()

        def each_knows() -> bool:
            return all(self._knows_in_sync(i) for i in self.running() if i != primary)

        try:
            wait_all_running_follow(self.cluster, primary, PROGRESS_TIMEOUT)
            wait_until(each_knows, PROGRESS_TIMEOUT, f"every secondary of {primary} to know it")
        except TimeoutError as exc:
            raise ChaosFailure(f"replicas did not get back in sync: {exc}") from None


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[ChaosContext], str]  # returns a description of what it did
    backends: tuple[str, ...] = ("sqlite", "mysql")
    network: bool = False  # needs test hosts (--hosts netns)
    # The largest min_insync under which the replicas it leaves running still acknowledge
    # (what the round waits for): two of three need min_insync <= 2, a lone one 1.
    max_min_insync: int = 3
    loopback_only: bool = False  # needs the database proxies (not on test hosts)


# -- process faults ----------------------------------------------------------------------------


def kill_one(ctx: ChaosContext) -> str:
    victim = ctx.rng.choice(ctx.running())
    role = "primary" if primary_of(ctx.cluster, victim) is not None else "secondary"
    if role == "primary":
        ctx.wait_for_a_successor()
    ctx.cluster.kill(victim)
    before = ctx.acked()
    ctx.wait_progress(before, 10, f"SIGKILL of replica {victim}")
    return f"SIGKILL replica {victim} ({role})"


def kill_two(ctx: ChaosContext) -> str:
    # Only a survivor that was in sync may carry on alone.
    ctx.wait_in_sync()
    victims = sorted(ctx.rng.sample(ctx.running(), 2))
    for victim in victims:  # both signalled before either is reaped: one fault, not two
        os.kill(ctx.cluster.process(victim).pid, signal.SIGKILL)
    for victim in victims:
        ctx.cluster.kill(victim)
    before = ctx.acked()
    # The survivor was in sync (every round starts with all three in sync): it carries on.
    ctx.wait_progress(before, 10, f"SIGKILL of replicas {victims}")
    return f"SIGKILL replicas {victims[0]} and {victims[1]}"


def kill_all(ctx: ChaosContext) -> str:
    for index in range(len(ctx.cluster.specs)):
        ctx.cluster.kill(index)
    before = ctx.acked()
    order = list(range(len(ctx.cluster.specs)))
    ctx.rng.shuffle(order)
    for index in order:
        ctx.cluster.start(index, wait=False)
    ctx.wait_progress(before, 10, "SIGKILL of all three replicas and restart")
    return f"SIGKILL all three, restarted in order {order}"


def pause_primary(ctx: ChaosContext) -> str:
    old = ctx.wait_for_a_successor()
    pid = ctx.cluster.process(old).pid
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    before = ctx.acked()
    try:
        others = [i for i in ctx.running() if i != old]
        try:
            new = wait_for_primary(ctx.cluster, others, timeout=PROGRESS_TIMEOUT)
        except TimeoutError as exc:
            raise ChaosFailure(f"no new primary while {old} was paused: {exc}") from None
        ctx.wait_progress(before, 10, f"SIGSTOP of primary {old}", stopped_at)
        # Keep it frozen a little longer sometimes: its clients' calls and its peers' streams
        # must all have given up on it.
        time.sleep(ctx.rng.uniform(0.0, 1.0))
    finally:
        os.kill(pid, signal.SIGCONT)
    ctx.wait_stepped_down(old, f"replica {old} to step down after SIGCONT")
    return f"SIGSTOP primary {old} until {new} took over, then SIGCONT"


# -- database faults (MySQL) -------------------------------------------------------------------


def _database_name(ctx: ChaosContext, index: int) -> str:
    url = ctx.cluster.specs[index].db_url
    assert url is not None, "database faults need a MySQL database per replica"
    name = make_url(url).database
    assert name
    return name


def drop_connections(ctx: ChaosContext) -> str:
    """Kill every server-side connection of one replica's database, mid-whatever."""
    victim = ctx.rng.choice(ctx.running())
    database = _database_name(ctx, victim)
    url = ctx.cluster.specs[victim].db_url
    assert url is not None
    before = ctx.acked()
    server = sa.create_engine(make_url(url).set(database=""), poolclass=sa.pool.NullPool)
    try:
        with server.connect() as conn:
            ids = conn.execute(
                sa.text("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db"),
                {"db": database},
            ).scalars()
            killed = 0
            for connection_id in list(ids):
                try:
                    conn.execute(sa.text(f"KILL CONNECTION {int(connection_id)}"))
                    killed += 1
                except sa.exc.DBAPIError:
                    pass  # it ended by itself in the meantime
    finally:
        server.dispose()
    ctx.wait_progress(before, 10, f"dropping replica {victim}'s database connections")
    return f"killed {killed} MySQL connections of replica {victim}"


def _mariadb_up() -> bool:
    return (
        subprocess.run(
            ["mysqladmin", "--host=127.0.0.1", "--port=3306", "--user=root", "ping"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def restart_mariadb(ctx: ChaosContext) -> str:
    """Shut the MySQL server down under all three replicas and start it again (on test
    hosts: one host's server, under its replica)."""
    if ctx.databases:
        server = ctx.rng.choice(ctx.databases)
        server.stop()
        before = ctx.acked()
        down = ctx.rng.uniform(0.2, 2.0)
        time.sleep(down)  # the outage itself: a duration, not a synchronisation
        server.start()
        ctx.wait_progress(before, 10, f"a restart of host {server.index}'s MariaDB")
        return f"host {server.index}'s MariaDB down for {down:.1f}s"
    subprocess.run(
        ["mysqladmin", "--host=127.0.0.1", "--port=3306", "--user=root", "shutdown"],
        capture_output=True,
        check=True,
    )
    _wait_mariadbd_gone()
    before = ctx.acked()
    down = ctx.rng.uniform(0.2, 2.0)
    time.sleep(down)  # the outage itself: a duration, not a synchronisation
    start_mariadb()
    ctx.wait_progress(before, 10, "a MariaDB restart")
    return f"MariaDB down for {down:.1f}s"


def _mariadbd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True).returncode == 0


def _wait_mariadbd_gone() -> None:
    # `mysqladmin shutdown` returns before the server process has exited; starting another
    # meanwhile would find it "already running" and start nothing.
    wait_until(lambda: not _mariadbd_running(), 60, "mariadbd to exit", interval=0.1)


def start_mariadb() -> None:
    if _mariadb_up():
        return
    _wait_mariadbd_gone()
    os.makedirs("/run/mysqld", exist_ok=True)
    subprocess.run(["chown", "mysql:mysql", "/run/mysqld"], check=False)
    subprocess.run(
        [
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ],
        check=True,
    )
    wait_until(_mariadb_up, 120, "MariaDB to answer again", interval=0.2)


# -- fail-slow databases -----------------------------------------------------------------------


def _database_victim(ctx: ChaosContext) -> tuple[int, str]:
    """A running replica, the primary as often as not; with the primary, only once a
    secondary is in sync (it hands over to one)."""
    primary = ctx.current_primary()
    others = [i for i in ctx.running() if i != primary]
    victim = primary if not others or ctx.rng.random() < 0.5 else ctx.rng.choice(others)
    if victim == primary:
        ctx.wait_for_a_successor()
        return victim, "primary"
    return victim, "secondary"


def _freeze(ctx: ChaosContext, index: int) -> None:
    if ctx.databases:
        pid = ctx.databases[index].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    else:
        ctx.proxies[index].freeze()


def thaw_databases(ctx: ChaosContext) -> None:
    """Every database answers again, at full speed (heal)."""
    for server in ctx.databases:
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # (it was stopped, not stalled)
                os.kill(server.pid, signal.SIGCONT)
    for proxy in ctx.proxies:
        proxy.thaw()
        proxy.delay(0.0)


def stall_db(ctx: ChaosContext) -> str:
    """One replica's database answers nothing for 0.5-30 s -- its host's mariadbd SIGSTOPped
    (test hosts) or its proxy frozen (loopback) -- then answers again. A stalled primary hands
    over within storage_timeout_ms (its secondaries are in sync); a stalled secondary leaves
    the in-sync set. Sends are acknowledged meanwhile (or, after a short stall, once it
    ends)."""
    if not ctx.databases and not ctx.proxies:
        raise ChaosFailure("stall_db needs MySQL through proxies, or a MariaDB per test host")
    victim, role = _database_victim(ctx)
    seconds = ctx.rng.uniform(0.5, ctx.max_fault_seconds)
    before = ctx.acked()
    stalled_at = time.monotonic()
    _freeze(ctx, victim)
    thaw = threading.Timer(seconds, thaw_databases, args=(ctx,))
    thaw.start()
    try:
        ctx.wait_progress(before, 10, f"stalling replica {victim}'s database", stalled_at)
    finally:
        thaw.join()  # (the stall lasts its time: the round is about all of it)
    return f"replica {victim}'s ({role}) database stalled for {seconds:.1f}s"


def slow_db(ctx: ChaosContext) -> str:
    """One replica's database answers every round trip 10-100 ms late (a proxy holding each
    packet 5-50 ms each way) for 2-15 s. Nothing needs to move: sends go on, slower."""
    victim, role = _database_victim(ctx)
    hold = ctx.rng.uniform(0.005, 0.05)
    seconds = ctx.rng.uniform(2.0, min(15.0, ctx.max_fault_seconds))
    before = ctx.acked()
    started = time.monotonic()
    ctx.proxies[victim].delay(hold)
    try:
        ctx.wait_progress(before, 10, f"slowing replica {victim}'s database", started)
        time.sleep(max(0.0, started + seconds - time.monotonic()))  # (the fault's length)
    finally:
        ctx.proxies[victim].delay(0.0)
    return (
        f"replica {victim}'s ({role}) database {2 * hold * 1000:.0f} ms slower per round trip "
        f"for {seconds:.1f}s"
    )


# -- network faults (test hosts) -------------------------------------------------------------

HOLD_SECONDS = (0.2, 2.5)  # how much longer a partition lasts once the cluster has progressed


def _network(ctx: ChaosContext) -> TestHosts:
    assert ctx.hosts is not None, "network faults need test hosts (--hosts netns)"
    return ctx.hosts


def _hold_partition(
    ctx: ChaosContext, links: list[LinkFault], what: str, *, deposed: int | None = None
) -> None:
    """Apply `links`, wait until sends are acknowledged under them (and, if `deposed` is
    given and the clients can still ask it, until that old primary no longer says it is
    primary), hold a random while longer, heal."""
    hosts = _network(ctx)
    before = ctx.acked()
    cut_at = time.monotonic()
    hosts.set_faults(links)
    try:
        ctx.wait_progress(before, 10, what, cut_at)
        if deposed is not None:
            ctx.wait_stepped_down(
                deposed, f"replica {deposed}, cut off, to stop saying it is the primary"
            )
        time.sleep(ctx.rng.uniform(*HOLD_SECONDS))  # the fault's duration, not a sync
    finally:
        hosts.heal()


def _secondaries(ctx: ChaosContext, primary: int) -> list[int]:
    return [i for i in range(len(ctx.cluster.specs)) if i != primary]


def partition_primary(ctx: ChaosContext) -> str:
    """The primary cut off from both secondaries; the clients still reach it."""
    primary = ctx.wait_for_a_successor()
    hosts = _network(ctx)
    links = [f for s in _secondaries(ctx, primary) for f in hosts.cut(primary, s)]
    _hold_partition(ctx, links, f"cutting primary {primary} off", deposed=primary)
    return f"primary {primary} cut off from both secondaries (clients reach it)"


def isolate_primary(ctx: ChaosContext) -> str:
    primary = ctx.wait_for_a_successor()
    links = _network(ctx).isolate(primary)
    _hold_partition(ctx, links, f"isolating primary {primary}")
    return f"primary {primary} cut off from everyone"


def partition_secondary(ctx: ChaosContext) -> str:
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    from_clients = ctx.rng.random() < 0.5
    links = _network(ctx).isolate(victim, from_clients=from_clients)
    _hold_partition(ctx, links, f"isolating secondary {victim}")
    seen = "clients cut too" if from_clients else "clients reach it"
    return f"secondary {victim} cut off from the replicas ({seen})"


def partition_ring(ctx: ChaosContext) -> str:
    """One link cut: its two ends each see a different majority (with the third replica)."""
    primary = ctx.current_primary()
    a, b = ctx.rng.choice(
        [(primary, s) for s in _secondaries(ctx, primary)] + [tuple(_secondaries(ctx, primary))]
    )
    _hold_partition(ctx, _network(ctx).cut(a, b), f"cutting the link {a}-{b}")
    return f"link {a}-{b} cut (each sees a different majority)"


def one_way(ctx: ChaosContext) -> str:
    """The primary's packets to one secondary dropped; the other direction works."""
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    _hold_partition(ctx, [LinkFault(primary, victim)], f"dropping {primary}->{victim}")
    return f"packets {primary}->{victim} dropped (the other way works)"


def flaky_link(ctx: ChaosContext) -> str:
    """Random losses both ways on one link (TCP makes them retransmission delays), and, in
    half the rounds, the secondary's link slowed to a trickle whose queue delays packets by
    up to 300 ms and drops what overflows."""
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    percent = ctx.rng.choice([0, 10, 25, 50, 80])
    kbit = ctx.rng.choice([None, 128, 512, 2048])
    if percent == 0 and kbit is None:
        percent = 25
    hosts = _network(ctx)
    if kbit is not None:
        hosts.set_rate(victim, kbit)
    links = hosts.cut(primary, victim, percent=percent) if percent else []
    _hold_partition(ctx, links, f"a flaky link to {victim}")  # its heal lifts the rate too
    slow = f"; {victim}'s link limited to {kbit} kbit/s" if kbit else ""
    return f"{percent}% of packets lost between {primary} and {victim}{slow}"


def slow_link(ctx: ChaosContext) -> str:
    """One host's link (the primary's as often as not) slowed for 2-15 s with no loss: a
    token bucket of 32-512 kbit/s whose queue holds up to 5 s of packets, so every packet
    waits its turn -- the longer the more traffic -- and none is dropped (this kernel has no
    netem for a plain delay). Nothing needs to move: sends go on, slower."""
    primary = ctx.current_primary()
    victim = primary if ctx.rng.random() < 0.5 else ctx.rng.choice(_secondaries(ctx, primary))
    role = "primary" if victim == primary else "secondary"
    kbit = ctx.rng.choice([32, 64, 128, 512])
    seconds = ctx.rng.uniform(2.0, min(15.0, ctx.max_fault_seconds))
    hosts = _network(ctx)
    before = ctx.acked()
    started = time.monotonic()
    hosts.set_rate(victim, kbit, latency_ms=5000)
    try:
        ctx.wait_progress(before, 10, f"slowing replica {victim}'s link", started)
        time.sleep(max(0.0, started + seconds - time.monotonic()))  # (the fault's length)
    finally:
        hosts.set_rate(victim, None)
    return f"replica {victim}'s ({role}) link limited to {kbit} kbit/s for {seconds:.1f}s"


def split_all(ctx: ChaosContext) -> str:
    """Every replica cut off from both others, the clients reaching all three: no side holds
    a majority, so none may acknowledge, and none may go on saying it is primary. (Before the
    protocol core knew partitions, all three were primary at once with min_insync = 1.)"""
    hosts = _network(ctx)
    count = len(ctx.cluster.specs)
    links = [f for a in range(count) for b in range(a + 1, count) for f in hosts.cut(a, b)]
    hosts.set_faults(links)
    try:
        try:
            wait_until(
                lambda: all(primary_of(ctx.cluster, i) is None for i in ctx.running()),
                STEP_DOWN_TIMEOUT,
                "every replica, cut off from the others, to stop saying it is primary",
            )
        except TimeoutError as exc:
            raise ChaosFailure(str(exc)) from None
        time.sleep(0.3)  # a reply sent before the step-down may still be on its way
        quiet_from = ctx.acked()
        held = ctx.rng.uniform(0.5, 2.0)
        time.sleep(held)  # the fault's duration, not a sync
        if ctx.acked() != quiet_from:
            raise ChaosFailure(
                f"{ctx.acked() - quiet_from} sends acknowledged with every replica cut off"
            )
        primaries = [i for i in ctx.running() if primary_of(ctx.cluster, i) is not None]
        if primaries:
            raise ChaosFailure(f"replica(s) {primaries} primary with no majority")
    finally:
        hosts.heal()
    ctx.wait_progress(ctx.acked(), 10, "healing a three-way split")  # recovery: from the heal
    return f"all three cut off from each other for {held:.1f}s: no primary, no acks"


def break_stream(ctx: ChaosContext) -> str:
    """A secondary's connections to the live primary reset (both ends running)."""
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    hosts = _network(ctx)
    before = ctx.acked()
    hosts.run_on(victim, "ss", "-K", "dst", hosts.address(primary))
    ctx.wait_progress(before, 10, f"resetting {victim}'s connections to {primary}")
    return f"replica {victim}'s connections to primary {primary} reset"


FAULTS = (
    Fault("kill_one", kill_one, max_min_insync=2),
    Fault("kill_two", kill_two, max_min_insync=1),
    Fault("kill_all", kill_all),
    Fault("pause_primary", pause_primary, max_min_insync=2),
    Fault("drop_connections", drop_connections, ("mysql",)),
    Fault("restart_mariadb", restart_mariadb, ("mysql",)),
    Fault("stall_db", stall_db, ("mysql",), max_min_insync=2),
    Fault("slow_db", slow_db, ("mysql",), loopback_only=True),
    Fault("partition_primary", partition_primary, network=True, max_min_insync=2),
    Fault("isolate_primary", isolate_primary, network=True, max_min_insync=2),
    Fault("partition_secondary", partition_secondary, network=True, max_min_insync=2),
    Fault("partition_ring", partition_ring, network=True),
    Fault("one_way", one_way, network=True),
    Fault("flaky_link", flaky_link, network=True),
    Fault("break_stream", break_stream, network=True),
    Fault("split_all", split_all, network=True),
    Fault("slow_link", slow_link, network=True),
)


def faults_for(
    backend: str, names: list[str] | None = None, *, network: bool = False, min_insync: int = 1
) -> list[Fault]:
    """The faults that apply (without `names`: every one that does)."""
    chosen = [
        f
        for f in FAULTS
        if backend in f.backends
        and (network or not f.network)
        and not (network and f.loopback_only)
        and min_insync <= f.max_min_insync
    ]
    if names:
        unknown = set(names) - {f.name for f in FAULTS}
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        if not network and any(f.network for f in FAULTS if f.name in names):
            raise ValueError("network faults need --hosts netns")
        if network and any(f.loopback_only for f in FAULTS if f.name in names):
            raise ValueError("slow_db needs the loopback hosts (its database proxies)")
        wrong = [f.name for f in FAULTS if f.name in names and backend not in f.backends]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} need(s) --backend mysql")
        stalling = [f.name for f in FAULTS if f.name in names and min_insync > f.max_min_insync]
        if stalling:
            raise ValueError(
                f"with min_insync {min_insync}, {', '.join(stalling)} leave(s) too few replicas "
                "running to acknowledge anything (the round would wait for progress in vain)"
            )
        chosen = [f for f in chosen if f.name in names]
    return chosen
