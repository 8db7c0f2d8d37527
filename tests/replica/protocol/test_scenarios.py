"""Scripted histories in the simulated world (sim.py: real executors, simulated storage and
network), each one a failure the random model could take long to reach, replayed exactly."""

from __future__ import annotations

import pytest

from replica.protocol import Role
from tests.replica.protocol.sim import Job, Link, Node, World


def one_primary(w: World) -> bool:
    return len(w.primaries()) == 1


def caught_up(w: World) -> bool:
    return w.converged(everyone=False)


def restarted_after_writes(w: World) -> tuple[Node, int, int, int]:
    """One secondary is down while the primary acknowledges three writes, then restarts:
    (primary, that secondary, the other one, the length of its log as it restarts)."""
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    lagging, other = (n.index for n in w.nodes if n is not p)
    w.crash(lagging)
    for i in range(3):
        w.client_write(p, f"while-down-{i}")
    assert w.settle(60, lambda: len(w.acked) == 3)
    w.restart(lagging)
    return p, lagging, other, len(w.nodes[lagging].disk.log)


class StalledStore:
    """Secondary `slow`'s disk stalls on a batch (the write "stalled") until the primary has
    dropped it from the in-sync set and acknowledged "without-it" with the other alone."""

    def __init__(self, w: World, p: Node, slow: int) -> None:
        self.slow = slow
        self.stalled = False
        w.client_write(p, "stalled")
        self.stalled = True
        core = w.nodes[slow].core
        assert core is not None
        self.stream_id = core.following.stream_id  # the stream the stalled batch comes on

        def dropped() -> bool:
            iss = p.core.in_sync_set if p.core is not None else None
            return iss is not None and not iss.members[slow].in_sync

        assert w.settle(100, dropped, keep_io=self.kept)
        w.client_write(p, "without-it")
        assert w.settle(10, lambda: "without-it" in w.acked, keep_io=self.kept)

    def kept(self, index: int, job: Job) -> bool:
        """Its first store from here on stalls, and everything behind it."""
        if self.stalled and index == self.slow and job.kind == "store":
            self.stuck = job
        return self.stalled and index == self.slow and getattr(self, "stuck", None) is not None


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
    w.client_write(w.nodes[a], "x")
    w.commit(w.nodes[a])  # stored on A only: not streamed yet
    x_seq = len(w.nodes[a].disk.log)
    assert w.nodes[a].disk.log[x_seq - 1].request_id == "x"
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


def test_two_restarted_replicas_do_not_elect_without_the_third() -> None:
    """With min_insync = 1 the primary acknowledges alone once both secondaries are gone;
    two replicas restarted after that cannot know it, so they must wait for the third."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    others = [n.index for n in w.nodes if n is not p]
    for i in others:
        w.crash(i)
    assert p.core is not None
    assert w.settle(60, lambda: p.core is not None and p.core.write_refusal() is None)
    w.client_write(p, "alone")
    assert w.settle(20, lambda: "alone" in w.acked)
    w.crash(p.index)
    for i in others:
        w.restart(i)
    w.settle(60)  # World.check() raises if one of them leads without "alone"
    assert not w.primaries(), "two replicas that cannot know what was acknowledged elected"
    w.restart(p.index)
    assert w.settle(200, lambda: caught_up(w))
    assert w.primaries()[0].disk.log[w.acked["alone"][0] - 1].request_id == "alone"


def test_a_replica_that_rejoins_vouches_only_once_caught_up() -> None:
    """A restarted secondary misses what was acknowledged while it was down. Were it told it
    is in sync before it caught up, it would vouch for a log without those writes."""
    w = World(3, 1, batch_events=1)
    p, lagging, other, start = restarted_after_writes(w)

    def hold(link: Link, what: str) -> bool:
        # It stores one batch more (the first one it is sent), then nothing: it stays behind.
        return (
            link.secondary == lagging and what == "down" and len(w.nodes[lagging].disk.log) > start
        )

    w.settle(20, lambda: len(w.nodes[lagging].disk.log) > start, hold)
    w.settle(4, hold=hold)
    assert len(w.nodes[lagging].disk.log) < len(p.disk.log)
    w.crash(p.index)
    w.crash(other)
    w.settle(40, hold=hold)  # World.check() raises if it vouches or leads without the writes
    assert not w.primaries()


def test_a_secondary_stops_vouching_before_the_primary_can_drop_it() -> None:
    """The primary's database fails, and a blip ends one secondary's stream: it cannot start
    again (the primary cannot read its log to answer), the primary's probes answer
    UNAVAILABLE like a dead host's, and its election fails (the other secondary still hears
    the primary). Once its database answers, the primary drops it -- unreachable past the
    in-sync timeout -- and acknowledges with the other secondary alone. If both then die,
    the first must have stopped vouching by then, or it would elect itself without that
    write."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    cut_off, other = (n.index for n in w.nodes if n is not p)
    p.db_down = True
    for link in w.links:
        if not link.broken and link.secondary == cut_off:
            w.break_link(link)
    w.settle(24)  # 1.2 s
    assert w.primaries() == [p], "the other secondary, still streaming, refuses its vote"
    p.db_down = False

    def hold(link: Link, what: str) -> bool:
        return link.secondary == cut_off and what == "up"  # the primary's probes come first

    def dropped() -> bool:
        iss = p.core.in_sync_set if p.core is not None else None
        return iss is not None and not iss.told_in_sync(cut_off)

    assert w.settle(10, dropped, hold)
    w.client_write(p, "without-it")
    assert w.settle(4, lambda: "without-it" in w.acked, hold)
    w.crash(p.index)
    w.crash(other)
    w.settle(40, hold=hold)  # World.check() raises if it vouches or leads without the write
    assert not w.primaries()
    w.restart(p.index)
    w.restart(other)
    assert w.settle(200, lambda: caught_up(w))


