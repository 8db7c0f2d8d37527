"""Rounds of random faults under concurrent load, and the exactly-once check at the end.

Three real replica processes (on 127.0.0.11-13, or each on a test host of its own with
`hosts="netns"`) take sends from several concurrent senders to one offline recipient. Each
round injects one fault (see faults.py), waits until sends are acknowledged again, restarts
whatever was killed and waits until every replica is back in sync -- except in a random share
(`overlap`) of rounds, where the next fault lands at once, while a replica may still be
catching up, have just lost its stream or have just been removed from the in-sync set. At the
end every replica's log and projections must be identical, and the recipient's inbox must
hold every acknowledged send exactly once: `lost` and `duplicated` must be 0. Each round also
records the longest time without any acknowledged send.

With membership faults (named only: add_replica, remove_replica, replace_replica) the
replicas change: new ones join under new indexes, removed ones stay gone, and "every replica"
means every member the primary lists (ListMembers); each round's fault is drawn among those
that fit the cluster's size then (faults.Fault.applies).

The fault sequence comes from a seeded generator, printed with the report, so that a failing
run can be replayed (`--seed`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.chaos.faults import (
    ChaosContext,
    ChaosFailure,
    Fault,
    faults_for,
    start_mariadb,
    thaw_databases,
)
from tests.chaos.load import FollowingSenders
from tests.chaos.membership import HOSTS_WITH_MEMBERSHIP, Placement
from tests.conftest import MYSQL_SERVER_URL
from tests.integration.cluster_checks import (
    HOSTS,
    SETTINGS,
    SendLog,
    db_url,
    read_inbox,
    register_users,
    replica_state,
    wait_all_running_follow,
    wait_for_primary,
)
from testsupport.databases import drop_mysql_database
from testsupport.harness import ClusterProcesses, wait_until
from testsupport.host_mariadb import HostMariaDB, start_host_servers
from testsupport.netns import TestHosts
from testsupport.tcpproxy import TcpProxy

RECIPIENT = "inbox"
HEAL_TIMEOUT = 60.0
REPLICA_PORT = 7000  # on test hosts every replica has an address of its own


@dataclass
class RoundResult:
    number: int
    acked_before: int  # acknowledged sends when the round began
    fault: str
    what: str
    recovery_s: float | None
    seconds: float
    longest_gap_s: float = 0.0  # the longest time without an acknowledged send
    overlapped: bool = False  # the next round began before this one's recovery ended


@dataclass
class ChaosReport:
    backend: str
    seed: int
    rounds_planned: int
    hosts: str = "loopback"
    min_insync: int = 1
    rounds: list[RoundResult] = field(default_factory=list)
    acknowledged: int = 0
    unacknowledged_attempts: int = 0  # sends whose client gave up (may or may not be stored)
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    invented: int = 0
    wrong_ids: int = 0
    converged: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    members: list[int] | None = None  # at the end, when membership faults changed them

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and self.converged
            and len(self.rounds) == self.rounds_planned
            and self.lost == self.duplicated == self.invented == self.wrong_ids == 0
        )

    def recovery_by_fault(self) -> dict[str, tuple[int, float, float, float]]:
        """fault -> (rounds, p50, max) seconds from fault to the first acknowledged send, and
        the longest time without an acknowledged send in any of its rounds."""
        out: dict[str, tuple[int, float, float, float]] = {}
        for name in sorted({r.fault for r in self.rounds}):
            rounds = [r for r in self.rounds if r.fault == name]
            times = [r.recovery_s for r in rounds if r.recovery_s]
            out[name] = (
                len(rounds),
                statistics.median(times) if times else 0.0,
                max(times) if times else 0.0,
                max(r.longest_gap_s for r in rounds),
            )
        return out

    def summary(self) -> str:
        lines = [
            f"chaos ({self.backend}, {self.hosts} hosts, min_insync {self.min_insync}, seed"
            f" {self.seed}): {len(self.rounds)}/{self.rounds_planned} rounds in"
            f" {self.seconds:.0f}s ({sum(r.overlapped for r in self.rounds)} overlapping the"
            " next)",
            f"  acknowledged sends: {self.acknowledged}   unacknowledged attempts: "
            f"{self.unacknowledged_attempts}   delivered: {self.delivered}",
            f"  lost: {self.lost}   duplicated: {self.duplicated}   invented: {self.invented}"
            f"   wrong ids: {self.wrong_ids}   replicas converged: {self.converged}",
            *([f"  members at the end: {self.members}"] if self.members is not None else []),
            "  fault -> first acknowledged send (p50, max), and the longest time without one:",
            f"    {'fault':<20} {'rounds':>6} {'p50':>10} {'max':>10} {'longest gap':>12}",
        ]
        for name, (count, p50, worst, gap) in self.recovery_by_fault().items():
            lines.append(
                f"    {name:<20} {count:>6} {p50 * 1000:>7.0f} ms {worst * 1000:>7.0f} ms"
                f" {gap * 1000:>9.0f} ms"
            )
        lines += [f"  FAILURE: {f}" for f in self.failures]
        lines.append("  RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        return json.dumps(data, indent=2)


def score(report: ChaosReport, log: SendLog, delivered: list[str], ids: dict[str, int]) -> None:
    counts = Counter(delivered)
    report.acknowledged = len(log.acknowledged)
    report.unacknowledged_attempts = len(log.failed)
    report.delivered = len(delivered)
    report.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    if report.duplicated:
        twice = sorted(b for b, n in counts.items() if n > 1)[:20]
        report.failures.append(f"delivered more than once: {', '.join(twice)}")
    lost = sorted(set(log.acknowledged) - set(counts), key=lambda b: log.acknowledged[b])
    report.lost = len(lost)
    if lost:
        sample = ", ".join(f"{b} (id {log.acknowledged[b]})" for b in lost[:20])
        report.failures.append(f"acknowledged but never delivered: {sample}")
    report.invented = len(set(counts) - set(log.acknowledged) - set(log.failed))
    report.wrong_ids = sum(1 for body, i in log.acknowledged.items() if ids.get(body, i) != i)


def longest_gap(ack_times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without an acknowledged send."""
    inside = [t for t in ack_times if start <= t <= end]
    marks = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(marks))


