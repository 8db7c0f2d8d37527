"""Helpers for multi-replica tests: waiting for a primary and for convergence, a load of
concurrent senders that records what was acknowledged, and checks on what was delivered."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import sqlalchemy as sa

import eventlog
from client import ClientSettings
from client.errors import ChatError
from client.library import ChatClient
from client.models import CaughtUp, Message
from protos import chat_pb2, chat_pb2_grpc
from replica.config import default_db_url
from replica.storage.database import make_engine
from tests.conftest import MYSQL_SERVER_URL
from testsupport.databases import drop_mysql_database, iter_table_rows
from testsupport.harness import ClusterProcesses, wait_until

PASSWORD = "correct horse"
# Three replicas on distinct loopback addresses, with the timeouts the tests are written for.
HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
SETTINGS = {"heartbeat_interval_ms": 100, "peer_timeout_ms": 600, "insync_timeout_ms": 1000}


@contextmanager
def three_replicas(
    make: Callable[..., ClusterProcesses], backend: str, name: str
) -> Iterator[ClusterProcesses]:
    """Three started replicas on HOSTS with SETTINGS (`make`: the cluster_processes fixture);
    on MySQL each has its own database `chat_<name>_<tag>_<i>`, dropped afterwards."""
    urls: list[str | None] = [None] * len(HOSTS)
    if backend == "mysql":
        tag = os.urandom(4).hex()
        urls = [f"{MYSQL_SERVER_URL}/chat_{name}_{tag}_{i}" for i in range(len(HOSTS))]
    made = make(len(HOSTS), hosts=HOSTS, db_urls=urls, settings=SETTINGS)
    try:
        made.start_all()
        yield made
    finally:
        made.close()
        for url in urls:
            if url is not None:
                drop_mysql_database(url)


def status(cluster: ClusterProcesses, index: int) -> chat_pb2.ClusterStatusReply | None:
    stub = chat_pb2_grpc.ChatStub(cluster.channel(index))
    try:
        return stub.ClusterStatus(chat_pb2.ClusterStatusRequest(), timeout=1.0)
    except grpc.RpcError:
        return None


def seen_by(cluster: ClusterProcesses, asked: int, about: int) -> chat_pb2.ReplicaStatus | None:
    """What replica `asked` reports of replica `about` in ClusterStatus (None: no answer)."""
    reply = status(cluster, asked)
    if reply is None:
        return None
    return next((r for r in reply.replicas if r.index == about), None)


def primary_of(cluster: ClusterProcesses, index: int) -> int | None:
    reply = status(cluster, index)
    if reply is None:
        return None
    me = next(r for r in reply.replicas if r.index == index)
    return index if me.role == "primary" else None


def wait_for_primary(
    cluster: ClusterProcesses, candidates: list[int] | None = None, timeout: float = 20.0
) -> int:
    """Until exactly one running replica says it is the primary; its index."""
    indexes = candidates if candidates is not None else [s.index for s in cluster.specs]

    def one_primary() -> int | None:
        running = [i for i in indexes if cluster.is_running(i)]
        primaries = [i for i in running if primary_of(cluster, i) is not None]
        return primaries[0] + 1 if len(primaries) == 1 else None

    return (
        wait_until(
            one_primary,
            timeout,
            lambda: (
                "no single primary: "
                + "; ".join(cluster.log_tail(i, 15) for i in indexes if cluster.is_running(i))
            ),
        )
        - 1
    )


def db_url(cluster: ClusterProcesses, index: int) -> str:
    spec = cluster.specs[index]
    return spec.db_url or default_db_url(index, spec.data_dir)


def replica_state(url: str) -> tuple[int, int, str]:
    """(last seq, applied seq, digest of the log and every projection table)."""
    engine = make_engine(url, create_database=False)
    try:
        with engine.connect() as conn:
            digest = hashlib.sha256()
            events = conn.execute(sa.select(eventlog.events).order_by(eventlog.events.c.seq)).all()
            digest.update(repr([tuple(r) for r in events]).encode())
            applied = 0
            for name, rows in iter_table_rows(conn):
                digest.update(name.encode())
                digest.update(repr(rows).encode())
                if name == "projection_position" and rows:
                    applied = int(rows[0][1])
            last = events[-1].seq if events else 0
            return last, applied, digest.hexdigest()
    finally:
        engine.dispose()


def wait_converged(cluster: ClusterProcesses, timeout: float = 30.0) -> str:
    """Until every replica's log and projections are identical (compared by digest, straight
    from each replica's own database); the common digest."""
    indexes = [s.index for s in cluster.specs]

    def converged() -> str | None:
        states = [replica_state(db_url(cluster, i)) for i in indexes]
        if len({s[2] for s in states}) == 1 and all(s[0] == s[1] for s in states):
            return states[0][2]
        return None

    return wait_until(
        converged,
        timeout,
        lambda: (
            "replicas did not converge: "
            + repr([replica_state(db_url(cluster, i))[:2] for i in indexes])
        ),
        interval=0.2,
    )


