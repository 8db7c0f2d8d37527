"""Memory of processes from /proc: resident set now (VmRSS) and its peak (VmHWM)."""

from __future__ import annotations

import threading
from collections.abc import Mapping


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds on a thread; keeps the peak."""

    def __init__(self, pids: Mapping[int, int], interval: float = 0.05) -> None:
        self._pids = dict(pids)
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kb: dict[int, int] = {index: 0 for index in self._pids}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        for index, pid in self._pids.items():
            rss = proc_status_kb(pid, "VmRSS")
            if rss is not None and rss > self.peak_kb[index]:
                self.peak_kb[index] = rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()
