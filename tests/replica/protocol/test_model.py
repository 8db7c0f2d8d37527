"""The replication protocol as a hypothesis state machine: three real replicas -- each the
real `Executor` (replica/replication/executor.py) around the real `ReplicaCore`, with the real
`RoleState` and `CommitTracker` -- in a simulated world (sim.py) of storage, network and clients.

Every protocol decision is the core's, and every effect is carried out by the executor. The
rules only make things happen in some order: ticks and time passing, an executor taking its
next input, a storage job completing (or failing, or failing in doubt: committed but reported
failed), messages delivered, calls answered or timed out, client writes (to whichever replica
shows itself primary, new or retried), streams that break, databases that go down or
stall (answer nothing: a stuck disk), crashes (volatile state and pending I/O lost, the
disk kept), restarts and pauses, an executor busy with a backlog (it takes each input late
while its ticks keep time), acks a primary's slow reader thread hands on late -- and,
with min_insync = 2, partitions in one direction or both and unbounded delays. With
min_insync = 1 the network is the one that mode assumes (docs/replication.md): nothing on the
network waits longer than MAX_DELAY, though a paused or busy replica may. A primary streams
a batch while its own commit of it is under way; that commit may then fail, fail in doubt, or
never finish.

Invariants (checked after every step, and where an effect is carried out):
- what any primary committed is a prefix every later commit agrees with (one event per
  committed seq); what follows for acknowledged writes holds for every committed event too
  (epoch_started events included: the secondaries apply what is committed);
- every acknowledged write is in the log of every replica that is primary of its epoch or a
  later one; with min_insync = 1 (where the vouch decides elections), in the log of every
  replica that vouches for its log, as of each of its steps -- what its probe replies and
  its own elections would claim;
- logs never disagree at an acknowledged position except in an older epoch's tail;
- two logs that agree on the epoch at a seq agree up to it; each epoch's events start with its
  epoch_started event;
- at most one primary per epoch; a primary's commit point never moves back nor past its log;
- no replica acks what it has not stored (its transaction committed), asks for or grants a
  vote before it recorded the epoch, or shows as committed what it does not hold;
- a client is told "committed" only for its own event, committed in the tenure it
  waited in (the commit tracker's tenures);
- no request id is stored twice in a log, and no two writes are acknowledged at one seq;
- the lemmas these rest on, checked where they are decided: a vote goes only to a log at
  least as up to date as the voter's (Raft's election restriction); a primary commits an
  older epoch's events only behind an event of its own epoch (Raft's figure 8); a secondary
  acks only on a stream from a primary of the epoch it recorded, or a newer one; the in-sync
  set never shrinks behind a member's back -- a replica that vouches is counted in sync by
  the primary of its epoch, and one that claims is counted, or was removed unheard; a
  divergent tail is cut, and only a divergent one (KIP-101): what a secondary acks on a
  stream is a prefix of its primary's log; an election is won only by a log holding every
  committed event; a process that did not run for longer than the pause threshold notices
  at its first step after (it drops its stream and its membership; a primary paused for
  longer than peer_timeout steps down);
- membership changes (MembershipModel, the same world with a fourth replica outside the
  cluster and an operator adding, promoting and removing): at most one change not committed
  in any log; only voters in a primary's in-sync set (one being removed until it is out); an
  election won only by a voter of the membership it is held in; a replica leaves only once a
  committed event removed it; convergence over the primary's members;
- bounded progress: while every process runs, a primary that no peer answers stops saying it
  is primary within the in-sync timeout (and a probe round); `quiesce`: with every replica up
  and the network healed, one primary emerges within a bounded number of steps, all logs and
  commit points converge, and a new write then commits.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from replica.protocol import Role
from replica.protocol import inputs as ins
from replica.protocol.membership import ChangeKind, MembershipChange
from tests.replica.protocol.sim import (
    HEARTBEAT,
    INSYNC_TIMEOUT,
    PEER_TIMEOUT,
    PROBE_TIMEOUT,
    STORAGE_TIMEOUT,
    Call,
    Job,
    Link,
    Node,
    World,
    membership_of,
)

N = 3
QUIESCE_ROUNDS = 400  # x HEARTBEAT / 2 of logical time
WRITE_ROUNDS = 40  # once converged, a new write commits within this many rounds
# A secondary whose database stalls or gets slow leaves the in-sync set: behind for the
# in-sync timeout, it is told at the probe round after and removed at its ack -- or, its
# stream ended meanwhile (a batch stored too slowly), removed unreachable an in-sync timeout
# after that; a write waiting for it then commits.
SLOW_ROUNDS = round((2 * INSYNC_TIMEOUT + PROBE_TIMEOUT + 4 * HEARTBEAT) / (HEARTBEAT / 2))
SLOW_IO = 2 * HEARTBEAT  # a slow database: one job every this many seconds
# A primary lost (paused or crashed): the others give up on it after peer_timeout, and one of
# them is elected in a few probe rounds more (here: within four peer timeouts in all).
LOST_ROUNDS = round(4 * PEER_TIMEOUT / (HEARTBEAT / 2))
# Long enough for a first election without the lost primary to be tried and to fail.
HICCUP_ROUNDS = round(4 * PEER_TIMEOUT / (HEARTBEAT / 2))

# A primary whose database stalls hands over after the storage timeout (a tick to notice),
# and the others elect one of them as after a lost primary.
STALL_ROUNDS = round((STORAGE_TIMEOUT + 2 * HEARTBEAT) / (HEARTBEAT / 2)) + LOST_ROUNDS

# The recipes (ProtocolModel.recipe) for each min_insync.
RECIPES = {
    1: (
        "rejoins_behind",
        "vote_not_recorded",
        "votes_wait_in_turn",
        "secondary_falls_behind",
        "primary_database_stalls",
    ),
    2: (
        "crossed_tails",
        "primary_database_stalls",
        "delayed_vote_request",
        "vote_not_recorded",
        "votes_wait_in_turn",
        "late_ack_of_a_lost_batch",
        "late_ack_across_a_core_restart",
    ),
}

# A stream broken and opened again: the end noticed, a probe round, the divergence exchange.
RECONNECT_ROUNDS = round(2 * PEER_TIMEOUT / (HEARTBEAT / 2))
# A secondary silent for longer than the in-sync timeout: out, and its answers old.
SILENT_ROUNDS = round(1.5 * INSYNC_TIMEOUT / (HEARTBEAT / 2))

# A failure is shrunk for up to five minutes (Hypothesis's own limit) after the examples that
# found it: past pytest's default timeout, which would cut the shrink short and report a
# "flaky" data generation instead of the violation.
pytestmark = pytest.mark.timeout(900)


def _observe(what: str) -> None:
    # Counted per example and shown by --hypothesis-show-statistics: how often each guarded
    # path of the protocol runs in the model.
    event(what)


class ProtocolModel(RuleBasedStateMachine):
    spare = 0  # replicas running outside the cluster (MembershipModel adds them)

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self._data: st.DataObject | None = None
        self._since_quiesce = 0

    @initialize(
        min_insync=st.sampled_from([1, 2]),
        batch=st.sampled_from([1, 2, 3]),
        settled=st.booleans(),
        data=st.data(),
    )
    def start(self, min_insync: int, batch: int, settled: bool, data: st.DataObject) -> None:
        """Three replicas with empty logs -- or, `settled`, already past their first election,
        with every secondary streaming (more of an example's steps then go to what follows)."""
        self._data = None
        self.world = World(N, min_insync, batch_events=batch, observe=_observe, spare=self.spare)
        if settled:
            assert self.world.settle(QUIESCE_ROUNDS, self._converged), self._describe()
        self._data = data

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def _pick(self, data: st.DataObject, options: list, label: str):  # type: ignore[no-untyped-def,type-arg]
        self._data = data
        return data.draw(st.sampled_from(options), label=label)

    # -- progress --------------------------------------------------------------------------

    def _moves(self) -> list[tuple[str, object]]:
        w = self.w
        moves: list[tuple[str, object]] = []
        for node in w.nodes:
            if node.running:
                moves.append(("tick", node.index))
                if len(node.inbox):
                    moves.append(("process", node.index))
        moves += [("io", i) for i in w.io_ready()]
        moves += [("commit", n.index) for n in w.committing()]
        moves += [("stream", x) for x in w.stream_deliveries()]
        moves += [("call", c) for c in w.call_deliveries()]
        return moves

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data(), count=st.integers(1, 4))
    def progress(self, data: st.DataObject, count: int) -> None:
        """A few things happen, one at a time: a tick, an executor taking its next input, a
        storage job ending (or failing, or failing in doubt), a primary's local commit of a
        batch it streamed already ending (likewise), a stream message or end-of-stream notice
        arriving, a call or its reply arriving."""
        for _ in range(count):
            moves = self._moves()
            if not moves:
                return
            self._move(*self._pick(data, moves, "move"))

    def _move(self, kind: str, move: object) -> None:
        w = self.w
        if kind == "tick":
            w.tick(move)  # type: ignore[arg-type]
        elif kind == "process":
            w.process(move)  # type: ignore[arg-type]
        elif kind == "io":
            assert self._data is not None
            outcome = self._data.draw(
                st.sampled_from(["ok"] * 8 + ["failed", "in doubt"]), label="storage"
            )
            w.complete_io(move, outcome)  # type: ignore[arg-type]
        elif kind == "commit":
            assert self._data is not None
            outcome = self._data.draw(
                st.sampled_from(["ok", "ok", "failed", "in doubt"]), label="local commit"
            )
            w.commit(w.nodes[move], outcome)  # type: ignore[index]
        elif kind == "stream":
            w.deliver(*move)  # type: ignore[misc]
        else:
            w.deliver_call(move)  # type: ignore[arg-type]

    @precondition(lambda self: self.world is not None)
    @rule(
        rounds=st.integers(1, 12),
        held=st.none() | st.integers(0, N - 1),
        data=st.data(),
    )
    def run_for(self, rounds: int, held: int | None, data: st.DataObject) -> None:
        """Everything runs and is delivered for a while (half a heartbeat a round), except
        the stream messages to replica `held`, which wait (a slow replica or link) -- as
        long as the network's delay bound allows."""
        self._data = data
        w = self.w

        def hold(link: Link, what: str) -> bool:
            if held is None or w.now + 0.05 >= w.deadline():
                return False
            return (what == "down" and link.secondary == held) or (
                what == "up" and link.primary == held
            )

        w.settle(rounds, hold=hold, respect_deadline=True)

    @precondition(lambda self: bool(self.world and self.w.deadline() > self.w.now + 0.01))
    @rule(dt=st.sampled_from([0.05, 0.1, 0.2, 0.35, 0.7, 1.3]), data=st.data())
    def time_passes(self, dt: float, data: st.DataObject) -> None:
        """Time passes while the processes run: each ticks every heartbeat (unless it is
        paused or its tick thread is busy); nothing else is delivered meanwhile."""
        self._data = data
        w = self.w
        end = min(w.now + dt, w.deadline())
        while w.now < end:
            w.advance(min(end, w.now + HEARTBEAT))
            for node in w.nodes:
                if node.running:
                    w.tick(node.index)
        w.time_passed_unprocessed()

    # -- faults ------------------------------------------------------------------------------

    def _faults(self) -> dict[str, list[object]]:
        """What can go wrong now, by kind (a kind is drawn first, then its target: a crash is
        as likely as a broken stream, however many streams there are)."""
        w = self.w
        alive = [n.index for n in w.nodes if n.alive]
        faults: dict[str, list[object]] = {
            "crash": list(alive),
            "restart": [n.index for n in w.nodes if not n.alive and not n.left],
            "pause": [n.index for n in w.nodes if n.running],
            "resume": [n.index for n in w.nodes if n.alive and n.paused],
            "db down": [n.index for n in w.nodes if n.alive and not n.db_down],
            "db up": [n.index for n in w.nodes if n.alive and n.db_down],
            "db stall": [n.index for n in w.nodes if n.alive and not n.db_stalled],
            "db unstall": [n.index for n in w.nodes if n.alive and n.db_stalled],
            "break": [link for link in w.links if not link.broken],
        }
        everyone = range(len(w.nodes))
        faults["cut"] = [(a, b) for a in everyone for b in everyone if a != b]
        faults["heal"] = [None] if w.cut else []
        return {kind: targets for kind, targets in faults.items() if targets}

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data())
    def fault(self, data: st.DataObject) -> None:
        """A process crashes (volatile state lost, its disk kept), restarts, pauses or
        resumes; its database fails every job, or stalls (answers nothing, holding its jobs,
        its writer's commit and its probe answers), or answers again; a stream breaks (each end
        notices in its own time); with min_insync = 2, a direction a -> b is cut (neither end
        can tell that from a pause or a dead host) or every cut heals. A call nobody answers
        fails at its deadline, as in the shell."""
        faults = self._faults()
        kind = self._pick(data, sorted(faults), "fault")
        what = self._pick(data, faults[kind], kind)
        w = self.w
        if kind == "crash":
            w.crash(what)  # type: ignore[arg-type]
        elif kind == "restart":
            w.restart(what)  # type: ignore[arg-type]
        elif kind == "pause":
            w.pause(what)  # type: ignore[arg-type]
        elif kind == "resume":
            w.resume(what)  # type: ignore[arg-type]
        elif kind in ("db down", "db up"):
            w.nodes[what].db_down = kind == "db down"  # type: ignore[index]
        elif kind in ("db stall", "db unstall"):
            w.nodes[what].db_stalled = kind == "db stall"  # type: ignore[index]
        elif kind == "break":
            w.break_link(what)  # type: ignore[arg-type]
        elif kind == "cut":
            w.cut.add(what)  # type: ignore[arg-type]
        else:
            w.cut.clear()

    # -- clients ---------------------------------------------------------------------------

    @precondition(lambda self: bool(self.world and self.w.writable()))
    @rule(data=st.data(), count=st.integers(1, 3))
    def client_write(self, data: st.DataObject, count: int) -> None:
        """Clients write to a replica that shows itself primary (a deposed one too, until it
        knows): new requests, or retries of ones not acknowledged yet."""
        for _ in range(count):
            writable = self.w.writable()
            if not writable:
                return
            node = self._pick(data, writable, "written to")
            stored = {
                e.request_id
                for n in self.w.nodes
                for e in n.disk.log
                if e.request_id and e.change is None  # (an operator retries a change)
            }
            retry = sorted(r for r in stored if r not in self.w.acked)
            if retry and data.draw(st.booleans(), label="retry"):
                request_id = data.draw(st.sampled_from(retry), label="request")
            else:
                self.w.next_request += 1
                request_id = f"r{self.w.next_request}"
            self.w.client_write(node, request_id)

    # -- quiescence ------------------------------------------------------------------------

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule()
    def quiesce(self) -> None:
        """Everything up and healed, the processes running and the network delivering: one
        primary, and every log and commit point the same -- and then a new write commits.
        (Now and then: faults pile up in between; and at the end of every example, see
        teardown.)"""
        self._since_quiesce = 0
        w = self.w
        self._data = None
        w.cut.clear()
        for node in w.nodes:
            w.resume(node.index)
            node.db_down = False
            node.db_stalled = False
            node.slow_io = 0.0
            if not node.alive and not node.left:
                w.restart(node.index)
        assert w.settle(QUIESCE_ROUNDS, self._converged), self._describe()
        w.next_request += 1
        request_id = f"r{w.next_request}"
        (primary,) = w.primaries()
        assert w.client_write(primary, request_id), "the primary refused a write"
        assert w.settle(WRITE_ROUNDS, lambda: request_id in w.acked), (
            f"a write to primary {primary.index} did not commit\n{self._describe()}"
        )

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data(), how=st.sampled_from(["stalled", "slow"]), writes=st.integers(1, 6))
    def slow_secondary(self, data: st.DataObject, how: str, writes: int) -> None:
        """Everything healed and converged (as `quiesce`), then one secondary's database
        stalls, or gets slow (a job every SLOW_IO seconds), and `writes` writes come at once:
        its primary drops it from the in-sync set -- telling it first -- or it keeps up, and
        the writes commit within SLOW_ROUNDS (Kafka's promise for a slow follower). Then its
        database is well again and it catches up while a few more writes come."""
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        slow = self._pick(data, [n for n in w.nodes if n is not primary], "slow")
        if how == "stalled":
            slow.db_stalled = True
        else:
            slow.slow_io = SLOW_IO
        requests = self._write_new(primary, writes)
        assert w.settle(SLOW_ROUNDS, lambda: all(r in w.acked for r in requests)), (
            f"writes to primary {primary.index} waited for {how} replica {slow.index} for "
            f"{SLOW_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
        )
        slow.db_stalled = False
        slow.slow_io = 0.0
        for _ in range(3):
            if w.writable():
                w.next_request += 1
                w.client_write(self._pick(data, w.writable(), "written to"), f"r{w.next_request}")
            w.settle(data.draw(st.integers(1, 6), label="rounds"))

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data(), how=st.sampled_from(["pause", "crash"]), hiccup=st.booleans())
    def primary_lost(self, data: st.DataObject, how: str, hiccup: bool) -> None:
        """Everything healed and converged (as `quiesce`), then the primary pauses or
        crashes: the other two elect one of them within LOST_ROUNDS, and a write to it
        commits. With a `hiccup`, one of them first stalls for HICCUP_ROUNDS (its database
        answers nothing), so the first elections fail: the later ones must not wait for the
        lost primary either."""
        self.quiesce()
        w = self.w
        (lost,) = w.primaries()
        if how == "pause":
            w.pause(lost.index)
        else:
            w.crash(lost.index)
        others = [n for n in w.nodes if n is not lost]
        if hiccup:
            stalled = self._pick(data, others, "hiccup")
            stalled.db_stalled = True
            w.settle(HICCUP_ROUNDS)
            stalled.db_stalled = False

        def elected() -> bool:  # (a paused primary still says so: it has not run since)
            primaries = [n for n in w.primaries() if n is not lost]
            return len(primaries) == 1 and all(
                w.follows_live(n, primaries[0]) for n in others if n is not primaries[0]
            )

        assert w.settle(LOST_ROUNDS, elected), (
            f"replica {lost.index} was lost ({how}) and the others elected no one in "
            f"{LOST_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
        )
        (primary,) = [n for n in w.primaries() if n is not lost]
        w.next_request += 1
        request_id = f"r{w.next_request}"
        assert w.client_write(primary, request_id), "the new primary refused a write"
        assert w.settle(WRITE_ROUNDS, lambda: request_id in w.acked), (
            f"a write to the new primary {primary.index} did not commit\n{self._describe()}"
        )

    def primary_database_stalls(self, data: st.DataObject) -> None:
        """Both min_insync. Everything healed and converged (as `quiesce`), then `writes`
        writes come and the
        primary's database stalls with their batch written (its streams carry it; its own
        commit waits) and answers nothing for as long as it takes: the primary
        hands over within the storage timeout (its secondaries are in sync), one of the others
        is elected within STALL_ROUNDS, and a retry of every write there commits it once. Then
        the stalled database answers again: the old primary's batch, if its commit finishes
        now, is an older epoch's tail -- cut when it follows the new primary."""
        writes = data.draw(st.integers(1, 4), label="writes")
        self.quiesce()
        w = self.w
        (stalled,) = w.primaries()
        requests = self._write_new(stalled, writes)
        stalled.db_stalled = True
        others = [n for n in w.nodes if n is not stalled]

        def handed_over() -> bool:
            primaries = [n for n in w.primaries() if n is not stalled]
            return (
                len(primaries) == 1
                and all(w.follows_live(n, primaries[0]) for n in others if n is not primaries[0])
                # (Its core stepped down; what it shows may wait behind a write its stalled
                # database holds -- the epoch it heard of, say.)
                and stalled.core is not None
                and stalled.core.in_sync_set is None
            )

        assert w.settle(STALL_ROUNDS, handed_over), (
            f"primary {stalled.index}'s database stalled and no other replica was primary "
            f"after {STALL_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
        )
        (primary,) = [n for n in w.primaries() if n is not stalled]
        for request_id in requests:  # (the clients retry, with the same request ids)
            if request_id not in w.acked:
                assert w.client_write(primary, request_id), "the new primary refused a retry"
        assert w.settle(WRITE_ROUNDS, lambda: all(r in w.acked for r in requests)), (
            f"retries to the new primary {primary.index} did not commit\n{self._describe()}"
        )
        stalled.db_stalled = False

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data(), writes=st.integers(1, 3), both=st.booleans())
    def lagging_then_lost(self, data: st.DataObject, writes: int, both: bool) -> None:
        """The classic way to lose acknowledged writes (Kafka's unclean election): a secondary
        falls behind -- its stream breaks and its database stalls, so it cannot come back --
        and is dropped unheard while writes commit with the other; then the primary crashes
        (and, `both`, the other secondary too) and the laggard's database answers again. It
        may still claim to be in sync, but it must not be elected on that claim without the
        replica that holds the writes, nor vouch before it holds them. With only the primary
        lost, the other two elect one of them within LOST_ROUNDS."""
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        secondaries = [n for n in w.nodes if n is not primary]
        lagging = self._pick(data, secondaries, "lagging")
        lagging.db_stalled = True
        if lagging.follow is not None:
            w.break_link(lagging.follow)
        requests = self._write_new(primary, writes)
        assert w.settle(SLOW_ROUNDS, lambda: all(r in w.acked for r in requests)), (
            f"writes to primary {primary.index} waited for lagging replica {lagging.index}\n"
            f"{self._describe()}"
        )
        w.crash(primary.index)
        if both:
            for n in secondaries:
                if n is not lagging:
                    w.crash(n.index)
        lagging.db_stalled = False
        if both:
            w.settle(LOST_ROUNDS)
            return
        alive = [n for n in w.nodes if n.alive]
        assert w.settle(LOST_ROUNDS, lambda: self._one_primary_followed_by(alive)), (
            f"primary {primary.index} crashed and the others elected no one in "
            f"{LOST_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
        )

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data(), writes=st.integers(1, 4), extra=st.integers(0, 6))
    def reconnect_while_committing(self, data: st.DataObject, writes: int, extra: int) -> None:
        """Everything healed and converged (as `quiesce`), then `writes` writes come while
        the primary's own commit of what it streams is slow: a secondary stores them first,
        its stream breaks, and it reconnects while that commit is still under way. The
        primary's divergence answer counts what it wrote, not only what is durable: the
        secondary keeps those events (KIP-101: a divergent tail is cut, and only that). Then
        the commit ends, `extra` rounds later, and the writes commit."""
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        secondary = self._pick(data, [n for n in w.nodes if n is not primary], "reconnects")

        def held(index: int) -> bool:
            return index == primary.index

        requests = self._write_new(primary, writes)
        stored = w.settle(
            RECONNECT_ROUNDS,
            lambda: len(secondary.disk.log) >= len(primary.log_as_written()),
            slow_commit=held,
        )
        assert stored, (
            f"replica {secondary.index} did not store the streamed batch\n{self._describe()}"
        )
        old = secondary.follow
        if old is not None:
            w.break_link(old)

        def reconnected() -> bool:
            link = secondary.follow
            return (
                link is not None
                and link is not old
                and not link.broken
                and link.primary_stream is not None
                and w.follows_live(secondary, primary)
            )

        assert w.settle(RECONNECT_ROUNDS, reconnected, slow_commit=held), (
            f"replica {secondary.index} did not reconnect to primary {primary.index}\n"
            f"{self._describe()}"
        )
        w.settle(extra, slow_commit=held)
        assert w.settle(WRITE_ROUNDS, lambda: all(r in w.acked for r in requests)), (
            f"writes to primary {primary.index} did not commit after its slow commit\n"
            f"{self._describe()}"
        )

    @precondition(
        lambda self: self.world is not None and self._since_quiesce >= 25 and self.w.min_insync == 1
    )
    @rule(data=st.data(), writes=st.integers(1, 3))
    def voter_dies(self, data: st.DataObject, writes: int) -> None:
        """min_insync = 1. Everything healed and converged (as `quiesce`), then one secondary
        crashes and its primary counts it out; the primary's messages to both secondaries
        are cut, and the dead one restarts. The other stops hearing its primary and, with the
        restarted one, elects a newer epoch -- then the voter crashes, and the primary, whose
        messages reach its host again, sees it dead. That death does not make it out: it may
        have voted meanwhile, so the primary must not acknowledge alone the writes that come
        now. (Nothing here asserts it: a write it acknowledged is one a newer primary lacks,
        which the world's own checks fail on when the cluster next converges.)"""
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        secondaries = [n for n in w.nodes if n is not primary]
        voter = self._pick(data, secondaries, "voter")
        (other,) = [n for n in secondaries if n is not voter]
        w.crash(other.index)

        def counted_out(node: Node) -> bool:
            core = primary.core
            member = (
                None
                if core is None or core.in_sync_set is None
                else core.in_sync_set.members.get(node.index)
            )
            return member is not None and not member.in_sync

        w.settle(LOST_ROUNDS, lambda: counted_out(other))
        w.cut.update({(primary.index, voter.index), (primary.index, other.index)})
        w.restart(other.index)

        def elected() -> bool:
            core = voter.core
            return (
                core is not None
                and any(n is not primary for n in w.primaries())
                and core.current_epoch > (primary.core.current_epoch if primary.core else 0)
            )

        if not w.settle(LOST_ROUNDS, elected):
            return
        w.observe("voter_dies: a newer epoch elected")
        w.crash(voter.index)
        w.cut.discard((primary.index, voter.index))
        if not w.settle(
            LOST_ROUNDS,
            lambda: counted_out(voter) or not primary.core or primary.core.role is not Role.PRIMARY,
        ):
            return
        if primary.core is None or primary.core.role is not Role.PRIMARY:
            return
        w.observe("voter_dies: the old primary saw the voter dead")
        for _ in range(writes):
            if primary not in w.writable():
                break
            w.next_request += 1
            w.client_write(primary, f"r{w.next_request}")
        w.settle(data.draw(st.integers(1, 8), label="rounds"))

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data(), down_rounds=st.integers(1, 4))
    def secondary_restarts(self, data: st.DataObject, down_rounds: int) -> None:
        """Everything healed and converged (as `quiesce`), then one secondary pauses for
        good (a stuck host: it answers nothing) and its primary goes on with the other. That
        one crashes and restarts at once (`down_rounds` half-heartbeats later): its primary
        keeps its office -- a secondary that acked within insync_timeout runs, whatever a
        probe round that began before its restart says -- and a write then commits."""
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        assert primary.core is not None
        epoch = primary.core.current_epoch
        secondaries = [n for n in w.nodes if n is not primary]
        restarting = self._pick(data, secondaries, "restarts")
        (silent,) = [n for n in secondaries if n is not restarting]
        w.pause(silent.index)
        w.settle(SILENT_ROUNDS)

        def in_office() -> bool:
            core = primary.core
            return core is not None and core.role is Role.PRIMARY and core.current_epoch == epoch

        if not in_office():
            return  # (it may have stepped down for what happened before: not this scenario)
        w.crash(restarting.index)
        w.settle(down_rounds)
        w.restart(restarting.index)
        back = w.settle(
            SILENT_ROUNDS, lambda: not in_office() or w.follows_live(restarting, primary)
        )
        assert in_office(), (
            f"primary {primary.index} stepped down while replica {restarting.index} restarted "
            f"and replica {silent.index} was silent\n{self._describe()}"
        )
        assert back, (
            f"replica {restarting.index} did not follow primary {primary.index} again within "
            f"{SILENT_ROUNDS * HEARTBEAT / 2:.1f}s of its restart\n{self._describe()}"
        )
        w.resume(silent.index)
        w.next_request += 1
        request_id = f"r{w.next_request}"
        assert w.settle(WRITE_ROUNDS, lambda: primary in w.writable()), (
            f"primary {primary.index} took no write after replica {restarting.index} came back\n"
            f"{self._describe()}"
        )
        assert w.client_write(primary, request_id), "the primary refused a write"
        assert w.settle(WRITE_ROUNDS, lambda: request_id in w.acked), (
            f"a write to primary {primary.index} did not commit\n{self._describe()}"
        )

    # -- recipes ---------------------------------------------------------------------------

    @precondition(lambda self: self.world is not None and self._since_quiesce >= 25)
    @rule(data=st.data())
    def recipe(self, data: st.DataObject) -> None:
        """One of the recipes below: a history the random schedule reaches too rarely, driven
        there step by step (its choices drawn here) for the invariants to judge. One rule for
        them all, drawn as often as one scenario: each recipe needs to run only once to show
        what it shows, and more rules would leave fewer draws to the random scenarios."""
        which = data.draw(st.sampled_from(RECIPES[self.w.min_insync]), label="recipe")
        getattr(self, which)(data)

    # -- recipes: logs that diverge ----------------------------------------------------------

    def crossed_tails(self, data: st.DataObject) -> None:
        """min_insync = 2. Everything healed and converged (as `quiesce`), then two
        unacknowledged tails of different epochs cross. The primary streams `writes` writes
        to one secondary only and crashes before its own commit of them ends; that secondary
        crashes too. The other two elect one of them (a newer epoch), which appends its
        epoch_started -- and `more` writes -- that the other does not store, and crashes. The
        first secondary, back, is elected with the other's vote: its log is longer in the
        older epoch. When the third returns, its tail of the middle epoch diverges from the
        new primary's log at the same seqs: the divergence exchange must cut it, comparing
        the logs by epoch, not by seq alone (KIP-101), before it acks anything."""
        writes = data.draw(st.integers(1, 2), label="writes")
        more = data.draw(st.integers(0, 2), label="more")
        self.quiesce()
        w = self.w
        (first,) = w.primaries()
        secondaries = [n for n in w.nodes if n is not first]
        longer = self._pick(data, secondaries, "longer")
        (other,) = [n for n in secondaries if n is not longer]
        start = len(longer.disk.log)
        requests = self._write_new(first, writes)

        def only_to_longer(link: Link, what: str) -> bool:
            return what == "down" and link.secondary == other.index

        stored = w.settle(
            WRITE_ROUNDS,
            lambda: len(longer.disk.log) >= start + writes,
            hold=only_to_longer,
            slow_commit=lambda index: index == first.index,
        )
        if not stored or any(r in w.acked for r in requests):
            return  # (not this scenario)
        w.crash(first.index)
        w.crash(longer.index)
        w.restart(first.index)

        def one_of_them_leads() -> bool:
            return any(n is not longer for n in w.primaries())

        def nothing_streamed_to_them(link: Link, what: str) -> bool:
            return what == "down" and link.secondary in (first.index, other.index)

        if not w.settle(LOST_ROUNDS, one_of_them_leads, hold=nothing_streamed_to_them):
            return
        (middle,) = [n for n in w.primaries() if n is not longer]

        for _ in range(more):
            if middle in w.writable():
                w.next_request += 1
                w.client_write(middle, f"r{w.next_request}")
        w.settle(data.draw(st.integers(0, 4), label="rounds"), hold=nothing_streamed_to_them)
        w.crash(middle.index)
        w.restart(longer.index)
        if not w.settle(LOST_ROUNDS, lambda: longer in w.primaries()):
            return
        w.observe("crossed_tails: the longer log of the older epoch elected")
        w.restart(middle.index)
        assert w.settle(QUIESCE_ROUNDS, self._converged), self._describe()

    def rejoins_behind(self, data: st.DataObject) -> None:
        """min_insync = 1. Everything healed and converged (as `quiesce`), then a secondary
        crashes, `missed` writes are acknowledged without it, and it restarts and catches up
        to its primary's log end. Its ack of that end is delayed in the network (within the
        delay bound) while a burst of writes -- more than its stream has in flight -- is
        acknowledged with the other secondary. The delayed ack then arrives: the secondary
        joins the in-sync set behind the commit point, and may vouch only once it holds what
        was acknowledged meanwhile."""
        missed = data.draw(st.integers(1, 3), label="missed")
        burst = data.draw(st.integers(1, 3), label="burst")
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        rejoining = self._pick(data, [n for n in w.nodes if n is not primary], "rejoins")
        w.crash(rejoining.index)
        missed_requests = self._write_new(primary, missed)
        if not w.settle(WRITE_ROUNDS, lambda: all(r in w.acked for r in missed_requests)):
            return  # (not this scenario)
        w.restart(rejoining.index)
        tip = len(primary.disk.log)

        def within_bound() -> bool:
            return w.now + HEARTBEAT / 2 < w.deadline()

        def ack_of_the_tip_delayed(link: Link, what: str) -> bool:
            return (
                what == "up"
                and link.secondary == rejoining.index
                and len(rejoining.disk.log) >= tip
                and within_bound()
            )

        if not w.settle(
            RECONNECT_ROUNDS, lambda: len(rejoining.disk.log) >= tip, hold=ack_of_the_tip_delayed
        ):
            return
        requests = self._write_new(primary, 2 * w.batch_events + burst)

        def both_ways_delayed(link: Link, what: str) -> bool:
            return link.secondary == rejoining.index and within_bound()

        if not w.settle(4, lambda: all(r in w.acked for r in requests), hold=both_ways_delayed):
            return
        w.observe("rejoins_behind: a burst acknowledged while the ack of the tip was delayed")
        assert w.settle(WRITE_ROUNDS, lambda: w.follows_live(rejoining, primary)), (
            f"replica {rejoining.index} did not follow primary {primary.index} again\n"
            f"{self._describe()}"
        )

    def delayed_vote_request(self, data: st.DataObject) -> None:
        """min_insync = 2. Everything healed and converged (as `quiesce`), then one secondary
        is cut off from its primary, which drops it and goes on with the other. That other's
        stream breaks; before it is back, the cut-off one sees it follow no live primary,
        with a log no longer than its own, and asks for its vote -- a request the network
        then holds. The other reconnects, `writes` writes are acknowledged with it alone, and
        the primary crashes. The vote request arrives now: the voter's log has grown past the
        candidate's since, and it must refuse (Raft's election restriction), or the
        acknowledged writes are cut from its log when it follows the candidate."""
        writes = data.draw(st.integers(1, 2), label="writes")
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        # Equal logs tie on the lower index: the candidate counts itself the one to elect.
        candidate, voter = sorted((n for n in w.nodes if n is not primary), key=lambda n: n.index)
        w.cut.update({(primary.index, candidate.index), (candidate.index, primary.index)})

        def dropped() -> bool:
            core = primary.core
            iss = None if core is None else core.in_sync_set
            member = None if iss is None else iss.members.get(candidate.index)
            return member is not None and not member.in_sync

        if not w.settle(SLOW_ROUNDS, dropped) or voter.follow is None:
            return
        held = {"request": True, "stream": True}

        def request(call: Call) -> bool:
            return (
                held["request"]
                and call.kind == "vote"
                and (call.caller, call.callee) == (candidate.index, voter.index)
            )

        def reconnecting(link: Link, what: str) -> bool:
            return held["stream"] and what == "down" and link.secondary == voter.index

        w.break_link(voter.follow)
        if not w.settle(
            LOST_ROUNDS,
            lambda: any(request(c) for c in w.calls),
            hold=reconnecting,
            hold_calls=request,
        ):
            return
        held["stream"] = False
        if not w.settle(
            RECONNECT_ROUNDS, lambda: w.follows_live(voter, primary), hold_calls=request
        ):
            return
        if primary not in w.writable():
            return
        requests = self._write_new(primary, writes)
        if not w.settle(4, lambda: all(r in w.acked for r in requests), hold_calls=request):
            return
        w.crash(primary.index)
        w.settle(2, lambda: not w.follows_live(voter, primary), hold_calls=request)
        w.observe("delayed_vote_request: the request arrives after the voter's log grew")
        held["request"] = False
        assert w.settle(QUIESCE_ROUNDS, lambda: w.converged(everyone=False)), self._describe()

    def vote_not_recorded(self, data: st.DataObject) -> None:
        """Everything healed and converged (as `quiesce`), then the primary crashes, and the
        database of a replica asked for its vote fails the write of the epoch it votes in.
        The vote is the recorded epoch: it must not be granted (its replica starts over from
        what is durable). The two elect one of them within LOST_ROUNDS even so."""
        self.quiesce()
        w = self.w
        (lost,) = w.primaries()
        w.crash(lost.index)
        deciding: list[int] = []

        def its_vote_written(index: int, job: Job) -> bool:
            asked = any(c.kind == "vote" and c.callee == index and c.handling for c in w.calls)
            if asked and job.kind == "persist" and not deciding:
                deciding.append(index)
            return bool(deciding) and index == deciding[0] and job.kind == "persist"

        if not w.settle(LOST_ROUNDS, lambda: bool(deciding), keep_io=its_vote_written):
            return
        w.complete_io(deciding[0], "failed")
        w.observe("vote_not_recorded: the voter's write of its epoch failed")
        alive = [n for n in w.nodes if n.alive]
        assert w.settle(LOST_ROUNDS, lambda: self._one_primary_followed_by(alive)), (
            f"primary {lost.index} crashed, a vote was not recorded, and the others elected "
            f"no one in {LOST_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
        )

    def votes_wait_in_turn(self, data: st.DataObject) -> None:
        """Everything healed and converged (as `quiesce`), then the primary crashes. The
        voter's database is slow: the candidate's vote request waits in it, unanswered, until
        the candidate has asked again in a newer epoch. Then the database catches up and both
        requests are decided, the second while the epoch of the first vote is still being
        written. Each grant waits for the write of its own epoch (the executor carries out
        waiting steps in the order they were decided), and the candidate is elected."""
        self.quiesce()
        w = self.w
        (lost,) = w.primaries()
        # Equal logs tie on the lower index: the candidate counts itself the one to elect.
        candidate, voter = sorted((n for n in w.nodes if n is not lost), key=lambda n: n.index)
        w.crash(lost.index)
        asked: set[int] = set()

        def asked_twice() -> bool:
            asked.update(
                c.call_id
                for c in w.calls
                if c.kind == "vote" and c.callee == voter.index and c.handling
            )
            return len(asked) >= 2

        def slow(index: int, job: Job) -> bool:
            return index == voter.index and bool(asked)

        if not w.settle(2 * LOST_ROUNDS, asked_twice, keep_io=slow):
            return
        w.observe("votes_wait_in_turn: a second vote request before the first was decided")
        assert w.settle(LOST_ROUNDS, lambda: self._one_primary_followed_by([candidate, voter])), (
            f"primary {lost.index} crashed, replica {voter.index}'s database was slow to decide "
            f"two vote requests, and no one was elected in {LOST_ROUNDS * HEARTBEAT / 2:.1f}s\n"
            f"{self._describe()}"
        )

    # -- recipes: streams ---------------------------------------------------------------------

    def late_ack_of_a_lost_batch(self, data: st.DataObject) -> None:
        """min_insync = 2. Everything healed and converged (as `quiesce`), then `writes`
        writes come; one secondary stores them and acks, but the primary's thread that reads
        that stream's acks is slow to hand them on (the shell reads each stream's acks on a
        thread of its own), and the primary's own commit of the batch fails: it steps down
        without those events. That secondary is cut off meanwhile; the other one, which has
        not stored them yet and still vouches, votes the old primary back in a newer epoch --
        and crashes. The secondary comes back, its tail that the primary lacks is cut, and it
        acks on a new stream; only then does the stale ack reach the executor. It speaks of
        events the new tenure does not have: it must count for nothing (an ack counts only on
        the stream it came on), so a write that comes while the secondary's stream is slow is
        acknowledged only once it truly holds it (the world checks what the secondary vouches
        and claims for)."""
        writes = data.draw(st.integers(2, 3), label="writes")
        rounds = data.draw(st.integers(1, 8), label="rounds")
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        picked = self._voter_and_acker(data, primary)
        if picked is None:
            return
        voter, acker = picked
        stranded = self._lost_batch_acks_stranded(primary, voter, acker, writes)
        if stranded is None:
            return
        v = voter.index
        if not w.settle(LOST_ROUNDS, lambda: bool(primary.core and primary.core.in_sync_set)):
            return
        w.observe("late ack: the old primary elected again")
        w.crash(voter.index)
        w.cut.clear()

        def streaming(link: Link, what: str) -> bool:
            core = acker.core
            return (
                link.secondary == acker.index
                and what == "down"
                and core is not None
                and core.following.streaming
            )

        def on_new_stream() -> bool:
            core = primary.core
            iss = None if core is None else core.in_sync_set
            if core is None or iss is None or core.role is not Role.PRIMARY:
                return False
            member = iss.members.get(acker.index)
            return member is not None and member.stream is not None and not iss.members[v].in_sync

        if not w.settle(LOST_ROUNDS, on_new_stream, hold=streaming):
            return
        w.observe("late ack: handed on after a new stream began")
        self._stale_acks_arrive(primary, acker, stranded, rounds)

    # -- recipes: vouch -----------------------------------------------------------------------

    def secondary_falls_behind(self, data: st.DataObject) -> None:
        """min_insync = 1. Everything healed and converged (as `quiesce`), then one secondary
        falls behind what its primary says -- its disk too slow for the writes that keep
        coming (`_slow_under_load`), or its executor working through a growing backlog
        (`_busy`) -- until its primary drops it. What it reads late is old news by then: it
        must not vouch (nor claim) on it for a log without what was acknowledged since. The
        writes that waited for it commit within SLOW_ROUNDS."""
        how = data.draw(st.sampled_from(["slow disk under load", "busy executor"]), label="how")
        self.quiesce()
        w = self.w
        (primary,) = w.primaries()
        behind = self._pick(data, [n for n in w.nodes if n is not primary], "behind")
        if how == "slow disk under load":
            self._slow_under_load(data, primary, behind)
        else:
            self._busy(data, primary, behind)

    def _slow_under_load(self, data: st.DataObject, primary: Node, slow: Node) -> None:
        """Its database gets slow (a job every 40-80 ms) while clients keep writing, a full
        batch every half heartbeat for 1.5-2 s: more than it can store, yet each batch waits
        less than the vouch window in its queue. It falls further and further behind, and its
        primary tells it, by heartbeat, that it is leaving while batches sent earlier -- "in
        sync", they said -- are still being stored; it confirms and is dropped. What those
        batches said is older than what it confirmed, and must not bring its membership back
        (its primary no longer counts it, and acknowledges without it). Then its database is
        well again."""
        w = self.w
        slow.slow_io = self._pick(data, [0.04, 0.06, 0.08], "slow io")
        requests: list[str] = []
        for _ in range(data.draw(st.integers(30, 40), label="rounds")):
            for _ in range(w.batch_events):
                w.next_request += 1
                if w.client_write(primary, f"r{w.next_request}"):
                    requests.append(f"r{w.next_request}")
            w.settle(1)
        assert w.settle(SLOW_ROUNDS, lambda: all(r in w.acked for r in requests)), (
            f"writes to primary {primary.index} waited for slow replica {slow.index} for "
            f"{SLOW_ROUNDS * HEARTBEAT / 2:.1f}s after the last one\n{self._describe()}"
        )
        slow.slow_io = 0.0

    def _busy(self, data: st.DataObject, primary: Node, busy: Node) -> None:
        """Its executor falls behind: its inputs come faster than it takes them, so it takes
        each one later and later (by half a round more each round, up to 0.8-1 s), while its
        ticks keep time -- busy, not paused. Then its stream breaks: its primary drops it
        after the in-sync timeout, and a write that came meanwhile commits with the other
        secondary. The busy one is still working through what its primary said before the
        break: "in sync", in words that echo acks it sent long before it reads them. Its vouch
        counts from those acks' sending, so it has ended before the drop. Then its executor
        catches up."""
        w = self.w
        lag = self._pick(data, [0.8, 0.9, 1.0], "lag")
        while busy.lag < lag:
            busy.lag = min(lag, busy.lag + HEARTBEAT / 4)
            w.settle(1)
        if busy.follow is not None:
            w.break_link(busy.follow)
        w.settle(data.draw(st.integers(0, 2), label="rounds"))
        w.next_request += 1
        request_id = f"r{w.next_request}"
        if w.client_write(primary, request_id):
            assert w.settle(SLOW_ROUNDS, lambda: request_id in w.acked), (
                f"a write to primary {primary.index} waited for busy replica {busy.index} for "
                f"{SLOW_ROUNDS * HEARTBEAT / 2:.1f}s\n{self._describe()}"
            )
        busy.lag = 0.0

    # -- recipes: ids across a restart of the protocol ---------------------------------------

    def late_ack_across_a_core_restart(self, data: st.DataObject) -> None:
        """min_insync = 2. Everything healed and converged (as `quiesce`), then a power
        outage: every replica restarts, one is elected, and one secondary's stream is answered
        before the other's. Then, as in `late_ack_of_a_lost_batch`, `writes` writes come; that
        secondary stores them and acks, but the primary's thread that reads the stream's acks
        is slow to hand them on, and the primary's own commit of the batch fails: it steps
        down without those events. The secondary is cut off meanwhile. The primary runs for a
        newer epoch and its database fails that durable write: its protocol starts over from
        what is durable -- as after a crash, but in the same process, where the stale acks
        still wait. It is elected with the other secondary's vote (whose stream is slow), and
        answers the first secondary's Hello on a new stream -- the first one again -- before
        the stale acks reach the executor. They speak of events this tenure does not have:
        they must count for nothing (an ack counts only on the stream it came on, and no
        stream of the restarted protocol is one of its predecessor's), so a write that comes
        while the secondary's stream is slow is acknowledged only once it truly holds it (the
        world checks what the secondary vouches and claims for)."""
        writes = data.draw(st.integers(2, 3), label="writes")
        rounds = data.draw(st.integers(1, 8), label="rounds")
        self.quiesce()
        w = self.w
        for node in w.nodes:
            w.crash(node.index)
        for node in w.nodes:
            w.restart(node.index)

        def no_stream_yet(link: Link, what: str) -> bool:
            return what == "up"

        if not w.settle(LOST_ROUNDS, lambda: len(w.primaries()) == 1, hold=no_stream_yet):
            return
        (primary,) = w.primaries()
        picked = self._voter_and_acker(data, primary)
        if picked is None:
            return
        voter, acker = picked
        p, v = primary.index, voter.index

        def voter_slow(link: Link, what: str) -> bool:
            return link.secondary == v and what == "up"

        def answered() -> bool:  # the primary answered the acker's Hello on its stream
            link = acker.follow
            return (
                link is not None
                and not link.broken
                and link.primary == p
                and link.primary_stream is not None
            )

        if not w.settle(RECONNECT_ROUNDS, answered, hold=voter_slow):
            return
        if not w.settle(QUIESCE_ROUNDS, self._converged) or w.primaries() != [primary]:
            return
        stranded = self._lost_batch_acks_stranded(primary, voter, acker, writes)
        if stranded is None:
            return

        def epoch_written(index: int, job: Job) -> bool:
            return index == p and job.kind == "persist"

        if not w.settle(
            LOST_ROUNDS,
            lambda: bool(primary.jobs) and epoch_written(p, primary.jobs[0]),
            keep_io=epoch_written,
        ):
            return
        w.complete_io(p, "failed")
        w.observe("late ack across a core restart: the primary's protocol restarted")

        def leads() -> bool:
            core = primary.core
            return core is not None and core.role is Role.PRIMARY

        if not w.settle(LOST_ROUNDS, leads, hold=voter_slow):
            return
        w.cut.clear()
        if not w.settle(RECONNECT_ROUNDS, lambda: leads() and answered(), hold=voter_slow):
            return
        w.observe("late ack across a core restart: handed on after a new stream began")
        self._stale_acks_arrive(primary, acker, stranded, rounds)

    def _voter_and_acker(self, data: st.DataObject, primary: Node) -> tuple[Node, Node] | None:
        """Of `primary`'s two secondaries, the voter -- drawn from those with a higher index:
        its log will equal the primary's, and the tie goes to the lower index -- and the
        other, which acks; None if neither has a higher index (not this scenario)."""
        secondaries = [n for n in self.w.nodes if n is not primary]
        voters = [n for n in secondaries if n.index > primary.index]
        if not voters:
            return None
        voter = self._pick(data, voters, "voter")
        (acker,) = [n for n in secondaries if n is not voter]
        return voter, acker

    def _stale_acks_arrive(
        self,
        primary: Node,
        acker: Node,
        stranded: list[tuple[int, int, ins.SecondaryAcked]],
        rounds: int,
    ) -> None:
        """The stranded acks reach `primary` now, and a new write follows while `acker`'s
        stream carries nothing down: the stale acks must count for nothing (the world judges
        what is acknowledged)."""
        w = self.w
        w.hand_over(stranded)
        w.settle(rounds)
        if primary in w.writable():
            w.next_request += 1
            w.client_write(primary, f"r{w.next_request}")

            def held(link: Link, what: str) -> bool:
                return link.secondary == acker.index and what == "down"

            w.settle(rounds, hold=held)

    def _lost_batch_acks_stranded(
        self, primary: Node, voter: Node, acker: Node, writes: int
    ) -> list[tuple[int, int, ins.SecondaryAcked]] | None:
        """`writes` writes come; `acker` stores them and acks, but the primary's reader thread
        keeps those acks (`World.strand_acks`) while `voter`'s stream is slow, and the
        primary's own commit of the batch fails. `acker` is cut off from both others. The
        stranded acks, or None if the acker's ack never came (not this scenario)."""
        w = self.w
        start = len(primary.disk.log)
        self._write_new(primary, writes)
        end = start + writes

        def slow(link: Link, what: str) -> bool:
            return (link.secondary == voter.index and what == "down") or (
                link.secondary == acker.index and what == "up" and len(acker.disk.log) >= end
            )

        def ack_waits() -> bool:
            link = acker.follow
            return link is not None and any(
                m.kind == "ack" and m.body["seq"] == end for m in link.up
            )

        if not w.settle(RECONNECT_ROUNDS, ack_waits, hold=slow, slow_commit=lambda i: True):
            return None
        assert acker.follow is not None
        stranded = w.strand_acks(acker.follow)
        w.commit(primary, "failed")
        a, p, v = acker.index, primary.index, voter.index
        w.cut.update({(a, p), (p, a), (a, v), (v, a)})
        return stranded

    def _write_new(self, primary: Node, count: int) -> list[str]:
        """`count` new writes to `primary`, each of which it must take; their request ids."""
        w = self.w
        requests = []
        for _ in range(count):
            w.next_request += 1
            requests.append(f"r{w.next_request}")
            assert w.client_write(primary, requests[-1]), "the primary refused a write"
        return requests

    def _one_primary_followed_by(self, nodes: list[Node]) -> bool:
        """One primary, and every other of `nodes` streaming from it, heard lately."""
        primaries = self.w.primaries()
        return len(primaries) == 1 and all(
            self.w.follows_live(n, primaries[0]) for n in nodes if n is not primaries[0]
        )

    def _converged(self) -> bool:
        return self.w.converged()

    def _describe(self) -> str:
        lines = ["did not converge:"]
        for n in self.w.nodes:
            core = n.core
            role = core.role.value if core else "down"
            epoch = core.current_epoch if core else n.disk.epoch
            member = (
                f" ({core.membership.describe()} as of {core.membership.seq})"
                if core and core.membership.seq
                else ""
            )
            lines.append(
                f"  replica {n.index}: {role} epoch {epoch} committed "
                f"{n.commits.committed_seq} log {[(e.epoch, e.request_id) for e in n.disk.log]}"
                + member
            )
        return "\n".join(lines)

    @invariant()
    def invariants_hold(self) -> None:
        if self.world is not None:
            self._since_quiesce += 1
            self.w.check()

    def teardown(self) -> None:
        if self.world is not None:
            self.quiesce()


