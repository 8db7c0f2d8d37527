"""Catch-up: a replica that misses `missing` events of a log of `log_size` starts together
with two replicas holding the whole log; how fast it gets level with the primary, and how much
memory each replica needs meanwhile.

One log is written straight into a template database (bench.seed) and copied at each size a
scenario needs, so every replica holding a prefix holds exactly the same events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

import eventlog
from bench.cluster import REPLICAS, BenchCluster
from bench.cpu import CpuMeter
from bench.databases import Databases
from bench.memory import RssSampler
from bench.seed import LogSeeder
from bench.sizes import Sizes

LAGGING = 2  # replicas 0 and 1 hold the whole log
POLL = 0.02
PROGRESS_EVERY = 15.0  # seconds between progress lines


@dataclass(frozen=True)
class CatchupScenario:
    name: str  # stable across sizes, e.g. "log_3x": the log is 3x what is missing
    log_size: int
    lagging_holds: int

    @property
    def missing(self) -> int:
        return self.log_size - self.lagging_holds


@dataclass(frozen=True)
class CatchupRun:
    scenario: CatchupScenario
    caught_up_events: int  # appended by the lagging replica while measured
    # From the last sample before the election (the new primary's epoch_started event is
    # in its log: no catch-up can start earlier) to the first sample with the lagging replica
    # level. Overstates the time by at most one probe tick and two samples.
    seconds: float
    per_second: float
    launch_to_level_s: float  # from starting the three processes (election included)
    primary: int | None
    peak_rss_kb: dict[int, int]  # VmHWM of each replica, read once it is level
    sampled_peak_rss_kb: dict[int, int]  # highest VmRSS seen by sampling meanwhile
    # epoch_started events past the first: leadership changed although nothing failed.
    extra_elections: int
    # CPU seconds of each replica over `seconds` (by index; start-up excluded).
    cpu_s: dict[int, float]

    @property
    def lagging_cpu_ms_per_event(self) -> float | None:
        cpu = self.cpu_s.get(LAGGING)
        if cpu is None or self.caught_up_events <= 0:
            return None
        return cpu * 1000 / self.caught_up_events


def scenarios(sizes: Sizes) -> list[CatchupScenario]:
    return [
        CatchupScenario(
            f"log_{multiple}x",
            multiple * sizes.catchup_missing,
            (multiple - 1) * sizes.catchup_missing,
        )
        for multiple in sizes.catchup_log_multiples
    ]


def prepare(
    databases: Databases, wanted: list[CatchupScenario], batch: int
) -> dict[str, list[str]]:
    """The databases of each scenario's replicas (by scenario name, by replica index)."""
    template = databases.migrated("seed")
    seeder = LogSeeder(template, batch)
    urls: dict[str, list[str]] = {s.name: [""] * REPLICAS for s in wanted}
    copies: dict[int, list[tuple[str, int]]] = {}
    for s in wanted:
        for index in range(REPLICAS):
            holds = s.lagging_holds if index == LAGGING else s.log_size
            if holds == 0:
                databases.migrated(f"{s.name}_{index}").dispose()
                urls[s.name][index] = databases.url(f"{s.name}_{index}")
            else:
                copies.setdefault(holds, []).append((s.name, index))
    for size in sorted(copies):
        seeder.extend_to(size)
        for name, index in copies[size]:
            urls[name][index] = databases.copy(template, f"{name}_{index}")
    template.dispose()
    databases.drop(databases.url("seed"))
    return urls


def _last_seq(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return eventlog.last_position(conn).seq


def run_catchup(
    databases: Databases,
    scenario: CatchupScenario,
    urls: list[str],
    base_dir: Path,
    timeout: float,
    say: Callable[[str], None] = lambda text: None,
) -> CatchupRun:
    readers = [databases.reader(url) for url in urls]
    initial = _last_seq(readers[LAGGING])
    full = [i for i in range(REPLICAS) if i != LAGGING]
    with BenchCluster(base_dir, urls) as cluster:
        launched = time.monotonic()
        cluster.start_all(wait=False)
        pids = {i: cluster.pid(i) for i in range(REPLICAS)}
        meter = CpuMeter({str(i): pid for i, pid in pids.items()})
        meter.start()
        with RssSampler(pids) as sampler:
            unelected_at = launched
            deadline = launched + timeout
            next_progress = launched + PROGRESS_EVERY
            while True:
                before = time.monotonic()
                lagging_seq = _last_seq(readers[LAGGING])
                leading_seq = max(_last_seq(readers[i]) for i in full)
                after = time.monotonic()
                if leading_seq <= scenario.log_size:
                    unelected_at = before
                    meter.start()  # (the last start before the election counts)
                elif lagging_seq >= leading_seq:
                    level_at = after
                    break
                if after > deadline:
                    raise TimeoutError(
                        f"replica {LAGGING} at {lagging_seq} of {leading_seq} after "
                        f"{timeout:.0f}s\n{cluster.log_tails()}"
                    )
                if after > next_progress:
                    next_progress += PROGRESS_EVERY
                    say(f"{scenario.name}: lagging replica at {lagging_seq:,} of {leading_seq:,}")
                exited = [i for i in range(REPLICAS) if not cluster.processes.is_running(i)]
                if exited:
                    raise RuntimeError(f"replicas {exited} exited\n{cluster.log_tails()}")
                time.sleep(POLL)
            cpu = meter.use().seconds
            peak = {i: cluster.rss_kb(i, "VmHWM") or 0 for i in range(REPLICAS)}
        primary = cluster.primary()
    for reader in readers:
        reader.dispose()
    seconds = level_at - unelected_at
    events = lagging_seq - initial
    return CatchupRun(
        scenario=scenario,
        caught_up_events=events,
        seconds=seconds,
        per_second=events / seconds if seconds > 0 else 0.0,
        launch_to_level_s=level_at - launched,
        primary=primary,
        peak_rss_kb=peak,
        sampled_peak_rss_kb=dict(sampler.peak_kb),
        extra_elections=leading_seq - scenario.log_size - 1,
        cpu_s={int(name): seconds for name, seconds in cpu.items()},
    )
