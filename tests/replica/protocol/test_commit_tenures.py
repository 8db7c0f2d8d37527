"""A write is acknowledged only by a commit of the tenure it was written (or found) in.

Otherwise a waiter can be answered for another event at its seq: a deposed primary holds
unacknowledged sends; their clients' retries find them in its log (duplicates) and wait for
their seqs; it is elected again, deposed again, and truncates them as a follower -- and when
the new primary's own events reach those seqs, the waiters would wake as if their events had
committed, acknowledging messages that are gone."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

import eventlog
from replica.errors import Unavailable
from replica.protocol import Role
from replica.storage.commit import CommitTracker
from replica.storage.role import RoleState
from replica.storage.writer import LogWriter, NewEvent
from testsupport.harness import wait_until


def wait_in_thread(
    commits: CommitTracker, seq: int, tenure: int
) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def body() -> None:
        try:
            commits.wait_committed(seq, timeout=10, tenure=tenure)
            outcome.append("committed")
        except Unavailable as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, outcome


def test_a_waiter_of_an_ended_term_is_not_answered_by_a_later_commit_of_its_seq() -> None:
    commits = CommitTracker(50)
    commits.reset(50)  # tenure begins; its writes 51..54 wait
    tenure = commits.tenure
    thread, outcome = wait_in_thread(commits, 51, tenure)
    commits.abandon()  # deposed: 51..54 may be truncated
    # As a follower, it truncates 51..54 and its new primary's events reach 51.
    commits.advance(51)
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome


def test_a_wait_that_starts_after_its_term_ended_fails_at_once() -> None:
    commits = CommitTracker(50)
    commits.reset(50)
    tenure = commits.tenure
    commits.abandon()
    commits.reset(50)  # elected again: a new tenure
    commits.advance(60)
    with pytest.raises(Unavailable, match="lost its primary role"):
        commits.wait_committed(55, timeout=5, tenure=tenure)


def test_a_commit_in_the_waiters_own_term_answers_it() -> None:
    commits = CommitTracker(50)
    commits.reset(50)
    thread, outcome = wait_in_thread(commits, 52, commits.tenure)
    commits.advance(52)
    thread.join(5)
    assert outcome == ["committed"]
    commits.wait_committed(52, timeout=1, tenure=commits.tenure)  # already committed: at once


def test_a_retry_that_finds_its_event_uncommitted_fails_when_the_term_ends(
    engine: sa.Engine,
) -> None:
    """The writer-level shape of the chaos failure: the retry is a duplicate (its event is in
    the log from an earlier tenure, not among this tenure's pending events)."""
    role = RoleState(0, {0: "here"})
    role.set(Role.PRIMARY, 1, 0)
    commits = CommitTracker(0)
    commits.reset(0)
    writer = LogWriter(engine, role, commits, commit_timeout=10)

    def decide(_conn: sa.Connection) -> NewEvent:
        return NewEvent("epoch_started", {"replica_index": 0})

    def execute() -> list[object]:
        outcome: list[object] = []

        def body() -> None:
            try:
                outcome.append(writer.execute("same-request", decide, reads_inboxes=False))
            except Unavailable as exc:
                outcome.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        threads.append(thread)
        return outcome

    threads: list[threading.Thread] = []
    first = execute()
    wait_until(lambda: logged(engine) == 1, 5, "the first send was never written")
    commits.abandon()  # deposed before its event was acknowledged
    threads[0].join(5)
    assert isinstance(first[0], Unavailable)
    commits.reset(0)  # elected again; the client retries
    role.set(Role.PRIMARY, 2, 0)
    retry = execute()
    wait_until(lambda: writer_waiting(commits), 5, "the retry never waited")
    commits.abandon()  # deposed again; as a follower it truncates seq 1 ...
    commits.advance(1)  # ... and its new primary's own event at seq 1 commits
    threads[1].join(5)
    assert len(retry) == 1 and isinstance(retry[0], Unavailable), retry


def logged(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return eventlog.last_position(conn).seq


def writer_waiting(commits: CommitTracker) -> bool:
    return commits.waiting() > 0  # a wait is parked
