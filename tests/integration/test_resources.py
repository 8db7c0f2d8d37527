"""Resource bounds of a real replica process.

A subscriber that never reads its stream must not make the server buffer what it is sent:
gRPC's server-streaming generator is pulled only as HTTP/2 flow control lets messages out, and
the servicer reads the inbox from the database in batches of at most 100 as it is pulled, so
what a stalled subscriber has not taken stays in the database. The check is the process's
resident memory (/proc/PID/status VmRSS) while many more megabytes are sent to the stalled
subscriber than the bound allows. (Measured on 2 cores: the bounded servicer grows by about
1 MiB; one that reads the whole inbox per wake-up grows by 18 MiB and fails.)"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import chat_pb2, chat_pb2_grpc
from tests.integration.cluster_checks import wait_for_primary
from testsupport.harness import ClusterProcesses

pytestmark = pytest.mark.slow

PASSWORD = "correct horse"
BODY = "x" * 4096  # the largest body
CHUNK = 1000  # messages sent between two looks at the server's memory
# Measured: the replica's RSS climbs while its database grows to ~16 MiB (SQLite page caches,
# pools, allocator arenas) and is flat after that, subscriber or not.
WARM_UP_CHUNKS = 4
STALLED_CHUNKS = 5  # 20 MiB of bodies sent while the subscriber does not read
SENDERS = 4
# What the server may keep for a stalled subscriber: a 100-message batch (400 KiB), what gRPC
# holds in its send buffers until flow control stops it, and allocator noise.
MAX_GROWTH_KIB = 8 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def send_many(stub: Any, token: str, recipient: str, count: int) -> None:
    """`count` sends from SENDERS threads (so that group commit keeps this quick)."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for _ in range(n):
                request = chat_pb2.SendRequest(
                    request_id=uuid.uuid4().hex, session_token=token, recipient=recipient, body=BODY
                )
                stub.Send(request, timeout=30)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(count // SENDERS,)) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def test_a_subscriber_that_never_reads_does_not_grow_server_memory(
    cluster_processes: Callable[..., ClusterProcesses],
) -> None:
    cluster = cluster_processes(1)
    cluster.start(0)
    wait_for_primary(cluster)
    pid = cluster.process(0).pid
    stub: Any = chat_pb2_grpc.ChatStub(cluster.channel(0))
    tokens = {}
    for name in ("alice", "bob"):
        stub.Register(
            chat_pb2.RegisterRequest(request_id=uuid.uuid4().hex, username=name, password=PASSWORD)
        )
        tokens[name] = stub.Login(
            chat_pb2.LoginRequest(request_id=uuid.uuid4().hex, username=name, password=PASSWORD)
        ).session_token

    # The same load first, with nobody subscribed, until memory reaches its working size;
    # these messages are also the stalled subscriber's backlog (16 MiB).
    for _ in range(WARM_UP_CHUNKS):
        send_many(stub, tokens["bob"], "alice", CHUNK)
    baseline = rss_kib(pid)

    # A second channel, so that the stalled stream has its own connection's flow control.
    channel = grpc.insecure_channel(cluster.address(0))
    try:
        stalled = chat_pb2_grpc.ChatStub(channel).Subscribe(
            chat_pb2.SubscribeRequest(session_token=tokens["alice"]), timeout=120
        )
        samples = []
        for _ in range(STALLED_CHUNKS):
            send_many(stub, tokens["bob"], "alice", CHUNK)
            samples.append(rss_kib(pid) - baseline)
        sent_kib = (WARM_UP_CHUNKS + STALLED_CHUNKS) * CHUNK * len(BODY) // 1024
        assert max(samples) < MAX_GROWTH_KIB, (
            f"the server grew by {samples} KiB (from {baseline} KiB) while a subscriber that "
            f"does not read had {sent_kib} KiB of messages waiting"
        )
        # Nothing was lost on the way: read now, the stream has every message, in order.
        total = (WARM_UP_CHUNKS + STALLED_CHUNKS) * CHUNK
        ids = []
        for item in stalled:
            if item.WhichOneof("item") == "message":
                ids.append(item.message.message_id)
                if len(ids) == total:
                    break
        assert len(ids) == total
        assert ids == sorted(set(ids))
        stalled.cancel()
    finally:
        channel.close()
