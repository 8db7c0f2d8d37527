"""The membership a replica's own log says (replica/storage/membership.py): the config's voters
before any membership event, the latest event's after, with the voters before it (elections
count both until it is known committed) -- except after a forced cluster, which waits for no
one; and the same when the writer computes it from an event it has just written."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

import eventlog
from eventlog import Event
from projections import ClusterForced, MemberAdded, MemberRecord, apply_events, encode
from replica.protocol.membership import Membership
from replica.storage.membership import members_in_log, membership_after, membership_in_log

T0 = dt.datetime(2031, 2, 3, 4, 5, 6)
V = [MemberRecord(index=i, address=f"h{i}:1", voter=True) for i in range(3)]
L3 = MemberRecord(index=3, address="h3:1", voter=False)
ADDED = MemberAdded(index=3, address="h3:1", members=(*V, L3))
FORCED = ClusterForced(index=1, members=(V[1],), removed=(0, 2, 3))


def _append(engine: sa.Engine, seq: int, event: MemberAdded | ClusterForced) -> Event:
    row = Event(seq, 1, *encode(event), None, T0)
    with engine.begin() as conn:
        eventlog.append_events(conn, [row])
        apply_events(conn, [row])
    return row


def test_the_log_says_the_latest_membership_and_the_voters_before_it(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert membership_in_log(conn, (0, 1, 2)) == Membership.initial((0, 1, 2))
        assert members_in_log(conn) is None
    added = _append(engine, 1, ADDED)
    with engine.connect() as conn:
        in_log = membership_in_log(conn, (0, 1, 2))
        assert members_in_log(conn) == (*V, L3)
    assert in_log == Membership(
        frozenset({0, 1, 2}), frozenset({3}), frozenset(), 1, frozenset({0, 1, 2})
    )
    assert membership_after(added, Membership.initial((0, 1, 2))) == (in_log, (*V, L3))
    forced = _append(engine, 2, FORCED)
    with engine.connect() as conn:
        in_log = membership_in_log(conn, (0, 1, 2))
    # A forced cluster counts no voters before it: the override waits for no one.
    assert in_log == Membership(frozenset({1}), frozenset(), frozenset({0, 2, 3}), 2, None)
    assert membership_after(forced, in_log)[0] == in_log
