"""Membership in the protocol core: learners, promotion, removal, and the rules of
single-server changes (replica/protocol/membership.py, ReplicaCore, InSyncSet)."""

from __future__ import annotations

import re

import pytest

from eventlog import Position
from replica.protocol import ReplicaCore, Role
from replica.protocol import effects as fx
from replica.protocol import inputs as ins
from replica.protocol.membership import ChangeKind, Membership, MembershipChange, MembershipError
from tests.replica.protocol.test_core import Primary, Secondary, config, of, view

ADD, PROMOTE, REMOVE = ChangeKind.ADD, ChangeKind.PROMOTE, ChangeKind.REMOVE
THREE = Membership.initial((0, 1, 2))


def change(kind: ChangeKind, index: int) -> MembershipChange:
    return MembershipChange(kind, index)


# -- the membership value ----------------------------------------------------------------------


def test_a_replica_joins_as_a_learner_then_votes_and_its_index_is_never_reused() -> None:
    added = THREE.changed(change(ADD, 3), 10)
    assert (added.voters, added.learners, added.seq) == ({0, 1, 2}, {3}, 10)
    promoted = added.changed(change(PROMOTE, 3), 12)
    assert (promoted.voters, promoted.learners) == ({0, 1, 2, 3}, frozenset())
    removed = promoted.changed(change(REMOVE, 0), 15)
    assert (removed.voters, removed.removed) == ({1, 2, 3}, {0})
    assert removed.refusal(change(ADD, 0)) == (
        "index 0 belonged to a replica that was removed; indexes are never reused "
        "(choose one above 3)"
    )


@pytest.mark.parametrize(
    ("kind", "index", "reason"),
    [
        (ADD, 1, "index 1 is in use (replica 1 is a voter)"),
        (ADD, -1, "a replica index is never negative (-1)"),
        (PROMOTE, 1, "replica 1 is a voter already"),
        (PROMOTE, 7, "replica 7 is not a learner of this cluster"),
        (REMOVE, 7, "replica 7 is not a member of this cluster"),
    ],
)
def test_a_change_that_makes_no_sense_is_refused_with_a_reason(
    kind: ChangeKind, index: int, reason: str
) -> None:
    assert THREE.refusal(change(kind, index)) == reason
    with pytest.raises(MembershipError, match=re.escape(reason)):
        THREE.changed(change(kind, index), 9)


def test_the_last_voter_stays() -> None:
    one = Membership.initial((4,))
    assert one.refusal(change(REMOVE, 4)) == "replica 4 is the last voter (a cluster needs one)"


# -- the primary's rules ---------------------------------------------------------------------


def membership_event(p: Primary, after: Membership) -> list[fx.Effect]:
    """The primary wrote a membership event at seq `after.seq` (durable at once)."""
    out = p.step(ins.Written(after.seq))
    out += p.step(ins.MembershipChanged(after), after=0)
    out += p.step(ins.Appended(after.seq), after=0)
    return out


def test_a_change_waits_for_the_primary_and_for_the_previous_change_to_commit() -> None:
    s = Secondary()
    assert s.core.membership_change_refusal(change(ADD, 3), s.now) == (
        "this replica is not the primary"
    )
    p = Primary()
    assert p.core.membership_change_refusal(change(ADD, 3), p.now) is None
    membership_event(p, THREE.changed(change(ADD, 3), 7))
    assert p.core.commit_point == 6
    refusal = p.core.membership_change_refusal(change(ADD, 4), p.now)
    assert refusal is not None and refusal.startswith(
        "a membership change is in progress (the event at seq 7 is not committed yet"
    )
    for s_ in (1, 2):
        p.send(s_)
        p.ack(s_, 7)
    assert p.core.commit_point == 7
    assert p.core.membership_change_refusal(change(ADD, 4), p.now) is None


def test_no_change_before_the_new_primary_commits_its_epoch_start() -> None:
    core = ReplicaCore(config(0), 0, 0.0)
    core.step(0.1, ins.ProbesAnswered(Position(2, 5), (view(1, epoch=2), view(2, epoch=2))))
    epoch = core.current_epoch
    core.step(0.2, ins.VoteReplied(1, epoch, True, epoch))
    core.step(0.3, ins.VoteReplied(2, epoch, True, epoch))
    core.step(0.4, ins.EpochStartAppended(Position(epoch, 6)))
    assert core.role is Role.PRIMARY
    refusal = core.membership_change_refusal(change(ADD, 3), 0.5)
    assert refusal is not None and "has not committed the start of its epoch" in refusal


def test_the_primary_cannot_remove_itself_nor_go_below_min_insync() -> None:
    p = Primary(min_insync=3)
    assert p.core.membership_change_refusal(change(REMOVE, 0), p.now) == (
        "replica 0 is the primary: it cannot remove itself (stop it, or let another replica "
        "take over, then remove it)"
    )
    assert p.core.membership_change_refusal(change(REMOVE, 2), p.now) == (
        "removing replica 2 would leave 2 voter(s), fewer than min_insync=3"
    )


def secondaries_ack(p: Primary, seq: int) -> None:
    """Replicas 1 and 2 are sent what they lack and ack up to `seq`."""
    for s in (1, 2):
        p.send(s)
        p.ack(s, seq)


def learner_streaming(p: Primary, index: int = 3, seq: int = 7) -> int:
    """Learner `index` connects to the primary and acks the log's end."""
    (div,) = of(p.step(ins.SecondaryHello(index, None, p.epoch)), fx.SendDivergence)
    p.streams[index] = div.stream_id
    p.step(ins.SecondaryAcked(index, div.stream_id, 0, False))
    return div.stream_id


def test_a_learner_counts_for_nothing_and_is_promoted_only_once_it_keeps_up() -> None:
    p = Primary()
    membership_event(p, THREE.changed(change(ADD, 3), 7))
    learner_streaming(p)
    # The primary commits without it while it catches up.
    secondaries_ack(p, 7)
    assert p.core.commit_point == 7
    refusal = p.core.membership_change_refusal(change(PROMOTE, 3), p.now)
    assert refusal is not None and refusal.startswith("replica 3 is catching up: 7 event(s)")
    p.send(3)
    p.ack(3, 7, knows=False)
    iss = p.core.in_sync_set
    assert iss is not None
    statuses = {m.index: m for m in iss.statuses()}
    assert not statuses[3].in_sync and not statuses[3].voter, "a learner joined the in-sync set"
    refusal = p.core.membership_change_refusal(change(PROMOTE, 3), p.now)
    assert refusal is not None and re.search(
        r"0 event\(s\) behind, .* for 0\.\ds of the 0\.5s", refusal
    )
    p.run(0.6)
    p.ack(3, 7, knows=False)
    assert p.core.membership_change_refusal(change(PROMOTE, 3), p.now) is None
    # Promoted, it joins the in-sync set once caught up, and then counts for commits.
    membership_event(p, p.core.membership.changed(change(PROMOTE, 3), 8))
    secondaries_ack(p, 8)
    p.send(3)
    p.ack(3, 8, knows=False)
    statuses = {m.index: m for m in iss.statuses()}
    assert statuses[3].in_sync and statuses[3].voter
    p.step(ins.Written(9))
    p.step(ins.Appended(9), after=0)
    secondaries_ack(p, 9)
    assert p.core.commit_point == 8, "committed without the new voter's ack"
    p.send(3)
    p.ack(3, 9)
    assert p.core.commit_point == 9


def test_a_voter_removed_is_told_first_and_out_once_it_knows() -> None:
    p = Primary()
    membership_event(p, THREE.changed(change(REMOVE, 2), 7))
    iss = p.core.in_sync_set
    assert iss is not None
    assert not iss.told_in_sync(2), "a replica being removed is still told it is in sync"
    p.send(1)
    p.ack(1, 7)
    assert p.core.commit_point == 6, "the removal committed without the ack of the removed"
    p.send(2)
    p.ack(2, 7, knows=False)
    assert {m.index: m.in_sync for m in iss.statuses()}[2] is False
    assert p.core.commit_point == 7
    assert iss.unconfirmed() == [], "it confirmed it knows it is out"


