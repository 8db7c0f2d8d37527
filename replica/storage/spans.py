"""Timestamps of the steps a write goes through -- taken on the primary and on each secondary
-- so that `make bench` can show the critical path of one send as measured spans (client
call -> decided -> streamed -> stored on each secondary -> acked -> reply, and beside the
stream the primary's own local commit).

Off unless a replica is started with `--trace-spans FILE` (or CHAT_TRACE_SPANS). Each mark is
one line `NAME SEQ NANOSECONDS`, the time from CLOCK_MONOTONIC, which every process on the
machine shares. A mark either belongs to one event (`decided 41`) or covers every event up to
its seq (`stored 41`: all of 1..41 are stored); the reader tells them apart by name
(bench/path.py). Marks are buffered and written by a thread every FLUSH_SECONDS."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TextIO

FLUSH_SECONDS = 0.1


class Spans:
    """Records marks; the disabled recorder (`Spans(None)`) does nothing, cheaply."""

    def __init__(self, path: Path | None) -> None:
        self.enabled = path is not None
        self._lock = threading.Lock()
        self._marks: list[tuple[str, int, int]] = []
        self._file: TextIO | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if path is not None:
            self._file = path.open("a", encoding="ascii")
            self._thread = threading.Thread(target=self._run, name="spans", daemon=True)
            self._thread.start()

    def mark(self, name: str, seq: int) -> None:
        if self.enabled:
            now = time.monotonic_ns()
            with self._lock:
                self._marks.append((name, seq, now))

    def mark_at(self, name: str, seq: int, monotonic_ns: int) -> None:
        """A mark for a moment measured earlier (e.g. when a request came in, before its
        event had a seq)."""
        if self.enabled:
            with self._lock:
                self._marks.append((name, seq, monotonic_ns))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            marks, self._marks = self._marks, []
        if self._file is not None and marks:
            self._file.write("".join(f"{name} {seq} {t}\n" for name, seq, t in marks))
            self._file.flush()


DISABLED = Spans(None)
