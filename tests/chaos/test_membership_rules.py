"""The chaos runner's membership logic, without processes: which faults fit a cluster of a
given size, where a new replica goes, how a round's fault is chosen, and how an operator's
change is retried."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from client.errors import AlreadyExists, ChatUnavailableError, Refused
from client.models import Member, Membership
from tests.chaos.faults import FAULTS, MEMBERSHIP_FAULTS, faults_for
from tests.chaos.membership import (
    MAX_VOTERS,
    MIN_VOTERS,
    ChangeFailed,
    Operator,
    free_host,
    loopback_host,
    size_fits,
    survivors_needed,
)
from tests.chaos.runner import choose_fault

# What each fault allowed before the cluster's size could change: the largest min_insync under
# which the replicas it leaves (of three) still acknowledge.
THREE_VOTERS_MAX_MIN_INSYNC = {
    "kill_one": 2,
    "kill_two": 1,
    "kill_all": 3,
    "pause_primary": 2,
    "drop_connections": 3,
    "restart_mariadb": 3,
    "stall_db": 2,
    "slow_db": 3,
    "partition_primary": 2,
    "isolate_primary": 2,
    "partition_secondary": 2,
    "partition_ring": 3,
    "one_way": 3,
    "flaky_link": 3,
    "break_stream": 3,
    "split_all": 3,
    "slow_link": 3,
}


def fault(name: str) -> Any:
    return next(f for f in FAULTS if f.name == name)


def test_survivors_needed_is_one_vouching_replica_or_the_votes_of_an_election() -> None:
    assert [survivors_needed(n, 1) for n in range(1, 6)] == [1, 1, 1, 1, 1]
    # max(min_insync, voters - min_insync + 1)
    assert [survivors_needed(n, 2) for n in range(2, 6)] == [2, 2, 3, 4]
    assert [survivors_needed(n, 3) for n in range(3, 6)] == [3, 3, 3]


@pytest.mark.parametrize("name", sorted(THREE_VOTERS_MAX_MIN_INSYNC))
def test_with_three_voters_every_fault_fits_as_before(name: str) -> None:
    fits = [m for m in (1, 2, 3) if fault(name).fits(3, m)]
    assert fits == list(range(1, THREE_VOTERS_MAX_MIN_INSYNC[name] + 1))


def test_membership_faults_keep_the_voters_in_range() -> None:
    add, remove, replace = (fault(n) for n in MEMBERSHIP_FAULTS)
    assert [n for n in range(1, 7) if add.fits(n, 1)] == [1, 2, 3, 4]  # never above 5
    assert [n for n in range(1, 7) if remove.fits(n, 1)] == [3, 4, 5, 6]  # never below 2
    # A replacement dips by one voter while the new one catches up: to one at the least.
    assert [n for n in range(1, 7) if replace.fits(n, 1)] == [2, 3, 4, 5, 6]
    # With min_insync 2: never below two voters, even for a moment; the primary SIGKILLed
    # first needs the others to elect (a majority of what is left).
    assert [n for n in range(2, 6) if remove.fits(n, 2)] == [3, 4, 5]
    assert [n for n in range(2, 6) if replace.fits(n, 2)] == [3, 4, 5]
    assert [n for n in range(3, 6) if remove.fits(n, 3)] == [4, 5]
    assert MIN_VOTERS == 2 and MAX_VOTERS == 5


def test_a_cluster_grown_or_shrunk_runs_only_the_faults_its_voters_survive() -> None:
    kill_one, kill_two = fault("kill_one"), fault("kill_two")
    assert not kill_two.fits(2, 1)  # both voters: nobody left
    assert kill_two.fits(4, 1)
    assert not kill_one.fits(2, 2)  # one left cannot be two in sync
    assert kill_one.fits(5, 2)  # four of five: the votes an election needs
    assert not kill_two.fits(5, 2)  # three of five: fewer than four votes
    assert kill_one.fits(5, 3) and kill_two.fits(5, 3) and not kill_one.fits(3, 3)
    assert size_fits(4, 2, takes_out=1) and not size_fits(4, 2, takes_out=2)


def test_two_voters_run_no_fault_that_cuts_a_secondary_off() -> None:
    # Cut off but not dead, it may still claim to be in sync: the primary goes on only with
    # another secondary in sync. The primary cut off is fine: the secondary elects on its claim.
    cut_a_secondary = ("partition_secondary", "partition_ring", "one_way", "flaky_link")
    assert not any(fault(n).fits(2, 1) for n in cut_a_secondary)
    assert all(fault(n).fits(3, 1) and fault(n).fits(5, 1) for n in cut_a_secondary)
    assert fault("partition_primary").fits(2, 1) and not fault("partition_primary").fits(2, 2)
    assert fault("split_all").fits(2, 2)


def test_membership_faults_run_only_when_named() -> None:
    assert not set(MEMBERSHIP_FAULTS) & {f.name for f in faults_for("mysql")}
    assert not set(MEMBERSHIP_FAULTS) & {f.name for f in faults_for("sqlite", network=True)}
    named = faults_for("sqlite", [*MEMBERSHIP_FAULTS, "kill_one"])
    assert [f.name for f in named] == ["kill_one", *MEMBERSHIP_FAULTS]
    # (a removal that does not fit three voters may fit once a replica was added)
    assert [f.name for f in faults_for("sqlite", list(MEMBERSHIP_FAULTS), min_insync=3)] == list(
        MEMBERSHIP_FAULTS
    )


def test_a_new_replica_takes_a_free_host_and_an_address_never_used() -> None:
    assert free_host(6, {0, 1, 2}) == 3
    assert free_host(6, {1, 3, 4}) == 0
    assert free_host(3, {0, 1, 2}) is None
    assert [loopback_host(i) for i in (0, 2, 3, 40)] == [
        "127.0.0.11",
        "127.0.0.13",
        "127.0.0.14",
        "127.0.0.51",
    ]


def test_a_round_draws_among_the_faults_that_fit() -> None:
    faults = [fault(n) for n in ("kill_one", "kill_two", "kill_all", "add_replica")]
    # All fit: the same draws as before sizes could change (a seed replays a run).
    assert choose_fault(faults, 1, "random", random.Random(7), faults) == random.Random(7).choice(
        faults
    )
    fits = [faults[0], faults[2]]
    assert {choose_fault(faults, 1, "random", random.Random(s), fits) for s in range(50)} == set(
        fits
    )
    # In turn: the next that fits.
    assert choose_fault(faults, 2, "cycle", random.Random(1), fits) is faults[2]
    assert choose_fault(faults, 4, "cycle", random.Random(1), fits) is faults[0]
    assert choose_fault(faults, 1, "random", random.Random(1), []) is None


# -- the operator's retries ------------------------------------------------------------------


def membership(members: list[tuple[int, bool]], removed: tuple[int, ...] = ()) -> Membership:
    return Membership(
        0,
        0,
        tuple(Member(i, "a:1", "", voter, "secondary", 1, True, 0, True) for i, voter in members),
        removed,
        1,
        True,
    )


class FakeAdmin:
    def __init__(self, answers: list[BaseException | None], listed: Membership) -> None:
        self.answers = answers
        self.listed = listed
        self.calls = 0

    def promote_member(self, index: int) -> None:
        self.calls += 1
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer

    remove_member = add_member = promote_member  # (the answers decide)

    def list_members(self) -> Membership:
        return self.listed


class FakeOperator(Operator):
    fake: FakeAdmin

    @contextmanager
    def admin(self) -> Iterator[Any]:  # type: ignore[override]
        yield self.fake


def operator(answers: list[BaseException | None], listed: Membership) -> FakeOperator:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    made = FakeOperator(None, lambda: [0, 1, 2], timeout=5.0, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    made.fake = FakeAdmin(answers, listed)
    return made


def refused(message: str) -> Refused:
    return Refused(grpc.StatusCode.FAILED_PRECONDITION, message)


def test_a_promotion_is_retried_while_the_learner_catches_up() -> None:
    catching_up = refused("replica 3 is catching up: 40 event(s) behind ...; try again shortly")
    in_progress = refused("a membership change is in progress (...); try again once it is")
    op = operator([catching_up, in_progress, catching_up, None], membership([(3, False)]))
    op.promote(3)
    assert op.fake.calls == 4


def test_a_refusal_time_does_not_lift_fails_at_once() -> None:
    op = operator(
        [refused("replica 1 is the primary: it cannot remove itself (stop it, ...)")],
        membership([(1, True)]),
    )
    with pytest.raises(ChangeFailed, match="cannot remove itself"):
        op.remove(1)
    assert op.fake.calls == 1


def test_a_change_made_by_a_try_whose_answer_was_lost_counts_as_made() -> None:
    exists = AlreadyExists(grpc.StatusCode.ALREADY_EXISTS, "replica 3 is a voter already")
    op = operator([exists], membership([(3, True)]))
    op.promote(3)
    op = operator([exists], membership([(3, False)]))
    with pytest.raises(ChangeFailed, match="voter already"):
        op.promote(3)


def test_no_primary_for_too_long_fails_the_change_in_bounded_time() -> None:
    gone = ChatUnavailableError(grpc.StatusCode.UNAVAILABLE, "no primary found")
    op = operator([gone] * 100, membership([]))
    with pytest.raises(ChangeFailed, match="not done within 5s"):
        op.remove(2)
    assert 20 <= op.fake.calls <= 30  # every 0.2 s for 5 s