def test_a_removed_replica_stops_vouching_and_leaves_once_its_removal_is_committed() -> None:
    s = Secondary()
    assert s.core.vouches(s.now)
    out = s.step(ins.MembershipChanged(THREE.changed(change(REMOVE, 1), 6)))
    assert not s.core.vouches(s.now) and s.core.claim() is None
    stored = s.step(ins.BatchReceived(s.stream, 3, Position(3, 6)))
    assert of(stored, fx.StoreBatch)
    out = s.step(ins.BatchStored(s.stream, Position(3, 6), 5, True))
    assert [a.in_sync for a in of(out, fx.SendAck)] == [False], "it says it knows it is out"
    assert not of(out, fx.LeaveCluster), "left before its removal was committed"
    out = s.step(ins.HeartbeatReceived(s.stream, 3, 6, False))
    (left,) = of(out, fx.LeaveCluster)
    assert "replica 1 was removed from the cluster (the event at seq 6, committed" in left.reason
    assert not of(s.step(ins.HeartbeatReceived(s.stream, 3, 6, False)), fx.LeaveCluster)


def test_a_learner_never_elects_but_votes_when_asked() -> None:
    """A candidate whose log is more up to date may know of the learner's promotion, which
    the learner has not stored yet: refusing would leave the best log without a primary."""
    learner = ReplicaCore(config(3), 3, 0.0)
    learner.step(0.0, ins.MembershipChanged(THREE.changed(change(ADD, 3), 7)))
    out = learner.step(
        5.0, ins.ProbesAnswered(Position(3, 9), (view(0, seq=4), view(1, seq=4), view(2, seq=4)))
    )
    assert not of(out, fx.PersistEpoch) and not of(out, fx.RequestVotes)
    asked = ins.VoteRequested(0, 9, Position(3, 9), Position(3, 7))
    (reply,) = of(learner.step(5.1, asked), fx.ReplyVote)
    assert reply.granted


def test_a_learners_vouch_elects_no_one() -> None:
    core = ReplicaCore(config(1), 3, 0.0)
    core.step(0.0, ins.MembershipChanged(THREE.changed(change(ADD, 3), 7)))
    # 0 is gone; 2 and the learner 3 answer: without 2's vouch or 0 present, no one.
    out = core.step(
        5.0,
        ins.ProbesAnswered(Position(3, 5), (view(2, seq=5), view(3, seq=9, vouches=True))),
    )
    assert not of(out, fx.RequestVotes), "a learner's vouch elected"


def test_a_stranger_gets_no_stream() -> None:
    p = Primary()
    (refused,) = of(p.step(ins.SecondaryHello(8, None, p.epoch)), fx.RefuseStream)
    assert refused.reason.startswith("replica 8 is not a member of this cluster")
    membership_event(p, THREE.changed(change(REMOVE, 2), 7))
    assert of(p.step(ins.SecondaryHello(2, None, p.epoch)), fx.SendDivergence), (
        "a removed replica must be served, to learn of its removal"
    )


def test_a_removed_replicas_newer_epoch_does_not_depose_the_primary() -> None:
    p = Primary()
    membership_event(p, THREE.changed(change(REMOVE, 2), 7))
    for s in (1, 2):
        p.send(s)
        p.ack(s, 7, knows=s == 1)
    assert p.core.commit_point == 7
    p.step(ins.ProbesAnswered(None, (view(1, Role.SECONDARY, p.epoch), view(2, epoch=99))))
    assert p.core.role is Role.PRIMARY and p.core.current_epoch == p.epoch