def heal(ctx: ChaosContext, *, under_load: bool = True, wait: bool = True) -> None:
    """Restart every member that is down and (`wait`) wait until all follow one primary,
    which lists them all as voters in sync (and, `under_load`, acknowledge sends again)."""
    thaw_databases(ctx)
    if ctx.databases:
        for server in ctx.databases:
            server.start()
    elif ctx.backend == "mysql":
        start_mariadb()
    down = [i for i in ctx.members() if not ctx.cluster.is_running(i)]
    for index in down:
        ctx.start(index, wait=False)
    if not wait:
        return
    for index in down:
        ctx.cluster.wait_healthy(index, timeout=HEAL_TIMEOUT)
    primary = ctx.current_primary()
    try:
        wait_all_running_follow(ctx.cluster, primary, timeout=HEAL_TIMEOUT)
    except TimeoutError as exc:
        raise ChaosFailure(f"replicas did not get back in sync: {exc}") from None
    ctx.wait_members_settled()
    if not under_load:
        return
    before = ctx.acked()
    recovery = ctx.recovery
    ctx.wait_progress(before, 3, "healing")
    ctx.recovery = recovery


def _cluster(
    base_dir: Path, test_hosts: TestHosts | None, urls: list[str | None], settings: dict[str, int]
) -> ClusterProcesses:
    """Three replicas on loopback, or one on each test host."""
    if test_hosts is None:
        return ClusterProcesses(base_dir, len(HOSTS), hosts=HOSTS, db_urls=urls, settings=settings)
    return ClusterProcesses(
        base_dir,
        len(HOSTS),
        hosts=[test_hosts.address(i) for i in range(len(HOSTS))],
        ports=[REPLICA_PORT] * len(HOSTS),
        launch_prefixes=[test_hosts.exec_prefix(i) for i in range(len(HOSTS))],
        db_urls=urls,
        settings=settings,
    )


