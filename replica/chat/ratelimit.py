"""Bounded guessing: token buckets per key (an account, a client address). A bucket holds up to
`burst` tokens and regains one every `interval` seconds; what it limits takes one. Failed
logins are limited per account and per address, so a password cannot be guessed at the speed
of the hash; registrations per address, so names cannot be squatted in bulk.

State lives in memory on the replica that answers (the primary): a failover starts afresh,
which at worst gives a guesser one more burst. Memory is bounded: at most `max_keys` buckets,
the fullest (least recently emptied) forgotten first."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    def __init__(
        self,
        burst: int,
        interval: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self.burst = burst
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) / self.interval)
        bucket.at = now
        if bucket.tokens >= self.burst:
            del self._buckets[key]  # full again: nothing to remember
            return None
        return bucket

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token (0: it has one now)."""
        with self._lock:
            bucket = self._level(key, self._clock())
            if bucket is None or bucket.tokens >= 1:
                return 0.0
            return (1 - bucket.tokens) * self.interval

    def take(self, key: str) -> None:
        """Use one of `key`'s tokens (it may go below zero: repeated tries wait longer)."""
        with self._lock:
            now = self._clock()
            bucket = self._level(key, now)
            if bucket is None:
                if len(self._buckets) >= self._max_keys:
                    self._forget_fullest()
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = max(bucket.tokens - 1, -self.burst)

    def forget(self, key: str) -> None:
        with self._lock:
            self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_fullest(self) -> None:
        fullest = sorted(self._buckets, key=lambda k: -self._buckets[k].tokens)
        for key in fullest[: max(1, self._max_keys // 10)]:
            del self._buckets[key]


def retry_text(seconds: float) -> str:
    return f"retry in {max(1, math.ceil(seconds))} s"


def client_address(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:127.0.0.1:5000" -> "127.0.0.1",
    "ipv6:[::1]:5000" -> "::1"); anything else as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer
