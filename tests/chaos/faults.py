"""The faults a chaos round injects into a running three-replica cluster.

Each fault breaks something, waits until the cluster has visibly kept (or resumed) taking
acknowledged sends, and returns how long that took; the runner then heals whatever is still
broken (restarts killed replicas) and, in most rounds, waits for every replica to be back in
sync before the next round. Network faults (on test hosts, `--hosts netns`) are rules on the
switch between the hosts (testsupport/netns.py): packets dropped silently, as in a real
partition; each fault heals its network itself after a random time.

Membership faults (add_replica, remove_replica, replace_replica; only when named) change who
the replicas are, through the Admin API as an operator would (tests/chaos/membership.py): the
other faults act on the members there are now, and run only where the voters they leave can
still elect and acknowledge (`Fault.fits`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from client.models import Membership
from tests.chaos.load import FollowingSenders
from tests.chaos.membership import (
    ChangeFailed,
    Operator,
    Placement,
    members_seen_by,
    size_fits,
)
from tests.integration.cluster_checks import (
    primary_of,
    seen_by,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.harness import ClusterProcesses, ReplicaProcessError, wait_until
from testsupport.host_mariadb import HostMariaDB
from testsupport.netns import LinkFault, TestHosts
from testsupport.tcpproxy import TcpProxy

PROGRESS_TIMEOUT = 45.0  # a fault after which no send is acknowledged for this long is a failure
STEP_DOWN_TIMEOUT = 15.0
REMOVED_EXIT_TIMEOUT = 30.0  # a removed replica that runs stops by itself within this
INITIAL_VOTERS = 3


class ChaosFailure(AssertionError):
    """The cluster broke a promise during a round (no progress, two primaries, no step-down)."""


@dataclass
class ChaosContext:
    cluster: ClusterProcesses
    load: FollowingSenders
    rng: random.Random
    backend: str
    hosts: TestHosts | None = None  # each replica on its own test host (network faults)
    databases: list[HostMariaDB] = field(default_factory=list)  # a MariaDB per test host
    # On loopback with MySQL: each replica reaches its database through a proxy of its own,
    # which can freeze or slow it (stall_db, slow_db).
    proxies: list[TcpProxy] = field(default_factory=list)
    max_fault_seconds: float = 30.0  # how long a stall or a slow database may last
    recovery: float | None = None  # seconds from the last fault to its first acknowledged send
    min_insync: int = 1
    # Where the replicas live and where a new one goes (made from the above if not given).
    placement: Placement | None = None
    removed: set[int] = field(default_factory=set)  # never started again, never asked
    joining: set[int] = field(default_factory=set)  # started, not added yet

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = Placement(self.backend, self.hosts, self.databases, self.proxies)

    # -- who the replicas are ----------------------------------------------------------------

    def members(self) -> list[int]:
        """The replicas of the membership (voters, but for a learner while it is promoted)."""
        return [
            s.index
            for s in self.cluster.specs
            if s.index not in self.removed and s.index not in self.joining
        ]

    def addresses(self) -> list[str]:
        """The members' client addresses (the load's clients use them)."""
        return [self.cluster.address(i) for i in self.members()]

    def host(self, index: int) -> int:
        """The test host replica `index` runs on."""
        assert self.placement is not None
        return self.placement.host(index)

    @property
    def operator(self) -> Operator:
        return Operator(self.cluster, self.members)

    def new_replica(self) -> int:
        """A new replica, with the next index and an empty database, set up to join through
        the members (not started, not added)."""
        assert self.placement is not None
        index = self.placement.new_replica(self.cluster, self.members())
        self.joining.add(index)
        return index

    def start(self, index: int, *, wait: bool = True) -> None:
        """(Re)start member `index`; one that joined at run time asks the members there are
        now (those it joined through may have been removed since)."""
        if self.cluster.specs[index].join:
            others = [self.cluster.address(i) for i in self.members() if i != index]
            self.cluster.rejoin_through(index, others)
        self.cluster.start(index, wait=wait)

    def wait_members_settled(self) -> Membership:
        """Until the primary lists exactly the members this run made (ListMembers), every one
        a voter and in sync, and the last change committed; that membership."""
        expected = set(self.members())
        seen: list[Membership | None] = [None]

        def settled() -> Membership | None:
            primaries = [i for i in self.running() if primary_of(self.cluster, i) is not None]
            if len(primaries) != 1:
                return None
            listed = members_seen_by(self.cluster, primaries[0])
            seen[0] = listed
            if listed is None or {m.index for m in listed.members} != expected:
                return None
            ok = listed.change_committed and all(m.voter and m.in_sync for m in listed.members)
            return listed if ok else None

        try:
            return wait_until(
                settled,
                PROGRESS_TIMEOUT,
                lambda: f"the members {sorted(expected)} all voters and in sync: {seen[0]}",
            )
        except TimeoutError as exc:
            raise ChaosFailure(f"membership did not settle: {exc}") from None

    # -- progress and sync -------------------------------------------------------------------

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
        """The members whose process runs."""
        return [i for i in self.members() if self.cluster.is_running(i)]

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
    # How many voters it stops or cuts off while the others must go on acknowledging (what
    # the round waits for): of three, two need min_insync <= 2, a lone one 1 (`fits`).
    takes_out: int = 0
    voter_change: int = 0  # voters after it minus voters before
    dip: int = 0  # the fewest voters during it, minus voters before
    # A secondary cut off (not dead: it may still claim to be in sync) leaves the primary
    # going on only with another secondary in sync; a link cut needs a third replica to see
    # both ends.
    min_voters: int = 1
    loopback_only: bool = False  # needs the database proxies (not on test hosts)
    membership: bool = False  # changes the membership: only when named (--faults)
    # Restarts every member: one must start from the config file, since a replica started
    # with --join asks a live member first (after a total crash there is none).
    needs_config_member: bool = False

    def fits(self, voters: int, min_insync: int) -> bool:
        """Whether it may run on a cluster of `voters` voters (see membership.size_fits)."""
        return voters >= self.min_voters and size_fits(
            voters,
            min_insync,
            takes_out=self.takes_out,
            voter_change=self.voter_change,
            dip=self.dip,
        )

    def applies(self, ctx: ChaosContext) -> bool:
        """Whether it may run on the cluster as it is now."""
        if not self.fits(len(ctx.members()), ctx.min_insync):
            return False
        if self.needs_config_member:
            return any(not ctx.cluster.specs[i].join for i in ctx.members())
        return True


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
    order = ctx.members()
    for index in order:
        ctx.cluster.kill(index)
    before = ctx.acked()
    ctx.rng.shuffle(order)
    for index in order:
        ctx.start(index, wait=False)
    every = "all three" if len(order) == 3 else f"all {len(order)}"
    ctx.wait_progress(before, 10, f"SIGKILL of {every} replicas and restart")
    return f"SIGKILL {every}, restarted in order {order}"


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
        server = ctx.rng.choice([ctx.databases[ctx.host(i)] for i in ctx.members()])
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
        pid = ctx.databases[ctx.host(index)].pid
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
    return [i for i in ctx.members() if i != primary]


def _cut(ctx: ChaosContext, a: int, b: int, *, percent: int = 100) -> list[LinkFault]:
    """Both directions between replicas `a` and `b` (their hosts)."""
    return _network(ctx).cut(ctx.host(a), ctx.host(b), percent=percent)


def partition_primary(ctx: ChaosContext) -> str:
    """The primary cut off from every secondary; the clients still reach it."""
    primary = ctx.wait_for_a_successor()
    links = [f for s in _secondaries(ctx, primary) for f in _cut(ctx, primary, s)]
    _hold_partition(ctx, links, f"cutting primary {primary} off", deposed=primary)
    every = "both" if len(ctx.members()) == 3 else "all"
    return f"primary {primary} cut off from {every} secondaries (clients reach it)"


def isolate_primary(ctx: ChaosContext) -> str:
    primary = ctx.wait_for_a_successor()
    links = _network(ctx).isolate(ctx.host(primary))
    _hold_partition(ctx, links, f"isolating primary {primary}")
    return f"primary {primary} cut off from everyone"


def partition_secondary(ctx: ChaosContext) -> str:
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    from_clients = ctx.rng.random() < 0.5
    links = _network(ctx).isolate(ctx.host(victim), from_clients=from_clients)
    _hold_partition(ctx, links, f"isolating secondary {victim}")
    seen = "clients cut too" if from_clients else "clients reach it"
    return f"secondary {victim} cut off from the replicas ({seen})"


def partition_ring(ctx: ChaosContext) -> str:
    """One link cut: its two ends each see a different majority (with the third replica)."""
    primary = ctx.current_primary()
    secondaries = _secondaries(ctx, primary)
    a, b = ctx.rng.choice(
        [(primary, s) for s in secondaries] + list(itertools.combinations(secondaries, 2))
    )
    _hold_partition(ctx, _cut(ctx, a, b), f"cutting the link {a}-{b}")
    return f"link {a}-{b} cut (each sees a different majority)"


def one_way(ctx: ChaosContext) -> str:
    """The primary's packets to one secondary dropped; the other direction works."""
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    link = LinkFault(ctx.host(primary), ctx.host(victim))
    _hold_partition(ctx, [link], f"dropping {primary}->{victim}")
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
        hosts.set_rate(ctx.host(victim), kbit)
    links = _cut(ctx, primary, victim, percent=percent) if percent else []
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
    hosts.set_rate(ctx.host(victim), kbit, latency_ms=5000)
    try:
        ctx.wait_progress(before, 10, f"slowing replica {victim}'s link", started)
        time.sleep(max(0.0, started + seconds - time.monotonic()))  # (the fault's length)
    finally:
        hosts.set_rate(ctx.host(victim), None)
    return f"replica {victim}'s ({role}) link limited to {kbit} kbit/s for {seconds:.1f}s"


