"""Plain records passed between the log and its callers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Position:
    """Where a log ends: the epoch of its last event, then its seq. Ordered as logs are compared
    in an election (the higher epoch wins, then the higher seq)."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Event:
    seq: int
    epoch: int
    type: str
    payload: dict[str, Any]
    request_id: str | None
    created_at: dt.datetime
    # The payload's canonical JSON when it is already at hand (read from the log, or received
    # from the primary, which sends what its log holds): storing or sending the event again
    # then skips encoding it. Not part of the event's identity.
    payload_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)


def stored_payload(event: Event) -> str:
    """The text to store or send for the event's payload."""
    return event.payload_json if event.payload_json is not None else encode_payload(event.payload)


def encode_payload(payload: dict[str, Any]) -> str:
    """Canonical JSON, so that the same payload is stored as the same bytes on every replica."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def decode_payload(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("event payload is not a JSON object")
    return value
