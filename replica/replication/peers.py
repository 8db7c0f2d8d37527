"""Channels to the other replicas, and the calls one replica makes on another: `Peers` (the
transport) and `PeerCalls`, the executor's port that reports their outcomes as inputs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from eventlog import Position
from protos import replication_pb2 as rpb
from protos import replication_pb2_grpc as rpb_grpc
from protos.wire import CLUSTER_SECRET_KEY, REPLICA_MAX_MESSAGE_BYTES, SERVICE_ERROR_KEY
from replica.config import ClusterConfig, ReplicaAddress
from replica.protocol import ProtocolConfig, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.replication import ports
from replica.replication.addresses import AddressBook
from replica.replication.tls import TlsMaterial

log = logging.getLogger(__name__)

CONNECTION_REFUSED = "Connection refused"
# How long a renewed channel stays open for the calls already made on it (a probe's deadline
# is well under this).
RETIRED_CHANNEL_GRACE = 5.0  # gRPC core's wording of ECONNREFUSED

PEER_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", REPLICA_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", REPLICA_MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a peer restarts (the default backoff grows to minutes).
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Subchannels of its own: a renewed channel (Peers.renew) must not take over the old one's
    # connection state from gRPC's process-wide pool, back-off and all.
    ("grpc.use_local_subchannel_pool", 1),
]


# In the details of a call that failed because the TLS handshake did (a peer with another CA,
# a certificate not valid for the peer's host, a peer without TLS).
# gRPC core's wordings of a connection attempt that timed out.
TIMEOUT_SIGNS = ("timed out", "timeout", "deadline")
TLS_FAILURE_SIGNS = ("Tls handshake failed", "Hostname Verification", "ssl_transport_security")


def _channel(address: str, tls: TlsMaterial | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=PEER_CHANNEL_OPTIONS)
    return grpc.secure_channel(
        address, tls.peer_channel_credentials(), options=PEER_CHANNEL_OPTIONS
    )


@dataclass(frozen=True)
class ProbeResult:
    peer: ReplicaAddress
    reply: rpb.ProbeReply | None  # None: unreachable
    # The call failed without timing out: the peer answered an error (UNAVAILABLE when its
    # database failed -- it stopped vouching before it said so), or its host refused a fresh
    # connection (a killed process). A failure the channel reports from an earlier attempt
    # (reconnect back-off, a reset) is checked with a new TCP connection first. Only silence
    # may hide a peer that is running and vouching; a partition is silent.
    refused: bool = False
    # The peer's host answered that nothing listens on its port (TCP RST): its process is gone,
    # and with it every belief it held; a partitioned peer times out instead.
    process_gone: bool = False


class UnknownPeer(KeyError):
    """No address is known for a replica index (not a member this replica has heard of)."""


class Peers:
    def __init__(
        self,
        index: int,
        config: ClusterConfig,
        secret: bytes,
        tls: TlsMaterial | None = None,
        addresses: AddressBook | None = None,
    ) -> None:
        """`addresses`: where the replicas are (by default the config's, fixed); channels are
        opened on first use, and again when a replica's address changed."""
        self.index = index
        self.config = config
        self.addresses = addresses if addresses is not None else AddressBook(config.replicas)
        self._tls = tls
        self._metadata = ((CLUSTER_SECRET_KEY, secret.decode("utf-8", "replace")),)
        self._lock = threading.Lock()
        # index -> (the address it was opened to, the channel, its stub)
        self._open: dict[int, tuple[str, grpc.Channel, rpb_grpc.ReplicationStub]] = {}
        self._retired: list[grpc.Channel] = []  # renewed, closed after RETIRED_CHANNEL_GRACE
        self._refused_by: set[int] = set()  # peers that refused our secret (logged once)
        # Checking a failed probe afresh blocks (a TCP connect, a second call): done here,
        # off gRPC's threads, and finished before the channels close.
        self._checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"probe-check-{index}")
        self._closed = threading.Event()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def stub(self, index: int) -> rpb_grpc.ReplicationStub:
        """The stub for replica `index` (UnknownPeer if no address is known for it; ValueError,
        as a closed channel's, once the replica is stopping)."""
        peer = self.addresses.get(index)
        if peer is None:
            raise UnknownPeer(index)
        stale = None
        with self._lock:
            if self._closed.is_set():
                raise ValueError("the replica is stopping: its channels are closed")
            entry = self._open.get(index)
            if entry is None or entry[0] != peer.replication_address:
                stale = entry
                channel = _channel(peer.replication_address, self._tls)
                stub = rpb_grpc.ReplicationStub(channel)  # type: ignore[no-untyped-call]
                entry = (peer.replication_address, channel, stub)
                self._open[index] = entry
        if stale is not None:
            stale[1].close()
        return entry[2]

    def probe_all(
        self,
        request: rpb.ProbeRequest,
        timeout: float,
        done: Callable[[list[ProbeResult]], None],
        targets: Sequence[int] | None = None,
    ) -> None:
        """Probe every peer at once (`targets`: these indexes; by default every member but
        this replica); `done` gets every result (in index order) when the last call finished
        or timed out. A target whose address is not known is reported unreachable. It runs on
        a gRPC thread: it must not block."""
        if targets is None:
            targets = [m.index for m in self.addresses.members()]
        peers = [
            self.addresses.get(i) or ReplicaAddress(i, "")
            for i in sorted(set(targets) - {self.index})
        ]
        results: dict[int, ProbeResult] = {}
        lock = threading.Lock()

        def finished(peer: ReplicaAddress, call: grpc.Future[rpb.ProbeReply]) -> None:
            if call.exception() is not None and not _answered_by_peer(call):
                # Checking a transport failure blocks: not on a gRPC thread.
                try:
                    self._checks.submit(record, peer, call)
                except RuntimeError:  # closing: no answer
                    store(ProbeResult(peer, None))
            else:
                record(peer, call)

        def record(peer: ReplicaAddress, call: grpc.Future[rpb.ProbeReply]) -> None:
            store(self._fresh_probe_result(peer, request, call, deadline))

        def store(result: ProbeResult) -> None:
            peer = result.peer
            with lock:
                results[peer.index] = result
                complete = len(results) == len(peers)
            if complete:
                done([results[p.index] for p in peers])

        if not peers:
            done([])
            return
        deadline = time.monotonic() + timeout
        for peer in peers:
            try:
                call = self.stub(peer.index).Probe.future(
                    request, timeout=timeout, metadata=self._metadata
                )
            except (ValueError, UnknownPeer):  # stopping, or nowhere to call
                store(ProbeResult(peer, None))
                continue
            call.add_done_callback(lambda c, peer=peer: finished(peer, c))

    def _probe_result(self, peer: ReplicaAddress, call: grpc.Future[rpb.ProbeReply]) -> ProbeResult:
        try:
            reply = call.result()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            self._note_refusal(peer, exc, code)
            details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
            gone = code == grpc.StatusCode.UNAVAILABLE and CONNECTION_REFUSED in details
            return ProbeResult(peer, None, not _timed_out(code, details), gone)
        self._refused_by.discard(peer.index)
        return ProbeResult(peer, reply)

    def _fresh_probe_result(
        self,
        peer: ReplicaAddress,
        request: rpb.ProbeRequest,
        call: grpc.Future[rpb.ProbeReply],
        deadline: float,
    ) -> ProbeResult:
        """The probe's outcome, with a refusal the channel reports from its own past checked
        afresh: a channel in reconnect back-off fails a call at once with the error of its
        last attempt to connect ("Connection refused" from a restart long over, say), which
        says nothing of the peer now. Blocks: run it off the gRPC threads."""
        result = self._probe_result(peer, call)
        if not result.refused or _answered_by_peer(call):
            return result
        if self._closed.is_set():
            return ProbeResult(peer, None)
        remaining = deadline - time.monotonic()
        reachable = _tcp_connect(peer.replication_address, remaining)
        if reachable is not True:
            gone = reachable == "refused"
            return ProbeResult(peer, None, refused=gone, process_gone=gone)
        # Something listens there now: ask once more, waiting for the channel to connect.
        try:
            retry = self.stub(peer.index).Probe.future(
                request,
                timeout=max(0.0, deadline - time.monotonic()),
                metadata=self._metadata,
                wait_for_ready=True,
            )
        except (ValueError, UnknownPeer):  # the replica is stopping
            return ProbeResult(peer, None)
        again = self._probe_result(peer, retry)
        if again.refused and not _answered_by_peer(retry):
            return ProbeResult(peer, None)  # no answer we can trust either way
        return again

    def _note_refusal(
        self, peer: ReplicaAddress, exc: grpc.RpcError, code: grpc.StatusCode | None
    ) -> None:
        details = exc.details() if isinstance(exc, grpc.Call) else ""
        tls_failure = code == grpc.StatusCode.UNAVAILABLE and any(
            sign in (details or "") for sign in TLS_FAILURE_SIGNS
        )
        if not tls_failure and code not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        ):
            return
        if peer.index not in self._refused_by:
            self._refused_by.add(peer.index)
            log.error(
                "replica %d: replica %d at %s refused us (%s: %s)",
                self.index,
                peer.index,
                peer.replication_address,
                code.name if code is not None else "?",
                details,
            )

    def request_votes(
        self,
        indexes: Sequence[int],
        request: rpb.VoteRequest,
        timeout: float,
        on_reply: Callable[[int, rpb.VoteReply | None], None],
    ) -> None:
        """Ask each of `indexes` for a vote; `on_reply(index, reply or None)` once per voter
        (None: the call failed or timed out). It runs on a gRPC thread: it must not block."""

        def finished(index: int, call: grpc.Future[rpb.VoteReply]) -> None:
            try:
                reply = call.result()
            except grpc.RpcError:
                reply = None
            on_reply(index, reply)

        for index in indexes:
            try:
                call = self.stub(index).RequestVote.future(
                    request, timeout=timeout, metadata=self._metadata
                )
            except (ValueError, UnknownPeer):  # stopping, or nowhere to call
                on_reply(index, None)
                continue
            call.add_done_callback(lambda c, index=index: finished(index, c))

    def renew(self, index: int) -> None:
        """The next call to replica `index` goes over a new channel. A channel that failed to
        connect (its peer was down) and carried nothing since stays in reconnect back-off and
        fails a call at once with its last error, though the peer may have restarted long
        ago; a new one connects at its first call. The old channel is closed a little later,
        once calls already made on it (probes) are over."""
        with self._lock:
            entry = self._open.pop(index, None)
            if entry is not None:
                self._retired.append(entry[1])
        if entry is not None:
            timer = threading.Timer(RETIRED_CHANNEL_GRACE, self._close_retired, (entry[1],))
            timer.daemon = True
            timer.start()

    def _close_retired(self, channel: grpc.Channel) -> None:
        with self._lock:
            if channel not in self._retired:
                return  # closed with the rest
            self._retired.remove(channel)
        channel.close()

    def close(self) -> None:
        """Finish the probe checks under way, then close the channels."""
        self._closed.set()
        self._checks.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            channels = [channel for _, channel, _ in self._open.values()] + self._retired
            self._open.clear()
            self._retired = []
        for channel in channels:
            channel.close()


