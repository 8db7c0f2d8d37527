"""Property: a retried request gets its first result and appends nothing, whatever happened in
between -- a failover to a primary that holds none of the writer's memory, a new tenure of the
same writer, a batch that failed before or after it was streamed, a deposed primary's
unacknowledged tail cut off, more requests than the writer keeps in memory -- while the
common write path reads nothing to look for a logged request id (LogWriter: its memory of the
tenure, and the log's unique index for the rest).

Driven on the real LogWriter and ChatService (tests/inprocess.py); batches are composed
deterministically: the test holds the write lock until every command of the batch is queued."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import ClassVar

import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import eventlog
import projections
from replica.errors import ChatError, Unavailable
from tests.conftest import DatabaseFactory
from tests.inprocess import InProcessReplica, reset_database
from testsupport.harness import wait_until

EXAMPLES = {"sqlite": 60, "mysql": 20}
STEPS = 25


def failing(*_args: object, **_kw: object) -> None:
    raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost (injected)"))


class RequestIdMachine(RuleBasedStateMachine):
    engine: ClassVar[sa.Engine]
    outcomes: ClassVar[Counter[str]]

    def __init__(self) -> None:
        super().__init__()
        reset_database(self.engine)
        self.ids = itertools.count(1)
        # Request id -> the seq its first acknowledged result named.
        self.acked: dict[str, int] = {}
        # Request ids sent whose result was never acknowledged (failed, or cut off): a retry
        # may store them (once), or find them stored.
        self.unacked: set[str] = set()
        self.capacity = 3
        self.start_primary()
        service = self.replica.service
        service.register("r-alice", "alice", "pw")
        # One session throughout: a retry is the same request (same sender) as the first.
        self.token = service.login("r-login", "alice", "pw").session_token

    def start_primary(self) -> None:
        """A primary with nothing in memory (after a failover; the log is the cluster's)."""
        if hasattr(self, "replica"):
            self.outcomes["index"] += self.replica.writer.request_ids_refused
        self.replica = InProcessReplica.start(self.engine)
        # Small enough that the memory's eviction is exercised within an example (or large
        # enough that it remembers everything: initialize below).
        self.replica.writer.RECENT_REQUESTS = self.capacity

    def log_end(self) -> int:
        with self.engine.connect() as conn:
            return eventlog.last_position(conn).seq

    def send_batch(self, request_ids: list[str]) -> dict[str, int | ChatError]:
        """Send these in one batch of the writer (same text for the same id: a retry)."""
        writer = self.replica.writer
        results: dict[str, int | ChatError] = {}
        with writer.lock:
            threads = []
            for rid in request_ids:

                def send(rid: str = rid) -> None:
                    try:
                        results[rid] = self.replica.service.send(rid, self.token, "alice", rid)
                    except ChatError as exc:
                        results[rid] = exc

                thread = threading.Thread(target=send)
                thread.start()
                threads.append(thread)
            wait_until(lambda: writer.queued() == len(request_ids), timeout=10)
        for thread in threads:
            thread.join(10)
        assert len(results) == len(request_ids)
        return results

    def record(self, results: dict[str, int | ChatError], *, acked: bool = True) -> None:
        for rid, result in results.items():
            if isinstance(result, int):
                first = self.acked.get(rid)
                assert first is None or first == result, f"{rid}: first {first}, now {result}"
                if acked:
                    self.acked[rid] = result
                    self.unacked.discard(rid)
                else:
                    self.unacked.add(rid)
                self.outcomes["stored" if first is None else "retried"] += 1
            else:
                assert isinstance(result, Unavailable), f"{rid}: {result!r}"
                assert rid not in self.acked, f"{rid} was acknowledged; its retry failed"
                self.unacked.add(rid)
                self.outcomes["failed"] += 1

    @initialize(capacity=st.sampled_from([3, 1000]))
    def memory(self, capacity: int) -> None:
        self.capacity = self.replica.writer.RECENT_REQUESTS = capacity

    @rule(
        new=st.integers(0, 3),
        retried=st.lists(st.integers(0, 1000), max_size=3),
        pending=st.lists(st.integers(0, 1000), max_size=2),
    )
    def batch(self, new: int, retried: list[int], pending: list[int]) -> None:
        """New requests beside retries of acknowledged and of unacknowledged ones."""
        acked = sorted(self.acked)
        unacked = sorted(self.unacked)
        ids = [f"req-{next(self.ids)}" for _ in range(new)]
        ids += [acked[i % len(acked)] for i in retried] if acked else []
        ids += [unacked[i % len(unacked)] for i in pending] if unacked else []
        ids = list(dict.fromkeys(ids))  # a request id once per batch (its retry races it)
        if not ids:
            return
        retries_only = all(rid in self.acked for rid in ids)
        end = self.log_end()
        self.record(self.send_batch(ids))
        if retries_only:
            assert self.log_end() == end, "a retry appended to the log"
            self.outcomes["retries only"] += 1

    @rule()
    def failover(self) -> None:
        self.start_primary()
        self.outcomes["failover"] += 1

    @rule()
    def new_tenure(self) -> None:
        snap = self.replica.role.snapshot
        self.replica.role.set(snap.role, snap.epoch + 1, snap.primary_index)

    @rule(new=st.integers(1, 2), after_streaming=st.booleans())
    def batch_fails(self, new: int, after_streaming: bool) -> None:
        """The database fails the batch: before it was streamed (the log's INSERT) or after
        (its commit is then unknown to the secondaries: the primary is elected anew)."""
        ids = [f"req-{next(self.ids)}" for _ in range(new)]
        ids += sorted(self.acked)[:1]
        target, name = (
            (projections.Applier, "finish") if after_streaming else (eventlog, "append_events")
        )
        original = getattr(target, name)
        setattr(target, name, failing)
        try:
            results = self.send_batch(ids)
        finally:
            setattr(target, name, original)
        for rid in ids:
            result = results.pop(rid)
            if rid in self.acked:  # answered from memory, or failed with the rest
                assert result == self.acked[rid] or isinstance(result, Unavailable), result
            else:
                assert isinstance(result, Unavailable), result
                self.unacked.add(rid)
        self.outcomes["batch failed"] += 1

    @precondition(lambda self: self.log_end() > 0)
    @rule(new=st.integers(1, 3))
    def unacknowledged_tail_cut(self, new: int) -> None:
        """Requests stored here but never acknowledged, then cut off as a deposed primary's
        divergent tail is (the storage worker's truncation) before it leads again."""
        ids = [f"req-{next(self.ids)}" for _ in range(new)]
        end = self.log_end()
        results = self.send_batch(ids)
        self.record(results, acked=False)
        writer = self.replica.writer
        with writer.lock:
            writer.forget_positions()
            with self.engine.begin() as conn:
                projections.roll_back(conn, end)
                eventlog.truncate_after(conn, end)
        snap = self.replica.role.snapshot
        self.replica.role.set(snap.role, snap.epoch + 1, snap.primary_index)
        self.outcomes["tail cut"] += 1

    @invariant()
    def every_acknowledged_request_is_logged_once_where_its_result_said(self) -> None:
        with self.engine.connect() as conn:
            events = eventlog.read_events(conn, 0, 100_000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        by_id = Counter(e.request_id for e in events if e.request_id is not None)
        assert all(count == 1 for count in by_id.values())
        logged = {e.request_id: e.seq for e in events if e.request_id is not None}
        for rid, seq in self.acked.items():
            assert logged.get(rid) == seq, (
                f"{rid} acknowledged at {seq}, logged at {logged.get(rid)}"
            )


def test_a_retry_after_any_failover_gets_its_first_result(
    backend: str, databases: DatabaseFactory
) -> None:
    outcomes: Counter[str] = Counter()
    engine = databases.engine()
    machine = type(
        "RequestIdMachineOn", (RequestIdMachine,), {"engine": engine, "outcomes": outcomes}
    )
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=EXAMPLES[backend], stateful_step_count=STEPS, deadline=None),
    )
    # The interesting paths ran: a retry answered, a batch failed, a tail cut, a failover.
    paths = {"retried", "retries only", "batch failed", "tail cut", "failover", "index"}
    assert paths <= set(outcomes), outcomes
