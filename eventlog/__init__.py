"""The append-only event log: schema, append, read from a position, truncate a tail.

It knows nothing of chat: an event is a typed JSON payload at a contiguous sequence number,
stamped with the epoch of the primary that appended it.
"""

from eventlog.log import (
    EventLogError,
    NonContiguousAppend,
    append_events,
    current_epoch,
    epoch_end_seq,
    find_by_request_id,
    find_by_request_ids,
    last_position,
    raise_current_epoch,
    read_events,
    truncate_after,
)
from eventlog.records import Event, Position, decode_payload, encode_payload, stored_payload
from eventlog.schema import events, log_state, metadata

__all__ = [
    "Event",
    "EventLogError",
    "NonContiguousAppend",
    "Position",
    "append_events",
    "current_epoch",
    "decode_payload",
    "encode_payload",
    "epoch_end_seq",
    "events",
    "find_by_request_id",
    "find_by_request_ids",
    "last_position",
    "log_state",
    "metadata",
    "raise_current_epoch",
    "read_events",
    "stored_payload",
    "truncate_after",
]
