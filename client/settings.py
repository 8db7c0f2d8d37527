"""How a ChatClient connects and retries (ClientSettings), and what a program plugs into it
(ClientHooks): two plain objects instead of a dozen keyword arguments. Every field has a
working default; `ChatClient(servers)` needs neither."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from client.channels import DEFAULT_CHANNEL_OPTIONS
from client.failover import Backoff, Liveness


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ClientSettings:
    """`timeout`: how long a call keeps retrying across replicas before ChatUnavailableError;
    `attempt_timeout`: one try at one replica; `backoff`: the pause between rounds of tries;
    `liveness`: how a replica that stopped answering is noticed mid-call; `root_certificates`:
    PEM bytes of the cluster's CA, to talk TLS; `channel_options`: gRPC channel arguments;
    `session_stream`: sends, acks and subscriptions go over one Session stream per login (the
    default; a request goes as its unary call while the stream is not open, e.g. right after
    a failover: client.session), or (False) a unary call per send and ack and a Subscribe
    stream per subscription;
    `max_in_flight`: the most requests awaiting results on that stream (callers beyond wait; a
    replica's own lower bound wins)."""

    timeout: float = 10.0
    attempt_timeout: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)
    liveness: Liveness = field(default_factory=Liveness)
    root_certificates: bytes | None = None
    channel_options: tuple[tuple[str, int | str], ...] = DEFAULT_CHANNEL_OPTIONS
    session_stream: bool = True
    max_in_flight: int = 64

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if self.timeout <= 0 or self.attempt_timeout <= 0:
            raise ValueError(
                f"timeouts must be positive (timeout {self.timeout}, "
                f"attempt_timeout {self.attempt_timeout})"
            )


@dataclass(frozen=True)
class ClientHooks:
    """`on_replica_change(address)`: the client now talks to another replica;
    `on_unreachable(text)`: no replica answers yet (the client keeps trying); `request_ids`:
    makes the id a mutating call keeps through its retries; `clock` and `sleep`: time, for a
    test that moves it itself."""

    on_replica_change: Callable[[str], None] | None = None
    on_unreachable: Callable[[str], None] | None = None
    request_ids: Callable[[], str] = new_request_id
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] | None = None