class MembershipModel(ProtocolModel):
    """The same world with a fourth replica running outside the cluster from the start, and
    an operator who adds replicas as learners, promotes them and removes replicas (voters,
    learners, the old primary once deposed) -- each change through the primary's rules,
    interleaved with every fault above. Further invariants: at most one membership change
    not committed in any log; only voters in a primary's in-sync set (one being removed
    until it is out); only a voter wins an election; a replica leaves only once its removal
    is committed; and, as before, nothing acknowledged is lost -- counted over the
    membership in force (quiesce converges over the primary's members)."""

    spare = 1

    # Not rules here: the scenarios and recipes drive three replicas step by step. (A
    # method of the same name shadows the rule.)
    def recipe(self, data: st.DataObject) -> None: ...
    def slow_secondary(self, data: st.DataObject, how: str, writes: int) -> None: ...
    def primary_lost(self, data: st.DataObject, how: str, hiccup: bool) -> None: ...
    def primary_database_stalls(self, data: st.DataObject) -> None: ...
    def lagging_then_lost(self, data: st.DataObject, writes: int, both: bool) -> None: ...
    def reconnect_while_committing(self, data: st.DataObject, writes: int, extra: int) -> None: ...
    def voter_dies(self, data: st.DataObject, writes: int) -> None: ...
    def secondary_restarts(self, data: st.DataObject, down_rounds: int) -> None: ...

    @precondition(lambda self: bool(self.world and self.w.writable()))
    @rule(data=st.data())
    def change_membership(self, data: st.DataObject) -> None:
        """An operator asks whichever replica shows itself primary for a change: add a replica
        not in the cluster (as a learner), promote a learner, remove a member."""
        w = self.w
        node = self._pick(data, w.writable(), "changed on")
        membership = membership_of(w.initial, node.log_as_written())
        options = [
            MembershipChange(ChangeKind.ADD, n.index)
            for n in w.nodes
            if not membership.is_member(n.index) and n.index not in membership.removed
        ]
        options += [MembershipChange(ChangeKind.PROMOTE, i) for i in sorted(membership.learners)]
        options += [MembershipChange(ChangeKind.REMOVE, i) for i in sorted(membership.members)]
        change = self._pick(data, options, "change")
        refusal = w.change_membership(node, change)
        event(
            f"membership {change.kind}: "
            + ("written" if refusal is None else "refused: " + refusal.split(" (")[0][:40])
        )

    @precondition(lambda self: bool(self.world and self.w.writable()))
    @rule(data=st.data())
    def promote_once_caught_up(self, data: st.DataObject) -> None:
        """Add the spare replica if it is not in, let it catch up, and promote it: the path an
        operator takes (so that examples reach a four-voter cluster often)."""
        w = self.w
        node = self._pick(data, w.writable(), "changed on")
        membership = membership_of(w.initial, node.log_as_written())
        spare = w.nodes[-1].index
        if spare in membership.removed or membership.is_voter(spare):
            return
        add = MembershipChange(ChangeKind.ADD, spare)
        if not membership.is_member(spare) and w.change_membership(node, add) is not None:
            return
        promote = MembershipChange(ChangeKind.PROMOTE, spare)

        def promoted() -> bool:
            return node.running and w.change_membership(node, promote) is None

        if w.settle(SLOW_ROUNDS, promoted, respect_deadline=True):
            event("a learner caught up and was promoted")


def _model_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=int(os.environ.get("CHAT_MODEL_STEPS", "80")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False,
        print_blob=True,  # a failure prints the @reproduce_failure line that replays it
        # `make mutants` only asks whether a failure is found, and how soon: no shrinking.
        phases=(
            [Phase.explicit, Phase.reuse, Phase.generate]
            if os.environ.get("CHAT_MODEL_SHRINK") == "0"
            else list(Phase)
        ),
    )


# 100 in `make test` (~25 s); CHAT_MEMBERSHIP_EXAMPLES for a longer search.
TestMembershipModel = MembershipModel.TestCase
TestMembershipModel.settings = _model_settings(
    int(os.environ.get("CHAT_MEMBERSHIP_EXAMPLES", "100"))
)

TestProtocolModel = ProtocolModel.TestCase
# 300 in `make test` (~1.5 min; its 10-minute budget); `make mutants` and a longer search set
# CHAT_MODEL_EXAMPLES.
TestProtocolModel.settings = _model_settings(int(os.environ.get("CHAT_MODEL_EXAMPLES", "300")))
