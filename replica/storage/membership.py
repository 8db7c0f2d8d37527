"""The membership in force on this replica, read from its own log: the latest membership
event's (the membership_changes projection, applied in the transaction that stored the event),
or the cluster config's replicas before any -- as the protocol core wants it
(replica/protocol/membership.py), with the voters before that latest change (elections count
them too until it is known committed)."""

from __future__ import annotations

import sqlalchemy as sa

from projections.events import MemberAdded, MemberPromoted, MemberRemoved
from projections.queries import latest_memberships
from replica.protocol.membership import Membership

MEMBERSHIP_EVENT_TYPES = frozenset({MemberAdded.TYPE, MemberPromoted.TYPE, MemberRemoved.TYPE})


def membership_in_log(conn: sa.Connection, initial_voters: tuple[int, ...]) -> Membership:
    """What the latest membership event in the log says (in `conn`'s transaction)."""
    latest = latest_memberships(conn, 2)
    if not latest:
        return Membership.initial(initial_voters)
    newest = latest[0]
    before = latest[1].voters if len(latest) > 1 else frozenset(initial_voters)
    return Membership(newest.voters, newest.learners, frozenset(newest.removed), newest.seq, before)
