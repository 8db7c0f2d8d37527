"""Membership catch-up (issue 25): a new replica joins a running three-replica cluster whose log
already holds N events, as an operator adds one.

The log is written straight into the databases, as for the catch-up phase (bench.seed): one
log of N events, copied to the three voters; the new replica starts on an empty database with
`python -m replica --index 3 --address H:P --join H:P,...` and is healthy (not yet a member)
before anything is timed. Then, through client.AdminClient:

- **idle join**: `add_member`, then `promote_member` until the primary accepts it (every
  PROMOTE_EVERY_BEHIND s while the learner is far behind, every PROMOTE_EVERY s once level):
  it refuses with "replica N is catching up: K event(s) behind ..." until the learner has
  kept within `promotion_lag` events of the log's end for `promotion_steady` s.
  The time from asking the add to the accepted promotion is the figure; meanwhile each
  database's last seq is sampled every POLL s, which splits it into: the add committed, the
  learner's first stored event, the learner within `promotion_lag` of the end ("level"), and
  the promotion. The promoted replica is then removed (it stops by itself), leaving the
  three voters again.
- **loaded join**: closed-loop senders (bench.throughput) run throughout; their rate in the
  `window` seconds just before the add is the baseline, their rate from the add to the
  accepted promotion the figure. A second new replica (index 4) joins exactly as above.

The CPU time of every process over each join (/proc) says where the time goes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

import eventlog
from bench import users
from bench.cluster import HOST, REPLICAS, SETTINGS, BenchCluster
from bench.cpu import CLIENTS, DATABASE_SERVER, CpuMeter
from bench.databases import Databases
from bench.memory import proc_status_kb
from bench.seed import LogSeeder
from bench.throughput import START_DELAY, ClosedLoopSenders, ThroughputRun
from client.admin import AdminClient
from client.errors import Refused
from replica.protocol.config import ProtocolConfig

POLL = 0.02  # seconds between samples of the learner's and the primary's last seq
PROMOTE_EVERY = 0.05  # seconds between PromoteMember attempts once the learner is level...
PROMOTE_EVERY_BEHIND = 0.5  # ...and before (each refusal costs the primary a call)
PROGRESS_EVERY = 15.0
SETUP_TIMEOUT = 60.0
REMOVE_TIMEOUT = 30.0
# Leadership changes seen during one join before it is abandoned: nothing is faulted, so any
# is an anomaly, and a few in a row are an election storm that no wait will end.
MAX_ELECTIONS = 3
WARM_UP = 1.0  # seconds of load before the window before the add opens
RECIPIENTS = 4

RESTART_LINE = "reconnecting for fresh news"  # a secondary ending its own stream (its log)

# The replicas' own promotion rule with the bench's settings (replica/protocol/in_sync.py).
_PROTOCOL = ProtocolConfig(
    index=0, members=(0,), heartbeat_interval=SETTINGS["heartbeat_interval_ms"] / 1000
)
PROMOTION_LAG = _PROTOCOL.promotion_lag
PROMOTION_STEADY = _PROTOCOL.promotion_steady


def join_timeout(size: int) -> float:
    """A join gives up once it runs below ~2,000 events/s (a tenth of the target)."""
    return 120.0 + size / 2_000


@dataclass(frozen=True)
class JoinRun:
    size: int  # events seeded into the log
    loaded: bool
    learner: int
    primary: int
    asked_at: float  # monotonic clock: the add asked
    log_at_add: int  # the primary's last seq just before the add was asked
    events: int  # the learner's last seq once its promotion was accepted
    seconds: float  # add asked -> promotion accepted
    add_s: float  # the AddMember call (returns once the change is committed)
    first_event_s: float | None  # add asked -> the learner's first stored event
    level_s: float | None  # add asked -> first sample holding events, within PROMOTION_LAG
    level_seq: int  # the learner's last seq at that sample
    promotion_attempts: int
    last_refusal: str
    # Before level: the longest time the learner's last seq stood still between samples, and
    # the streams it ended itself because storing a batch (queued behind the batches in flight
    # before it) took longer than its vouch window -- its log says so, one line each.
    longest_stall_s: float
    stream_restarts: int
    # New epochs in the primary's log during the join (an epoch_started event each): 0 unless
    # the leadership changed although nothing was faulted.
    elections: int
    cpu_s: dict[str, float]  # CPU seconds of each process, add asked -> promotion accepted
    learner_peak_rss_kb: int

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def promotion_wait_s(self) -> float | None:
        """From the learner level to the accepted promotion: the steady time the rule asks
        for, plus up to one PROMOTE_EVERY and one POLL."""
        return None if self.level_s is None else self.seconds - self.level_s

    @property
    def streaming_rate(self) -> float | None:
        """Events/s the learner stored from its first event until level."""
        if self.level_s is None or self.first_event_s is None:
            return None
        span = self.level_s - self.first_event_s
        return self.level_seq / span if span > 0 else None

    @property
    def learner_cpu_ms_per_event(self) -> float | None:
        cpu = self.cpu_s.get("learner")
        return None if cpu is None or self.events <= 0 else cpu * 1000 / self.events

    def cpu_share(self) -> dict[str, float]:
        """Each process's CPU seconds per wall second of the join (1.0: one core all along)."""
        if self.seconds <= 0:
            return {}
        return {name: s / self.seconds for name, s in self.cpu_s.items()}

    def as_dict(self) -> dict[str, object]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "log_size": self.size,
            "loaded": self.loaded,
            "learner": self.learner,
            "primary": self.primary,
            "log_at_add": self.log_at_add,
            "events": self.events,
            "seconds": r(self.seconds),
            "add_s": r(self.add_s),
            "first_event_s": r(self.first_event_s),
            "level_s": r(self.level_s),
            "level_seq": self.level_seq,
            "promotion_wait_s": r(self.promotion_wait_s),
            "streaming_rate": r(self.streaming_rate),
            "promotion_attempts": self.promotion_attempts,
            "longest_stall_s": r(self.longest_stall_s),
            "stream_restarts": self.stream_restarts,
            "elections": self.elections,
            "last_refusal": self.last_refusal,
            "cpu_s": {name: round(s, 3) for name, s in self.cpu_s.items()},
            "cpu_share": {name: round(s, 3) for name, s in self.cpu_share().items()},
            "learner_cpu_ms_per_event": (
                None
                if self.learner_cpu_ms_per_event is None
                else round(self.learner_cpu_ms_per_event, 4)
            ),
            "learner_peak_rss_mb": round(self.learner_peak_rss_kb * 1024 / 1e6, 1),
            "poll_s": POLL,
            "promote_every_s": PROMOTE_EVERY,
            "promote_every_behind_s": PROMOTE_EVERY_BEHIND,
            "promotion_lag": PROMOTION_LAG,
            "promotion_steady_s": PROMOTION_STEADY,
        }