def test_a_primary_whose_database_fails_is_not_taken_for_dead() -> None:
    """Its probes answer UNAVAILABLE while it lives on. The secondaries, both claiming to be in
    sync with it, elect without it; the new primary acknowledges a write and dies with its
    voter. The old one, its database back and nobody alive to tell it of the newer epoch,
    must not then acknowledge alone at the same seqs: the two are dead, but dropped unheard
    first -- their disks may hold a newer epoch (as they do)."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    a, b = (n for n in w.nodes if n is not p)
    p.db_down = True
    for link in w.links:
        if not link.broken and link.primary == p.index:
            w.break_link(link)  # a blip: neither can reconnect while its database is down
    w.settle(24)  # 1.2 s
    for n in (a, b):
        if n.core is not None and n.core.role is Role.PRIMARY:
            w.client_write(n, "to-a-replacement")
    w.settle(6)
    w.crash(a.index)
    w.crash(b.index)
    p.db_down = False
    w.settle(30)
    w.client_write(p, "after-its-database-is-back")
    w.settle(30)  # World.check() raises if one write is acknowledged where another was
    assert "after-its-database-is-back" not in w.acked, "alone while the others may claim"
    w.restart(a.index)
    w.restart(b.index)
    assert w.settle(200, lambda: caught_up(w))
    assert "to-a-replacement" in w.acked, "on their claims, the secondaries elected without it"


def test_a_voter_that_was_behind_vouches_only_once_it_holds_the_new_epoch() -> None:
    """A restarted replica, which missed writes, votes for the replica that was in sync. The
    new primary counts its voters in sync from the start and says so in its first batches;
    the voter must not vouch on that word alone while it lacks the earlier epoch's writes, or,
    the new primary dying, it would elect itself without them. Only its log reaching the new
    epoch's epoch_started shows it holds all the new primary held."""
    w = World(3, 1, batch_events=1)
    p, restarted, other, start = restarted_after_writes(w)

    def hold(link: Link, what: str) -> bool:
        # The restarted replica stores one batch more, then nothing: it stays behind.
        return (
            link.secondary == restarted
            and what == "down"
            and len(w.nodes[restarted].disk.log) > start
        )

    def nothing_to_it(link: Link, what: str) -> bool:
        return link.secondary == restarted and what == "down"

    w.crash(p.index)
    assert w.settle(40, lambda: one_primary(w), nothing_to_it)
    assert w.primaries()[0].index == other, "only the replica that was in sync is electable"
    assert w.settle(20, lambda: len(w.nodes[restarted].disk.log) > start, hold)
    w.settle(4, hold=hold)
    assert len(w.nodes[restarted].disk.log) < len(w.nodes[other].disk.log)
    w.crash(other)
    w.settle(40, hold=hold)  # World.check() raises if it vouches or leads without the writes
    assert not w.primaries()
    w.restart(p.index)
    w.restart(other)
    assert w.settle(200, lambda: caught_up(w))