class PeerCalls(ports.Peers):
    """The executor's port to the other replicas: probe rounds and vote requests over
    `Peers`, their outcomes reported to the inbox."""

    def __init__(
        self,
        peers: Peers,
        config: ProtocolConfig,
        inbox: ports.Inbox,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peers = peers
        self._config = config
        self._inbox = inbox
        self._clock = clock
        # What each peer said in the latest round that asked it, and when that round ended: a
        # round asks only the peers whose streams are not alive (ReplicaCore.probe_round_targets).
        self._heard: dict[int, tuple[float, ProbeResult]] = {}

    def last_round(self, within: float | None = None) -> list[ProbeResult]:
        """What each peer said in the latest round that asked it (for cluster status); with
        `within`, only what was said that many seconds ago at most -- a peer that streams is
        not asked, and an old answer is no news of it."""
        now = self._clock()
        return [
            result
            for index, (at, result) in sorted(self._heard.items())
            if within is None or now - at <= within
        ]

    def probe_all(self, effect: fx.ProbeAll) -> None:
        request = rpb.ProbeRequest(
            from_index=self._config.index,
            from_epoch=effect.epoch,
            from_primary=effect.from_primary,
        )
        self._peers.probe_all(
            request, self._config.probe_timeout, self._round_done, effect.peers or None
        )

    def _round_done(self, results: list[ProbeResult]) -> None:
        now = self._clock()
        for result in results:
            self._heard[result.peer.index] = (now, result)
        self._inbox.put(ports.ProbeRound(tuple(probe_outcome(r) for r in results)))

    def request_votes(self, effect: fx.RequestVotes) -> None:
        request = rpb.VoteRequest(
            candidate_index=self._config.index,
            epoch=effect.epoch,
            position=rpb.LogPosition(epoch=effect.position.epoch, seq=effect.position.seq),
        )

        def on_reply(voter: int, reply: rpb.VoteReply | None) -> None:
            self._inbox.submit(
                ins.VoteReplied(voter, effect.epoch, False, 0, "unreachable")
                if reply is None
                else ins.VoteReplied(voter, effect.epoch, reply.granted, reply.epoch, reply.reason)
            )

        self._peers.request_votes(effect.voters, request, self._config.peer_timeout, on_reply)


def probe_outcome(result: ProbeResult) -> ins.ProbeOutcome:
    reply = result.reply
    view = None
    if reply is not None:
        view = ins.PeerView(
            index=reply.self.index,
            role=Role(reply.self.role),
            epoch=reply.self.epoch,
            position=Position(reply.self.position.epoch, reply.self.position.seq),
            in_sync=reply.self.in_sync,
            vouches=reply.trusted,  # (the wire's name for the vouch)
            following_live_primary=reply.following_live_primary,
            claim=reply.claim_primary if reply.claims else None,
        )
    return ins.ProbeOutcome(result.peer.index, view, result.refused, result.process_gone)


def _answered_by_peer(call: grpc.Future[Any]) -> bool:
    """Whether a failed call's status is the peer's own answer (an error of the service, or
    a refusal of our secret), not a failure to reach it."""
    exc = call.exception()
    if not isinstance(exc, grpc.Call):
        return False
    if any(m.key == SERVICE_ERROR_KEY for m in exc.trailing_metadata() or ()):
        return True
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        # Its TLS refused ours (another CA, a certificate not for this host): answered.
        return any(sign in (exc.details() or "") for sign in TLS_FAILURE_SIGNS)
    return exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _tcp_connect(address: str, timeout: float) -> bool | str:
    """True if a fresh TCP connection to `address` succeeds within `timeout`; "refused" if
    its host says nothing listens there; False if no answer came in time (or no route)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=max(timeout, 0.01)):
            return True
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return False


def _timed_out(code: grpc.StatusCode | None, details: str) -> bool:
    """No answer in time -- the deadline passed, or a connection could not be made in time
    (a channel in back-off after that reports UNAVAILABLE with the timeout as its last error)."""
    if code is None or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    text = details.lower()
    return code == grpc.StatusCode.UNAVAILABLE and any(s in text for s in TIMEOUT_SIGNS)
