"""The protocol's leaf rules (replica/protocol/rules.py), each on its own."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import Position
from replica.protocol import rules as protocol

N = 3


def _end_for_epoch(log: list[int], epoch: int) -> Position:
    """A log of epochs (seq = position + 1): its last position with epoch <= `epoch`."""
    for seq in range(len(log), 0, -1):
        if log[seq - 1] <= epoch:
            return Position(log[seq - 1], seq)
    return Position(0, 0)


@st.composite
def diverged_logs(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """A primary's and a secondary's logs (as epochs) sharing a prefix, then diverging: past the
    prefix no epoch appears in both (an epoch names one primary, whose entries agree)."""
    epochs = st.lists(st.integers(1, 40), max_size=12).map(sorted)
    prefix = draw(epochs)
    floor = prefix[-1] if prefix else 0
    later = st.lists(st.integers(floor + 1, floor + 40), max_size=12).map(sorted)
    primary_tail = draw(later)
    secondary_tail = draw(later.map(lambda xs: [x for x in xs if x not in primary_tail]))
    if primary_tail and secondary_tail and primary_tail[0] == secondary_tail[0]:
        secondary_tail = []
    return prefix + primary_tail, prefix + secondary_tail, len(prefix)


@settings(max_examples=500, deadline=None)
@given(diverged_logs())
def test_divergence_exchange_keeps_exactly_the_common_prefix(
    logs: tuple[list[int], list[int], int],
) -> None:
    primary, secondary, common = logs
    for _ in range(len(secondary) + 1):
        own_last = Position(secondary[-1], len(secondary)) if secondary else Position(0, 0)
        primary_end = _end_for_epoch(primary, own_last.epoch)
        cut = protocol.truncation_point(
            own_last, primary_end, _end_for_epoch(secondary, primary_end.epoch)
        )
        if cut >= len(secondary):
            break
        del secondary[cut:]
    assert secondary == primary[: len(secondary)], "the secondary kept a divergent entry"
    assert len(secondary) >= common, "the secondary cut into the prefix it shares with the primary"


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**4), st.integers(0, 10**4))
def test_candidates_never_share_an_epoch(known_a: int, known_b: int, a: int, b: int) -> None:
    """Two candidates, whatever epochs each has seen and whatever their indexes (a cluster's
    size changes, and indexes are never reused), never start the same epoch; each starts
    one above everything it knows, and the epoch says whose it is."""
    epoch_a = protocol.next_epoch(known_a, a)
    epoch_b = protocol.next_epoch(known_b, b)
    assert epoch_a > known_a and epoch_b > known_b
    assert protocol.epoch_owner(epoch_a) == a and protocol.epoch_owner(epoch_b) == b
    if a != b:
        assert epoch_a != epoch_b


@given(st.integers(0, 10**6), st.integers(0, 200))
def test_next_epoch_is_the_smallest_of_its_own_above_what_is_known(known: int, index: int) -> None:
    """No epoch of this replica's lies between what it knows and what it starts: epochs stay
    as small as they can (they are shown to operators)."""
    epoch = protocol.next_epoch(known, index)
    assert all(protocol.epoch_owner(e) != index for e in range(known + 1, epoch))


def test_epochs_of_the_first_replicas_stay_small() -> None:
    assert [protocol.next_epoch(0, i) for i in range(4)] == [1, 2, 5, 9]
    assert [protocol.next_epoch(5, i) for i in range(3)] == [6, 7, 8]


HALF_INSYNC = 0.5  # vouch window for insync_timeout_ms = 1000
optional_age = st.none() | st.floats(0, 10, allow_nan=False)


@given(optional_age)
def test_a_secondary_vouches_only_before_the_primary_can_have_dropped_it(
    confirmed_for: float | None,
) -> None:
    """The primary drops a member no sooner than insync_timeout after its last "in sync" to
    it, said after receiving the ack that word echoes; the member must have stopped vouching
    by then, whatever it can or cannot see of the primary. This is what made a lone secondary
    elect itself without events its old primary had acknowledged alone."""
    vouches = protocol.vouches(True, confirmed_for, HALF_INSYNC)
    assert vouches == (confirmed_for is not None and confirmed_for < HALF_INSYNC)
    assert not protocol.vouches(False, 0.0, HALF_INSYNC)


VOTERS = frozenset(range(N))


def _candidate(index: int, vouches: bool = False, claim: int | None = None):  # type: ignore[no-untyped-def]
    return protocol.CandidateView(index, Position(3, 5), 3, vouches, claim)


def test_a_claim_elects_only_with_every_replica_but_the_one_it_names() -> None:
    """What the claimed primary acknowledged is on another replica than it (it acknowledges
    nothing alone while a secondary it dropped unheard may claim): all of those must be
    present, and it must not be (it would then be asked, and its log decide)."""
    electable = protocol.electable
    assert electable([_candidate(1, claim=0), _candidate(2)], VOTERS)
    assert not electable([_candidate(1, claim=0)], VOTERS), "2 may hold what 0 acknowledged"
    assert not electable([_candidate(1, claim=2), _candidate(2)], VOTERS), "the one it names"
    assert electable([_candidate(1, vouches=True)], VOTERS), "a vouch now is enough alone"
    assert electable([_candidate(i) for i in range(N)], VOTERS), "everyone present"
    assert not electable([_candidate(1), _candidate(2)], VOTERS), "no claim, no vouch"


def test_presence_counts_only_voters() -> None:
    """Any size, any indexes: a replica that is no voter (a learner, one removed) present
    stands for no voter that is absent."""
    electable = protocol.electable
    voters = frozenset({0, 4, 7})
    assert electable([_candidate(0), _candidate(4), _candidate(7)], voters)
    assert not electable([_candidate(0), _candidate(4), _candidate(9)], voters), "9 is no voter"
    assert electable([_candidate(4, claim=0), _candidate(7)], voters)
    assert not electable([_candidate(4, claim=0), _candidate(9)], voters), "7 may hold it"
    assert electable([_candidate(3)], frozenset({3})), "a cluster of one"


def test_votes_meet_every_group_that_can_acknowledge() -> None:
    """With min_insync >= 2 the votes a candidate needs and the min_insync replicas an
    acknowledgement needs always share a replica, for any number of voters: a deposed
    primary's in-sync secondaries include a voter of the new epoch. Three replicas with
    min_insync 2 keep needing two votes (a majority)."""
    for voters in range(1, 10):
        assert protocol.votes_needed(1, voters) == 1
        for min_insync in range(2, voters + 1):
            needed = protocol.votes_needed(min_insync, voters)
            assert needed + min_insync > voters, (voters, min_insync)
            assert min_insync <= needed <= voters
    assert protocol.votes_needed(2, 3) == 2
    assert protocol.votes_needed(3, 3) == 3
    assert protocol.votes_needed(2, 5) == 4


def test_an_election_waits_only_for_peers_that_may_be_vouching() -> None:
    from replica.protocol.inputs import PeerView, ProbeOutcome
    from replica.protocol.roles import Role

    answered = ProbeOutcome(0, PeerView(0, Role.SECONDARY, 3, Position(3, 5), True, True, False))
    timed_out = ProbeOutcome(1, None)
    unavailable = ProbeOutcome(2, None, refused=True)
    gone = ProbeOutcome(3, None, refused=True, process_gone=True)
    outcomes = (answered, timed_out, unavailable, gone)
    assert protocol.may_be_vouching_unheard(outcomes, None, 1) == (1,)
    assert protocol.may_be_vouching_unheard(outcomes, 1, 1) == (), "the lost primary"
    assert protocol.may_be_vouching_unheard(outcomes, None, 2) == (), "a majority decides"
