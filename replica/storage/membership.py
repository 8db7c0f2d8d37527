"""The membership in force on this replica, read from its own log: the latest membership
event's (the membership_changes projection, applied in the transaction that stored the event),
or the cluster config's replicas before any -- as the protocol core wants it
(replica/protocol/membership.py), with the voters before that latest change (elections count
them too until it is known committed)."""

from __future__ import annotations

import sqlalchemy as sa

from eventlog import Event
from projections.events import (
    ClusterForced,
    MemberAdded,
    MemberPromoted,
    MemberRecord,
    MemberRemoved,
    decode,
)
from projections.queries import latest_membership, latest_memberships
from replica.protocol.membership import Membership

MEMBERSHIP_EVENT_TYPES = frozenset(
    {MemberAdded.TYPE, MemberPromoted.TYPE, MemberRemoved.TYPE, ClusterForced.TYPE}
)


def membership_in_log(conn: sa.Connection, initial_voters: tuple[int, ...]) -> Membership:
    """What the latest membership event in the log says (in `conn`'s transaction)."""
    latest = latest_memberships(conn, 2)
    if not latest:
        return Membership.initial(initial_voters)
    newest = latest[0]
    before = latest[1].voters if len(latest) > 1 else frozenset(initial_voters)
    if newest.kind == ClusterForced.KIND:
        # A forced cluster has no voters before it: the override waits for no one.
        return Membership(newest.voters, newest.learners, frozenset(newest.removed), newest.seq)
    return Membership(newest.voters, newest.learners, frozenset(newest.removed), newest.seq, before)


def members_in_log(conn: sa.Connection) -> tuple[MemberRecord, ...] | None:
    """Every member (with its addresses) the latest membership event names; None before any
    (the cluster config's replicas are the members then)."""
    latest = latest_membership(conn)
    return None if latest is None else latest.members


def membership_after(
    event: Event, before: Membership
) -> tuple[Membership, tuple[MemberRecord, ...]]:
    """The membership a membership event sets (written at event.seq, after `before`), and its
    members with their addresses -- as the log will say once it holds the event."""
    typed = decode(event)
    if not isinstance(typed, MemberAdded | MemberPromoted | MemberRemoved | ClusterForced):
        raise TypeError(f"event {event.seq} ({event.type}) is not a membership event")
    voters = frozenset(m.index for m in typed.members if m.voter)
    learners = frozenset(m.index for m in typed.members if not m.voter)
    previous = None if isinstance(typed, ClusterForced) else before.voters
    membership = Membership(voters, learners, frozenset(typed.removed), event.seq, previous)
    return membership, typed.members
