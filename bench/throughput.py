"""Replicated send throughput: N threads, each with its own ChatClient and user, sending to
recipients as fast as their acknowledgements come back, for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.stats import Distribution
from client.errors import ChatError
from client.library import ChatClient

START_DELAY = 0.2  # lets every thread reach the starting line first
MAX_SENDS_PER_SENDER = 1_000_000


@dataclass
class _SenderTally:
    durations: list[float] = field(default_factory=list)
    completed: int = 0  # acknowledged sends, also those that ended after the window
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


def run_throughput(
    clients: Sequence[ChatClient], recipients: Sequence[str], seconds: float, label: str
) -> ThroughputRun:
    """Sender i sends to recipients[i % len(recipients)] until the window closes; counts the
    sends acknowledged inside the window."""
    start_at = time.monotonic() + START_DELAY
    deadline = start_at + seconds
    tallies = [_SenderTally() for _ in clients]

    def send_loop(i: int) -> None:
        client, tally = clients[i], tallies[i]
        recipient = recipients[i % len(recipients)]
        time.sleep(max(0.0, start_at - time.monotonic()))
        for n in range(MAX_SENDS_PER_SENDER):
            began = time.monotonic()
            if began >= deadline:
                return
            try:
                client.send(recipient, f"{label} sender {i} message {n}")
            except ChatError as exc:
                tally.errors += 1
                tally.error_sample = tally.error_sample or str(exc)
                continue
            ended = time.monotonic()
            tally.completed += 1
            if ended <= deadline:
                tally.durations.append(ended - began)

    threads = [
        threading.Thread(target=send_loop, args=(i,), name=f"sender-{i}", daemon=True)
        for i in range(len(clients))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        # A send that started before the deadline ends within the client's timeout.
        thread.join(seconds + START_DELAY + 60)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"{label}: a sender thread did not finish")
    durations = [d for t in tallies for d in t.durations]
    return ThroughputRun(
        senders=len(clients),
        seconds=seconds,
        acknowledged=len(durations),
        completed=sum(t.completed for t in tallies),
        per_second=len(durations) / seconds,
        errors=sum(t.errors for t in tallies),
        error_sample=next((t.error_sample for t in tallies if t.error_sample), ""),
        send_latency=Distribution.of_seconds(durations),
    )
