"""A single replica's chat core without gRPC: ChatService and LogWriter wired as ReplicaNode
wires them, plus helpers to snapshot and reset a database, and to serve it over real gRPC."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event, Position
from projections.schema import PROJECTION_TABLES
from replica.chat.passwords import ScryptParams, hash_password
from replica.chat.service import ChatService
from replica.chat.servicer import ChatServicer, ClusterView, RateLimits, add_chat_servicer
from replica.chat.tokens import SessionTokens
from replica.storage.commit import CommitTracker
from replica.storage.notifier import InboxNotifier
from replica.storage.role import Role, RoleState
from replica.storage.writer import LogWriter, NewEvent, NoReplication, ReplicationFeed
from testsupport.databases import iter_table_rows

CLUSTER_SECRET = b"in-process-test-secret-0123456789"
# The client addresses its RoleState tells clients sent elsewhere.
ADDRESSES = {i: f"127.0.0.1:{50051 + i}" for i in range(3)}

# verify_password reads the parameters from the stored hash, so a cheap hash is still checked.
fast_hash_password: Callable[[str], str] = functools.partial(
    hash_password, params=ScryptParams(n=16)
)


def counting_clock(start: dt.datetime = dt.datetime(2030, 1, 1)) -> Callable[[], dt.datetime]:
    """Deterministic timestamps, one millisecond apart."""
    ticks = itertools.count()
    return lambda: start + dt.timedelta(milliseconds=next(ticks))


class LoneReplication:
    """A lone primary's replication (writer.ReplicationFeed): a write is committed once it is
    durable here. What the writer says is also told to `tap`, for a test to watch."""

    def __init__(self, role: RoleState, commits: CommitTracker) -> None:
        self.role = role
        self.commits = commits
        self.tap: ReplicationFeed = NoReplication()
        # A primary whose streamed batch failed to commit steps down, and is elected again in
        # a newer epoch (it writes nothing more in the old one): a lone replica's election.
        self.reelect = True

    def written(self, events: list[Event]) -> None:
        self.tap.written(events)

    def write_failed(self, epoch: int, reason: str) -> None:
        self.tap.write_failed(epoch, reason)
        if self.reelect:
            self.commits.abandon()
            self.commits.reset(self.commits.committed_seq)
            self.role.set(Role.PRIMARY, epoch + 1, 0)

    def appended(self, events: list[Event]) -> None:
        self.commits.advance(events[-1].seq)
        self.tap.appended(events)


@dataclass
class InProcessReplica:
    engine: sa.Engine
    role: RoleState
    commits: CommitTracker
    writer: LogWriter
    tokens: SessionTokens
    service: ChatService
    replication: LoneReplication

    @classmethod
    def start(
        cls, engine: sa.Engine, *, clock: Callable[[], dt.datetime] | None = None
    ) -> InProcessReplica:
        """Like ReplicaNode.start() for a lone replica: catch the projections up, become
        primary of the next epoch and write its epoch marker."""
        with engine.begin() as conn:
            projections.apply_events(conn, eventlog.read_events(conn, 0, 1_000_000))
            last = eventlog.last_position(conn)
        role = RoleState(0, ADDRESSES)
        role.set(Role.PRIMARY, last.epoch + 1, 0)
        commits = CommitTracker(last.seq)
        commits.reset(last.seq)  # its tenure begins, as the core's ResetCommit does
        replication = LoneReplication(role, commits)
        writer = LogWriter(engine, role, commits, feed=replication, clock=clock or counting_clock())
        writer.append_system_event(
            NewEvent(projections.EventTypes.EPOCH_STARTED, {"replica_index": 0}), last.epoch + 1
        )
        tokens = SessionTokens(CLUSTER_SECRET)
        service = ChatService(
            engine,
            writer,
            tokens,
            lambda: commits.committed_seq,
            hash_password=fast_hash_password,
            min_password_length=1,
        )
        return cls(engine, role, commits, writer, tokens, service, replication)


@dataclass(frozen=True)
class Snapshot:
    """Everything a command can change: the log's end and every projection row."""

    log_end: Position
    tables: dict[str, list[tuple[Any, ...]]]


def snapshot(engine: sa.Engine) -> Snapshot:
    with engine.connect() as conn:
        return Snapshot(eventlog.last_position(conn), dict(iter_table_rows(conn)))


@contextmanager
def assert_unchanged(engine: sa.Engine) -> Iterator[None]:
    """The block must append nothing and change no projection row."""
    before = snapshot(engine)
    yield
    after = snapshot(engine)
    assert after.log_end == before.log_end, "a rejected command appended to the log"
    assert after.tables == before.tables, "a rejected command changed the projections"


def reset_database(engine: sa.Engine) -> None:
    """Empty the log, its state and every projection table (cheaper than a new MySQL
    database)."""
    with engine.begin() as conn:
        for table in (
            *PROJECTION_TABLES,
            projections.projection_position,
            *eventlog.metadata.sorted_tables,
        ):
            conn.execute(table.delete())
        projections.undo.reset(conn)


@contextmanager
def serve_grpc(
    replica: InProcessReplica,
    max_subscriptions: int = 16,
    recheck_interval: float = 1.0,
    limits: RateLimits | None = None,
    max_in_flight_per_session: int = 64,
    primary_wait: float = 0.0,
) -> Iterator[grpc.Channel]:
    """The real ChatServicer over `replica`, on a gRPC server in this process (so status codes
    and details are what a client gets); a channel to it. Everything stops on exit."""
    notifier = InboxNotifier()
    replica.commits.add_listener(notifier.on_committed)
    servicer = ChatServicer(
        replica.service,
        replica.role,
        notifier,
        lambda: ClusterView(0, 0, []),
        max_subscriptions=max_subscriptions,
        max_in_flight_per_session=max_in_flight_per_session,
        recheck_interval=recheck_interval,
        limits=limits,
        primary_wait=primary_wait,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_subscriptions + 8))
    add_chat_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        servicer.stop()
        server.stop(None).wait()