def split_all(ctx: ChaosContext) -> str:
    """Every replica cut off from both others, the clients reaching all three: no side holds
    a majority, so none may acknowledge, and none may go on saying it is primary. (Before the
    protocol core knew partitions, all three were primary at once with min_insync = 1.)"""
    hosts = _network(ctx)
    pairs = itertools.combinations(ctx.members(), 2)
    links = [f for a, b in pairs for f in _cut(ctx, a, b)]
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
    count = len(ctx.members())
    ways = "three" if count == 3 else str(count)
    ctx.wait_progress(ctx.acked(), 10, f"healing a {ways}-way split")  # recovery: from the heal
    every = "all three" if count == 3 else f"all {count}"
    return f"{every} cut off from each other for {held:.1f}s: no primary, no acks"


def break_stream(ctx: ChaosContext) -> str:
    """A secondary's connections to the live primary reset (both ends running)."""
    primary = ctx.current_primary()
    victim = ctx.rng.choice(_secondaries(ctx, primary))
    hosts = _network(ctx)
    before = ctx.acked()
    hosts.run_on(ctx.host(victim), "ss", "-K", "dst", hosts.address(ctx.host(primary)))
    ctx.wait_progress(before, 10, f"resetting {victim}'s connections to {primary}")
    return f"replica {victim}'s connections to primary {primary} reset"