def wait_members_converged(ctx: ChaosContext, timeout: float) -> str:
    """Until every member's log and projections are identical (by digest, straight from each
    member's own database); the common digest. (Removed replicas' databases are left behind
    or deleted.)"""
    members = ctx.members()

    def states() -> list[tuple[int, int, str]]:
        return [replica_state(db_url(ctx.cluster, i)) for i in members]

    def converged() -> str | None:
        now = states()
        if len({s[2] for s in now}) == 1 and all(s[0] == s[1] for s in now):
            return now[0][2]
        return None

    return wait_until(
        converged,
        timeout,
        lambda: f"members {members} did not converge: {[s[:2] for s in states()]}",
        interval=0.2,
    )


def choose_fault(
    faults: list[Fault], number: int, schedule: str, rng: random.Random, fits: list[Fault]
) -> Fault | None:
    """Round `number`'s fault among `faults`, of those that `fits` the cluster now: drawn, or
    the next in turn that fits ("cycle"); None if none fits."""
    if not fits:
        return None
    if schedule == "cycle":
        start = (number - 1) % len(faults)
        turn = faults[start:] + faults[:start]
        return next(f for f in turn if f in fits)
    return rng.choice(fits)


def _round(
    ctx: ChaosContext, load: FollowingSenders, number: int, fault: Fault, overlapped: bool
) -> RoundResult:
    """One fault under load and its healing (not waited for when `overlapped`: the next fault
    comes at once); ChaosFailure if it could not be healed."""
    round_start = time.monotonic()
    acked_before = ctx.acked()
    ctx.recovery = None
    what = fault.inject(ctx)
    heal(ctx, wait=not overlapped)
    round_end = time.monotonic()
    with load.log.lock:
        gap = longest_gap(load.log.ack_times, round_start, round_end)
    return RoundResult(
        number,
        acked_before,
        fault.name,
        what,
        ctx.recovery,
        round_end - round_start,
        gap,
        overlapped,
    )


def _judge(report: ChaosReport, ctx: ChaosContext, send_log: SendLog) -> None:
    """After the last round: everything healed and converged, every acknowledged send in the
    recipient's inbox exactly once, no traceback in any replica's log."""
    cluster = ctx.cluster
    try:
        heal(ctx, under_load=False)
        wait_members_converged(ctx, timeout=HEAL_TIMEOUT)
        report.converged = True
    except (ChaosFailure, TimeoutError) as exc:
        report.failures.append(f"after the last round: {exc}")
    inbox = read_inbox(cluster, RECIPIENT)
    score(report, send_log, [m.body for m in inbox], {m.body: m.message_id for m in inbox})
    for index, text in cluster.tracebacks().items():
        report.failures.append(f"a traceback in replica {index}'s log:\n{text}")
    if not report.ok:
        for spec in cluster.specs:
            report.failures.append(cluster.log_tail(spec.index, 30))
    if ctx.removed or len(cluster.specs) > len(HOSTS):
        report.members = ctx.members()