def test_until_a_change_is_known_committed_elections_count_the_voters_before_it_too() -> None:
    """The original failure (the membership model): a primary wrote the removal of an in-sync
    voter, stepped down before it committed, and elected itself alone as the one voter left
    -- while the voter being removed still vouched, and could elect itself in turn without
    what the primary then acknowledged. Until the change is known committed, the voter being
    removed counts too."""
    p = Primary()
    membership_event(p, THREE.changed(change(REMOVE, 1), 7))
    assert p.core.election_voters() == {0, 1, 2}
    for s in (1, 2):
        p.send(s)
        p.ack(s, 7, knows=s == 2)
    assert p.core.commit_point == 7
    assert p.core.election_voters() == {0, 2}


def test_a_voter_being_removed_that_answers_must_vote_but_is_no_candidate() -> None:
    """The removal is not known committed: the replica being removed may vouch, and must
    vote (its vote ends its vouch); it is not chosen unless its log is strictly ahead (see
    below), nor stands for an absent voter."""
    core = ReplicaCore(config(0), 3, 0.0)
    core.step(0.0, ins.MembershipChanged(THREE.changed(change(REMOVE, 1), 6)))
    out = core.step(
        5.0,
        ins.ProbesAnswered(
            Position(3, 6), (view(1, seq=6, in_sync=True, vouches=True), view(2, seq=5))
        ),
    )
    (request,) = of(out, fx.RequestVotes)
    assert set(request.voters) == {1, 2}, "the vouching replica being removed was not asked"
    # Its removal gone for good (its process refuses connections), the others elect alone.
    core = ReplicaCore(config(0), 3, 0.0)
    core.step(0.0, ins.MembershipChanged(THREE.changed(change(REMOVE, 1), 6)))
    gone = ins.ProbeOutcome(1, None, refused=True, process_gone=True)
    out = core.step(5.0, ins.ProbesAnswered(Position(3, 6), (gone, view(2, seq=5))))
    (request,) = of(out, fx.RequestVotes)
    assert request.voters == (2,)


def test_a_promoted_learner_joins_the_in_sync_set_only_once_its_promotion_is_committed() -> None:
    """Counted in sync earlier, it would vouch while a replica that never stored its
    promotion could be elected without asking it (found by the membership model)."""
    p = Primary()
    membership_event(p, THREE.changed(change(ADD, 3), 7))
    learner_streaming(p)
    secondaries_ack(p, 7)
    promoted = p.core.membership.changed(change(PROMOTE, 3), 8)
    membership_event(p, promoted)
    p.send(3)
    p.ack(3, 8, knows=False)
    iss = p.core.in_sync_set
    assert iss is not None and not iss.told_in_sync(3), "joined before its promotion committed"
    assert not {m.index: m.in_sync for m in iss.statuses()}[3]
    secondaries_ack(p, 8)
    assert p.core.commit_point == 8
    p.ack(3, 8, knows=False)
    assert {m.index: m.in_sync for m in iss.statuses()}[3]


def test_a_replica_removed_by_a_change_not_yet_committed_may_still_lead_and_then_leaves() -> None:
    """Found by the membership model: the primary that wrote the removal lost its own copy
    (its local commit failed after streaming), so the removed replica holds the longest log;
    the others choose it, and it refuses a shorter log its vote. It elects itself in the
    membership before its removal, commits the removal with its epoch_started, and leaves."""
    core = ReplicaCore(config(2), 3, 0.0)
    four = THREE.changed(change(ADD, 3), 2)
    core.step(0.0, ins.MembershipChanged(four.changed(change(REMOVE, 2), 4)))
    assert core.electing_voters() == {0, 1, 2}
    out = core.step(5.0, ins.ProbesAnswered(Position(3, 4), (view(0, seq=3), view(1, seq=3))))
    (request,) = of(out, fx.RequestVotes)
    for voter in (0, 1):
        core.step(5.1, ins.VoteReplied(voter, request.epoch, True, request.epoch))
    core.step(5.2, ins.EpochStartAppended(Position(request.epoch, 5)))
    assert core.role is Role.PRIMARY
    for s in (0, 1):
        (div,) = of(core.step(5.3, ins.SecondaryHello(s, None, request.epoch)), fx.SendDivergence)
        core.step(5.3, ins.SecondaryAcked(s, div.stream_id, 4, True))
        core.step(5.3, ins.SendWanted(s, div.stream_id))
        out = core.step(5.4, ins.SecondaryAcked(s, div.stream_id, 5, True))
    assert of(out, fx.StepDown) and of(out, fx.LeaveCluster), "it stayed after its removal"
    assert core.role is not Role.PRIMARY


