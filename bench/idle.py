"""The CPU an idle three-replica cluster spends: each replica's CPU seconds per second of wall
time (utime + stime from /proc/PID/stat), measured over a quiet window once the cluster is in
sync. What remains at idle is the protocol's own chatter (heartbeats, acks, probes, ticks).

    python -m bench.idle [--backend sqlite|mysql|both] [--seconds 30]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cli import DEFAULT_MYSQL_URL
from bench.cluster import REPLICAS, BenchCluster
from bench.cpu import cpu_seconds
from bench.databases import Databases

SETUP_TIMEOUT = 60.0
SETTLE_SECONDS = 3.0  # after in sync: the start-up's catch-up and elections are over


@dataclass(frozen=True)
class IdleCpu:
    backend: str
    seconds: float
    ms_per_second: dict[int, float]  # replica index -> CPU ms per wall second

    def describe(self) -> str:
        per = ", ".join(f"{i}: {ms:.1f}" for i, ms in sorted(self.ms_per_second.items()))
        mean = statistics.fmean(self.ms_per_second.values())
        return (
            f"[{self.backend}] idle {self.seconds:.0f} s: CPU ms per second per replica "
            f"{per} (mean {mean:.1f})"
        )


def measure_idle(backend: str, work_dir: Path, mysql_url: str, seconds: float) -> IdleCpu:
    databases = Databases(backend, work_dir, mysql_url, secrets.token_hex(3))
    try:
        urls = [databases.url(f"idle_{i}") for i in range(REPLICAS)]
        with BenchCluster(work_dir / f"idle-{backend}", urls) as cluster:
            cluster.start_all()
            primary = cluster.wait_primary(SETUP_TIMEOUT)
            cluster.wait_in_sync(primary, SETUP_TIMEOUT)
            time.sleep(SETTLE_SECONDS)
            pids = {i: cluster.pid(i) for i in range(REPLICAS)}
            before = {i: cpu_seconds(pid) for i, pid in pids.items()}
            started = time.monotonic()
            time.sleep(seconds)
            after = {i: cpu_seconds(pid) for i, pid in pids.items()}
            wall = time.monotonic() - started
            if cluster.primary() != primary:
                raise RuntimeError("the primary changed during the idle window")
        used: dict[int, float] = {}
        for i in pids:
            b, a = before[i], after[i]
            if a is None or b is None:
                raise RuntimeError(f"replica {i} is gone")
            used[i] = (a - b) * 1000 / wall
        return IdleCpu(backend, wall, used)
    finally:
        databases.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "mysql", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    args = parser.parse_args(argv)
    backends = ("sqlite", "mysql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as work:
        for backend in backends:
            print(measure_idle(backend, Path(work), args.mysql_url, args.seconds).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