@dataclass(frozen=True)
class LoadedJoin:
    join: JoinRun
    before: ThroughputRun  # the window just before the add
    during: ThroughputRun  # add asked -> promotion accepted
    cpu_before_s: dict[str, float]  # CPU seconds of each process in the window before


@dataclass
class SizeRun:
    size: int
    seed_s: float  # writing the log and copying it to the three voters
    idle: JoinRun
    loaded: LoadedJoin


class LogTemplate:
    """One log, extended size by size and copied to each size's three voters (their logs are
    then identical)."""

    def __init__(self, databases: Databases, batch: int) -> None:
        self._databases = databases
        self._engine = databases.migrated("member_seed")
        self._seeder = LogSeeder(self._engine, batch)

    def voters(self, size: int) -> list[str]:
        """The three voters' databases, each holding the first `size` events (sizes ascending)."""
        if size < self._seeder.last_seq:
            raise ValueError(f"the log holds {self._seeder.last_seq:,} events, more than {size:,}")
        self._seeder.extend_to(size)
        return [self._databases.copy(self._engine, f"member_{size}_{i}") for i in range(REPLICAS)]

    def close(self) -> None:
        self._engine.dispose()
        self._databases.drop(self._databases.url("member_seed"))


def _last_seq(engine: sa.Engine) -> int:
    return _last_position(engine).seq


def _last_position(engine: sa.Engine) -> eventlog.Position:
    with engine.connect() as conn:
        return eventlog.last_position(conn)