def test_the_replica_being_removed_and_the_others_name_the_same_candidate() -> None:
    """Found by the membership model: the removal of replica 0 written everywhere, not known
    committed, logs equal. Replica 0 (electing in the membership before its removal, where
    it is a voter) named itself on the lowest index; replica 1 (where 0 is no candidate)
    named itself; both stood in every round and refused each other: no primary, ever. A
    replica being removed is chosen only with a log strictly ahead of every other's."""
    removal = THREE.changed(change(ADD, 3), 2).changed(change(PROMOTE, 3), 3)
    removal = removal.changed(change(REMOVE, 0), 4)
    equal = (view(1, seq=4), view(2, seq=4), view(3, seq=4))
    leaving = ReplicaCore(config(0), 3, 0.0)
    leaving.step(0.0, ins.MembershipChanged(removal))
    assert not of(leaving.step(5.0, ins.ProbesAnswered(Position(3, 4), equal)), fx.RequestVotes)
    staying = ReplicaCore(config(1), 3, 0.0)
    staying.step(0.0, ins.MembershipChanged(removal))
    others = (view(0, seq=4), view(2, seq=4), view(3, seq=4))
    (request,) = of(staying.step(5.0, ins.ProbesAnswered(Position(3, 4), others)), fx.RequestVotes)
    assert 0 in request.voters, "the replica being removed must still vote"
    # Strictly ahead, the one being removed is everyone's choice: it stands, the others wait.
    ahead = ReplicaCore(config(0), 3, 0.0)
    ahead.step(0.0, ins.MembershipChanged(removal))
    assert of(ahead.step(5.0, ins.ProbesAnswered(Position(3, 5), equal)), fx.RequestVotes)
    staying = ReplicaCore(config(1), 3, 0.0)
    staying.step(0.0, ins.MembershipChanged(removal))
    others = (view(0, seq=5), view(2, seq=4), view(3, seq=4))
    assert not of(staying.step(5.0, ins.ProbesAnswered(Position(3, 4), others)), fx.RequestVotes)


def test_a_learner_storing_slowly_keeps_its_stream_and_vouches_for_nothing() -> None:
    """A voter whose store outlasts the vouch window reconnects for fresh news of "in sync";
    a learner has none to care about: it keeps its stream (a new one would only resend what
    was in flight) and still neither vouches nor claims."""
    s = Secondary()
    s.step(ins.MembershipChanged(THREE.changed(change(ADD, 3), 2).changed(change(REMOVE, 1), 3)))
    assert not s.core.is_voter
    stream = s.stream
    s.step(ins.BatchReceived(stream, 3, Position(3, 6)))
    for _ in range(5):
        s.step(ins.Tick(), after=0.1)  # (0.55 s in all: past the vouch window)
    out = s.step(ins.BatchStored(stream, Position(3, 6), 5, True))
    assert not of(out, fx.CancelStream), "a non-voter reconnected for news it has no use for"
    assert of(out, fx.SendAck)
    assert not s.core.vouches(s.now) and s.core.claim() is None


def test_a_primary_is_deposed_by_a_voter_whose_removal_it_has_not_committed() -> None:
    """Found by the membership model: a primary wrote the removal of an in-sync voter, which,
    cut off, elected itself in the membership before that removal (its claim, min_insync 1);
    the old primary probed it but ignored its newer epoch (no member in its eyes) for good."""
    p = Primary()
    removal = Membership.initial((0, 1, 2)).changed(MembershipChange(REMOVE, 2), 7)
    p.step(ins.MembershipChanged(removal))
    assert 2 in p.core.probe_targets()
    out = p.step(ins.ProbesAnswered(None, (view(2, Role.PRIMARY, p.epoch + 10, 6),)))
    assert of(out, fx.StepDown)
