"""Bounded guessing: failed logins per account and per client address, registrations per
address, refused with RESOURCE_EXHAUSTED saying when to retry -- through the real servicer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from protos import chat_pb2, chat_pb2_grpc
from replica.chat.ratelimit import TokenBuckets, client_address
from replica.chat.servicer import RateLimits
from tests.inprocess import InProcessReplica, serve_grpc


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        e: Any = error
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_failed_logins_for_one_account_are_limited_then_refused_with_a_retry_time(
    engine: sa.Engine,
) -> None:
    replica = InProcessReplica.start(engine)
    for name in ("alice", "bob"):
        replica.service.register(f"r-{name}", name, "right-password")
    limits = RateLimits(login_burst=3, address_login_burst=100)
    with serve_grpc(replica, limits=limits) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)

        def login(name: str, password: str, n: int) -> tuple[grpc.StatusCode, str]:
            request = chat_pb2.LoginRequest(
                request_id=f"l-{name}-{n}", username=name, password=password
            )
            return code_of(lambda: stub.Login(request, timeout=10))

        assert [login("alice", "wrong", n)[0] for n in range(3)] == [
            grpc.StatusCode.UNAUTHENTICATED
        ] * 3
        code, details = login("Alice", "right-password", 3)  # the name's case changes nothing
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("too many failed logins for 'alice'")
        assert "retry in 10 s" in details  # one try regained per 10 s
        # Another account from the same address is not affected.
        assert login("bob", "right-password", 4)[0] == grpc.StatusCode.OK


def test_failed_logins_from_one_address_are_limited_across_accounts(engine: sa.Engine) -> None:
    replica = InProcessReplica.start(engine)
    limits = RateLimits(login_burst=100, address_login_burst=4)
    with serve_grpc(replica, limits=limits) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        codes = [
            code_of(
                lambda n=n: stub.Login(
                    chat_pb2.LoginRequest(request_id=f"l-{n}", username=f"u{n}", password="x"),
                    timeout=10,
                )
            )
            for n in range(5)
        ]
    assert [c for c, _ in codes] == [grpc.StatusCode.UNAUTHENTICATED] * 4 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ]
    assert "from 127.0.0.1; retry in 1 s" in codes[4][1]


def test_registrations_from_one_address_are_limited(engine: sa.Engine) -> None:
    replica = InProcessReplica.start(engine)
    with serve_grpc(replica, limits=RateLimits(register_burst=2)) as channel:
        stub: Any = chat_pb2_grpc.ChatStub(channel)
        codes = [
            code_of(
                lambda n=n: stub.Register(
                    chat_pb2.RegisterRequest(request_id=f"r-{n}", username=f"u{n}", password="pw"),
                    timeout=10,
                )
            )
            for n in range(3)
        ]
    assert [c for c, _ in codes] == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert codes[2][1] == "too many registrations from 127.0.0.1; retry in 1 s"


def test_a_bucket_refills_one_try_per_interval_and_forgets_full_ones() -> None:
    now = [0.0]
    buckets = TokenBuckets(2, 10.0, clock=lambda: now[0])
    assert buckets.wait("k") == 0
    buckets.take("k")
    buckets.take("k")
    assert buckets.wait("k") == pytest.approx(10.0)
    now[0] = 4.0
    assert buckets.wait("k") == pytest.approx(6.0)
    now[0] = 10.0
    assert buckets.wait("k") == 0  # one try back
    now[0] = 30.0
    assert buckets.wait("k") == 0 and len(buckets) == 0  # full again: forgotten


def test_buckets_are_bounded_in_number() -> None:
    buckets = TokenBuckets(5, 1.0, max_keys=100, clock=lambda: 0.0)
    for n in range(1000):
        buckets.take(f"address-{n}")
    assert len(buckets) <= 100


@pytest.mark.parametrize(
    "peer, address",
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_client_address_is_the_peer_host(peer: str, address: str) -> None:
    assert client_address(peer) == address