@dataclass
class SendLog:
    acknowledged: dict[str, int] = field(default_factory=dict)  # body -> message id
    failed: list[str] = field(default_factory=list)  # bodies whose send raised
    ack_times: list[float] = field(default_factory=list)  # time.monotonic() of each ack, in order
    lock: threading.Lock = field(default_factory=threading.Lock)


class SenderThreads:
    """One thread per sender (`_run(user)`, until stopped), what they sent in `log`, and what
    any of them raised reported by stop()."""

    def __init__(self, senders: list[str], recipient: str, timeout: float = 20.0) -> None:
        self._senders = senders
        self._recipient = recipient
        self._timeout = timeout
        self.log = SendLog()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def _run(self, user: str) -> None:
        raise NotImplementedError

    def _send(self, client: ChatClient, body: str) -> None:
        """One send, recorded as acknowledged (with its id) or, if it raised, as failed."""
        try:
            message_id = client.send(self._recipient, body)
        except ChatError:
            with self.log.lock:
                self.log.failed.append(body)
            return
        with self.log.lock:
            self.log.acknowledged[body] = message_id
            self.log.ack_times.append(time.monotonic())

    def start(self) -> None:
        for user in self._senders:
            thread = threading.Thread(target=self._run, args=(user,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def acknowledged_count(self) -> int:
        with self.log.lock:
            return len(self.log.acknowledged)

    def wait_for_acks(self, count: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.acknowledged_count() >= count, timeout, f"{count} acked sends")

    def stop(self) -> SendLog:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 10)
        assert not self._errors, f"sender failed: {self._errors!r}"
        return self.log


class Senders(SenderThreads):
    """`count` threads, each logged in as its own user, sending numbered messages to a
    recipient until stopped. Every send that returned is recorded as acknowledged."""

    def __init__(
        self, cluster: ClusterProcesses, senders: list[str], recipient: str, timeout: float = 20.0
    ) -> None:
        super().__init__(senders, recipient, timeout)
        self._cluster = cluster

    def _run(self, user: str) -> None:
        try:
            with ChatClient(
                self._cluster.addresses, ClientSettings(timeout=self._timeout)
            ) as client:
                client.login(user, PASSWORD)
                n = 0
                while not self._stop.is_set():
                    n += 1
                    self._send(client, f"{user}#{n}")
        except BaseException as exc:  # reported by stop()
            self._errors.append(exc)


class PipelinedSenders(SenderThreads):
    """`threads` threads sharing one client logged in as `user` (so one Session stream, with
    up to `threads` sends in flight on it), sending numbered messages until stopped;
    `most_at_once` is the most sends that were awaiting their results together."""

    def __init__(self, cluster: ClusterProcesses, user: str, threads: int, recipient: str) -> None:
        super().__init__([f"{user}/{i}" for i in range(threads)], recipient)
        self._client = ChatClient(
            cluster.addresses, ClientSettings(timeout=self._timeout, session_stream=True)
        )
        self._client.login(user, PASSWORD)
        self._at_once = 0
        self.most_at_once = 0

    def _run(self, label: str) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                with self.log.lock:
                    self._at_once += 1
                    self.most_at_once = max(self.most_at_once, self._at_once)
                self._send(self._client, f"{label}#{n}")
                with self.log.lock:
                    self._at_once -= 1
        except BaseException as exc:  # reported by stop()
            self._errors.append(exc)

    def stop(self) -> SendLog:
        try:
            return super().stop()
        finally:
            self._client.close()


@contextmanager
def sending(cluster: ClusterProcesses, senders: list[str], recipient: str) -> Iterator[Senders]:
    load = Senders(cluster, senders, recipient)
    load.start()
    try:
        yield load
    finally:
        load.stop()


def register_users(cluster: ClusterProcesses, names: list[str]) -> None:
    with ChatClient(cluster.addresses, ClientSettings(timeout=20.0)) as client:
        for name in names:
            client.register(name, PASSWORD)


def read_inbox(cluster: ClusterProcesses, user: str) -> list[Message]:
    """Every undelivered message of `user`, through a real subscription, acked afterwards."""
    with ChatClient(cluster.addresses, ClientSettings(timeout=20.0)) as client:
        client.login(user, PASSWORD)
        received: list[Message] = []
        subscription = client.subscribe()
        for item in subscription:
            if isinstance(item, CaughtUp):
                break
            received.append(item)
        subscription.cancel()
        client.ack(m.message_id for m in received)  # in requests of MAX_ACK_IDS
        return received


def check_exactly_once(log: SendLog, delivered: list[Message]) -> None:
    """Every acknowledged send delivered once; nothing delivered twice; nothing invented."""
    bodies = Counter(m.body for m in delivered)
    duplicated = {b: n for b, n in bodies.items() if n > 1}
    assert not duplicated, f"delivered more than once: {duplicated}"
    lost = sorted(set(log.acknowledged) - set(bodies))
    assert not lost, f"{len(lost)} acknowledged sends were never delivered: {lost[:10]}"
    # A send whose client gave up may still have been committed (once); nothing else may be.
    invented = set(bodies) - set(log.acknowledged) - set(log.failed)
    assert not invented, f"delivered but never sent: {sorted(invented)[:10]}"
    by_body = {m.body: m.message_id for m in delivered}
    wrong_ids = {b: i for b, i in log.acknowledged.items() if by_body.get(b) != i}
    assert not wrong_ids, f"acknowledged ids differ from delivered ones: {wrong_ids}"


def wait_all_running_follow(cluster: ClusterProcesses, primary: int, timeout: float = 20.0) -> None:
    """Until every running secondary is in the primary's in-sync set."""

    def all_in_sync() -> bool:
        reply = status(cluster, primary)
        if reply is None:
            return False
        running = {i for i in range(len(cluster.specs)) if cluster.is_running(i)}
        return all(r.in_sync for r in reply.replicas if r.index in running)

    wait_until(all_in_sync, timeout, lambda: f"secondaries not in sync: {status(cluster, primary)}")


def now() -> float:
    return time.monotonic()


def history_on_each_replica(cluster: ClusterProcesses, user: str, other: str) -> list[list[int]]:
    """The ids of `user`'s conversation with `other`, read from every replica in turn (reads
    may be served by secondaries: they show what the primary reported committed)."""
    with ChatClient(cluster.addresses, ClientSettings(timeout=20.0)) as client:
        client.login(user, PASSWORD)
        session = client.session
        assert session is not None
        views = []
        for index in range(len(cluster.specs)):
            stub = chat_pb2_grpc.ChatStub(cluster.channel(index))
            ids: list[int] = []
            token = ""
            while True:
                reply = stub.History(
                    chat_pb2.HistoryRequest(
                        session_token=session.session_token,
                        other_user=other,
                        page_size=1000,
                        page_token=token,
                    ),
                    timeout=5,
                )
                ids += [m.message_id for m in reply.messages]
                token = reply.next_page_token
                if not token:
                    break
            views.append(ids)
        return views