# -- membership faults -------------------------------------------------------------------------


@contextlib.contextmanager
def _change_failures() -> Iterator[None]:
    """A change the cluster refused for good or did not make in time, or a replica that did
    not start or stop: the round fails."""
    try:
        yield
    except (ChangeFailed, ReplicaProcessError) as exc:
        raise ChaosFailure(str(exc)) from None


def _join(ctx: ChaosContext) -> tuple[int, float, float]:
    """A new replica (the next index, an empty database) started with --join, added as a
    learner and promoted once caught up; its index, and the seconds from its start to its
    addition and from there to its promotion."""
    index = ctx.new_replica()
    started = time.monotonic()
    with _change_failures():
        ctx.cluster.start(index)
        ctx.operator.add(index)
        ctx.joining.discard(index)  # a member: the load, the checks and the heal count it
        added = time.monotonic()
        ctx.operator.promote(index)  # (refused while it is catching up: retried)
    return index, added - started, time.monotonic() - added


def _remove(ctx: ChaosContext, victim: int) -> None:
    """Remove member `victim`; if its process runs, it must stop by itself (exit status 0)."""
    running = ctx.cluster.is_running(victim)
    with _change_failures():
        ctx.operator.remove(victim)
    ctx.removed.add(victim)
    if running:
        try:
            code = ctx.cluster.wait_exit(victim, REMOVED_EXIT_TIMEOUT)
        except ReplicaProcessError as exc:
            raise ChaosFailure(f"replica {victim}, removed, still runs: {exc}") from None
        # (one that was restarting with --join when the removal committed refuses to start,
        # saying so: also a replica that stops by itself)
        refused = "was removed from the cluster" in ctx.cluster.log_tail(victim, 5)
        if code != 0 and not refused:
            raise ChaosFailure(
                f"replica {victim}, removed, exited with status {code}\n"
                + ctx.cluster.log_tail(victim)
            )


def _kill_for_good(ctx: ChaosContext, victim: int) -> str:
    """SIGKILL member `victim` (the primary only once a secondary is in sync to take over)
    and wait for acknowledged sends without it; its role."""
    primary = ctx.current_primary()
    role = "primary" if victim == primary else "secondary"
    if role == "primary":
        ctx.wait_for_a_successor()
    ctx.cluster.kill(victim)
    ctx.wait_progress(ctx.acked(), 10, f"SIGKILL of replica {victim} ({role})")
    return role


def _acked_after_change(ctx: ChaosContext, what: str) -> None:
    """Until sends are acknowledged after the change too. A change stops nobody: the round's
    recovery is that of the SIGKILL it began with, if any, else from the change's end."""
    recovery = ctx.recovery
    ctx.wait_progress(ctx.acked(), 10, what)
    if recovery is not None:
        ctx.recovery = recovery


def add_replica(ctx: ChaosContext) -> str:
    """A new replica joins under load: started with --join and an empty database, added as a
    learner, promoted once it keeps up."""
    index, to_add, to_promote = _join(ctx)
    _acked_after_change(ctx, f"adding replica {index}")
    assert ctx.placement is not None
    return (
        f"replica {index} at {ctx.placement.where(ctx.cluster, index)} added after "
        f"{to_add:.1f}s, promoted after {to_promote:.1f}s more; voters {ctx.members()}"
    )