def run_chaos(
    base_dir: Path,
    *,
    rounds: int,
    backend: str = "sqlite",
    seed: int | None = None,
    fault_names: list[str] | None = None,
    schedule: str = "random",
    senders: int = 4,
    hosts: str = "loopback",
    min_insync: int = 1,
    overlap: float = 0.0,
    max_fault_seconds: float = 30.0,
    progress: Callable[[str], None] = print,
) -> ChaosReport:
    """`schedule`: "random" draws each round's fault; "cycle" takes them in turn (so a short
    run covers every fault). `hosts`: "loopback" (127.0.0.11-13) or "netns" (a test host
    each, and the network faults). `overlap`: the share of rounds after which the next fault
    comes at once, without waiting for the replicas to be back in sync."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    faults: list[Fault] = faults_for(
        backend, fault_names, network=hosts == "netns", min_insync=min_insync
    )
    report = ChaosReport(backend, seed, rounds, hosts, min_insync)
    started = time.monotonic()
    placement = Placement(backend, replica_port=REPLICA_PORT)
    urls: list[str | None] = [None] * len(HOSTS)
    proxies: list[TcpProxy] = []
    if backend == "mysql" and hosts != "netns":
        # Each replica's database behind a proxy of its own (stall_db, slow_db).
        placement.mysql_server_url = MYSQL_SERVER_URL
        placement.mysql_tag = os.urandom(4).hex()
        mysql = make_url(MYSQL_SERVER_URL)
        proxies = [TcpProxy((mysql.host or "127.0.0.1", mysql.port or 3306)) for _ in HOSTS]
        urls = [placement.mysql_url(i, proxy.port) for i, proxy in enumerate(proxies)]
    names = [f"sender{i}" for i in range(senders)]
    settings = {**SETTINGS, "min_insync": min_insync}
    # With membership faults, test hosts for the most voters there may be, and one more.
    changes_members = any(f.membership for f in faults)
    host_count = HOSTS_WITH_MEMBERSHIP if changes_members else len(HOSTS)
    test_hosts = TestHosts(host_count) if hosts == "netns" else None
    servers: list[HostMariaDB] = []
    if test_hosts is not None and backend == "mysql":
        try:
            servers = start_host_servers(test_hosts, base_dir)
        except BaseException:
            test_hosts.close()
            raise
        urls = [servers[i].url(f"chat_chaos_{i}") for i in range(len(HOSTS))]
    placement.hosts = test_hosts
    placement.servers = servers
    placement.proxies = proxies
    placement.urls = list(urls)
    cluster = _cluster(base_dir, test_hosts, urls, settings)
    try:
        cluster.start_all()
        primary = wait_for_primary(cluster)
        register_users(cluster, [*names, RECIPIENT])
        wait_all_running_follow(cluster, primary)
        # (its clients follow the members: `ctx` is bound below, before the load starts)
        load = FollowingSenders(lambda: ctx.addresses(), names, RECIPIENT)
        ctx = ChaosContext(
            cluster,
            load,
            rng,
            backend,
            test_hosts,
            servers,
            proxies=proxies,
            max_fault_seconds=max_fault_seconds,
            min_insync=min_insync,
            placement=placement,
        )
        load.start()
        try:
            load.wait_for_acks(20)
            for number in range(1, rounds + 1):
                fits = [f for f in faults if f.applies(ctx)]
                chosen = choose_fault(faults, number, schedule, rng, fits)
                if chosen is None:
                    report.failures.append(
                        f"round {number}: none of {[f.name for f in faults]} fits the cluster"
                        f" now (members {ctx.members()}, min_insync {min_insync})"
                    )
                    break
                fault = chosen
                overlapped = number < rounds and rng.random() < overlap
                try:
                    result = _round(ctx, load, number, fault, overlapped)
                except ChaosFailure as exc:
                    report.failures.append(f"round {number} ({fault.name}): {exc}")
                    break
                report.rounds.append(result)
                recovery = "-" if result.recovery_s is None else f"{result.recovery_s:.2f}s"
                progress(
                    f"round {number:>3}/{rounds} {fault.name:<19} {result.what}; first ack after "
                    f"{recovery}; no ack for {result.longest_gap_s:.2f}s at most; round "
                    f"{result.seconds:.1f}s{'; next fault at once' if overlapped else ''}; "
                    f"{ctx.acked()} acked"
                )
        finally:
            try:
                send_log = load.stop()
            except AssertionError as exc:
                report.failures.append(str(exc))
                send_log = load.log
        _judge(report, ctx, send_log)
    finally:
        cluster.close(check_logs=False)  # (checked above, into the report)
        for server in servers:  # before the hosts: a namespace outlives its processes' end
            server.close(keep=not report.ok)
            if not report.ok:
                report.failures.append(f"MariaDB data kept: {server.datadir}")
        if test_hosts is not None:
            test_hosts.close()
        if backend == "mysql" and not servers:
            start_mariadb()
            for url in placement.urls:
                if url is None:
                    continue
                if report.ok:
                    drop_mysql_database(url)
                else:  # kept for the post-mortem
                    report.failures.append(f"database kept: {url}")
        for proxy in proxies:
            proxy.close()
        report.seconds = time.monotonic() - started
    return report
