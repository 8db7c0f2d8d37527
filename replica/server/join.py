"""`python -m replica --index N --address H:P --join H:P[,H:P...]`: a replica that joins a
running cluster needs no config file. It asks a member (any replica answers) for the
membership -- each member's addresses -- and the cluster's settings (min_insync and the
timeouts, which every replica must share), and starts with an empty membership of its own: it
learns who votes from the log it catches up on (the event that added it carries the whole
membership). An operator adds it with `python -m client admin member add`; until then the
primary refuses its stream and it waits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import CLUSTER_SECRET_KEY
from replica.config import ClusterConfig, ConfigError, ReplicaAddress, parse_host_port

log = logging.getLogger(__name__)

ASK_TIMEOUT = 2.0  # per member asked
KEEP_ASKING = 60.0  # a cluster that does not answer at all: give up after this long


def joined_config(
    base: ClusterConfig,
    me: ReplicaAddress,
    join: Sequence[str],
    secret: bytes,
    *,
    keep_asking: float = KEEP_ASKING,
    interrupted: Callable[[], bool] = lambda: False,
) -> ClusterConfig:
    """`base` (defaults, CHAT_* variables, TLS files) with the cluster's members and settings
    as a member at one of `join` tells them, and `me` among the replicas. ConfigError if no
    member answers within `keep_asking`, or if this index was removed from the cluster."""
    for address in join:
        parse_host_port(address, "--join")
    reply = _ask(base, join, secret, keep_asking, interrupted)
    if me.index in reply.removed:
        raise ConfigError(
            f"replica {me.index} was removed from the cluster; indexes are never reused "
            "(join under a new index)"
        )
    replicas = {
        m.index: ReplicaAddress(m.index, m.address, peer_address=m.peer_address or None)
        for m in reply.members
    }
    known = replicas.get(me.index)
    if known is not None and (known.address, known.peer_address) != (
        me.address,
        me.peer_address,
    ):
        raise ConfigError(
            f"replica {me.index} is a member at {known.address}"
            + (f" (peers: {known.peer_address})" if known.peer_address else "")
            + f", not at {me.address}; start it at the addresses it was added with"
        )
    if known is None:
        log.warning(
            "replica %d is not a member yet: the primary will refuse it until an operator runs "
            "python -m client admin member add --index %d --address %s%s",
            me.index,
            me.index,
            me.address,
            f" --peer-address {me.peer_address}" if me.peer_address else "",
        )
    replicas[me.index] = me
    s = reply.settings
    return replace(
        base,
        replicas=tuple(replicas[i] for i in sorted(replicas)),
        min_insync=s.min_insync or base.min_insync,
        heartbeat_interval_ms=s.heartbeat_interval_ms or base.heartbeat_interval_ms,
        peer_timeout_ms=s.peer_timeout_ms or base.peer_timeout_ms,
        insync_timeout_ms=s.insync_timeout_ms or base.insync_timeout_ms,
        storage_timeout_ms=s.storage_timeout_ms,
    )


def _ask(
    base: ClusterConfig,
    join: Sequence[str],
    secret: bytes,
    keep_asking: float,
    interrupted: Callable[[], bool],
) -> chat_pb2.ListMembersReply:
    credentials = None
    if base.tls is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(base.tls.ca_file).read_bytes()
        )
    metadata = ((CLUSTER_SECRET_KEY, secret.decode("utf-8", "replace")),)
    give_up = time.monotonic() + keep_asking
    said = False
    problems: dict[str, str] = {}
    while True:
        for address in join:
            channel = (
                grpc.insecure_channel(address)
                if credentials is None
                else grpc.secure_channel(address, credentials)
            )
            try:
                stub = chat_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
                reply: chat_pb2.ListMembersReply = stub.ListMembers(
                    chat_pb2.ListMembersRequest(), timeout=ASK_TIMEOUT, metadata=metadata
                )
                return reply
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise ConfigError(
                        f"the replica at {address} refused this replica's cluster secret "
                        f"({details}); set CHAT_CLUSTER_SECRET or --cluster-secret-file"
                    ) from None
                problems[address] = f"{code.name if code else '?'}: {details}"
            finally:
                channel.close()
        if time.monotonic() >= give_up or interrupted():
            raise ConfigError(
                "no member of the cluster answered at "
                + "; ".join(f"{a} ({p})" for a, p in problems.items())
            )
        if not said:
            said = True
            log.warning("waiting for a member of the cluster to answer at %s", ", ".join(join))
        time.sleep(0.5)
