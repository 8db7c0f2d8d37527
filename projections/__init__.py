"""Read models derived only by applying events in order.

The events are typed (events.py: one dataclass per event type, and the one codec to and from the
log's JSON payloads). `statements_for(event)` is a pure function from an event to the SQL statements
it causes; `apply_events` runs them and records the last applied seq in the caller's transaction,
which is what makes apply exactly-once. Knows nothing of gRPC or replication.
"""

from projections import undo
from projections.apply import (
    Applier,
    EventTypes,
    PositionMoved,
    apply_events,
    apply_pipeline,
    catch_up,
    last_applied_seq,
    rebuild,
    reset_projections,
    statements_for,
)
from projections.events import (
    AccountDeleted,
    AccountRegistered,
    ChatEvent,
    ClusterForced,
    EpochStarted,
    MalformedEvent,
    MemberAdded,
    MemberPromoted,
    MemberRecord,
    MemberRemoved,
    MembershipEvent,
    MessagesAcked,
    MessageSent,
    SessionClosed,
    SessionOpened,
    decode,
    encode,
)
from projections.rollback import RolledBack, roll_back
from projections.schema import (
    accounts,
    membership_changes,
    messages,
    metadata,
    projection_position,
    sessions,
)

__all__ = [
    "AccountDeleted",
    "AccountRegistered",
    "Applier",
    "ChatEvent",
    "ClusterForced",
    "EpochStarted",
    "EventTypes",
    "MalformedEvent",
    "MemberAdded",
    "MemberPromoted",
    "MemberRecord",
    "MemberRemoved",
    "MembershipEvent",
    "MessageSent",
    "MessagesAcked",
    "PositionMoved",
    "RolledBack",
    "SessionClosed",
    "SessionOpened",
    "accounts",
    "apply_events",
    "apply_pipeline",
    "catch_up",
    "decode",
    "encode",
    "last_applied_seq",
    "membership_changes",
    "messages",
    "metadata",
    "projection_position",
    "rebuild",
    "reset_projections",
    "roll_back",
    "sessions",
    "statements_for",
    "undo",
]