@pytest.mark.parametrize("stream_end_first", [False, True])
def test_a_replica_whose_disk_stalls_vouches_not_on_its_primarys_old_word(
    stream_end_first: bool,
) -> None:
    """A secondary's disk stalls on a batch for longer than the primary waits: the primary
    drops it and acknowledges with the other secondary alone. The primary and that secondary
    then die, and the stalled store completes (or its stream's end is noticed first). What
    the batch said when it was sent -- "in sync" -- is stale by then: believed, it would let
    the replica vouch, and elect itself without the write."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    slow, other = (n.index for n in w.nodes if n is not p)
    stall = StalledStore(w, p, slow)
    w.crash(p.index)
    w.crash(other)
    if stream_end_first:
        w.settle(2, keep_io=stall.kept)
        core = w.nodes[slow].core
        assert core is not None and core.following.stream_id != stall.stream_id
    stall.stalled = False
    w.settle(40)  # World.check() raises if it vouches or leads without the write
    assert not w.primaries()
    w.restart(p.index)
    w.restart(other)
    assert w.settle(200, lambda: caught_up(w))


def test_what_a_stalled_replica_finds_queued_on_its_stream_is_stale() -> None:
    """As above, but the primary lives on: the batch's "in sync", stored after the stall, is
    old news -- the primary has dropped the replica and acknowledged without it since. (Its
    executor takes the primary's heartbeats while its storage is stuck, so it confirms
    leaving; a member dropped unheard has its stream cut; the heartbeats echo acks sent
    before the stall. Each keeps the old word from renewing the vouch.)"""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    slow = next(n.index for n in w.nodes if n is not p)
    stall = StalledStore(w, p, slow)
    stall.stalled = False
    # World.check() raises if it vouches, on a queued word, for a log without the write.
    assert w.settle(200, lambda: caught_up(w))


def test_a_replica_whose_database_fails_stops_vouching_before_it_says_so() -> None:
    """The primary is paused and one secondary's database fails. The other secondary cannot
    elect alone: it claims to be in sync with the paused primary, but without the replica
    that answers UNAVAILABLE it cannot show that no write was acknowledged without it. Once
    the database is back the two elect on their claims and acknowledge a write; the new
    primary dies. The one whose database failed must have stopped vouching and claiming at
    once: it must not, with the old primary's word still on its stream, elect itself without
    that write. Nor may a silent stream keep the vouch: the lone secondary would then elect
    itself."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    down = next(n for n in w.nodes if n is not p)
    p.paused = True
    down.db_down = True
    w.settle(40)
    assert w.primaries() == [p], "the lone secondary elected itself"
    assert down.core is not None and down.core.claim() is None
    down.db_down = False
    assert w.settle(40, lambda: any(n is not p for n in w.primaries()))
    new = next(n for n in w.primaries() if n is not p)
    w.client_write(new, "while-it-was-paused")
    assert w.settle(10, lambda: "while-it-was-paused" in w.acked)
    # World.check() raises if a replica vouches or claims for a log without the write.
    w.crash(new.index)
    p.paused = False
    w.settle(40)
    w.restart(new.index)
    assert w.settle(200, lambda: caught_up(w))


def test_an_election_waits_for_a_replica_that_does_not_answer() -> None:
    """With min_insync = 1, a secondary paused for less than the pause detector notices
    misses the probes of the election that follows the primary's death. Had the other
    secondary elected alone and acknowledged a write, the paused one, once running again,
    would still vouch for its log, without that write. Its vote is needed: the new primary
    then counts it in sync."""
    w = World(3, 1)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    paused = next(n for n in w.nodes if n is not p)
    paused.paused = True
    w.crash(p.index)
    w.settle(6)  # 0.3 s: its probes time out, yet it is not paused long enough to notice
    for n in w.primaries():
        w.client_write(n, "while-it-was-paused")
    w.settle(2)
    paused.paused = False
    w.settle(40)  # World.check() raises if it vouches for a log without the write
    # (Here the election the paused one's late vote joined had run out; neither survivor can
    # show it holds every acknowledged write without the dead replica: they wait for it.)
    w.restart(p.index)
    assert w.settle(200, lambda: caught_up(w))
    w.client_write(w.primaries()[0], "after")
    assert w.settle(10, lambda: "after" in w.acked)


def test_a_secondary_that_reconnects_while_its_primary_commits_keeps_what_it_was_streamed() -> None:
    """The primary streams x while its own commit of x is under way; both secondaries store
    it, and their streams break and reconnect before that commit ends. The divergence answer
    must count x (written, not yet durable): were it to say the primary's log ends before x,
    both would truncate it, their earlier acks of x would still count, x would be acknowledged
    once durable on the primary alone -- and lost with it."""
    w = World(3, 2, batch_events=2)
    assert w.settle(100, lambda: caught_up(w))
    p = w.primaries()[0]
    w.client_write(p, "x")
    x_seq = len(p.disk.log) + 1

    def stored_everywhere() -> bool:
        return all(len(n.disk.log) >= x_seq for n in w.nodes if n is not p)

    def committing(index: int) -> bool:
        return index == p.index

    assert w.settle(20, stored_everywhere, slow_commit=committing)
    assert p.written, "x is still being committed on the primary"
    for link in [k for k in w.links if not k.broken and k.primary == p.index]:
        w.break_link(link)

    def no_batches(link: Link, what: str) -> bool:  # (x sent again would hide a truncation)
        return what == "down" and link.down[0].kind == "batch"

    def reconnected() -> bool:
        return all(n.core is not None and n.core.following.streaming for n in w.nodes if n is not p)

    assert w.settle(20, reconnected, hold=no_batches, slow_commit=committing)
    assert stored_everywhere(), "a secondary truncated x"
    w.commit(p)
    assert w.settle(20, lambda: "x" in w.acked)
    w.crash(p.index)
    assert w.settle(60, lambda: one_primary(w))  # World.check(): the new primary holds x
    assert w.primaries()[0].disk.log[x_seq - 1].request_id == "x"
