"""A replica process: wires storage, the log writer, replication, the chat service and the
gRPC server."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.engine import make_url

import eventlog
import projections
from eventlog import Event
from projections.events import ClusterForced, MemberRecord
from protos import chat_pb2, chat_pb2_grpc, replication_pb2, replication_pb2_grpc
from protos.wire import REPLICA_MAX_MESSAGE_BYTES
from replica.chat.service import ChatService
from replica.chat.servicer import ChatServicer, RateLimits, add_chat_servicer
from replica.chat.tokens import SessionTokens
from replica.config import ClusterConfig, ReplicaSettings, resolve_cluster_secret
from replica.errors import Unavailable
from replica.protocol import ProtocolConfig, Role, rules
from replica.protocol.effects import ReplicaStatus
from replica.replication.addresses import AddressBook
from replica.replication.executor import Executor
from replica.replication.peers import PeerCalls, Peers
from replica.replication.ports import Inbox
from replica.replication.primary import PrimaryStreams
from replica.replication.secondary import FollowStreams
from replica.replication.service import ReplicationServicer
from replica.replication.status import ClusterView, cluster_view
from replica.replication.storage_worker import DatabaseStorage
from replica.replication.tls import TlsMaterial, load_tls_material
from replica.server.admin import ADMIN_SERVICE_NAME, AdminServicer, MembershipCommands
from replica.server.auth import ClusterSecretInterceptor, StartingInterceptor
from replica.server.database_monitor import DatabaseMonitor
from replica.server.metrics import MetricsInterceptor, ReplicaMetrics, counter, gauge
from replica.storage.commit import CommitTracker
from replica.storage.database import (
    UnsafeDurability,
    create_mysql_database,
    database_location,
    database_unreachable,
    durability_risks,
    loose_permissions,
    make_engine,
    storage_problem,
    upgrade_schema,
)
from replica.storage.membership import membership_in_log
from replica.storage.notifier import InboxNotifier
from replica.storage.role import RoleState
from replica.storage.spans import Spans
from replica.storage.watch import KnownLog, StorageWatch
from replica.storage.writer import Clock, LogWriter, NewEvent, utc_now

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", REPLICA_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", REPLICA_MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]
REPLAY_BATCH = 5000  # events applied per transaction while replaying at start-up
REPLAY_PROGRESS_SECONDS = 2.0
CHAT_SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name
REPLICATION_SERVICE_NAME = replication_pb2.DESCRIPTOR.services_by_name["Replication"].full_name
STATUS_WAIT = 2.0  # seconds a status page or a scrape waits for the executor
# A peer's probe answer older than this is no news of it in a cluster status.
STATUS_PROBES_WITHIN = 3.0
# A database that does not answer at start-up is tried again after 0.1 s, then twice as long
# each time up to 2 s; the wait is logged at once, then every 10 s.
DB_WAIT_FIRST_DELAY = 0.1
DB_WAIT_MAX_DELAY = 2.0
DB_WAIT_LOG_SECONDS = 10.0


def protocol_config(
    index: int, config: ClusterConfig, initial_voters: tuple[int, ...] | None = None
) -> ProtocolConfig:
    """`initial_voters`: the membership before any membership event (default: the config's
    replicas)."""
    return ProtocolConfig(
        index=index,
        members=(
            tuple(r.index for r in config.replicas) if initial_voters is None else initial_voters
        ),
        min_insync=config.min_insync,
        heartbeat_interval=config.heartbeat_interval_ms / 1000,
        peer_timeout=config.peer_timeout_ms / 1000,
        insync_timeout=config.insync_timeout_ms / 1000,
        storage_timeout=config.effective_storage_timeout_ms / 1000,
    )


class ReplicaNode:
    def __init__(self, settings: ReplicaSettings, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.index = settings.index
        cluster = settings.cluster
        # Checked first: a TLS mistake is reported before anything is created or opened.
        self.tls: TlsMaterial | None = (
            None if cluster.tls is None else load_tls_material(cluster.tls, settings.me)
        )
        # Not connected yet: start() opens it, waiting for a database that comes late.
        self.engine = make_engine(settings.db_url, create_database=False)
        self.unsafe_durability = False  # (known once it is open)
        secret = resolve_cluster_secret(cluster, settings.data_dir)
        for warning in loose_permissions(self._private_paths()):
            log.warning("replica %d: %s", self.index, warning)
        self._build_storage(clock)
        self.metrics = ReplicaMetrics(self.index)
        self.tokens = SessionTokens(secret)
        self.service = ChatService(
            self.engine,
            self.writer,
            self.tokens,
            lambda: self.commits.committed_seq,
            max_sessions_per_account=cluster.max_sessions_per_account,
            min_password_length=cluster.min_password_length,
        )
        self._build_replication(secret)
        self.servicer = self._chat_servicer()
        self.replication_servicer = ReplicationServicer(self.executor, self.primary_streams)
        self.admin_servicer = AdminServicer(
            self.index,
            MembershipCommands(
                self.writer,
                self.executor,
                self.addresses,
                self.settings.initial_voters,
                tls=self.tls is not None,
            ),
            self.storage,
            self.addresses,
            self.commits,
            self.settings.cluster,
            self.cluster_view,
        )
        self._wire_metrics()
        self._secret = secret
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self._interrupted = threading.Event()  # told to stop while starting
        self._ready = threading.Event()  # projections replayed: answering more than health
        # Removed from the cluster, the removal committed (LeaveCluster): the process stops.
        self.left = threading.Event()
        self._starting = "opening its database"

    def _check_durability(self) -> bool:
        """Refuse a database server that may acknowledge commits it has not flushed, unless
        the config allows it; True if it runs on one."""
        risks = durability_risks(self.engine)
        if not risks:
            return False
        if not self.settings.cluster.allow_unsafe_durability:
            raise UnsafeDurability(
                f"replica {self.index}: its database server may acknowledge commits it has "
                f"not written to disk: {'; '.join(risks)} (or set allow_unsafe_durability = "
                "true in the cluster config to run anyway)"
            )
        log.warning(
            "replica %d: UNSAFE DURABILITY ALLOWED (allow_unsafe_durability = true): %s -- a "
            "power loss of every host may erase sends this replica acknowledged",
            self.index,
            "; ".join(risks),
        )
        return True

    def _build_storage(self, clock: Clock) -> None:
        """The role the writer fences on, the commit tracker, the log writer and those it
        tells: the streams a primary serves, and the live-message notifier."""
        # Where the replicas are: the config's, then what membership events say.
        self.addresses = AddressBook(self.settings.cluster.replicas)
        self.role = RoleState(self.index, self.addresses.client_addresses)
        self.spans = Spans(self.settings.spans_file)
        self.commits = CommitTracker(spans=self.spans)
        self.inbox = Inbox()
        # What the replica knows of its database without asking it (for answers that must
        # not wait on it, and for the protocol to see a stall: replica/storage/watch.py).
        self.storage_watch = StorageWatch(
            self.index, slow_after=self.settings.cluster.slow_storage_ms / 1000
        )
        self.known_log = KnownLog()
        self.primary_streams = PrimaryStreams(
            self.engine, self.inbox, spans=self.spans, watch=self.storage_watch
        )
        self.feed = MembershipFirst(self.primary_streams)
        self.writer = LogWriter(
            self.engine,
            self.role,
            self.commits,
            feed=self.feed,
            clock=clock,
            spans=self.spans,
            watch=self.storage_watch,
            known=self.known_log,
        )
        self.notifier = InboxNotifier()
        self.commits.add_listener(self.notifier.on_committed)

    def _build_replication(self, secret: bytes) -> None:
        """The executor that owns the protocol core, and its ports: the peers, the storage
        worker and the streams a secondary follows. It starts as a candidate in the log's
        epoch."""
        cluster = self.settings.cluster
        protocol = protocol_config(self.index, cluster, self.settings.initial_voters)
        self.peers = Peers(self.index, cluster, secret, self.tls, self.addresses)
        self.peer_calls = PeerCalls(self.peers, protocol, self.inbox)
        self.storage = DatabaseStorage(
            self.index,
            self.engine,
            self.writer,
            self.inbox,
            spans=self.spans,
            on_store_error=self.metrics.database_errors.labels("replicate").inc,
            initial_voters=protocol.members,
            addresses=self.addresses,
        )
        self.feed.storage = self.storage
        self.follow = FollowStreams(
            self.index, self.peers, self.storage, self.inbox, spans=self.spans
        )
        self.executor = Executor(
            protocol,
            0,  # (start() gives it the log's epoch, once the database is open)
            inbox=self.inbox,
            storage=self.storage,
            peers=self.peer_calls,
            follow=self.follow,
            role=self.role,
            commits=self.commits,
            clock=time.monotonic,
            tenure_changed=self._tenure_changed,
            observe=self.metrics.observe_effect,
            left=lambda reason: self.left.set(),
        )
        self.database_monitor = DatabaseMonitor(
            self.index,
            self.engine,
            self.storage_watch,
            stalled_after=protocol.stalled_after,
            serving=self._set_serving,
        )

    def _chat_servicer(self) -> ChatServicer:
        cluster = self.settings.cluster
        return ChatServicer(
            self.service,
            self.role,
            self.notifier,
            self.cluster_view,
            max_subscriptions=cluster.max_subscriptions,
            max_in_flight_per_session=cluster.max_in_flight_per_session,
            # Within the time a secondary waits before electing, not the election's few tens
            # of ms: a replica cut off from the rest must not hold its callers long.
            primary_wait=cluster.peer_timeout_ms / 2000,
            limits=RateLimits(
                login_burst=cluster.failed_logins_per_account,
                address_login_burst=cluster.failed_logins_per_address,
                register_burst=cluster.registrations_per_address,
            ),
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen at once (health says NOT_SERVING, everything else is refused as
        "starting"), open the database (waiting for it if it does not answer yet), replay what
        the projections lack, then serve. Returns early, serving nothing, if interrupt() was
        called meanwhile."""
        cluster = self.settings.cluster
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=cluster.max_subscriptions + 64,
                thread_name_prefix=f"replica{self.index}",
            ),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=cluster.max_subscriptions + 1000,
            interceptors=[
                MetricsInterceptor(self.metrics, f"/{CHAT_SERVICE_NAME}/Send"),
                ClusterSecretInterceptor(
                    self._secret,
                    f"/{REPLICATION_SERVICE_NAME}/",
                    require_peer_certificate=self.tls is not None,
                ),
                ClusterSecretInterceptor(
                    self._secret,
                    f"/{ADMIN_SERVICE_NAME}/",
                    missing="an admin call needs the cluster secret (CHAT_CLUSTER_SECRET or "
                    "--cluster-secret-file)",
                ),
                StartingInterceptor(self._ready, lambda: self._starting),
            ],
        )
        add_chat_servicer(self.servicer, server)
        replication_pb2_grpc.add_ReplicationServicer_to_server(  # type: ignore[no-untyped-call]
            self.replication_servicer, server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        chat_pb2_grpc.add_AdminServicer_to_server(  # type: ignore[no-untyped-call]
            self.admin_servicer, server
        )
        reflection.enable_server_reflection(
            (
                CHAT_SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                REPLICATION_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        me = self.settings.me
        if self.settings.metrics_address is not None:
            self.metrics.serve(self.settings.metrics_address)
        for address in me.listen_addresses:
            if self._add_port(server, address, is_peer_port=address == me.peer_address) == 0:
                raise OSError(f"cannot listen on {address}")
        self._set_serving(False)
        server.start()
        self._server = server
        epoch = self._open_database()
        if epoch is None:
            return
        self._recover_projections()
        if self.settings.force_new_cluster:
            epoch = self._force_new_cluster(epoch)
        with self.engine.connect() as conn:
            self.known_log.set(eventlog.last_position(conn), projections.last_applied_seq(conn))
        self.role.set(Role.CANDIDATE, epoch, None)
        self._ready.set()
        membership = self.storage.read_membership()
        self.storage.start()
        self.executor.start(epoch, membership)
        self._set_serving(True)
        self.database_monitor.start()
        log.info(
            "replica %d: serving on %s%s",
            self.index,
            " and ".join(me.listen_addresses),
            "" if self.tls is None else " (TLS; mutual TLS for replicas on the second)",
        )

    def _force_new_cluster(self, epoch: int) -> int:
        """The disaster override: a `cluster_forced` event in a new epoch of this replica's,
        making it the one voter of the cluster from its own log, every other member removed
        for good (they stop by themselves if they come back). What only they held -- events
        acknowledged while this replica lagged or was away -- is lost. The epoch it returns
        is the log's now."""
        with self.engine.connect() as conn:
            membership = membership_in_log(conn, self.settings.initial_voters)
        others = (membership.members | membership.removed | set(self.settings.initial_voters)) - {
            self.index
        }
        me = self.settings.me
        event = ClusterForced(
            index=self.index,
            members=(
                MemberRecord(
                    index=self.index, address=me.address, peer_address=me.peer_address, voter=True
                ),
            ),
            removed=tuple(sorted(others)),
        )
        forced_epoch = rules.next_epoch(epoch, self.index)
        with self.engine.begin() as conn:
            eventlog.raise_current_epoch(conn, forced_epoch)
        written = self.writer.append_system_event(
            NewEvent(*projections.encode(event)), forced_epoch
        )
        log.warning(
            "replica %d: FORCED A NEW CLUSTER (--force-new-cluster): it is the one voter from "
            "its own log (seq %d); replicas %s are removed for good, and whatever only they "
            "held is lost. Add new replicas with python -m client admin member add, and restart "
            "this one without the flag",
            self.index,
            written.seq,
            ", ".join(str(i) for i in sorted(others)) or "none",
        )
        return forced_epoch

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if not self._stopped.is_set():
            for service in ("", CHAT_SERVICE_NAME):
                self.health.set(service, status)

    def interrupt(self) -> None:
        """Stop waiting for the database (a signal came while starting): start() returns."""
        self._interrupted.set()

    def _open_database(self) -> int | None:
        """Create the database if it is missing, refuse unsafe durability, bring the schema to
        the newest revision, and read the log's epoch -- waiting with capped back-off while
        the database server cannot be reached (it may come up after this replica: at boot,
        after maintenance), saying so once and then every DB_WAIT_LOG_SECONDS. None if
        interrupted meanwhile. What waiting cannot fix (a refused login, an unknown schema
        revision, unsafe settings) is raised."""
        where = database_location(self.engine)
        began = noted = time.monotonic()
        delay, tries = DB_WAIT_FIRST_DELAY, 0
        while True:
            tries += 1
            try:
                create_mysql_database(self.engine.url)
                self.unsafe_durability = self._check_durability()
                upgrade_schema(self.engine)
                with self.engine.connect() as conn:
                    epoch = eventlog.current_epoch(conn)
                break
            except sa.exc.DBAPIError as exc:
                if not database_unreachable(exc):
                    raise
                problem = storage_problem(exc)
            now = time.monotonic()
            if tries == 1:
                self._starting = (
                    f"waiting for the database at {where} since {time.strftime('%H:%M:%S')}"
                )
                log.warning(
                    "replica %d: waiting for the database at %s (%s)", self.index, where, problem
                )
            elif now - noted >= DB_WAIT_LOG_SECONDS:
                noted = now
                log.warning(
                    "replica %d: still waiting for the database at %s: %d tries in %.0fs (%s)",
                    self.index,
                    where,
                    tries,
                    now - began,
                    problem,
                )
            if self._interrupted.wait(delay):
                return None
            delay = min(2 * delay, DB_WAIT_MAX_DELAY)
        if tries > 1:
            log.info(
                "replica %d: the database at %s answers, after %.1fs and %d tries",
                self.index,
                where,
                time.monotonic() - began,
                tries,
            )
        self._starting = "opening its database"
        return epoch

    def _add_port(self, server: grpc.Server, address: str, *, is_peer_port: bool) -> int:
        try:
            if self.tls is None:
                return server.add_insecure_port(address)
            if is_peer_port:
                return server.add_secure_port(address, self.tls.peer_port_credentials())
            return server.add_secure_port(address, self.tls.client_port_credentials())
        except RuntimeError:  # newer gRPC raises where older ones returned 0
            return 0

    def stop(self, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        # The executor first (waiting callers are told the replica stops), then what it
        # drives: the stream to a primary, the streams served, storage, the calls to peers.
        self.database_monitor.stop()
        self.executor.stop()
        self.follow.stop()
        self.primary_streams.stop()
        self.storage.stop()
        self.servicer.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.peers.close()
        self.metrics.stop()
        self.spans.close()
        self.engine.dispose()
        log.info("replica %d: stopped", self.index)

    def _private_paths(self) -> list[Path]:
        """What only this replica's user should read: the data directory, the cluster secret
        made there, and a SQLite database with its -wal and -shm files."""
        paths = [self.settings.data_dir, self.settings.data_dir / "cluster.secret"]
        url = make_url(self.settings.db_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            db = Path(url.database)
            paths += [db.parent, db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        return list(dict.fromkeys(paths))

    # -- metrics -------------------------------------------------------------------------

    def _tenure_changed(self) -> None:
        """A tenure began or ended: events cached for the streams may have other events
        at their seqs in the new tenure, and subscriptions look at their inboxes again."""
        self.primary_streams.recent.clear()
        self.notifier.wake_all()

    def status(self) -> ReplicaStatus:
        """The protocol core's view of this replica (and, as primary, of its secondaries)."""
        try:
            return self.executor.status().result(STATUS_WAIT)
        except TimeoutError:
            raise Unavailable(f"replica {self.index} is busy; retry") from None

    def _wire_metrics(self) -> None:
        m = self.metrics
        self.writer.on_database_error = m.database_errors.labels("write").inc
        self.servicer.on_delivered = m.delivery_seconds.observe
        self.servicer.on_session_answer = m.session_answered
        self.storage_watch.on_duration = m.storage_seconds.observe
        m.add_state(self._state_metrics)

    def _state_metrics(self) -> list[Metric]:
        """Gauges read at each scrape: this replica's state and, on the primary, each
        secondary's lag and in-sync flag (the views ClusterStatus gives)."""
        snap = self.role.snapshot
        role = GaugeMetricFamily("chat_role", "1 for this replica's current role.", labels=["role"])
        for name in Role:
            role.add_metric([name.value], 1.0 if snap.role is name else 0.0)
        out: list[Metric] = [
            role,
            gauge(
                "chat_epoch",
                "The highest epoch this replica has seen.",
                snap.epoch,
            ),
            gauge(
                "chat_committed_seq",
                "The commit point this replica knows.",
                self.commits.committed_seq,
            ),
            gauge(
                "chat_unsafe_durability",
                "1 if this replica runs on a database server that may acknowledge commits it "
                "has not flushed (allow_unsafe_durability).",
                1.0 if self.unsafe_durability else 0.0,
            ),
            gauge(
                "chat_open_subscriptions",
                "Subscribe streams open on this replica.",
                self.servicer.open_subscriptions,
            ),
        ]
        out.append(
            gauge(
                "chat_storage_stalled",
                "1 while an operation on this replica's database has waited longer than half "
                "the storage timeout (health is NOT_SERVING; a primary hands over at the "
                "timeout).",
                0.0 if self.executor.stalled() is None else 1.0,
            )
        )
        out.append(
            gauge(
                "chat_storage_waiting_seconds",
                "How long the oldest operation on this replica's database has waited (0 if "
                "none waits).",
                self.storage_watch.stalled_for(),
            )
        )
        out.append(
            counter(
                "chat_storage_slow_operations",
                "Database operations slower than slow_storage_ms.",
                self.storage_watch.slow_operations,
            )
        )
        if not self._ready.is_set():
            return out
        try:
            status = self.status()
            view = self.cluster_view(status)
        except (sa.exc.DBAPIError, Unavailable):
            return out  # (its database or its executor does not answer: the rest is unknown)
        me = next(r for r in view.replicas if r.index == self.index)
        out.append(
            gauge("chat_last_seq", "The seq of this replica's last logged event.", me.last_seq)
        )
        out.append(
            gauge("chat_applied_seq", "The last seq applied to its projections.", me.applied_seq)
        )
        lag = GaugeMetricFamily(
            "chat_replica_lag_events",
            "Events a replica's log lacks behind the primary's (as this replica sees it).",
            labels=["replica"],
        )
        in_sync = GaugeMetricFamily(
            "chat_replica_in_sync",
            "1 if the primary counts the replica in its in-sync set (as this replica sees it).",
            labels=["replica"],
        )
        reachable = GaugeMetricFamily(
            "chat_replica_reachable",
            "1 if the replica answered this one's last probe.",
            labels=["replica"],
        )
        voter = GaugeMetricFamily(
            "chat_replica_voter",
            "1 for a voter, 0 for a learner (added, catching up, counted for nothing), among "
            "the members this replica knows.",
            labels=["replica"],
        )
        # The primary knows each secondary's acked position exactly; the others, as of the
        # last probe of the primary.
        members = {}
        if snap.role is Role.PRIMARY:
            members = {m.index: m for m in status.secondaries}
        for r in view.replicas:
            member = members.get(r.index)
            behind = r.lag if member is None else member.lag
            lag.add_metric([str(r.index)], float(behind))
            in_sync.add_metric([str(r.index)], 1.0 if r.in_sync else 0.0)
            reachable.add_metric([str(r.index)], 1.0 if r.reachable else 0.0)
            voter.add_metric([str(r.index)], 0.0 if r.learner else 1.0)
        out += [lag, in_sync, reachable, voter]
        known = 0.0 if view.primary_index is None else 1.0
        out.append(gauge("chat_has_primary", "1 if this replica knows a live primary.", known))
        return out

    # -- state ---------------------------------------------------------------------------

    def _recover_projections(self) -> None:
        """Apply every logged event the projections have not seen (normally none: both are
        written in one transaction; a restore from a log-only backup, or a migration that
        rebuilt them, leaves many), one committed batch at a time, saying how far it got."""
        with self.engine.connect() as conn:
            applied = projections.last_applied_seq(conn)
            last = eventlog.last_position(conn).seq
        if last <= applied:
            return
        total = last - applied
        log.info(
            "replica %d: replaying %d logged events into the projections (seq %d to %d) before"
            " serving",
            self.index,
            total,
            applied + 1,
            last,
        )
        started = noted = time.monotonic()
        position = applied
        while True:
            self._starting = f"replayed {position - applied} of {total} logged events"
            with self.engine.begin() as conn:
                batch = eventlog.read_events(conn, position, REPLAY_BATCH)
                if not batch:
                    break
                position = projections.apply_events(conn, batch)
            if time.monotonic() - noted >= REPLAY_PROGRESS_SECONDS:
                noted = time.monotonic()
                log.info("replica %d: %s", self.index, self._starting)
        took = time.monotonic() - started
        log.info(
            "replica %d: replayed %d events in %.3fs (%.0f events/s)",
            self.index,
            position - applied,
            took,
            (position - applied) / took if took else 0.0,
        )

    def cluster_view(self, status: ReplicaStatus | None = None) -> ClusterView:
        """The cluster as this replica sees it, from memory -- or Unavailable, with the
        reason, while its database is stalled (what it knows of its own log may be stale,
        and a client waiting on it should go elsewhere)."""
        stalled = self.executor.stalled()
        if stalled is not None:
            raise Unavailable(f"replica {self.index}: {stalled}; ask another replica")
        return cluster_view(
            self.addresses.members(),
            self.index,
            self.storage.known_facts(),
            self.role.snapshot,
            self.status() if status is None else status,
            # (A secondary that follows a live primary probes no one: what the others said
            # long ago is no news of them.)
            self.peer_calls.last_round(within=STATUS_PROBES_WITHIN),
            self.storage.membership.learners if self.storage.membership else frozenset(),
        )


class MembershipFirst:
    """The writer's feed (storage/writer.py ReplicationFeed): the storage side hears of a
    membership event before the streams do, so that the core acts on a membership from the
    moment its event is written (Raft's rule) -- and hears again, from the log, when a
    written batch failed to commit."""

    def __init__(self, streams: PrimaryStreams) -> None:
        self.streams = streams
        self.storage: DatabaseStorage | None = None  # (set once it is made)

    def written(self, events: list[Event]) -> None:
        if self.storage is not None:
            self.storage.written(events)
        self.streams.written(events)

    def write_failed(self, epoch: int, reason: str) -> None:
        if self.storage is not None:
            self.storage.write_failed()
        self.streams.write_failed(epoch, reason)

    def appended(self, events: list[Event]) -> None:
        self.streams.appended(events)
