"""Baselines measured in the same run as the figures they are compared with: how fast the
database commits rows of the `events` table (one per commit, and in batches), and how fast a
no-op gRPC unary call goes between two processes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

import eventlog
from bench.stats import Distribution
from replica.storage.writer import utc_now

WARMUP_CALLS = 20


@dataclass(frozen=True)
class Rate:
    per_second: float
    operations: int
    seconds: float
    durations: Distribution  # of each commit / call


def _event_row(seq: int) -> dict[str, Any]:
    """An `events` row shaped like a real message_sent event."""
    payload = {
        "sender_id": 1,
        "sender": "baseline_sender",
        "recipient_id": 2,
        "recipient": "baseline_recipient",
        "body": f"baseline message number {seq:09d}, about as long as a chat line",
    }
    return {
        "seq": seq,
        "epoch": 1,
        "type": "message_sent",
        "payload": eventlog.encode_payload(payload),
        "request_id": uuid.uuid4().hex,
        "created_at": utc_now(),
    }


def commit_rate(engine: sa.Engine, *, rows_per_commit: int, seconds: float, max_rows: int) -> Rate:
    """Rows/s inserted into `events` on one connection, committing every `rows_per_commit`
    rows, for `seconds` (or `max_rows`)."""
    insert = eventlog.events.insert()
    seq = 0
    durations: list[float] = []
    with engine.connect() as conn:
        start = time.monotonic()
        deadline = start + seconds
        while seq + rows_per_commit <= max_rows:
            began = time.monotonic()
            if began >= deadline:
                break
            rows = [_event_row(seq + i + 1) for i in range(rows_per_commit)]
            conn.execute(insert, rows[0] if rows_per_commit == 1 else rows)
            conn.commit()
            seq += rows_per_commit
            durations.append(time.monotonic() - began)
        elapsed = time.monotonic() - start
    return Rate(seq / elapsed, seq, elapsed, Distribution.of_seconds(durations))


def grpc_noop_rate(address: str, *, seconds: float, max_calls: int) -> Rate:
    """Calls/s of the grpc.health.v1 Check of a running replica, one after another."""
    channel = grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        for _ in range(WARMUP_CALLS):
            stub.Check(request, timeout=5)
        durations: list[float] = []
        start = time.monotonic()
        deadline = start + seconds
        while len(durations) < max_calls:
            began = time.monotonic()
            if began >= deadline:
                break
            stub.Check(request, timeout=5)
            durations.append(time.monotonic() - began)
        elapsed = time.monotonic() - start
    finally:
        channel.close()
    calls = len(durations)
    return Rate(calls / elapsed, calls, elapsed, Distribution.of_seconds(durations))
