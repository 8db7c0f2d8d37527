"""`python -m replica --index N --address H:P --join H:P[,H:P...]`: a replica that joins a
running cluster needs no config file. It asks a member (any replica answers) for the
membership -- each member's addresses -- and the cluster's settings (min_insync and the
timeouts, which every replica must share), and starts with an empty membership of its own: it
learns who votes from the log it catches up on (the event that added it carries the whole
membership). An operator adds it with `python -m client admin member add`; until then the
primary refuses its stream and it waits.

What the cluster said is saved in the data directory (SAVED_FILE): restarted with the same
command while no member answers -- after a total crash, every member may be one that joined
this way -- it starts from that within a few seconds, and its own log says the rest (the
membership and every member's addresses, read at start-up)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from protos import chat_pb2, chat_pb2_grpc
from protos.wire import CLUSTER_SECRET_KEY
from replica.config import ClusterConfig, ConfigError, ReplicaAddress, parse_host_port

log = logging.getLogger(__name__)

ASK_TIMEOUT = 2.0  # per member asked
KEEP_ASKING = 60.0  # a cluster that does not answer at all: give up after this long
ASK_AGAIN = 3.0  # ...or, with what it saved when it joined, start from that after this long
SAVED_FILE = "joined-cluster.json"


class NoAnswer(ConfigError):
    """No member of the cluster answered."""


def joined_config(
    base: ClusterConfig,
    me: ReplicaAddress,
    join: Sequence[str],
    secret: bytes,
    *,
    data_dir: Path | None = None,
    keep_asking: float = KEEP_ASKING,
    interrupted: Callable[[], bool] = lambda: False,
) -> ClusterConfig:
    """`base` (defaults, CHAT_* variables, TLS files) with the cluster's members and settings
    as a member at one of `join` tells them (or, if none answers, as it told this replica when
    it joined: saved in `data_dir`), and `me` among the replicas. ConfigError if no member
    answers within `keep_asking` and nothing was saved, or if this index was removed."""
    for address in join:
        parse_host_port(address, "--join")
    saved_path = None if data_dir is None else data_dir / SAVED_FILE
    saved = _load(saved_path)
    try:
        asked = _ask(base, join, secret, ASK_AGAIN if saved else keep_asking, interrupted)
    except NoAnswer as exc:
        if saved is None:
            raise
        log.warning(
            "%s; replica %d starts from what the cluster told it when it joined (%s): its own "
            "log says who the members are now",
            exc,
            me.index,
            saved_path,
        )
        reply = saved
    else:
        reply = _as_dict(asked)
        if saved_path is not None:
            _save(saved_path, reply)
    if me.index in reply["removed"]:
        raise ConfigError(
            f"replica {me.index} was removed from the cluster; indexes are never reused "
            "(join under a new index)"
        )
    replicas = {
        m["index"]: ReplicaAddress(m["index"], m["address"], peer_address=m["peer_address"])
        for m in reply["members"]
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
    s = reply["settings"]
    return replace(
        base,
        replicas=tuple(replicas[i] for i in sorted(replicas)),
        min_insync=s["min_insync"] or base.min_insync,
        heartbeat_interval_ms=s["heartbeat_interval_ms"] or base.heartbeat_interval_ms,
        peer_timeout_ms=s["peer_timeout_ms"] or base.peer_timeout_ms,
        insync_timeout_ms=s["insync_timeout_ms"] or base.insync_timeout_ms,
        storage_timeout_ms=s["storage_timeout_ms"],
    )


_SETTINGS = (
    "min_insync",
    "heartbeat_interval_ms",
    "peer_timeout_ms",
    "insync_timeout_ms",
    "storage_timeout_ms",
)


def _as_dict(reply: chat_pb2.ListMembersReply) -> dict[str, Any]:
    return {
        "members": [
            {"index": m.index, "address": m.address, "peer_address": m.peer_address or None}
            for m in reply.members
        ],
        "removed": list(reply.removed),
        "settings": {name: getattr(reply.settings, name) for name in _SETTINGS},
    }


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); delete it to join afresh") from None
    if not isinstance(saved, dict) or not {"members", "removed", "settings"} <= set(saved):
        raise ConfigError(f"{path} is not what this replica saved when it joined; delete it")
    return saved


def _save(path: Path, reply: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(reply, indent=1) + "\n")
    temporary.replace(path)


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
            raise NoAnswer(
                "no member of the cluster answered at "
                + "; ".join(f"{a} ({p})" for a, p in problems.items())
            )
        if not said:
            said = True
            log.warning("waiting for a member of the cluster to answer at %s", ", ".join(join))
        time.sleep(0.5)
