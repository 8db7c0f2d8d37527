"""Read models derived only by applying events in order.

`statements_for(event)` is a pure function from an event to the SQL statements it causes;
`apply_events` runs them and records the last applied seq in the caller's transaction, which
is what makes apply exactly-once. Knows nothing of gRPC or replication.
"""

from projections import undo
from projections.apply import (
    Applier,
    EventTypes,
    PositionMoved,
    apply_events,
    catch_up,
    last_applied_seq,
    rebuild,
    reset_projections,
    sends_pipeline,
    statements_for,
)
from projections.rollback import RolledBack, roll_back
from projections.schema import accounts, messages, metadata, projection_position, sessions

__all__ = [
    "Applier",
    "EventTypes",
    "PositionMoved",
    "RolledBack",
    "accounts",
    "apply_events",
    "catch_up",
    "last_applied_seq",
    "messages",
    "metadata",
    "projection_position",
    "rebuild",
    "reset_projections",
    "roll_back",
    "sends_pipeline",
    "sessions",
    "statements_for",
    "undo",
]