class _Join:
    """One replica joining: started on an empty database, added, promoted once accepted."""

    def __init__(
        self,
        cluster: BenchCluster,
        databases: Databases,
        admin: AdminClient,
        database_pid: int | None,
        say: Callable[[str], None],
    ) -> None:
        self._cluster = cluster
        self._databases = databases
        self._admin = admin
        self._database_pid = database_pid
        self._say = say

    def start_learner(self, name: str) -> tuple[int, sa.Engine]:
        url = self._databases.url(name)
        self._databases.drop(url)  # empty: the replica creates and migrates it
        processes = self._cluster.processes
        index = processes.add_joiner(HOST, db_url=url)
        processes.start(index)  # healthy, not yet a member
        return index, self._databases.reader(url)

    def meter(self, primary: int, learner: int) -> CpuMeter:
        pids = {"primary": self._cluster.pid(primary)}
        for index in range(REPLICAS):
            if index != primary and self._cluster.processes.is_running(index):
                pids[f"secondary {index}"] = self._cluster.pid(index)
        pids["learner"] = self._cluster.processes.process(learner).pid
        if self._database_pid is not None:
            pids[DATABASE_SERVER] = self._database_pid
        pids[CLIENTS] = os.getpid()
        return CpuMeter(pids)

    def run(
        self,
        size: int,
        primary: int,
        primary_reader: sa.Engine,
        learner: int,
        learner_reader: sa.Engine,
        *,
        loaded: bool,
        timeout: float,
    ) -> JoinRun:
        processes = self._cluster.processes
        meter = self.meter(primary, learner)
        at_add = _last_position(primary_reader)
        log_at_add = at_add.seq
        epochs = {at_add.epoch}
        meter.start()
        asked = time.monotonic()
        self._admin.add_member(learner, processes.address(learner))
        added = time.monotonic()
        deadline = asked + timeout
        next_progress = asked + PROGRESS_EVERY
        first_event_at: float | None = None
        level_at: float | None = None
        level_seq = 0
        moved_at, moved_seq, longest_stall = asked, 0, 0.0
        attempts = 0
        last_refusal = ""
        last_try = -PROMOTE_EVERY_BEHIND
        while True:
            sampled = time.monotonic()
            learner_seq = _last_seq(learner_reader)
            primary_position = _last_position(primary_reader)
            primary_seq = primary_position.seq
            epochs.add(primary_position.epoch)
            if len(epochs) - 1 > MAX_ELECTIONS:
                raise RuntimeError(
                    f"{len(epochs) - 1} leadership changes while learner {learner} caught up "
                    f"(at {learner_seq:,} of {primary_seq:,}): an election storm\n"
                    + self.log_tails(learner)
                )
            if first_event_at is None and learner_seq > 0:
                first_event_at = sampled
            if learner_seq != moved_seq:
                if moved_seq > 0 and level_at is None:
                    longest_stall = max(longest_stall, sampled - moved_at)
                moved_at, moved_seq = sampled, learner_seq
            # (A learner that stored nothing yet has acknowledged nothing: not level.)
            if level_at is None and 0 < learner_seq >= primary_seq - PROMOTION_LAG:
                level_at, level_seq = sampled, learner_seq
            every = PROMOTE_EVERY if level_at is not None else PROMOTE_EVERY_BEHIND
            if time.monotonic() - last_try >= every:
                last_try = time.monotonic()
                attempts += 1
                try:
                    self._admin.promote_member(learner)
                    promoted_at = time.monotonic()
                    break
                except Refused as exc:
                    last_refusal = str(exc)
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"learner {learner} not promotable after {timeout:.0f}s: at {learner_seq:,} "
                    f"of {primary_seq:,}; last refusal: {last_refusal}\n{self.log_tails(learner)}"
                )
            if now > next_progress:
                next_progress += PROGRESS_EVERY
                self._say(f"learner {learner} at {learner_seq:,} of {primary_seq:,}")
            exited = [i for i in (*range(REPLICAS), learner) if not processes.is_running(i)]
            if exited:
                raise RuntimeError(f"replicas {exited} exited\n{self.log_tails(learner)}")
            time.sleep(POLL)
        use = meter.use()
        return JoinRun(
            size=size,
            loaded=loaded,
            learner=learner,
            primary=primary,
            asked_at=asked,
            log_at_add=log_at_add,
            events=_last_seq(learner_reader),
            seconds=promoted_at - asked,
            add_s=added - asked,
            first_event_s=None if first_event_at is None else first_event_at - asked,
            level_s=None if level_at is None else level_at - asked,
            level_seq=level_seq,
            promotion_attempts=attempts,
            last_refusal=last_refusal,
            longest_stall_s=longest_stall,
            stream_restarts=processes.log_text(learner).count(RESTART_LINE),
            elections=len(epochs) - 1,
            cpu_s=use.seconds,
            learner_peak_rss_kb=proc_status_kb(processes.process(learner).pid, "VmHWM") or 0,
        )

    def remove(self, index: int) -> None:
        """Remove a member; it stops by itself once it hears the removal is committed."""
        self._admin.remove_member(index)
        code = self._cluster.processes.wait_exit(index, REMOVE_TIMEOUT)
        if code != 0:
            raise RuntimeError(
                f"removed replica {index} exited with {code}\n{self.log_tails(index)}"
            )

    def log_tails(self, learner: int) -> str:
        return self._cluster.log_tails() + "\n" + self._cluster.processes.log_tail(learner, 15)


