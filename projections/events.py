"""The chat's events, typed: one frozen msgspec Struct per event type, and the one codec
between them and the log's (type, JSON payload) rows. Everything that reads an event --
applying it, taking it back, the notifier, the writer's directory -- decodes it here and
matches on the class; nothing else looks into a payload. Beside the chat's own events, the
membership events (member_added, member_promoted, member_removed) say who is in the cluster;
they change no chat projection.

The stored format is the one the log has always held: a payload's keys and values are
unchanged, optional fields are left out when unset (as they always were), and fields that older
rows lack have defaults. A row that is not one of these events, or lacks what its type needs,
raises MalformedEvent naming its seq: a replica stops on it with that one line instead of a
KeyError somewhere in the projections. (msgspec validates a payload in C: ~0.7 us an event,
against ~3.6 us for the same checks written in Python -- replay decodes every event.)"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeAlias

import msgspec

from eventlog import Event


class MalformedEvent(ValueError):
    """A stored event this code cannot read (an unknown type, a missing or wrong field)."""


class _Event(msgspec.Struct, frozen=True, omit_defaults=True):
    TYPE: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        """The JSON object this event is stored as (unset optional fields left out)."""
        encoded: dict[str, Any] = msgspec.to_builtins(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in encoded.items()}


class AccountRegistered(_Event, frozen=True, omit_defaults=True):
    TYPE: ClassVar[str] = "account_registered"
    username: str
    password_hash: str


class SessionOpened(_Event, frozen=True, omit_defaults=True):
    """A login; `closes`: the account's oldest sessions it ends (at the cap of open ones)."""

    TYPE: ClassVar[str] = "session_opened"
    session_id: str
    account_id: int
    username: str | None = None  # (older rows lack it)
    closes: tuple[str, ...] = ()


class SessionClosed(_Event, frozen=True, omit_defaults=True):
    TYPE: ClassVar[str] = "session_closed"
    session_id: str
    account_id: int


class MessageSent(_Event, frozen=True, omit_defaults=True):
    TYPE: ClassVar[str] = "message_sent"
    sender_id: int
    sender: str
    recipient_id: int
    recipient: str
    body: str
    session_id: str | None = None  # the sending session (a retry must come from it)


class MessagesAcked(_Event, frozen=True, omit_defaults=True):
    """`message_ids`: those this ack delivered (undelivered until then); `requested_ids`: all
    the request named (older rows lack it, and `session_id`)."""

    TYPE: ClassVar[str] = "messages_acked"
    account_id: int
    message_ids: tuple[int, ...]
    requested_ids: tuple[int, ...] | None = None
    session_id: str | None = None


class AccountDeleted(_Event, frozen=True, omit_defaults=True):
    TYPE: ClassVar[str] = "account_deleted"
    account_id: int
    username: str | None = None
    session_id: str | None = None


class EpochStarted(_Event, frozen=True, omit_defaults=True):
    """Written by a new primary to start its epoch; changes no projection."""

    TYPE: ClassVar[str] = "epoch_started"
    replica_index: int | None = None


