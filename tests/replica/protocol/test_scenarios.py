"""Scripted histories in the simulated world (tests/replica/protocol_sim.py), each one a
failure the random model could take long to reach, replayed exactly."""

from __future__ import annotations

import pytest

from tests.replica.protocol_sim import Link, World


def one_primary(w: World) -> bool:
    return len(w.primaries()) == 1


def caught_up(w: World) -> bool:
    return w.converged(everyone=False)


@pytest.mark.parametrize("min_insync", [1, 2])
def test_a_new_primary_commits_an_older_epochs_event_only_with_its_own(min_insync: int) -> None:
    """Raft's "figure 8". Replica A appends x and dies before streaming it; B is elected, appends
    its epoch_started and dies before streaming that; A comes back and is elected with C's
    vote. If A counted C's ack of x as committing x -- before C held A's own epoch_started --
    and then died, B (whose last event is of a newer epoch than x) would win the next election
    with C's vote, and x, acknowledged, would be truncated from C."""
    w = World(3, min_insync, batch_events=1)
    assert w.settle(100, lambda: caught_up(w))
    a = w.primaries()[0].index
    for i in range(3):
        w.client_write(w.nodes[a], f"w{i}")
    assert w.settle(20, lambda: len(w.acked) == 3)
    w.client_write(w.nodes[a], "x")  # stored on A only
    x_seq = len(w.nodes[a].disk.log)
    w.crash(a)
    assert w.settle(40, lambda: one_primary(w))
    b = w.primaries()[0].index
    c = next(i for i in range(3) if i not in (a, b))
    w.crash(b)  # its epoch_started reached no one
    w.restart(a)

    def hold(link: Link, what: str) -> bool:
        # C gets A's events up to x, and then nothing more.
        return link.secondary == c and what == "down" and len(w.nodes[c].disk.log) >= x_seq

    assert w.settle(40, lambda: one_primary(w) and len(w.nodes[c].disk.log) >= x_seq, hold)
    assert w.primaries()[0].index == a
    w.client_write(w.nodes[a], "x")  # the client retries x at the new primary
    w.settle(6, hold=hold)
    assert "x" not in w.acked, "x acknowledged while only its older epoch's copies hold it"
    w.crash(a)
    w.restart(b)
    assert w.settle(60, lambda: one_primary(w))  # World.check() raises on a lost write
    w.restart(a)
    assert w.settle(200, lambda: caught_up(w))
