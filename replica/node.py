"""A replica process: wires storage, the log writer, the chat service and the gRPC server."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import eventlog
import projections
from protos import chat_pb2, chat_pb2_grpc
from replica.chat import ChatService
from replica.commit import CommitTracker, InboxNotifier
from replica.config import ReplicaSettings, resolve_cluster_secret
from replica.database import make_engine, upgrade_schema
from replica.role import Role, RoleState
from replica.servicer import ChatServicer, ClusterView, ReplicaStatusView
from replica.tokens import SessionTokens
from replica.writer import Clock, LogWriter, NewEvent, utc_now

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]
CHAT_SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name


class ReplicaNode:
    def __init__(self, settings: ReplicaSettings, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.index = settings.index
        self.engine = make_engine(settings.db_url)
        upgrade_schema(self.engine)
        self.role = RoleState(settings.index)
        self.commits = CommitTracker()
        self.writer = LogWriter(self.engine, self.role, self.commits, clock=clock)
        self.notifier = InboxNotifier()
        self.commits.add_listener(self.notifier.on_committed)
        self.tokens = SessionTokens(resolve_cluster_secret(settings.cluster, settings.data_dir))
        self.service = ChatService(
            self.engine, self.writer, self.tokens, lambda: self.commits.committed_seq
        )
        self.servicer = ChatServicer(
            self.service,
            self.role,
            self.notifier,
            self.cluster_view,
            max_subscriptions=settings.cluster.max_subscriptions,
        )
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._recover_projections()
        self._become_standalone_primary()
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.settings.cluster.max_subscriptions + 32,
                thread_name_prefix=f"replica{self.index}",
            ),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=self.settings.cluster.max_subscriptions + 1000,
        )
        chat_pb2_grpc.add_ChatServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (CHAT_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = self.settings.me.address
        if server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        for service in ("", CHAT_SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("replica %d: serving on %s", self.index, address)

    def stop(self, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.servicer.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.engine.dispose()
        log.info("replica %d: stopped", self.index)

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    # -- state ---------------------------------------------------------------------------

    def _recover_projections(self) -> None:
        """Apply any logged event the projections have not seen (normally none: both are
        written in one transaction)."""
        with self.engine.begin() as conn:
            applied = projections.last_applied_seq(conn)
            while True:
                batch = eventlog.read_events(conn, applied, 1000)
                if not batch:
                    break
                applied = projections.apply_events(conn, batch)

    def _become_standalone_primary(self) -> None:
        """Alone, this replica leads: it starts a new epoch, durably, before any write."""
        with self.engine.connect() as conn:
            last = eventlog.last_position(conn)
        epoch = last.epoch + 1
        self.commits.reset(last.seq)
        self.role.set(Role.PRIMARY, epoch, self.index, self.settings.me.address)
        self.writer.add_append_listener(lambda events: self.commits.advance(events[-1].seq))
        self.writer.append_system_event(
            NewEvent(projections.EventTypes.EPOCH_STARTED, {"replica_index": self.index}), epoch
        )
        log.info("replica %d: primary for epoch %d from seq %d", self.index, epoch, last.seq)

    def cluster_view(self) -> ClusterView:
        snap = self.role.snapshot
        with self.engine.connect() as conn:
            last = eventlog.last_position(conn)
            applied = projections.last_applied_seq(conn)
        me = ReplicaStatusView(
            index=self.index,
            address=self.settings.me.address,
            role=snap.role.value,
            epoch=snap.epoch,
            last_seq=last.seq,
            applied_seq=applied,
            lag=0,
            in_sync=True,
            reachable=True,
        )
        return ClusterView(self.index, snap.primary_index, [me])
