"""Membership events: their stored JSON and its checks, and the membership_changes projection --
whatever way the log is applied, rolled back or rebuilt, latest_membership is the membership
set by the latest membership event up to the projections' position, or None before any."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

import eventlog
from eventlog import Event
from projections import (
    Applier,
    ClusterForced,
    EventTypes,
    MalformedEvent,
    MemberAdded,
    MemberPromoted,
    MemberRecord,
    MemberRemoved,
    MembershipEvent,
    RolledBack,
    apply_events,
    decode,
    encode,
    last_applied_seq,
    membership_changes,
    rebuild,
    roll_back,
    statements_for,
)
from projections.queries import MembershipRecord, latest_membership
from tests.conftest import DatabaseFactory
from tests.inprocess import reset_database
from tests.projections.test_apply import ev, membership_event, message, tables

T0 = dt.datetime(2031, 2, 3, 4, 5, 6)
H0 = MemberRecord(index=0, address="h0:50051", voter=True)
H1 = MemberRecord(index=1, address="h1:50051", voter=True)
H2 = MemberRecord(index=2, address="h2:50051", voter=True)
H3_LEARNER = MemberRecord(index=3, address="h3:50051", peer_address="h3:50061", voter=False)
H3_VOTER = MemberRecord(index=3, address="h3:50051", peer_address="h3:50061", voter=True)
H4_LEARNER = MemberRecord(index=4, address="h4:50051", voter=False)

# (typed event, its stored JSON exactly: the format the log keeps)
STORED: list[tuple[MembershipEvent, str]] = [
    (
        MemberAdded(
            index=3,
            address="h3:50051",
            peer_address="h3:50061",
            members=(H0, H1, H2, H3_LEARNER),
        ),
        '{"address":"h3:50051","index":3,"members":['
        '{"address":"h0:50051","index":0,"voter":true},'
        '{"address":"h1:50051","index":1,"voter":true},'
        '{"address":"h2:50051","index":2,"voter":true},'
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":false}],'
        '"peer_address":"h3:50061"}',
    ),
    (
        MemberPromoted(index=3, members=(H0, H1, H2, H3_VOTER)),
        '{"index":3,"members":['
        '{"address":"h0:50051","index":0,"voter":true},'
        '{"address":"h1:50051","index":1,"voter":true},'
        '{"address":"h2:50051","index":2,"voter":true},'
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":true}]}',
    ),
    (
        MemberRemoved(index=1, members=(H0, H2, H3_VOTER), removed=(1,)),
        '{"index":1,"members":['
        '{"address":"h0:50051","index":0,"voter":true},'
        '{"address":"h2:50051","index":2,"voter":true},'
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":true}],'
        '"removed":[1]}',
    ),
    (
        MemberAdded(
            index=4, address="h4:50051", members=(H0, H2, H3_VOTER, H4_LEARNER), removed=(1,)
        ),
        '{"address":"h4:50051","index":4,"members":['
        '{"address":"h0:50051","index":0,"voter":true},'
        '{"address":"h2:50051","index":2,"voter":true},'
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":true},'
        '{"address":"h4:50051","index":4,"voter":false}],"removed":[1]}',
    ),
    (
        ClusterForced(index=3, members=(H3_VOTER,), removed=(0, 1, 2, 4)),
        '{"index":3,"members":['
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":true}],'
        '"removed":[0,1,2,4]}',
    ),
]


def test_membership_events_are_listed_among_the_event_types() -> None:
    assert (EventTypes.MEMBER_ADDED, EventTypes.MEMBER_PROMOTED, EventTypes.MEMBER_REMOVED) == (
        "member_added",
        "member_promoted",
        "member_removed",
    )


def test_each_membership_event_round_trips_through_the_log(engine: sa.Engine) -> None:
    rows = [Event(seq, 1, *encode(e), f"r{seq}", T0) for seq, (e, _) in enumerate(STORED, 1)]
    with engine.begin() as conn:
        eventlog.append_events(conn, rows)
    with engine.connect() as conn:
        stored = eventlog.read_events(conn, 0, 100)
    for event, (typed, json_text) in zip(stored, STORED, strict=True):
        assert event.type == typed.TYPE
        assert decode(event) == typed
        assert eventlog.stored_payload(event) == json_text
        assert eventlog.encode_payload(encode(typed)[1]) == json_text


def _payload(e: MembershipEvent, **changes: Any) -> dict[str, Any]:
    payload = encode(e)[1]
    payload.update(changes)
    return payload


ADDED, PROMOTED, REMOVED = (e for e, _ in STORED[:3])
V0 = {"index": 0, "address": "h0:50051", "voter": True}
V1 = {"index": 1, "address": "h1:50051", "voter": True}
L3 = {"index": 3, "address": "h3:50051", "voter": False}


@pytest.mark.parametrize(
    ("type_", "payload", "said"),
    [
        ("member_added", {"index": 3, "address": "h3:50051"}, "missing required field `members`"),
        ("member_added", _payload(ADDED, members=[{**V0, "voter": "yes"}]),
         "Expected `bool`, got `str` - at `$.members[0].voter`"),
        ("member_promoted", _payload(PROMOTED, index="3"),
         "Expected `int`, got `str` - at `$.index`"),
        ("member_removed", _payload(REMOVED, removed=1), "at `$.removed`"),
        ("member_added", _payload(ADDED, members=[V0, {**L3, "voter": True}]),
         "replica 3 is added as a voter"),
        ("member_added", _payload(ADDED, address="h9:50051"),
         "replica 3 is added at other addresses than its member entry's"),
        ("member_added", _payload(ADDED, members=[V0]),
         "replica 3 is added but not among the members"),
        ("member_promoted", _payload(PROMOTED, members=[V0, L3]),
         "replica 3 is promoted but not a voter among the members"),
        ("member_removed", _payload(REMOVED, members=[V0, V1], removed=[]),
         "replica 1 is removed but still among the members"),
        ("member_removed", _payload(REMOVED, removed=[]),
         "replica 1 is removed but not among the removed indexes"),
        ("member_promoted", _payload(PROMOTED, members=[V0, V0]), "are not unique and in order"),
        ("member_promoted", _payload(PROMOTED, members=[V1, V0]), "are not unique and in order"),
        ("member_removed", _payload(REMOVED, removed=[2, 1]), "are not unique and in order"),
        ("member_promoted", _payload(PROMOTED, removed=[1, 9]), "indexes [1] are removed"),
        ("member_removed", _payload(REMOVED, members=[{**V0, "voter": False}]),
         "a membership needs a voter"),
        ("cluster_forced", {"index": 0, "members": [V0, V1]},
         "replica 0 forced a new cluster but is not its one member, a voter"),
        ("cluster_forced", {"index": 1, "members": [V0]},
         "replica 1 forced a new cluster but is not its one member, a voter"),
    ],
)  # fmt: skip
def test_a_malformed_membership_event_is_refused_naming_its_seq(
    type_: str, payload: dict[str, Any], said: str
) -> None:
    with pytest.raises(MalformedEvent) as refused:
        decode(Event(41, 1, type_, payload, None, T0))
    assert f"the {type_} event at seq 41" in str(refused.value)
    assert said in str(refused.value)


def test_an_inconsistent_membership_event_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="replica 3 is added as a voter"):
        MemberAdded(index=3, address="h3:50051", members=(H0, H3_VOTER))


def test_statements_for_a_membership_event_insert_its_row() -> None:
    e = Event(7, 1, *encode(REMOVED), None, T0)
    [statement] = statements_for(e)
    compiled = statement.compile()  # type: ignore[attr-defined]
    assert str(compiled).startswith("INSERT INTO membership_changes")
    assert compiled.params == {
        "seq": 7,
        "kind": "removed",
        "replica_index": 1,
        "membership": '{"members":['
        '{"address":"h0:50051","index":0,"voter":true},'
        '{"address":"h2:50051","index":2,"voter":true},'
        '{"address":"h3:50051","index":3,"peer_address":"h3:50061","voter":true}],'
        '"removed":[1]}',
    }


# -- the projection --------------------------------------------------------------------------


def log_with_changes() -> list[Event]:
    """Chat events with three membership changes among them, at 3, 5 and 7."""
    alice = (2, "alice")
    voters = {0: True, 1: True, 2: True}
    return [
        ev(1, EventTypes.EPOCH_STARTED, replica_index=0),
        ev(2, EventTypes.ACCOUNT_REGISTERED, username="alice", password_hash="h"),
        membership_event(3, "added", 3, {**voters, 3: False}, set()),
        message(4, alice, alice, "note to self"),
        membership_event(5, "promoted", 3, {**voters, 3: True}, set()),
        ev(6, EventTypes.SESSION_OPENED, session_id="s6", account_id=2, username="alice"),
        membership_event(7, "removed", 1, {0: True, 2: True, 3: True}, {1}),
        message(8, alice, alice, "again"),
    ]


def expected_latest(log: list[Event], seq: int) -> MembershipRecord | None:
    """The membership set by the last membership event at or below `seq`."""
    for event in reversed(log[:seq]):
        e = decode(event)
        if isinstance(e, MemberAdded | MemberPromoted | MemberRemoved):
            return MembershipRecord(event.seq, e.members, e.removed, e.KIND)
    return None


def latest(engine: sa.Engine) -> MembershipRecord | None:
    with engine.connect() as conn:
        return latest_membership(conn)


def logged_and_applied(engine: sa.Engine, log: list[Event]) -> None:
    with engine.begin() as conn:
        eventlog.append_events(conn, log)
        apply_events(conn, log)


def test_the_latest_membership_follows_each_event_applied(engine: sa.Engine) -> None:
    """As the writer applies: one event a transaction, only sends held back."""
    log = log_with_changes()
    assert latest(engine) is None
    for e in log:
        with engine.begin() as conn:
            eventlog.append_events(conn, [e])
            applier = Applier(conn)
            applier.add(e)
            applier.finish()
        assert latest(engine) == expected_latest(log, e.seq)
    final = latest(engine)
    assert final is not None
    assert (final.seq, final.removed) == (7, (1,))
    assert (final.voters, final.learners) == ({0, 2, 3}, frozenset())
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                membership_changes.c.seq,
                membership_changes.c.kind,
                membership_changes.c.replica_index,
            ).order_by(membership_changes.c.seq)
        ).all()
    assert [tuple(r) for r in rows] == [(3, "added", 3), (5, "promoted", 3), (7, "removed", 1)]


def test_a_batch_applied_at_once_gives_the_same_latest_membership(engine: sa.Engine) -> None:
    log = log_with_changes()
    with engine.begin() as conn:
        eventlog.append_events(conn, log)
        assert apply_events(conn, log[:4]) == 4
        assert latest_membership(conn) == expected_latest(log, 4)  # read inside the batch
        assert apply_events(conn, log[4:]) == 8
    assert latest(engine) == expected_latest(log, 8)
    learner = expected_latest(log, 4)
    assert learner is not None and (learner.voters, learner.learners) == ({0, 1, 2}, {3})


@pytest.mark.parametrize("cuts", [[6, 4, 2], [2], [6, 0], [7, 3]])
def test_rolling_back_below_a_change_brings_back_the_one_before(
    databases: DatabaseFactory, cuts: list[int]
) -> None:
    log = log_with_changes()
    live, reference = databases.engine(), databases.engine()
    logged_and_applied(live, log)
    for cut in cuts:
        with live.begin() as conn:
            assert roll_back(conn, cut) is RolledBack.UNDONE
            assert last_applied_seq(conn) == cut
        assert latest(live) == expected_latest(log, cut)
        reset_database(reference)
        with reference.begin() as conn:
            eventlog.append_events(conn, log)
            rebuild(conn, until=cut)
        assert tables(live) == tables(reference)
    assert latest(live) == expected_latest(log, cuts[-1])
    if cuts[-1] < 3:
        assert latest(live) is None
    # What is applied again after the cut lands as before.
    with live.begin() as conn:
        assert apply_events(conn, log[cuts[-1] :]) == len(log)
    assert latest(live) == expected_latest(log, len(log))


def test_rebuild_gives_the_same_membership(databases: DatabaseFactory) -> None:
    log = log_with_changes()
    live = databases.engine()
    logged_and_applied(live, log)
    before = tables(live)
    with live.begin() as conn:
        assert rebuild(conn, batch_size=2) == 8
    assert tables(live) == before
    assert latest(live) == expected_latest(log, 8)
    with live.begin() as conn:
        assert rebuild(conn, until=4) == 4
    assert latest(live) == expected_latest(log, 4)
    with live.begin() as conn:
        assert rebuild(conn, until=2) == 2
    assert latest(live) is None
