"""End-to-end delivery latency at a fixed rate: a paced schedule of sends (slot k at
t0 + k/rate, shared round-robin by a few sender threads), and the recipient's live
subscription. Both timestamps are taken in this process: just before `send` is called, and
when the subscription yields the message."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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


class _Receiver:
    """The recipient's subscription on a thread of its own: when each body arrived."""

    def __init__(self, client: ChatClient) -> None:
        self.subscription = client.subscribe()
        self._lock = threading.Lock()
        self._received: dict[str, float] = {}
        self._expected: set[str] = set()
        self.caught_up = threading.Event()
        self.all_in = threading.Event()
        self.failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._receive, name="subscriber", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            for item in self.subscription:
                now = time.monotonic()
                if isinstance(item, CaughtUp):
                    self.caught_up.set()
                    continue
                with self._lock:
                    self._received[item.body] = now
                    if self._expected and self._expected <= self._received.keys():
                        self.all_in.set()
        except ChatError as exc:
            self.failure.append(exc)
        finally:
            self.caught_up.set()

    def expect(self, bodies: Iterable[str]) -> None:
        """These must arrive (all_in is set once they have)."""
        with self._lock:
            self._expected.update(bodies)
            if self._expected <= self._received.keys():
                self.all_in.set()

    def stop(self) -> dict[str, float]:
        """Cancel the subscription; when each body arrived."""
        self.subscription.cancel()
        self._thread.join(10)
        with self._lock:
            return dict(self._received)


@dataclass
class _Paced:
    """Sends started on a schedule (send k at start_at + k / rate), by several threads."""

    bodies: list[str]
    start_at: float
    rate: float
    last_start: float
    started: list[float] = field(init=False)
    durations: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.started = [0.0] * len(self.bodies)  # 0: skipped (too far behind schedule)
        self.durations = [-1.0] * len(self.bodies)  # -1: not acknowledged

    def run(self, senders: Sequence[ChatClient], recipient: str, join: float) -> int:
        """Every send, each sender taking every len(senders)-th; the errors."""
        errors = [0] * len(senders)

        def paced(j: int) -> None:
            for k in range(j, len(self.bodies), len(senders)):
                slot = self.start_at + k / self.rate
                time.sleep(max(0.0, slot - time.monotonic()))
                began = time.monotonic()
                if began > self.last_start:
                    return
                self.started[k] = began
                try:
                    senders[j].send(recipient, self.bodies[k])
                except ChatError:
                    errors[j] += 1
                    continue
                self.durations[k] = time.monotonic() - began

        threads = [
            threading.Thread(target=paced, args=(j,), name=f"paced-{j}", daemon=True)
            for j in range(len(senders))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(join)
        if any(thread.is_alive() for thread in threads):
            raise RuntimeError("a paced sender did not finish")
        return sum(errors)

    def acknowledged(self) -> list[int]:
        return [k for k in range(len(self.bodies)) if self.durations[k] >= 0]


def run_latency(
    senders: Sequence[ChatClient],
    recipient_client: ChatClient,
    recipient: str,
    *,
    rate: float,
    seconds: float,
    label: str,
) -> LatencyRun:
    """Sends paced at `rate` for `seconds` to one live subscriber: how long each send took,
    and how long from its start until the subscriber had it."""
    scheduled = max(1, round(rate * seconds))
    receiver = _Receiver(recipient_client)
    try:
        if not receiver.caught_up.wait(CAUGHT_UP_TIMEOUT) or receiver.failure:
            raise RuntimeError(f"{label}: the subscription did not catch up: {receiver.failure}")
        start_at = time.monotonic() + START_DELAY
        paced = _Paced(
            [f"{label} paced message {k}" for k in range(scheduled)],
            start_at,
            rate,
            last_start=start_at + OVERRUN * seconds,
        )
        try:
            errors = paced.run(senders, recipient, START_DELAY + OVERRUN * seconds + 60)
        except RuntimeError as exc:
            raise RuntimeError(f"{label}: {exc}") from None
        acknowledged = paced.acknowledged()
        receiver.expect(paced.bodies[k] for k in acknowledged)
        receiver.all_in.wait(DRAIN_TIMEOUT)
    finally:
        arrivals = receiver.stop()
    bodies, started, durations = paced.bodies, paced.started, paced.durations
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
        errors=errors,
        achieved_rate=len(acknowledged) / span if span > 0 else 0.0,
        max_behind_schedule_ms=max(behind, default=0.0) * 1000,
        delivery=Distribution.of_seconds(delivery),
        send_latency=Distribution.of_seconds([durations[k] for k in acknowledged]),
    )
