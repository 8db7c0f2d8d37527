"""Replicated send throughput: N threads, each with its own ChatClient and user, sending to
recipients as fast as their acknowledgements come back (closed loop), for a fixed time --
or, with ClosedLoopSenders, until stopped, the rate of any window read afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from bench.stats import Distribution
from client.errors import ChatError
from client.library import ChatClient

START_DELAY = 0.2  # lets every thread reach the starting line first
MAX_SENDS_PER_SENDER = 1_000_000
# A send that started before the senders were told to stop ends within the client's
# timeout (10 s); this bounds the wait for the last one.
FINISH_TIMEOUT = 60.0


@dataclass
class _SenderTally:
    acks: list[tuple[float, float]] = field(default_factory=list)  # (began, ended)
    errors: int = 0
    error_sample: str = ""


@dataclass(frozen=True)
class ThroughputRun:
    senders: int
    seconds: float
    acknowledged: int  # sends acknowledged within the window
    completed: int  # every acknowledged send, also those that ended after the window
    per_second: float
    errors: int
    error_sample: str
    send_latency: Distribution


class ClosedLoopSenders:
    """Sender i sends to recipients[i % len(recipients)], each send waiting for the one before
    to be acknowledged, from `start_at` until stop() or `stop_at` (monotonic clock), whichever
    comes first. Every acknowledged send's start and end are kept; `window()` counts those
    acknowledged inside any interval, once the senders have stopped."""

    def __init__(
        self,
        clients: Sequence[ChatClient],
        recipients: Sequence[str],
        label: str,
        *,
        start_at: float,
        stop_at: float,
    ) -> None:
        self._clients = list(clients)
        self._recipients = list(recipients)
        self._label = label
        self._start_at = start_at
        self._stop_at = stop_at
        self._stop = threading.Event()
        self._tallies = [_SenderTally() for _ in self._clients]
        self._threads = [
            threading.Thread(target=self._send_loop, args=(i,), name=f"sender-{i}", daemon=True)
            for i in range(len(self._clients))
        ]

    def __enter__(self) -> ClosedLoopSenders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _send_loop(self, i: int) -> None:
        client, tally = self._clients[i], self._tallies[i]
        recipient = self._recipients[i % len(self._recipients)]
        self._stop.wait(max(0.0, self._start_at - time.monotonic()))
        for n in range(MAX_SENDS_PER_SENDER):
            began = time.monotonic()
            if began >= self._stop_at or self._stop.is_set():
                return
            try:
                client.send(recipient, f"{self._label} sender {i} message {n}")
            except ChatError as exc:
                tally.errors += 1
                tally.error_sample = tally.error_sample or str(exc)
                continue
            tally.acks.append((began, time.monotonic()))

    def wait(self, timeout: float) -> None:
        """Until every sender has stopped by itself (at `stop_at`)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._check_stopped()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(FINISH_TIMEOUT)
        self._check_stopped()

    def _check_stopped(self) -> None:
        if any(thread.is_alive() for thread in self._threads):
            raise RuntimeError(f"{self._label}: a sender thread did not finish")

    @property
    def senders(self) -> int:
        return len(self._clients)

    @property
    def completed(self) -> int:
        """Every acknowledged send so far."""
        return sum(len(t.acks) for t in self._tallies)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self._tallies)

    @property
    def error_sample(self) -> str:
        return next((t.error_sample for t in self._tallies if t.error_sample), "")

    def window(self, begin: float, end: float) -> ThroughputRun:
        """The sends acknowledged in [begin, end] (call once the senders have stopped)."""
        durations = [
            ended - began
            for tally in self._tallies
            for began, ended in tally.acks
            if begin <= ended <= end
        ]
        seconds = end - begin
        return ThroughputRun(
            senders=self.senders,
            seconds=seconds,
            acknowledged=len(durations),
            completed=self.completed,
            per_second=len(durations) / seconds if seconds > 0 else 0.0,
            errors=self.errors,
            error_sample=self.error_sample,
            send_latency=Distribution.of_seconds(durations),
        )


def run_throughput(
    clients: Sequence[ChatClient], recipients: Sequence[str], seconds: float, label: str
) -> ThroughputRun:
    """Sender i sends to recipients[i % len(recipients)] until the window closes; counts the
    sends acknowledged inside the window."""
    start_at = time.monotonic() + START_DELAY
    deadline = start_at + seconds
    with ClosedLoopSenders(
        clients, recipients, label, start_at=start_at, stop_at=deadline
    ) as senders:
        senders.wait(seconds + START_DELAY + FINISH_TIMEOUT)
    return senders.window(start_at, deadline)
