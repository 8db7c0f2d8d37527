"""Group commit: concurrent commands share transactions, yet each is decided on the state the
ones before it left, fails alone, and is stored once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa

import eventlog
import projections
from protos import replication_pb2 as rpb
from replica.errors import AlreadyExists, ChatError
from replica.replication.storage_worker import DatabaseStorage
from replica.storage.wire import event_to_proto
from replica.storage.writer import LogWriter, NewEvent
from tests.conftest import DatabaseFactory
from tests.inprocess import InProcessReplica, snapshot
from testsupport.harness import wait_until

THREADS = 16


def run_concurrently(count: int, work: Callable[[int], object]) -> list[object]:
    """Start `count` calls together (a barrier) and return each result or exception."""
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except ChatError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def count_transactions(engine: sa.Engine) -> Callable[[], int]:
    commits = [0]
    sa.event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    return lambda: commits[0]


def test_concurrent_sends_are_all_stored_contiguously(engine: sa.Engine) -> None:
    replica = InProcessReplica.start(engine)
    service = replica.service
    service.register("r-alice", "alice", "pw")
    token = service.login("r-login", "alice", "pw").session_token
    transactions = count_transactions(engine)
    results = run_concurrently(
        THREADS * 4, lambda i: service.send(f"send-{i}", token, "alice", f"m{i}")
    )
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == len(results)
    with engine.connect() as conn:
        events = eventlog.read_events(conn, 0, 10_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert Counter(e.request_id for e in events if e.request_id)["send-0"] == 1
    # Not a timing assertion: it shows commands shared commits at all (64 commands, far fewer
    # transactions) — a writer that commits each command alone would need 64.
    assert transactions() < THREADS * 4


def test_one_batch_decides_in_order_and_fails_commands_alone(engine: sa.Engine) -> None:
    """Everyone registers the same name at once: exactly one wins, the others get
    ALREADY_EXISTS (decided against the winner's event in the same batch), and nothing of
    theirs is stored."""
    replica = InProcessReplica.start(engine)
    results = run_concurrently(THREADS, lambda i: replica.service.register(f"reg-{i}", "bob", "pw"))
    assert sum(1 for r in results if r == "bob") == 1
    assert sum(1 for r in results if isinstance(r, AlreadyExists)) == THREADS - 1
    with engine.connect() as conn:
        registered = [
            e for e in eventlog.read_events(conn, 0, 1000) if e.type == "account_registered"
        ]
    assert len(registered) == 1


def test_the_same_request_id_in_one_batch_is_stored_once(engine: sa.Engine) -> None:
    replica = InProcessReplica.start(engine)
    service = replica.service
    service.register("r-carol", "carol", "pw")
    token = service.login("r-login", "carol", "pw").session_token
    results = run_concurrently(THREADS, lambda _i: service.send("same-id", token, "carol", "once"))
    assert len(set(results)) == 1 and isinstance(results[0], int), results
    with engine.connect() as conn:
        stored = [e for e in eventlog.read_events(conn, 0, 1000) if e.request_id == "same-id"]
    assert len(stored) == 1


def test_a_command_returns_once_its_batch_is_written_not_after_the_next_one(
    engine: sa.Engine,
) -> None:
    """A follower is woken by its own batch (it never takes the write lock, so a later batch
    holding it cannot hold the follower back), and the lead passes to a queued command."""
    replica = InProcessReplica.start(engine)
    writer = replica.writer
    gates = {name: (threading.Event(), threading.Event()) for name in ("one", "two", "three")}

    def gated(name: str) -> Callable[[sa.Connection], NewEvent]:
        entered, release = gates[name]

        def decide(_conn: sa.Connection) -> NewEvent:
            entered.set()
            assert release.wait(20)
            return NewEvent("epoch_started", {"replica_index": 0})

        return decide

    def plain(_conn: sa.Connection) -> NewEvent:
        return NewEvent("epoch_started", {"replica_index": 0})

    returned: set[str] = set()

    def run(name: str, decide: Callable[[sa.Connection], NewEvent | None]) -> threading.Thread:
        def body() -> None:
            writer.execute(None, decide, reads_inboxes=False)
            returned.add(name)

        thread = threading.Thread(target=body, name=name)
        thread.start()
        return thread

    def entered(name: str) -> None:
        assert gates[name][0].wait(10), f"batch {name} never began"

    threads = [run("one", gated("one"))]
    entered("one")
    threads += [run("two", gated("two")), run("follower", plain)]  # the second batch
    wait_until_queued(writer, 2)
    gates["one"][1].set()
    entered("two")
    threads.append(run("three", gated("three")))  # queued behind the second batch
    wait_until_queued(writer, 1)
    gates["two"][1].set()
    entered("three")  # the lead passed to it, and it holds the write lock now
    wait_until(lambda: "follower" in returned, 10, "a follower waited for the next batch")
    assert "three" not in returned
    gates["three"][1].set()
    for thread in threads:
        thread.join(20)
    assert returned == {"one", "two", "follower", "three"}
    with engine.connect() as conn:
        seqs = [e.seq for e in eventlog.read_events(conn, 0, 100)]
    assert seqs == list(range(1, 6))  # the epoch marker, then the four


def wait_until_queued(writer: LogWriter, count: int) -> None:
    wait_until(lambda: len(writer._queue) == count, 10, "commands never queued")


def test_a_mixed_batch_applies_as_its_log_replays(databases: DatabaseFactory) -> None:
    """Sends, acks, a login and a logout written as ONE batch (the apply's closing writes go
    through one pipeline whatever the batch holds): the projections are what replaying its
    log gives, on the primary and on a secondary that stores the same events."""
    engine = databases.engine()
    replica = InProcessReplica.start(engine)
    service = replica.service
    service.register("r-erin", "erin", "pw")
    service.register("r-fred", "fred", "pw")
    erin = service.login("l-erin", "erin", "pw").session_token
    fred = service.login("l-fred", "fred", "pw").session_token
    first = [service.send(f"s-{i}", fred, "erin", f"m{i}") for i in range(3)]
    commands: list[Callable[[], object]] = [
        lambda: service.send("b-1", fred, "erin", "in the batch"),
        lambda: service.ack("b-2", erin, first[:2]),
        lambda: service.login("b-3", "fred", "pw"),
        lambda: service.send("b-4", erin, "fred", "back"),
        lambda: service.logout("b-5", fred),
        lambda: service.ack("b-6", erin, first[2:]),
    ]
    writer = replica.writer
    results: list[object] = [None] * len(commands)

    def run(i: int) -> None:
        try:
            results[i] = commands[i]()
        except ChatError as exc:
            results[i] = exc

    with writer.lock:  # queued meanwhile: one batch once released
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commands))]
        for t in threads:
            t.start()
        wait_until(lambda: writer.queued() == len(commands), timeout=10)
    for t in threads:
        t.join(10)
    assert not any(isinstance(r, ChatError) for r in results), results
    live = snapshot(engine)
    with engine.connect() as conn:
        log = eventlog.read_events(conn, 0, 10_000)
    assert {e.request_id for e in log} >= {f"b-{i}" for i in range(1, 7)}
    # A secondary storing the whole log as one replication batch.
    secondary = databases.engine()
    with secondary.begin() as conn:
        batch = rpb.Batch(events=[event_to_proto(e) for e in log])
        DatabaseStorage._store(conn, batch, None)
    assert snapshot(secondary) == live
    # A replay in place.
    with engine.begin() as conn:
        assert projections.rebuild(conn) == live.log_end.seq
    assert snapshot(engine) == live