class MemberRecord(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One member of the cluster in a membership event: its index, where clients reach it
    (`address`), where replicas do (`peer_address`; left out when unset, `address` then serves
    both), and whether it votes (a voter) or only follows (a learner)."""

    index: int
    address: str
    peer_address: str | None = None
    voter: bool


class _MembershipEvent(_Event, frozen=True, omit_defaults=True, kw_only=True):
    """A membership change. Each carries the whole membership after it -- `members`, every
    voter and learner in index order, and `removed`, every index removed so far (never used
    again; left out while empty) -- so that the latest one in a log alone says who is in the
    cluster. Changes no chat projection; its row in `membership_changes` keeps it queryable.

    Checked when built and when read: indexes appear once, in order, none of them removed,
    and the member the event names is where the change puts it."""

    KIND: ClassVar[str]  # the `kind` of its membership_changes row
    members: tuple[MemberRecord, ...]
    removed: tuple[int, ...] = ()
    index: int

    def __post_init__(self) -> None:
        # (msgspec reports a ValueError raised here as a ValidationError: MalformedEvent)
        indexes = [m.index for m in self.members]
        if indexes != sorted(set(indexes)):
            raise ValueError(f"member indexes {indexes} are not unique and in order")
        if list(self.removed) != sorted(set(self.removed)):
            raise ValueError(f"removed indexes {list(self.removed)} are not unique and in order")
        if set(indexes) & set(self.removed):
            raise ValueError(f"indexes {sorted(set(indexes) & set(self.removed))} are removed")
        if not any(m.voter for m in self.members):
            raise ValueError("a membership needs a voter")
        problem = self._subject_problem(self.member(self.index))
        if problem is not None:
            raise ValueError(f"replica {self.index} {problem}")

    def member(self, index: int) -> MemberRecord | None:
        return next((m for m in self.members if m.index == index), None)

    def _subject_problem(self, member: MemberRecord | None) -> str | None:
        raise NotImplementedError

    def membership(self) -> dict[str, Any]:
        """`members` and `removed` as JSON values (both always present)."""
        return {
            "members": [msgspec.to_builtins(m) for m in self.members],
            "removed": list(self.removed),
        }


class MemberAdded(_MembershipEvent, frozen=True, omit_defaults=True, kw_only=True):
    """Replica `index` joins as a learner, reached at `address` (and `peer_address`), e.g.
    {"index": 3, "address": "h3:50051", "peer_address": "h3:50061",
     "members": [{"index": 0, "address": "h0:50051", "voter": true}, ...,
                 {"index": 3, "address": "h3:50051", "peer_address": "h3:50061",
                  "voter": false}],
     "removed": [1]}."""

    TYPE: ClassVar[str] = "member_added"
    KIND: ClassVar[str] = "added"
    address: str
    peer_address: str | None = None

    def _subject_problem(self, member: MemberRecord | None) -> str | None:
        if member is None:
            return "is added but not among the members"
        if member.voter:
            return "is added as a voter (a replica joins as a learner)"
        if (member.address, member.peer_address) != (self.address, self.peer_address):
            return "is added at other addresses than its member entry's"
        return None


class MemberPromoted(_MembershipEvent, frozen=True, omit_defaults=True, kw_only=True):
    """Learner `index` becomes a voter: {"index": 3, "members": [...], "removed": [...]}."""

    TYPE: ClassVar[str] = "member_promoted"
    KIND: ClassVar[str] = "promoted"

    def _subject_problem(self, member: MemberRecord | None) -> str | None:
        if member is None or not member.voter:
            return "is promoted but not a voter among the members"
        return None


class MemberRemoved(_MembershipEvent, frozen=True, omit_defaults=True, kw_only=True):
    """Member `index` leaves the cluster, its index never to be used again:
    {"index": 3, "members": [...], "removed": [..., 3, ...]}."""

    TYPE: ClassVar[str] = "member_removed"
    KIND: ClassVar[str] = "removed"

    def _subject_problem(self, member: MemberRecord | None) -> str | None:
        if member is not None:
            return "is removed but still among the members"
        if self.index not in self.removed:
            return "is removed but not among the removed indexes"
        return None


class ClusterForced(_MembershipEvent, frozen=True, omit_defaults=True, kw_only=True):
    """The disaster override (`python -m replica --force-new-cluster`): replica `index` made
    itself the one voter of a new cluster from its own log, every other member removed for
    good -- what only they held is lost (docs/replication.md). Never written automatically:
    {"index": 1, "members": [{"index": 1, "address": "h1:50051", "voter": true}],
     "removed": [0, 2]}."""

    TYPE: ClassVar[str] = "cluster_forced"
    KIND: ClassVar[str] = "forced"

    def _subject_problem(self, member: MemberRecord | None) -> str | None:
        if member is None or not member.voter or len(self.members) != 1:
            return "forced a new cluster but is not its one member, a voter"
        return None


MembershipEvent: TypeAlias = MemberAdded | MemberPromoted | MemberRemoved | ClusterForced

ChatEvent: TypeAlias = (
    AccountRegistered
    | SessionOpened
    | SessionClosed
    | MessageSent
    | MessagesAcked
    | AccountDeleted
    | EpochStarted
    | MemberAdded
    | MemberPromoted
    | MemberRemoved
    | ClusterForced
)

EVENT_CLASSES: Final[tuple[type[ChatEvent], ...]] = (
    AccountRegistered,
    SessionOpened,
    SessionClosed,
    MessageSent,
    MessagesAcked,
    AccountDeleted,
    EpochStarted,
    MemberAdded,
    MemberPromoted,
    MemberRemoved,
    ClusterForced,
)
_BY_TYPE: Final[dict[str, type[ChatEvent]]] = {cls.TYPE: cls for cls in EVENT_CLASSES}


def decode(event: Event) -> ChatEvent:
    """The typed event a log row holds; MalformedEvent (naming its seq) if it holds none."""
    cls = _BY_TYPE.get(event.type)
    if cls is None:
        raise MalformedEvent(f"the event at seq {event.seq} has an unknown type {event.type!r}")
    if not isinstance(event.payload, dict):
        raise MalformedEvent(f"the {event.type} event at seq {event.seq} has no payload object")
    try:
        return msgspec.convert(event.payload, cls)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"the {event.type} event at seq {event.seq}: {exc}") from None


def encode(event: ChatEvent) -> tuple[str, dict[str, Any]]:
    """The (type, payload) a typed event is stored as."""
    return event.TYPE, event.payload()
