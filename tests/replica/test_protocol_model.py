"""The replication protocol as a hypothesis state machine, in process.

Each replica is modelled by its log, its durable epoch and its volatile state; the rules are
the protocol's steps (client writes, delivery and loss on the replication stream, acks,
crashes, restarts, pauses, elections), and every decision is taken by the same functions the
server uses (replica/protocol.py). Invariants:

- every acknowledged event is in the log of every replica that is or becomes primary;
- no log disagrees with an acknowledged event at its seq (logs never diverge below it);
- no request id is stored twice in a log (a retry after a failover is exactly-once);
- once everything is restarted and quiet, all logs are identical.

Fault model: crash-stop replicas with durable logs; a stream may break while both ends live
(both ends notice); a paused primary is invisible to the others until it resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from eventlog import Position
from replica import protocol

N = 3


@dataclass(frozen=True)
class Entry:
    epoch: int
    request_id: str | None  # None: a new primary's epoch marker


@dataclass
class Replica:
    index: int
    log: list[Entry] = field(default_factory=list)  # seq = position + 1
    current_epoch: int = 0  # durable
    alive: bool = True
    paused: bool = False
    primary: bool = False
    trusted: bool = False  # volatile: in the in-sync set of the latest primary, and knows it
    following: int | None = None  # index of the primary whose stream it holds
    diverged_checked: bool = False  # the stream passed its divergence exchange
    # As primary:
    acked: dict[int, int] = field(default_factory=dict)  # secondary -> acked seq
    in_sync: set[int] = field(default_factory=set)

    @property
    def position(self) -> Position:
        return Position(self.log[-1].epoch, len(self.log)) if self.log else Position(0, 0)

    def end_for_epoch(self, epoch: int) -> Position:
        for seq in range(len(self.log), 0, -1):
            if self.log[seq - 1].epoch <= epoch:
                return Position(self.log[seq - 1].epoch, seq)
        return Position(0, 0)

    @property
    def visible(self) -> bool:
        return self.alive and not self.paused


class ReplicationModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas: list[Replica] = []
        self.min_insync = 1
        self.acked: dict[str, int] = {}  # request id -> seq it was acknowledged at
        self._acked_epoch: dict[str, int] = {}
        self.pending: dict[str, int] = {}  # request id -> primary it was sent to
        self.next_request = 0

    @initialize(min_insync=st.sampled_from([1, 2]))
    def start(self, min_insync: int) -> None:
        self.min_insync = min_insync
        self.replicas = [Replica(i) for i in range(N)]
        self._elect_if_possible(0)

    # -- helpers -------------------------------------------------------------------------

    def _primaries(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.primary]

    def _visible_primary(self) -> Replica | None:
        live = [r for r in self._primaries() if not r.paused]
        return max(live, key=lambda r: r.current_epoch) if live else None

    def _commit_point(self, p: Replica) -> int:
        in_sync = {i: p.acked.get(i, 0) for i in p.in_sync}
        if not protocol.enough_in_sync(len(in_sync), self.min_insync):
            return 0
        return protocol.commit_point(len(p.log), in_sync)

    def _ack_pending(self, p: Replica) -> None:
        point = self._commit_point(p)
        for request_id, where in list(self.pending.items()):
            if where != p.index:
                continue
            seq = next((s for s, e in enumerate(p.log, 1) if e.request_id == request_id), None)
            if seq is not None and seq <= point:
                self.acked[request_id] = seq
                self._acked_epoch[request_id] = p.log[seq - 1].epoch
                del self.pending[request_id]

    def _break_stream(self, s: Replica) -> None:
        if s.following is None:
            return
        p = self.replicas[s.following]
        s.following = None
        s.diverged_checked = False
        s.trusted = False
        # The primary drops it from the in-sync set, unless the primary is paused: then its
        # removal waits until it has been awake for longer than an election takes, and by
        # then it has learnt of the newer epoch (see ReplicationHub._evaluate_locked).
        if p.primary and not p.paused:
            p.in_sync.discard(s.index)
            p.acked.pop(s.index, None)
            self._ack_pending(p)

    def _step_down(self, p: Replica) -> None:
        p.primary = False
        p.in_sync = set()
        p.acked = {}
        for request_id, where in list(self.pending.items()):
            if where == p.index:
                del self.pending[request_id]  # the client sees an error and will retry
        for s in self.replicas:
            if s.following == p.index:
                self._break_stream(s)

    def _elect_if_possible(self, candidate_index: int) -> None:
        c = self.replicas[candidate_index]
        if not c.visible or c.primary or self._visible_primary() is not None:
            return
        voters = [r for r in self.replicas if r.visible and not r.primary and r is not c]
        electorate = [
            protocol.CandidateView(r.index, r.position, r.current_epoch, r.trusted)
            for r in [c, *voters]
        ]
        choice = protocol.choose_primary(electorate, N)
        if choice != c.index or len(electorate) < protocol.votes_needed(self.min_insync):
            return
        epoch = protocol.next_epoch(max(v.epoch for v in electorate), c.index, N)
        for v in voters:
            if epoch <= v.current_epoch or c.position < v.position:
                return  # refused
        # Votes granted: voters record the epoch and drop their stream to the old primary
        # (which is gone or paused: it removes nobody meanwhile), but keep vouching: the new
        # primary counts them in its in-sync set from the start.
        for v in [c, *voters]:
            v.current_epoch = epoch
            v.following = None
            v.diverged_checked = False
        c.trusted = False
        for request_id in self.acked:
            assert any(e.request_id == request_id for e in c.log), (
                f"replica {c.index} became primary of epoch {epoch} without acknowledged "
                f"request {request_id}"
            )
        c.primary = True
        c.in_sync = {v.index for v in voters}
        c.acked = {v.index: 0 for v in voters}
        c.log.append(Entry(epoch, None))

    # -- rules ---------------------------------------------------------------------------
    # Each rule applies only where it can act, and picks its replica among those, so that
    # every step of an example does something.

    def _pick(self, data: st.DataObject, candidates: list[Replica], label: str) -> Replica:
        return data.draw(st.sampled_from(candidates), label=label)

    def _writable(self) -> bool:
        p = self._visible_primary()
        return p is not None and protocol.enough_in_sync(len(p.in_sync), self.min_insync)

    @precondition(lambda self: self._writable())
    @rule(data=st.data())
    def client_write(self, data: st.DataObject) -> None:
        p = self._visible_primary()
        assert p is not None
        retry = sorted(set(self._unacked_requests()))
        if retry and data.draw(st.booleans(), label="retry"):
            request_id = data.draw(st.sampled_from(retry), label="request")
        else:
            self.next_request += 1
            request_id = f"r{self.next_request}"
        # A retry that finds its event in the log waits for it to commit; otherwise append.
        if not any(e.request_id == request_id for e in p.log):
            p.log.append(Entry(p.current_epoch, request_id))
        self.pending[request_id] = p.index
        self._ack_pending(p)

    def _unacked_requests(self) -> list[str]:
        seen = {e.request_id for r in self.replicas for e in r.log if e.request_id}
        return [r for r in seen if r not in self.acked]

    def _can_connect(self) -> list[Replica]:
        p = self._visible_primary()
        if p is None:
            return []
        return [
            r
            for r in self.replicas
            if r.visible
            and not r.primary
            and r.following is None
            and r.current_epoch <= p.current_epoch  # fenced: refuses an older primary
        ]

    @precondition(lambda self: bool(self._can_connect()))
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        s = self._pick(data, self._can_connect(), "connects")
        p = self._visible_primary()
        assert p is not None
        s.current_epoch = p.current_epoch
        s.following = p.index
        s.diverged_checked = False

    def _streaming(self) -> list[Replica]:
        return [
            r
            for r in self.replicas
            if r.following is not None
            and r.visible
            and self.replicas[r.following].visible
            and self.replicas[r.following].primary
        ]

    @precondition(lambda self: bool(self._streaming()))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """One step of the stream from the primary to a secondary."""
        self._deliver(self._pick(data, self._streaming(), "receives"))

    def _deliver(self, s: Replica) -> None:
        assert s.following is not None
        p = self.replicas[s.following]
        if not s.diverged_checked:
            leader_end = p.end_for_epoch(s.position.epoch)
            cut = protocol.truncation_point(
                s.position, leader_end, s.end_for_epoch(leader_end.epoch)
            )
            if cut < len(s.log):
                del s.log[cut:]
                return  # says Hello again
            s.diverged_checked = True
        elif len(s.log) < len(p.log):
            s.log.append(p.log[len(s.log)])
        self._ack(s, p)

    def _ack(self, s: Replica, p: Replica) -> None:
        p.acked[s.index] = len(s.log)
        if len(s.log) >= len(p.log):
            p.in_sync.add(s.index)
        # The primary's next message tells it whether it is in sync.
        s.trusted = s.index in p.in_sync
        self._ack_pending(p)

    def _followers(self) -> list[Replica]:
        return [r for r in self.replicas if r.following is not None]

    @precondition(lambda self: bool(self._followers()))
    @rule(data=st.data())
    def lose_stream(self, data: st.DataObject) -> None:
        self._break_stream(self._pick(data, self._followers(), "loses its stream"))

    def _lagging(self) -> list[Replica]:
        out = []
        for s in self._streaming():
            assert s.following is not None
            p = self.replicas[s.following]
            if s.index in p.in_sync and p.acked.get(s.index, 0) < len(p.log):
                out.append(s)
        return out

    @precondition(lambda self: bool(self._lagging()))
    @rule(data=st.data())
    def fall_behind(self, data: st.DataObject) -> None:
        """The primary drops a lagging secondary from the in-sync set (and tells it)."""
        s = self._pick(data, self._lagging(), "falls behind")
        assert s.following is not None
        p = self.replicas[s.following]
        p.in_sync.discard(s.index)
        s.trusted = False
        self._ack_pending(p)

    def _unconnected_members(self) -> list[Replica]:
        p = self._visible_primary()
        if p is None:
            return []
        return [self.replicas[i] for i in p.in_sync if self.replicas[i].following != p.index]

    @precondition(lambda self: bool(self._unconnected_members()))
    @rule(data=st.data())
    def drop_unreachable_member(self, data: st.DataObject) -> None:
        """A member that does not stream from the primary is removed after insync_timeout; if
        it is alive it stopped vouching after half of that (the primary being visible to it)."""
        s = self._pick(data, self._unconnected_members(), "dropped")
        p = self._visible_primary()
        assert p is not None
        p.in_sync.discard(s.index)
        p.acked.pop(s.index, None)
        s.trusted = False
        self._ack_pending(p)

    @precondition(lambda self: any(r.alive for r in self.replicas))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        r = self._pick(data, [r for r in self.replicas if r.alive], "crashes")
        if r.primary:
            self._step_down(r)
        self._break_stream(r)
        for other in self.replicas:
            if other.following == r.index:
                self._break_stream(other)
        r.alive = False
        r.paused = False
        r.trusted = False

    @precondition(lambda self: any(not r.alive for r in self.replicas))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        # The log and current_epoch survive; nothing volatile does.
        self._pick(data, [r for r in self.replicas if not r.alive], "restarts").alive = True

    @precondition(lambda self: self._visible_primary() is not None)
    @rule()
    def pause_primary(self) -> None:
        p = self._visible_primary()
        assert p is not None
        p.paused = True

    @precondition(lambda self: any(r.paused for r in self.replicas))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        self._resume(self._pick(data, [r for r in self.replicas if r.paused], "resumes"))

    def _resume(self, r: Replica) -> None:
        # A primary notices that it was paused for longer than the others wait before they
        # elect, before anything else runs (Coordinator._tick), and steps down: it cannot tell
        # whether a newer primary acknowledged writes it lacks.
        r.paused = False
        r.trusted = False
        if r.primary:
            self._step_down(r)

    def _candidates(self) -> list[Replica]:
        if self._visible_primary() is not None:
            return []
        return [r for r in self.replicas if r.visible and not r.primary]

    @precondition(lambda self: bool(self._candidates()))
    @rule(data=st.data())
    def elect(self, data: st.DataObject) -> None:
        self._elect_if_possible(self._pick(data, self._candidates(), "candidate").index)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def acknowledged_events_are_on_the_primary(self) -> None:
        p = self._visible_primary()
        if p is None:
            return
        for request_id, seq in self.acked.items():
            assert seq <= len(p.log) and p.log[seq - 1].request_id == request_id, (
                f"primary {p.index} lost acknowledged request {request_id} (seq {seq})"
            )

    @invariant()
    def logs_agree_below_acknowledged_events(self) -> None:
        """Where a log holds something else than an acknowledged event, that entry is of an
        older epoch (a deposed primary's unacknowledged tail, which truncation removes), and
        the replica neither serves as primary nor vouches for the log in an election."""
        for r in self.replicas:
            for request_id, seq in self.acked.items():
                if seq > len(r.log) or r.log[seq - 1].request_id == request_id:
                    continue
                acked_epoch = self._acked_epoch[request_id]
                assert r.log[seq - 1].epoch < acked_epoch, (
                    f"replica {r.index} holds {r.log[seq - 1]} where {request_id} was "
                    f"acknowledged in epoch {acked_epoch}"
                )
                assert not r.trusted, f"replica {r.index} vouches for a stale log"
                assert not (r.primary and r.visible), f"replica {r.index} leads a stale log"

    @invariant()
    def logs_match(self) -> None:
        """An epoch names one primary, so two logs with the same epoch at a seq agree up to
        there (Raft's log matching property; truncation relies on it)."""
        for a in self.replicas:
            for b in self.replicas:
                common = min(len(a.log), len(b.log))
                for seq in range(common, 0, -1):
                    if a.log[seq - 1].epoch == b.log[seq - 1].epoch:
                        assert a.log[:seq] == b.log[:seq], (
                            f"replicas {a.index} and {b.index} agree on the epoch at seq {seq} "
                            f"but not before: {a.log} / {b.log}"
                        )
                        break

    @invariant()
    def request_ids_are_unique(self) -> None:
        for r in self.replicas:
            ids = [e.request_id for e in r.log if e.request_id]
            assert len(ids) == len(set(ids)), f"replica {r.index} stored a request twice"

    @precondition(lambda self: bool(self.replicas))
    @rule()
    def quiesce(self) -> None:
        """Restart everything, let an election and replication finish: logs converge."""
        for r in self.replicas:
            r.alive = True
            if r.paused:
                self._resume(r)
        for _ in range(3):
            for r in self.replicas:
                self._elect_if_possible(r.index)
        p = self._visible_primary()
        assert p is not None, "no primary with every replica up"
        for _ in range(4 * (len(p.log) + 2)):
            for r in self._can_connect():
                r.current_epoch = p.current_epoch
                r.following = p.index
                r.diverged_checked = False
            for r in self._streaming():
                self._deliver(r)
        logs = {tuple(r.log) for r in self.replicas}
        assert len(logs) == 1, f"logs differ after quiescence: {[r.log for r in self.replicas]}"
        for request_id, seq in self.acked.items():
            assert p.log[seq - 1].request_id == request_id


TestReplicationModel = ReplicationModel.TestCase
TestReplicationModel.settings = settings(
    max_examples=int(os.environ.get("CHAT_MODEL_EXAMPLES", "300")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _end_for_epoch(log: list[int], epoch: int) -> Position:
    """A log of epochs (seq = position + 1): its last position with epoch <= `epoch`."""
    for seq in range(len(log), 0, -1):
        if log[seq - 1] <= epoch:
            return Position(log[seq - 1], seq)
    return Position(0, 0)


@st.composite
def diverged_logs(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """A leader's and a follower's logs (as epochs) sharing a prefix, then diverging: past the
    prefix no epoch appears in both (an epoch names one primary, whose entries agree)."""
    epochs = st.lists(st.integers(1, 40), max_size=12).map(sorted)
    prefix = draw(epochs)
    floor = prefix[-1] if prefix else 0
    later = st.lists(st.integers(floor + 1, floor + 40), max_size=12).map(sorted)
    leader_tail = draw(later)
    follower_tail = draw(later.map(lambda xs: [x for x in xs if x not in leader_tail]))
    if leader_tail and follower_tail and leader_tail[0] == follower_tail[0]:
        follower_tail = []
    return prefix + leader_tail, prefix + follower_tail, len(prefix)


@settings(max_examples=500, deadline=None)
@given(diverged_logs())
def test_divergence_exchange_keeps_exactly_the_common_prefix(
    logs: tuple[list[int], list[int], int],
) -> None:
    leader, follower, common = logs
    for _ in range(len(follower) + 1):
        own_last = Position(follower[-1], len(follower)) if follower else Position(0, 0)
        leader_end = _end_for_epoch(leader, own_last.epoch)
        cut = protocol.truncation_point(
            own_last, leader_end, _end_for_epoch(follower, leader_end.epoch)
        )
        if cut >= len(follower):
            break
        del follower[cut:]
    assert follower == leader[: len(follower)], "the follower kept a divergent entry"
    assert len(follower) >= common, "the follower cut into the prefix it shares with the leader"


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_candidates_never_share_an_epoch(known_a: int, known_b: int) -> None:
    """Two candidates, whatever epochs each has seen, never start the same epoch; each starts
    one above everything it knows."""
    a = protocol.next_epoch(known_a, 0, N)
    b = protocol.next_epoch(known_b, 1, N)
    assert a != b
    assert a > known_a and b > known_b


HALF_INSYNC = 0.5  # vouch window for insync_timeout_ms = 1000
optional_age = st.none() | st.floats(0, 10, allow_nan=False)


@given(optional_age, optional_age)
def test_a_secondary_vouches_only_before_the_primary_can_have_dropped_it(
    stream_lost_for: float | None, processing_for: float | None
) -> None:
    """The primary drops a member insync_timeout after its stream broke (or after it got stuck
    storing); the member must have stopped vouching by then, whatever it can or cannot see of
    the primary (a failing database makes a live primary look dead to it). This is what made
    a lone secondary elect itself without events its old primary had acknowledged alone."""
    vouches = protocol.vouches(True, stream_lost_for, processing_for, HALF_INSYNC)
    stale = [age for age in (stream_lost_for, processing_for) if age is not None]
    assert vouches == all(age < HALF_INSYNC for age in stale)
    assert not protocol.vouches(False, None, None, HALF_INSYNC)
