"""CPU time of processes from /proc/PID/stat (user + system, all threads), so that a phase can
say how much CPU each process spent per operation: the figure that holds on a shared machine,
where wall-clock rates move with the neighbours' load."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
DATABASE_SERVER = "database server"
CLIENTS = "bench clients"


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (every thread), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of the line; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds each named process spent between two samples."""

    seconds: dict[str, float]

    def per_operation_ms(self, operations: int) -> dict[str, float]:
        if operations <= 0:
            return {}
        return {name: s * 1000 / operations for name, s in self.seconds.items()}


class CpuMeter:
    """Samples the CPU time of named processes; `use()` gives what each spent since `start()`.
    A process that is gone at either sample is left out (its figure would be a guess)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = self._sample()

    def use(self) -> CpuUse:
        now = self._sample()
        return CpuUse(
            {
                name: now[name] - self._start[name]
                for name in self._pids
                if name in self._start and name in now
            }
        )

    def _sample(self) -> dict[str, float]:
        found = {}
        for name, pid in self._pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                found[name] = seconds
        return found


def mysql_server_pid(server_url: str) -> int | None:
    """The PID of the MySQL/MariaDB server behind a loopback URL, from its pid file, if this
    machine runs it and lets us read the file; None otherwise (its CPU is then not shown)."""
    engine = sa.create_engine(server_url.rstrip("/") + "/", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            pid_file = conn.execute(sa.text("SELECT @@pid_file")).scalar_one()
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()
    try:
        pid = int(Path(str(pid_file)).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm in ("mariadbd", "mysqld") else None