def remove_replica(ctx: ChaosContext) -> str:
    """A voter removed: a secondary (running: it must stop by itself; or down: it stays
    down), or, a third of the time, the primary -- which cannot remove itself, so it is
    SIGKILLed first and removed by the primary that follows it."""
    primary = ctx.current_primary()
    if ctx.rng.random() < 1 / 3:
        victim = ctx.wait_for_a_successor()
        how = f"{_kill_for_good(ctx, victim)}, SIGKILLed first"
    else:
        victim = ctx.rng.choice(_secondaries(ctx, primary))
        how = "secondary, " + ("running" if ctx.cluster.is_running(victim) else "down")
    for _ in range(3):
        try:
            _remove(ctx, victim)
            break
        except ChaosFailure as exc:
            # It took over meanwhile (an election after an overlapping fault): a primary
            # cannot remove itself, so it goes as a primary does.
            if "cannot remove itself" not in str(exc):
                raise
            how = f"{_kill_for_good(ctx, victim)} by then, SIGKILLed first"
    _acked_after_change(ctx, f"removing replica {victim}")
    return f"replica {victim} ({how}) removed; voters {ctx.members()}"


def replace_replica(ctx: ChaosContext) -> str:
    """A host lost for good: a voter (the primary as likely as any) SIGKILLed, removed, its
    data deleted; a new replica under a new index, with an empty database, added, caught up
    and promoted."""
    victim = ctx.rng.choice(ctx.members())
    role = _kill_for_good(ctx, victim)
    _remove(ctx, victim)
    assert ctx.placement is not None
    ctx.placement.forget(ctx.cluster, victim)
    index, to_add, to_promote = _join(ctx)
    _acked_after_change(ctx, f"replacing replica {victim}")
    return (
        f"replica {victim} ({role}) SIGKILLed, removed, its data deleted; replica {index} at "
        f"{ctx.placement.where(ctx.cluster, index)} added after {to_add:.1f}s, promoted after "
        f"{to_promote:.1f}s more; voters {ctx.members()}"
    )


FAULTS = (
    Fault("kill_one", kill_one, takes_out=1),
    Fault("kill_two", kill_two, takes_out=2),
    Fault("kill_all", kill_all, needs_config_member=True),
    Fault("pause_primary", pause_primary, takes_out=1),
    Fault("drop_connections", drop_connections, ("mysql",)),
    Fault("restart_mariadb", restart_mariadb, ("mysql",)),
    Fault("stall_db", stall_db, ("mysql",), takes_out=1),
    Fault("slow_db", slow_db, ("mysql",), loopback_only=True),
    Fault("partition_primary", partition_primary, network=True, takes_out=1),
    Fault("isolate_primary", isolate_primary, network=True, takes_out=1),
    Fault("partition_secondary", partition_secondary, network=True, takes_out=1, min_voters=3),
    Fault("partition_ring", partition_ring, network=True, min_voters=3),
    Fault("one_way", one_way, network=True, min_voters=3),
    Fault("flaky_link", flaky_link, network=True, min_voters=3),
    Fault("break_stream", break_stream, network=True),
    Fault("split_all", split_all, network=True),
    Fault("slow_link", slow_link, network=True),
    Fault("add_replica", add_replica, voter_change=1, membership=True),
    Fault("remove_replica", remove_replica, takes_out=1, voter_change=-1, dip=-1, membership=True),
    Fault("replace_replica", replace_replica, takes_out=1, dip=-1, membership=True),
)
MEMBERSHIP_FAULTS = tuple(f.name for f in FAULTS if f.membership)


def faults_for(
    backend: str, names: list[str] | None = None, *, network: bool = False, min_insync: int = 1
) -> list[Fault]:
    """The faults that apply to the three voters a run starts with (without `names`: every
    one that does, but the membership faults, which run only when named)."""
    chosen = [
        f
        for f in FAULTS
        if backend in f.backends
        and (network or not f.network)
        and not (network and f.loopback_only)
        # (a membership fault may fit only once others changed the size: checked each round)
        and (f.membership or f.fits(INITIAL_VOTERS, min_insync))
        and (names or not f.membership)
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
        stalling = [
            f.name
            for f in FAULTS
            if f.name in names and not f.membership and not f.fits(INITIAL_VOTERS, min_insync)
        ]
        if stalling:
            raise ValueError(
                f"with min_insync {min_insync}, {', '.join(stalling)} leave(s) too few replicas "
                "running to acknowledge anything (the round would wait for progress in vain)"
            )
        chosen = [f for f in chosen if f.name in names]
    return chosen
