"""Failover time: a ChatClient sends continuously while the primary is SIGKILLed (or
SIGSTOPped); the time from the fault to the first send acknowledged by another replica."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bench.cluster import REPLICAS, BenchCluster
from bench.stats import percentile
from client.errors import ChatError
from client.library import ChatClient

FaultKind = Literal["sigkill", "sigstop"]
STEADY_ACKS = 10  # acknowledged sends required between a settled cluster and the fault
STEADY_WINDOW = 2.0  # seconds before the fault whose sends give the steady send latency
ELECTION_POLL = 0.01
SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class SendRecord:
    started: float
    ended: float
    address: str | None  # the replica that answered; None when the send raised
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.address is not None


# Looks through the records so far for the one awaited.
Finder = Callable[[list[SendRecord]], SendRecord | None]


class ContinuousSender:
    """One ChatClient sending one message after another on a thread, recording every send."""

    MAX_RECORDS = 1_000_000

    def __init__(self, client: ChatClient, recipient: str, label: str) -> None:
        self._client = client
        self._recipient = recipient
        self._label = label
        self._records: list[SendRecord] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="continuous-sender", daemon=True)

    def __enter__(self) -> ContinuousSender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            for n in range(self.MAX_RECORDS):
                if self._stop.is_set():
                    return
                began = time.monotonic()
                try:
                    self._client.send(self._recipient, f"{self._label} message {n}")
                    record = SendRecord(began, time.monotonic(), self._client.connected_address)
                except ChatError as exc:
                    record = SendRecord(began, time.monotonic(), None, str(exc))
                with self._cond:
                    self._records.append(record)
                    self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                self._failure = exc
                self._cond.notify_all()

    def records(self, since: float, until: float = float("inf")) -> list[SendRecord]:
        with self._cond:
            return [r for r in self._records if since <= r.ended < until]

    def wait_for(self, description: str, timeout: float, found: Finder) -> SendRecord:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._failure is not None:
                    raise RuntimeError(f"the sender failed: {self._failure!r}")
                record = found(self._records)
                if record is not None:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{description} (after {timeout:.0f}s)")
                self._cond.wait(remaining)

    def wait_acks(self, count: int, after: float, timeout: float) -> SendRecord:
        def nth_ack(records: list[SendRecord]) -> SendRecord | None:
            acks = [r for r in records if r.ok and r.started >= after]
            return acks[count - 1] if len(acks) >= count else None

        return self.wait_for(f"{count} acknowledged sends", timeout, nth_ack)

    def wait_first_ack_elsewhere(self, after: float, address: str, timeout: float) -> SendRecord:
        def first(records: list[SendRecord]) -> SendRecord | None:
            return next(
                (r for r in records if r.ok and r.ended > after and r.address != address), None
            )

        return self.wait_for(f"a send acknowledged by other than {address}", timeout, first)


@dataclass(frozen=True)
class FailoverTrial:
    kind: FaultKind
    old_primary: int
    new_primary: int
    failover_ms: float  # fault -> first send acknowledged by another replica returned
    election_ms: float | None  # fault -> a survivor reported itself primary (polled)
    steady_send_p50_ms: float | None  # this client's sends in the seconds before the fault
    failed_sends: int  # sends that raised between the fault and the first acknowledgement
    settle_s: float  # fault -> all three in sync again (restart / SIGCONT included)

    def as_dict(self) -> dict[str, object]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


def run_trial(
    cluster: BenchCluster, sender: ContinuousSender, kind: FaultKind, timeout: float
) -> FailoverTrial:
    primary = cluster.wait_primary(SETTLE_TIMEOUT)
    cluster.wait_in_sync(primary, SETTLE_TIMEOUT)
    sender.wait_acks(STEADY_ACKS, time.monotonic(), SETTLE_TIMEOUT)
    address = cluster.address(primary)
    pid = cluster.pid(primary)
    survivors = [i for i in range(REPLICAS) if i != primary]
    fault_at = time.monotonic()
    if kind == "sigkill":
        cluster.processes.kill(primary)
    else:
        os.kill(pid, signal.SIGSTOP)
    try:
        elected_at = _wait_elected(cluster, survivors, timeout)
        first = sender.wait_first_ack_elsewhere(fault_at, address, timeout)
    finally:
        if kind == "sigstop":
            os.kill(pid, signal.SIGCONT)
    if kind == "sigkill":
        cluster.processes.start(primary)
    new_primary = cluster.wait_primary(SETTLE_TIMEOUT)
    cluster.wait_in_sync(new_primary, SETTLE_TIMEOUT)
    settled_at = time.monotonic()
    steady = [r.ended - r.started for r in sender.records(fault_at - STEADY_WINDOW, fault_at)]
    failed = [r for r in sender.records(fault_at, first.ended + 1e-9) if not r.ok]
    return FailoverTrial(
        kind=kind,
        old_primary=primary,
        new_primary=new_primary,
        failover_ms=(first.ended - fault_at) * 1000,
        election_ms=None if elected_at is None else (elected_at - fault_at) * 1000,
        steady_send_p50_ms=percentile(steady, 50) * 1000 if steady else None,
        failed_sends=len(failed),
        settle_s=settled_at - fault_at,
    )


def _wait_elected(cluster: BenchCluster, survivors: list[int], timeout: float) -> float | None:
    """When one of the survivors first says it is primary (None if none did in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index in survivors:
            if cluster.role(index, timeout=0.5) == "primary":
                return time.monotonic()
        time.sleep(ELECTION_POLL)
    return None
