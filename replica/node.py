"""A replica process: wires storage, the log writer, replication, the chat service and the
gRPC server."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import eventlog
import projections
from protos import chat_pb2, replication_pb2, replication_pb2_grpc
from replica.auth import ClusterSecretInterceptor
from replica.chat import ChatService
from replica.commit import CommitTracker, InboxNotifier
from replica.config import ReplicaSettings, resolve_cluster_secret
from replica.database import make_engine, upgrade_schema
from replica.election import Coordinator
from replica.leader import LeaderStream, ReplicationHub
from replica.peers import Peers
from replica.replication_service import ReplicationServicer
from replica.role import Role, RoleState
from replica.servicer import ChatServicer, ClusterView, ReplicaStatusView, add_chat_servicer
from replica.tls import TlsMaterial, load_tls_material
from replica.tokens import SessionTokens
from replica.writer import Clock, LogWriter, utc_now

log = logging.getLogger(__name__)

# Replication batches are the largest messages (500 events of up to 4 KiB bodies each).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]
CHAT_SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name
REPLICATION_SERVICE_NAME = replication_pb2.DESCRIPTOR.services_by_name["Replication"].full_name


class ReplicaNode:
    def __init__(self, settings: ReplicaSettings, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.index = settings.index
        cluster = settings.cluster
        # Checked first: a TLS mistake is reported before anything is created or opened.
        self.tls: TlsMaterial | None = (
            None if cluster.tls is None else load_tls_material(cluster.tls, settings.me)
        )
        self.engine = make_engine(settings.db_url)
        upgrade_schema(self.engine)
        secret = resolve_cluster_secret(cluster, settings.data_dir)
        self.role = RoleState(settings.index)
        self.commits = CommitTracker()
        self.hub = ReplicationHub(self.index, cluster, self.commits)
        self.writer = LogWriter(
            self.engine, self.role, self.commits, clock=clock, admission=self.hub.check_writable
        )
        self.writer.add_append_listener(self.hub.on_appended)
        self.notifier = InboxNotifier()
        self.commits.add_listener(self.notifier.on_committed)
        self.tokens = SessionTokens(secret)
        self.service = ChatService(
            self.engine,
            self.writer,
            self.tokens,
            lambda: self.commits.committed_seq,
            max_sessions_per_account=cluster.max_sessions_per_account,
        )
        self.peers = Peers(self.index, cluster, secret, self.tls)
        self.coordinator = Coordinator(
            self.index,
            cluster,
            self.engine,
            self.role,
            self.writer,
            self.commits,
            self.hub,
            self.notifier,
            self.peers,
        )
        self.servicer = ChatServicer(
            self.service,
            self.role,
            self.notifier,
            self.cluster_view,
            max_subscriptions=cluster.max_subscriptions,
        )
        leader_stream = LeaderStream(
            self.hub,
            self.engine,
            self.commits,
            cluster.heartbeat_interval_ms / 1000,
            self.coordinator.observe_epoch,
        )
        self.replication_servicer = ReplicationServicer(self.coordinator, leader_stream)
        self._secret = secret
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._recover_projections()
        cluster = self.settings.cluster
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=cluster.max_subscriptions + 64,
                thread_name_prefix=f"replica{self.index}",
            ),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=cluster.max_subscriptions + 1000,
            interceptors=[
                ClusterSecretInterceptor(
                    self._secret,
                    f"/{REPLICATION_SERVICE_NAME}/",
                    require_peer_certificate=self.tls is not None,
                )
            ],
        )
        add_chat_servicer(self.servicer, server)
        replication_pb2_grpc.add_ReplicationServicer_to_server(  # type: ignore[no-untyped-call]
            self.replication_servicer, server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                CHAT_SERVICE_NAME,
                REPLICATION_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        me = self.settings.me
        for address in me.listen_addresses:
            if self._add_port(server, address, is_peer_port=address == me.peer_address) == 0:
                raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        self.coordinator.start()
        for service in ("", CHAT_SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "replica %d: serving on %s%s",
            self.index,
            " and ".join(me.listen_addresses),
            "" if self.tls is None else " (TLS; mutual TLS for replicas on the second)",
        )

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
        self.coordinator.stop()
        self.servicer.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.peers.close()
        self.engine.dispose()
        log.info("replica %d: stopped", self.index)

    # -- state ---------------------------------------------------------------------------

    def _recover_projections(self) -> None:
        """Apply any logged event the projections have not seen (normally none: both are
        written in one transaction)."""
        with self.engine.begin() as conn:
            projections.catch_up(conn)

    def cluster_view(self) -> ClusterView:
        snap = self.role.snapshot
        with self.engine.connect() as conn:
            last = eventlog.last_position(conn)
            applied = projections.last_applied_seq(conn)
        probes = {p.peer.index: p.reply for p in self.coordinator.last_probe()}
        # In-sync and lag come from the primary's view of its secondaries.
        primary_view: dict[int, replication_pb2.PeerState] = {}
        if snap.role is Role.PRIMARY:
            primary_view = {s.index: s for s in self.coordinator.probe_reply().secondaries}
        elif snap.primary_index is not None and probes.get(snap.primary_index) is not None:
            reply = probes[snap.primary_index]
            assert reply is not None
            primary_view = {s.index: s for s in reply.secondaries}
        primary_last = last.seq if snap.role is Role.PRIMARY else 0
        if snap.primary_index is not None and probes.get(snap.primary_index) is not None:
            reply = probes[snap.primary_index]
            assert reply is not None
            primary_last = reply.self.position.seq
        views = []
        for replica in self.settings.cluster.replicas:
            if replica.index == self.index:
                role, epoch, last_seq, applied_seq, reachable = (
                    snap.role.value,
                    self.coordinator.current_epoch,
                    last.seq,
                    applied,
                    True,
                )
            else:
                reply = probes.get(replica.index)
                if reply is None:
                    role, epoch, last_seq, applied_seq, reachable = "unknown", 0, 0, 0, False
                else:
                    role, epoch = reply.self.role, reply.self.epoch
                    last_seq, applied_seq = reply.self.position.seq, reply.self.applied_seq
                    reachable = True
            is_primary = replica.index == snap.primary_index
            in_view = primary_view.get(replica.index)
            views.append(
                ReplicaStatusView(
                    index=replica.index,
                    address=replica.address,
                    role=role,
                    epoch=epoch,
                    last_seq=last_seq,
                    applied_seq=applied_seq,
                    lag=0 if is_primary or not reachable else max(0, primary_last - last_seq),
                    in_sync=is_primary or bool(in_view and in_view.in_sync),
                    reachable=reachable,
                )
            )
        return ClusterView(self.index, snap.primary_index, views)
