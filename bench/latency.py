"""End-to-end delivery latency at a fixed rate: a paced schedule of sends (slot k at
t0 + k/rate, shared round-robin by a few sender threads), and the recipient's live
subscription. Both timestamps are taken in this process: just before `send` is called, and
when the subscription yields the message."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import Distribution
from client.errors import ChatError
from client.library import ChatClient
from client.models import CaughtUp

START_DELAY = 0.2
# A cluster slower than the rate falls behind the schedule; a paced sender starts no send
# later than this many run lengths after the start (the rest are counted as skipped).
OVERRUN = 2.0
CAUGHT_UP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 10.0  # after the last send, how long messages may still arrive


@dataclass(frozen=True)
class LatencyRun:
    rate: float
    seconds: float
    scheduled: int
    skipped: int  # never sent: the schedule had fallen too far behind
    acknowledged: int
    received: int
    lost: int  # acknowledged but not received within the drain timeout
    errors: int
    achieved_rate: float  # acknowledged sends / (last acknowledgement - first send)
    max_behind_schedule_ms: float  # how late the worst send started
    delivery: Distribution  # send called -> subscription yielded it
    send_latency: Distribution  # send called -> send returned


def run_latency(
    senders: Sequence[ChatClient],
    recipient_client: ChatClient,
    recipient: str,
    *,
    rate: float,
    seconds: float,
    label: str,
) -> LatencyRun:
    scheduled = max(1, round(rate * seconds))
    received: dict[str, float] = {}
    lock = threading.Lock()
    caught_up = threading.Event()
    all_in = threading.Event()
    expected: set[str] = set()
    subscription = recipient_client.subscribe()
    failure: list[BaseException] = []

    def receive() -> None:
        try:
            for item in subscription:
                now = time.monotonic()
                if isinstance(item, CaughtUp):
                    caught_up.set()
                    continue
                with lock:
                    received[item.body] = now
                    if expected and expected <= received.keys():
                        all_in.set()
        except ChatError as exc:
            failure.append(exc)
        finally:
            caught_up.set()

    receiver = threading.Thread(target=receive, name="subscriber", daemon=True)
    receiver.start()
    try:
        if not caught_up.wait(CAUGHT_UP_TIMEOUT) or failure:
            raise RuntimeError(f"{label}: the subscription did not catch up: {failure}")
        bodies = [f"{label} paced message {k}" for k in range(scheduled)]
        started = [0.0] * scheduled
        durations = [-1.0] * scheduled
        errors = [0] * len(senders)
        start_at = time.monotonic() + START_DELAY
        last_start = start_at + OVERRUN * seconds

        def paced(j: int) -> None:
            client = senders[j]
            for k in range(j, scheduled, len(senders)):
                slot = start_at + k / rate
                time.sleep(max(0.0, slot - time.monotonic()))
                began = time.monotonic()
                if began > last_start:
                    return
                started[k] = began
                try:
                    client.send(recipient, bodies[k])
                except ChatError:
                    errors[j] += 1
                    continue
                durations[k] = time.monotonic() - began

        threads = [
            threading.Thread(target=paced, args=(j,), name=f"paced-{j}", daemon=True)
            for j in range(len(senders))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(START_DELAY + OVERRUN * seconds + 60)
        if any(thread.is_alive() for thread in threads):
            raise RuntimeError(f"{label}: a paced sender did not finish")
        acknowledged = [k for k in range(scheduled) if durations[k] >= 0]
        with lock:
            expected.update(bodies[k] for k in acknowledged)
            if expected <= received.keys():
                all_in.set()
        all_in.wait(DRAIN_TIMEOUT)
    finally:
        subscription.cancel()
        receiver.join(10)
    with lock:
        arrivals = dict(received)
    delivery = [arrivals[bodies[k]] - started[k] for k in acknowledged if bodies[k] in arrivals]
    ends = [started[k] + durations[k] for k in acknowledged]
    span = max(ends, default=0.0) - min((started[k] for k in acknowledged), default=0.0)
    behind = [started[k] - (start_at + k / rate) for k in range(scheduled) if started[k] > 0]
    return LatencyRun(
        rate=rate,
        seconds=seconds,
        scheduled=scheduled,
        skipped=sum(1 for s in started if s == 0),
        acknowledged=len(acknowledged),
        received=len(delivery),
        lost=len(acknowledged) - len(delivery),
        errors=sum(errors),
        achieved_rate=len(acknowledged) / span if span > 0 else 0.0,
        max_behind_schedule_ms=max(behind, default=0.0) * 1000,
        delivery=Distribution.of_seconds(delivery),
        send_latency=Distribution.of_seconds([durations[k] for k in acknowledged]),
    )