def run_size(
    databases: Databases,
    template: LogTemplate,
    size: int,
    *,
    senders: int,
    window: float,
    base_dir: Path,
    database_pid: int | None,
    say: Callable[[str], None] = lambda text: None,
) -> SizeRun:
    began = time.monotonic()
    urls = template.voters(size)
    seed_s = time.monotonic() - began
    say(f"log of {size:,} events written and copied to {REPLICAS} voters in {seed_s:.1f}s")
    readers = [databases.reader(url) for url in urls]
    timeout = join_timeout(size)
    try:
        with BenchCluster(base_dir, urls) as cluster:
            cluster.start_all()
            primary = cluster.wait_primary(SETUP_TIMEOUT)
            cluster.wait_in_sync(primary, SETUP_TIMEOUT)
            admin = AdminClient(cluster.addresses[:REPLICAS], cluster.processes.cluster_secret)
            try:
                join = _Join(cluster, databases, admin, database_pid, say)
                learner, learner_reader = join.start_learner(f"member_{size}_idle")
                idle = join.run(
                    size, primary, readers[primary], learner, learner_reader,
                    loaded=False, timeout=timeout,
                )  # fmt: skip
                say(_describe(idle))
                join.remove(learner)
                cluster.wait_in_sync(primary, SETUP_TIMEOUT)
                loaded = _loaded_join(
                    cluster, join, size, primary, readers[primary],
                    senders=senders, window=window, timeout=timeout,
                )  # fmt: skip
                say(
                    _describe(loaded.join)
                    + f"; sends {loaded.before.per_second:,.0f} msg/s before, "
                    f"{loaded.during.per_second:,.0f} during"
                )
                if cluster.primary() != primary:
                    raise RuntimeError(f"the primary changed during the joins (was {primary})")
            finally:
                admin.close()
    finally:
        for reader in readers:
            reader.dispose()
        for url in urls:
            databases.drop(url)
    return SizeRun(size=size, seed_s=seed_s, idle=idle, loaded=loaded)


def _loaded_join(
    cluster: BenchCluster,
    join: _Join,
    size: int,
    primary: int,
    primary_reader: sa.Engine,
    *,
    senders: int,
    window: float,
    timeout: float,
) -> LoadedJoin:
    names = [f"member_s{i:02d}" for i in range(senders)]
    recipients = [f"member_r{i}" for i in range(RECIPIENTS)]
    addresses = cluster.addresses[:REPLICAS]
    users.register(addresses, [*names, *recipients])
    clients = users.logged_in_clients(addresses, names)
    try:
        learner, learner_reader = join.start_learner(f"member_{size}_loaded")
        start_at = time.monotonic() + START_DELAY
        stop_at = start_at + WARM_UP + window + timeout + 30
        with ClosedLoopSenders(
            clients, recipients, "membership", start_at=start_at, stop_at=stop_at
        ) as load:
            time.sleep(max(0.0, start_at + WARM_UP - time.monotonic()))
            meter = join.meter(primary, learner)
            window_from = time.monotonic()
            meter.start()
            time.sleep(window)
            cpu_before = meter.use().seconds
            window_to = time.monotonic()
            run = join.run(
                size, primary, primary_reader, learner, learner_reader,
                loaded=True, timeout=timeout,
            )  # fmt: skip
            load.stop()
        before = load.window(window_from, window_to)
        during = load.window(run.asked_at, run.asked_at + run.seconds)
    finally:
        for client in clients:
            client.close()
    return LoadedJoin(run, before, during, cpu_before)


def _describe(run: JoinRun) -> str:
    kind = "loaded" if run.loaded else "idle"
    level = "never level" if run.level_s is None else f"level at {run.level_s:.2f}s"
    return (
        f"{kind} join, {run.size:,}-event log: learner {run.learner} promotable after "
        f"{run.seconds:.2f}s ({run.events:,} events, {run.per_second:,.0f} events/s; {level})"
    )


def cpu_note(cpu_s: dict[str, float], seconds: float) -> str:
    """Each process's CPU seconds per wall second, e.g. "learner 0.98, primary 0.40 cores"."""
    if seconds <= 0 or not cpu_s:
        return "no process could be measured"
    return ", ".join(f"{name} {s / seconds:.2f}" for name, s in cpu_s.items()) + " cores"
