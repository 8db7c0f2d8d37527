"""gRPC's C core writes a line to stderr for every failed TLS handshake -- a plaintext client
retrying against a TLS replica writes dozens a minute, burying what matters. Python cannot
hook those lines, so the replica's stderr (file descriptor 2) goes through a pipe read here:
every other line passes through unchanged; of the handshake failures, the first in each
minute passes, and the rest are counted and summed up in one line when the minute ends."""

from __future__ import annotations

import atexit
import os
import select
import sys
import threading
import time
from collections.abc import Callable

HANDSHAKE_FAILED = b"Handshake failed"
PERIOD = 60.0


class HandshakeLines:
    """The pure part: which lines to write, given a line read (or none) at `now`."""

    def __init__(self, period: float = PERIOD, clock: Callable[[], float] = time.monotonic):
        self.period = period
        self._clock = clock
        self._window_start: float | None = None
        self._suppressed = 0
        self._last = b""

    def line(self, text: bytes) -> list[bytes]:
        if HANDSHAKE_FAILED not in text:
            return [text]
        now = self._clock()
        out = self.tick()
        if self._window_start is None:
            self._window_start = now
            return [*out, text]
        self._suppressed += 1
        self._last = text
        return out

    def tick(self) -> list[bytes]:
        """The summary line, once the minute of a first failure has passed."""
        if self._window_start is None or self._clock() - self._window_start < self.period:
            return []
        suppressed, self._suppressed, self._window_start = self._suppressed, 0, None
        if not suppressed:
            return []
        last = self._last.strip().decode("utf-8", "replace")
        summary = (
            f"... and {suppressed} more TLS handshake failure(s) in the last"
            f" {self.period:.0f} s (the last: {last})\n"
        )
        return [summary.encode()]


def filter_stderr(period: float = PERIOD) -> None:
    """Route this process's fd 2 through HandshakeLines (a daemon thread forwards it)."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    lines = HandshakeLines(period)

    def forward() -> None:
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([read_end], [], [], 1.0)
                out: list[bytes] = []
                if ready:
                    chunk = os.read(read_end, 65536)
                    if not chunk:
                        break
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for text in complete:
                        out += lines.line(text + b"\n")
                out += lines.tick()
                for text in out:
                    os.write(original, text)
        finally:  # never leave the process writing into a pipe nobody reads
            os.dup2(original, 2)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        """At exit: the last lines (often the reason for exiting) must reach the log."""
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's only write end: the reader sees its end
        thread.join(2.0)

    atexit.register(drain)
